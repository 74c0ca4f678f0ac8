"""Generated files (STATE_MACHINE.md, sql/schema.sql, docs/CLI.md, schemas/) are current, and
the docs name every command and every event."""

from __future__ import annotations

from pathlib import Path

from kernel.cli import cli
from kernel.store.machines import load_machines
from tools.docgen import generated_files, kernel_modules, stale_files

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
    for name in cli.load_all():
        assert f"## orch {name}" in text


def test_generation_is_deterministic() -> None:
    first = generated_files(REPO)
    second = generated_files(REPO)
    assert first == second


def test_every_module_has_the_module_index_sections() -> None:
    """MOD-IDX-001: every module's docstring has the four sections, in order; the Dependencies
    section is generated from the imports (test_generated_files_are_current keeps it true).
    The parser is the module index's (``kernel.observe.module_index``): one home."""
    import ast

    from kernel.observe.module_index import section_problems

    problems = {}
    for path in kernel_modules(REPO / "kernel"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if section_problems(doc):
            problems[str(path.relative_to(REPO))] = section_problems(doc)
    assert problems == {}


def test_a_dependencies_section_follows_the_imports(tmp_path: Path) -> None:
    from tools.docgen import with_dependencies

    pkg = tmp_path / "kernel" / "store"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "db.py").write_text('"""x"""\n')
    module = pkg / "machines.py"
    module.write_text('"""Machines.\n\nDependencies:\n    nothing, says the author.\n\nMore:\n'
                      '    kept.\n"""\n\nimport json\n\nimport apsw\n\n\ndef f():\n'
                      '    from kernel.store import db\n')
    assert with_dependencies(module, tmp_path / "kernel").startswith(
        '"""Machines.\n\nDependencies:\n    apsw; ``kernel.store.db``.\n\nMore:\n    kept.\n"""')
