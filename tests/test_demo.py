"""orch demo through the real console script: a generated project, loaded, planned, inspected,
and (without --keep) removed again."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import apsw
import pytest

from kernel.dag import PlanTask, execution_plan
from kernel.demo import ILLEGAL_TRANSITION, WORKSTREAM, example_task_files
from kernel.models import WorkstreamDefinition, parse_task

from .conftest import orch, orch_json, run_cli

TASK_IDS = {name.removesuffix(".json") for name in example_task_files()} - {"workstream"}


def test_the_example_definitions_are_valid_and_realistic() -> None:
    files = example_task_files()
    WorkstreamDefinition.model_validate(files["workstream.json"])
    tasks = [parse_task(doc, name)[0] for name, doc in files.items() if name != "workstream.json"]
    assert {t.type for t in tasks} == {"aider", "lint", "pytest"}
    assert any(t.critical for t in tasks)
    assert any(t.context_requirements and t.context_requirements.required_files for t in tasks)
    assert all(t.resource_requirements for t in tasks)
    plan = execution_plan(
        [PlanTask(t.task_id, t.name, t.type, dependencies=tuple(t.dependencies),
                  estimated_duration_seconds=t.execution.estimated_duration_seconds)
         for t in tasks],
        WORKSTREAM, files["workstream.json"]["max_parallelism"], "2025-01-01T00:00:00.000Z")
    # Two branches run side by side after the first edit.
    assert [len(s["parallel_tasks"]) for s in plan["stages"]] == [1, 2, 2]
    assert ILLEGAL_TRANSITION["task_id"] in TASK_IDS


def test_demo_keep_json(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    code, doc = orch_json("demo", "--keep", str(keep))
    assert code == 0, doc
    assert (doc["kept"], doc["removed"], doc["tasks_run"]) == (True, False, 0)
    assert Path(doc["project"]) == keep.resolve()
    assert doc["elapsed_seconds"] < 10

    # The kept project holds the loaded tasks, all still pending.
    db_path = keep / ".state" / "kernel.db"
    conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        states = dict(conn.execute(
            "SELECT task_id, state FROM task WHERE workstream_id = ?", (WORKSTREAM,)).fetchall())
        events = conn.execute("SELECT COUNT(*) FROM event").fetchone()[0]
    finally:
        conn.close()
    assert states == dict.fromkeys(TASK_IDS, "pending")
    assert doc["task_states"] == states
    assert doc["tasks_loaded"] == len(TASK_IDS)
    assert doc["event_count"] == events
    assert doc["ready_tasks"] == ["add-shout-flag"]
    assert {(keep / "tasks" / WORKSTREAM / f"{t}.json").exists() for t in TASK_IDS} == {True}

    # The plan came from the database.
    assert [len(s["parallel_tasks"]) for s in doc["plan"]["stages"]] == [1, 2, 2]
    assert doc["plan"]["critical_path_tasks"][0] == "add-shout-flag"

    # The database refused the illegal transition and wrote nothing.
    illegal = doc["illegal_transition"]
    assert illegal["rejected"] is True
    assert illegal["code"] == "illegal_transition"
    assert "illegal task transition: pending -> completed" in illegal["message"]
    assert (illegal["state_after"], illegal["events_written"]) == ("pending", 0)

    # orch doctor passes there, in the demo and run again by hand.
    assert doc["doctor"]["ok"] is True
    code, report = orch_json("--root", str(keep), "doctor")
    assert code == 0 and report["ok"] is True
    code, plan = orch_json("--root", str(keep), "plan", WORKSTREAM)
    assert code == 0
    assert plan["stages"] == doc["plan"]["stages"]

    if shutil.which("git"):
        assert doc["git_commit"]
        status = subprocess.run(["git", "status", "--porcelain"], cwd=keep, capture_output=True,
                                text=True, check=True).stdout
        assert status == ""  # everything the user would commit is committed


def test_demo_without_keep_leaves_nothing_behind(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    code, doc = orch_json("demo")
    assert code == 0, doc
    assert (doc["kept"], doc["removed"]) == (False, True)
    assert not Path(doc["project"]).exists()
    assert Path(doc["project"]).parent == scratch.resolve()
    assert list(scratch.iterdir()) == []

    # Piped text: compact, honest about what did not run, and says how to keep the project.
    proc = orch("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Execution plan shout-flag" in out
    assert "refused by a trigger" in out
    assert "orch run" in out and "arrives with the scheduler" in out
    assert "sqlite3 .state/kernel.db 'SELECT * FROM ready_task'" in out
    assert "orch demo --keep DIR" in out
    assert "✓" not in out  # no progress lines when piped
    assert all(line == line.rstrip() for line in out.splitlines())
    assert list(scratch.iterdir()) == []


def test_demo_refuses_a_non_empty_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    assert run_cli("--json", "demo", "--keep", str(tmp_path)) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "demo_dir_not_empty"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
