"""orch init, doctor and events through the command line, with --json and the exit codes."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from kernel.store import db
from kernel.store.project import Project

from .conftest import logical_dump, orch, orch_json, run_cli


def test_init_creates_the_project_and_is_idempotent(tmp_path: Path, capsys) -> None:
    assert run_cli("--root", str(tmp_path), "--json", "init") == 0
    first = json.loads(capsys.readouterr().out)
    assert ".state/kernel.db" in first["created"]
    assert {"orch.toml", "tasks/", "capabilities/", ".state/.gitignore"} <= set(first["created"])
    assert first["schema_version"] == db.latest_schema_version()
    assert run_cli("--root", str(tmp_path), "init", "--json") == 0
    second = json.loads(capsys.readouterr().out)
    assert second["created"] == []
    assert set(second["kept"]) == set(first["created"])


def test_init_never_clobbers_user_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "orch.toml").write_text("# mine\n[database]\ndurability = \"full\"\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "keep.txt").write_text("hello")
    assert run_cli("--root", str(tmp_path), "init") == 0
    assert (tmp_path / "orch.toml").read_text().startswith("# mine")
    assert (tmp_path / "tasks" / "keep.txt").read_text() == "hello"
    out = capsys.readouterr().out
    assert "kept     orch.toml" in out


def test_init_keeps_the_state_out_of_git(tmp_path: Path) -> None:
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert run_cli("--root", str(tmp_path), "init") == 0
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert ".state" not in status
    assert "orch.toml" in status  # the user's files are theirs to commit


def test_doctor_passes_on_a_fresh_project(project: Project, capsys) -> None:
    assert run_cli("--root", str(project.root), "--json", "doctor") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"integrity_check", "schema_version", "sqlite_library", "wal_size",
            "invariant:running_iff_worker", "invariant:event_seq_gapless",
            "transition_table_matches_yaml"} <= names


def test_doctor_finds_a_broken_invariant(project: Project, capsys) -> None:
    """A client that switches CHECK constraints off can still break an invariant; doctor's SQL
    queries find it and exit 1."""
    conn = project.connect()
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        conn.execute("INSERT INTO task (task_id, workstream_id) VALUES ('t', 'ws')")
        conn.execute("INSERT INTO worker (worker_id) VALUES ('w')")
    conn.close()
    with sqlite3.connect(project.db_path) as raw:
        raw.execute("PRAGMA ignore_check_constraints = ON")
        raw.execute("UPDATE task SET worker_id = 'w' WHERE task_id = 't'")
    assert run_cli("--root", str(project.root), "--json", "doctor") == 1
    report = json.loads(capsys.readouterr().out)
    failed = {c["name"]: c for c in report["checks"] if c["status"] == "fail"}
    assert "invariant:running_iff_worker" in failed
    assert failed["invariant:running_iff_worker"]["rows"] == [
        {"task_id": "t", "state": "pending", "worker_id": "w"}]


def test_doctor_finds_a_tampered_transition_table(project: Project, capsys) -> None:
    with sqlite3.connect(project.db_path) as raw:
        raw.execute("INSERT INTO machine_transition (machine, from_state, to_state, trigger, "
                    "event, event_type, severity) VALUES ('task', 'completed', 'pending', "
                    "'sneaky', 'x', 'y', 'info')")
    assert run_cli("--root", str(project.root), "doctor") == 1
    assert "completed -> pending (sneaky)" in capsys.readouterr().out


def test_events_lists_the_log_in_order(project: Project, capsys) -> None:
    conn = project.connect()
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        conn.execute("INSERT INTO task (task_id, workstream_id) VALUES ('t1', 'ws'), ('t2', 'ws')")
    conn.close()
    assert run_cli("--root", str(project.root), "events", "--json") == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert [e["event"] for e in events] == ["workstream_created", "task_created", "task_created"]
    assert events[1]["metadata"] == {"max_retries": 0, "source_file": None}
    assert run_cli("--root", str(project.root), "--json", "events", "--since", "2") == 0
    assert [e["seq"] for e in json.loads(capsys.readouterr().out)["events"]] == [3]
    assert run_cli("--root", str(project.root), "events", "--task", "t2") == 0
    out = capsys.readouterr().out
    assert "task t2 ∅ -> pending (task_loaded)" in out and "t1" not in out


def test_usage_errors_exit_2_with_a_json_error(project: Project, capsys) -> None:
    assert run_cli("--root", str(project.root), "--json", "events", "--since", "-3") == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "usage" and "--since" in error["message"]
    assert run_cli("--json", "no-such-command") == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "usage"


def test_missing_database_is_not_initialised_exit_1(tmp_path: Path, capsys) -> None:
    """Exit 3 is for a locked or unreadable database; no database at all is exit 1."""
    assert run_cli("--root", str(tmp_path), "--json", "doctor") == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "not_initialised"
    assert error["hint"].startswith("run `orch init`")
    assert not (tmp_path / ".state").exists()


def test_too_new_database_exits_3_and_is_unchanged(project: Project) -> None:
    with sqlite3.connect(project.db_path) as raw:
        raw.execute("PRAGMA user_version = 999")
    before = logical_dump(project.db_path)
    code, out = orch_json("--root", str(project.root), "doctor")
    assert code == 3
    assert out["error"]["code"] == "schema_too_new"
    assert logical_dump(project.db_path) == before


def test_the_console_script_runs_in_a_subprocess(tmp_path: Path) -> None:
    """The installed `orch` script, as a user runs it: init, doctor, events, --help."""
    assert orch("init", cwd=tmp_path).returncode == 0
    sub = tmp_path / "deeper" / "dir"
    sub.mkdir(parents=True)
    code, report = orch_json("doctor", cwd=sub)  # finds the project root from a subdirectory
    assert code == 0 and report["ok"]
    help_text = orch("--help").stdout
    for name in ("init", "doctor", "events"):
        assert name in help_text
    bad = orch("--root", str(tmp_path), "events", "--since", "x")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_bad_config_names_the_file_and_key(project: Project, capsys) -> None:
    project.config_path.write_text("[database]\ndurabilty = 'full'\n")
    assert run_cli("--root", str(project.root), "--json", "doctor") == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "config_invalid"
    assert error["file"].endswith("orch.toml")
    assert "database.durabilty" in error["message"]
