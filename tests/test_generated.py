"""Generated files (STATE_MACHINE.md, sql/schema.sql, docs/CLI.md, schemas/) are current, and
the docs name every command and every event."""

from __future__ import annotations

from pathlib import Path

from kernel.cli import cli
from kernel.store.machines import load_machines
from tools.docgen import generated_files, stale_files

REPO = Path(__file__).resolve().parent.parent


def test_generated_files_are_current() -> None:
    stale = [str(p.relative_to(REPO)) for p in stale_files(REPO)]
    assert stale == [], f"stale generated files {stale}: run python tools/gen_docs.py"


def test_state_machine_doc_lists_every_state_and_transition() -> None:
    text = (REPO / "docs" / "execution_model" / "STATE_MACHINE.md").read_text()
    for machine in load_machines().values():
        assert f"## The {machine.machine} machine" in text
        for state in machine.states:
            assert f"| `{state.name}` |" in text
        for t in machine.transitions:
            assert f"    {t.from_state} --> {t.to_state} : {t.trigger}" in text
            assert f"`{t.event}`" in text


def test_cli_reference_documents_every_command() -> None:
    text = (REPO / "docs" / "CLI.md").read_text()
    for name in cli.commands:
        assert f"## orch {name}" in text


def test_generation_is_deterministic() -> None:
    first = generated_files(REPO)
    second = generated_files(REPO)
    assert first == second
