"""MOD-IDX-001: `orch index` writes .state/module_index.json from the kernel's module docstrings
(summary and the four sections), with schema_version and schema_url; a module without the
sections is named (tests/test_generated.py holds every real module to it with the same parser)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from kernel.observe.module_index import (
    SECTIONS,
    build_index,
    kernel_modules,
    parse_docstring,
    section_problems,
)
from tests.conftest import orch, orch_json

REPO = Path(__file__).resolve().parent.parent
COMPLETE = ('"""A module.\n\nPublic API:\n    ``f()``.\n\nStability Guarantees:\n    None.\n\n'
            'Integration Points:\n    None.\n\nDependencies:\n    None.\n"""\n')


def test_orch_index_writes_the_index_of_every_kernel_module(tmp_path: Path) -> None:
    assert orch("init", cwd=tmp_path).returncode == 0
    code, out = orch_json("--root", str(tmp_path), "index")
    assert code == 0 and out["incomplete"] == []
    path = tmp_path / ".state" / "module_index.json"
    assert out["path"] == str(path)
    doc = json.loads(path.read_text())
    schema = json.loads((REPO / "schemas" / "module-index.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["schema_url"] == schema["$id"] and doc["schema_version"] == "1.0.0"
    modules = {m["module"]: m for m in doc["modules"]}
    assert len(modules) == len(kernel_modules(REPO / "kernel")) == out["modules"]
    db = modules["kernel.store.db"]
    assert db["path"] == "kernel/store/db.py" and db["missing_sections"] == []
    assert set(db["sections"]) == {s[:-1] for s in SECTIONS}
    assert "write_tx" in db["sections"]["Public API"]
    assert "kernel.observe.module_index" in modules and "kernel.cli" in modules
    assert not any(m.startswith("kernel.demo.project") for m in modules)
    assert modules["kernel.observe.failure_modes"]["summary"].startswith("The failure-mode")
    assert orch("--root", str(tmp_path), "index").stdout.startswith(f"wrote {path}: ")


def test_orch_index_needs_a_project(tmp_path: Path) -> None:
    code, out = orch_json("--root", str(tmp_path), "index")
    assert code == 1 and out["error"]["code"] == "not_initialised"
    assert "orch init" in out["error"]["hint"]
    assert not (tmp_path / ".state").exists()


def test_a_module_without_the_sections_is_named(tmp_path: Path) -> None:
    pkg = tmp_path / "kernel"
    (pkg / "store").mkdir(parents=True)
    (pkg / "__init__.py").write_text(COMPLETE)
    (pkg / "store" / "__init__.py").write_text(COMPLETE)
    (pkg / "store" / "bare.py").write_text('"""A module with a summary only."""\n')
    (pkg / "store" / "half.py").write_text(
        '"""Half.\n\nDependencies:\n    x.\n\nPublic API:\n    f.\n"""\n')
    doc = build_index(pkg, now="2026-01-01T00:00:00.000Z")
    by_name = {m["module"]: m for m in doc["modules"]}
    assert sorted(by_name) == ["kernel", "kernel.store", "kernel.store.bare", "kernel.store.half"]
    assert by_name["kernel.store.bare"]["missing_sections"] == [s[:-1] for s in SECTIONS]
    assert by_name["kernel.store.half"]["missing_sections"] == [
        "Stability Guarantees", "Integration Points"]
    assert by_name["kernel.store"]["missing_sections"] == []
    half = (pkg / "store" / "half.py").read_text().split('"""')[1]
    assert section_problems(half) == [
        "no 'Stability Guarantees' section", "no 'Integration Points' section",
        "sections out of order (Public API, Stability Guarantees, Integration Points, "
        "Dependencies)"]
    assert section_problems(COMPLETE.split('"""')[1]) == []


def test_the_parser_reads_summary_and_section_bodies() -> None:
    summary, sections = parse_docstring(
        "One line\ncontinued.\n\nPublic API:\n    ``a()``;\n    ``b()``.\n\nMore:\n    kept.\n")
    assert summary == "One line continued."
    assert sections == {"Public API": "``a()``;\n``b()``.", "More": "kept."}
