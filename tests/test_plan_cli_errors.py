"""orch plan --format json: errors are one JSON document on stdout too, as with --json (the
output format is JSON either way), with the same exit codes; the other formats keep text."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest

from kernel.definitions.load import load
from kernel.store.project import Project

from .conftest import run_cli
from .test_validate import task_doc, write_task


@pytest.fixture
def loaded(project: Project) -> Project:
    write_task(project, task_doc("a", ws="ws1"))
    load(project, workers=1)
    return project


@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_an_unknown_workstream_is_a_json_error(loaded: Project, capsys: pytest.CaptureFixture,
                                               json_flag: tuple[str, ...]) -> None:
    code = run_cli("--root", str(loaded.root), "plan", "nope", "--format", "json", *json_flag)
    out = capsys.readouterr()
    assert code == 1
    doc = json.loads(out.out)
    assert doc["error"]["code"] == "unknown_workstream"
    assert "ws1" in doc["error"]["hint"]
    assert out.err == ""


def test_no_project_is_a_json_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("--root", str(tmp_path), "plan", "--format", "json") == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_initialised"


def test_a_locked_database_is_a_json_error(loaded: Project,
                                           capsys: pytest.CaptureFixture) -> None:
    (loaded.root / "orch.toml").write_text("[database]\nbusy_timeout_ms = 50\n")
    conn = apsw.Connection(str(loaded.db_path))
    conn.execute("PRAGMA journal_mode = DELETE")  # readers then wait for an exclusive lock
    conn.execute("BEGIN EXCLUSIVE")
    try:
        code = run_cli("--root", str(loaded.root), "plan", "--format", "json")
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert code == 3
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "database_locked"


def test_text_formats_keep_text_errors(loaded: Project, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("--root", str(loaded.root), "plan", "nope") == 1
    out = capsys.readouterr()
    assert out.out == "" and "no workstream 'nope'" in out.err
    assert run_cli("--root", str(loaded.root), "plan", "nope", "--format", "dot") == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error:")


def test_success_is_unchanged(loaded: Project, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("--root", str(loaded.root), "plan", "--format", "json") == 0
    assert list(json.loads(capsys.readouterr().out)["workstreams"]) == ["ws1"]
