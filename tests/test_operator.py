"""Operator commands (cancel, retry, skip) and the read commands (status, show, why), through
the library and the command line, on real database files."""

from __future__ import annotations

import getpass
import json
from typing import Any

import apsw
import pytest

from kernel.base import clock
from kernel.observe.status import why
from kernel.runtime.actions import cancel_task_in_tx, cancel_tasks
from kernel.store import db
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project

from .conftest import logical_dump, orch_json, run_cli

USER = getpass.getuser()


# --------------------------------------------------------------------------- setup helpers


@pytest.fixture
def proj(project: Project) -> Project:
    """A project with workstream 'ws' (executing): a <- b <- c (b depends on a, c on b), d and
    e independent; a has max_retries 2; idle workers w1, w2, w3."""
    conn = project.connect()
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        conn.execute(
            "INSERT INTO task (task_id, workstream_id, max_retries, timeout_seconds, definition) "
            "VALUES ('a', 'ws', 2, 30, '{\"id\": \"a\", \"command\": \"make a\"}'), "
            "('b', 'ws', 0, NULL, '{}'), ('c', 'ws', 1, NULL, '{}'), "
            "('d', 'ws', 0, NULL, '{}'), ('e', 'ws', 2, NULL, '{}')"
        )
        conn.execute("INSERT INTO task_dependency VALUES ('b', 'a'), ('c', 'b')")
        for worker in ("w1", "w2", "w3"):
            conn.execute("INSERT INTO worker (worker_id) VALUES (?)", (worker,))
            transition_in_tx(conn, "worker", worker, "idle", "registration_complete")
        transition_in_tx(conn, "workstream", "ws", "ready", "all_tasks_created")
        transition_in_tx(conn, "workstream", "ws", "executing", "first_task_started")
    conn.close()
    return project


def conn_of(project: Project) -> apsw.Connection:
    return project.connect()


def start(conn: apsw.Connection, task_id: str, worker: str) -> int:
    """queued -> running on ``worker`` with an open attempt; returns the attempt number."""
    with db.write_tx(conn):
        if db.scalar(conn, "SELECT state FROM task WHERE task_id = ?", (task_id,)) != "queued":
            transition_in_tx(conn, "task", task_id, "queued", "scheduler_assigned")
        transition_in_tx(conn, "task", task_id, "running", "worker_started", worker_id=worker,
                         started_at=("sql", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"),
                         generation=("sql", "generation + 1"))
        number = db.scalar(conn, "SELECT COUNT(*) + 1 FROM attempt WHERE task_id = ?",
                           (task_id,))
        conn.execute(
            "INSERT INTO attempt (task_id, attempt_no, worker_id, generation, started_at) "
            "VALUES (?, ?, ?, 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (task_id, number, worker),
        )
    return int(number)


def finish(conn: apsw.Connection, task_id: str, to_state: str, trigger: str, *,
           outcome: str, exit_code: int | None = None, failure_mode: str | None = None,
           metadata: dict[str, Any] | None = None, **columns: Any) -> None:
    """End the running attempt of a task and move it on (running -> to_state)."""
    with db.write_tx(conn):
        conn.execute(
            "UPDATE attempt SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
            "outcome = ?, exit_code = ?, failure_mode = ? "
            "WHERE task_id = ? AND finished_at IS NULL",
            (outcome, exit_code, failure_mode, task_id),
        )
        if to_state == "retrying":
            columns["retry_count"] = ("sql", "retry_count + 1")
        if to_state in ("failed", "completed"):
            columns.setdefault("completed_at", ("sql", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"))
        transition_in_tx(conn, "task", task_id, to_state, trigger, metadata, worker_id=None,
                         failure_mode=failure_mode, **columns)


def task(project: Project, task_id: str) -> dict[str, Any]:
    with project.open(readonly=True) as conn:
        found = db.row(conn, "SELECT * FROM task WHERE task_id = ?", (task_id,))
    assert found is not None
    return found


def query(project: Project, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    with project.open(readonly=True) as conn:
        return db.rows(conn, sql, params)


def cli(project: Project, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    """Run ``orch --root ROOT --json ARGS`` in-process; (exit code, parsed JSON)."""
    capsys.readouterr()
    code = run_cli("--root", str(project.root), "--json", *args)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


# --------------------------------------------------------------------------- cancel


def test_cancel_pending_queued_running_and_retrying(proj: Project, capsys) -> None:
    conn = conn_of(proj)
    start(conn, "a", "w1")                            # a running
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "d", "queued", "scheduler_assigned")   # d queued
    start(conn, "e", "w2")
    finish(conn, "e", "retrying", "execution_failed", outcome="failed", exit_code=1,
           failure_mode="Task-Failed")                # e retrying
    conn.close()

    code, report = cli(proj, capsys, "cancel", "a", "b", "d", "e")
    assert code == 0
    assert report["changed"] == [
        {"task_id": "a", "from_state": "running", "to_state": "cancelled"},
        {"task_id": "b", "from_state": "pending", "to_state": "cancelled"},
        {"task_id": "d", "from_state": "queued", "to_state": "cancelled"},
        {"task_id": "e", "from_state": "retrying", "to_state": "cancelled"},
    ]
    assert report["skipped"] == []
    a = task(proj, "a")
    assert a["state"] == "cancelled" and a["worker_id"] is None
    assert a["completed_at"] is not None and a["failure_mode"] is None
    assert a["last_error"] == "cancelled by an operator"
    attempts = query(proj, "SELECT outcome, finished_at FROM attempt WHERE task_id = 'a'")
    assert attempts[0]["outcome"] == "cancelled" and attempts[0]["finished_at"] is not None
    # e's failed attempt keeps its outcome
    assert query(proj, "SELECT outcome FROM attempt WHERE task_id = 'e'") == [
        {"outcome": "failed"}]
    events = query(proj, "SELECT from_state, trigger, metadata FROM event WHERE task_id = 'a' "
                         "AND to_state = 'cancelled'")
    assert len(events) == 1 and events[0]["trigger"] == "user_cancelled"
    meta = json.loads(events[0]["metadata"])
    assert meta["operator"] == USER and meta["worker_id"] == "w1"
    assert events[0]["from_state"] == "running"


def test_cancel_task_in_tx_frees_the_worker_and_closes_the_attempt(proj: Project) -> None:
    """The one cancel of a task (the operator's and a failed workstream's): the task leaves its
    worker, its open attempt is closed as cancelled and keeps an error message of its own."""
    with proj.open() as conn:
        start(conn, "a", "w1")
        start(conn, "d", "w2")
        with db.write_tx(conn):
            conn.execute("UPDATE attempt SET error_message = 'its own' WHERE task_id = 'd'")
            stamp = clock.now_iso()
            for task_id in ("a", "d"):
                cancel_task_in_tx(conn, task_id, stamp,
                                  trigger="workstream_timeout", metadata={"reason": "test"},
                                  last_error="cancelled: test", attempt_error="the attempt's")
            cancel_task_in_tx(conn, "b", stamp, trigger="workstream_timeout",
                              metadata={}, last_error="cancelled: test")
    assert [(t["state"], t["worker_id"], t["last_error"]) for t in
            (task(proj, "a"), task(proj, "b"), task(proj, "d"))] == \
        [("cancelled", None, "cancelled: test")] * 3
    assert query(proj, "SELECT task_id, outcome, error_message FROM attempt ORDER BY task_id") == [
        {"task_id": "a", "outcome": "cancelled", "error_message": "the attempt's"},
        {"task_id": "d", "outcome": "cancelled", "error_message": "its own"}]
    assert [e["trigger"] for e in query(proj, "SELECT trigger FROM event WHERE task_id = 'a' "
                                              "AND to_state = 'cancelled'")] == [
        "workstream_timeout"]


def test_cancel_of_a_terminal_task_is_skipped_not_an_error(proj: Project, capsys) -> None:
    assert cli(proj, capsys, "skip", "a")[0] == 0
    code, report = cli(proj, capsys, "cancel", "a", "d")
    assert code == 0
    assert report["changed"] == [{"task_id": "d", "from_state": "pending",
                                  "to_state": "cancelled"}]
    assert report["skipped"] == [{"task_id": "a", "state": "completed",
                                  "reason": "already completed: nothing to cancel"}]


def test_unknown_task_exits_1_and_changes_nothing(proj: Project, capsys) -> None:
    before = logical_dump(proj.db_path)
    for action in ("cancel", "retry", "skip"):
        code, out = cli(proj, capsys, action, "a", "nosuch")
        assert code == 1, action
        assert out["error"]["code"] == "unknown_task"
        assert "nosuch" in out["error"]["message"]
    assert logical_dump(proj.db_path) == before
    assert task(proj, "a")["state"] == "pending"


def test_no_task_ids_is_a_usage_error(proj: Project, capsys) -> None:
    for args in (["cancel"], ["retry"], ["skip"], ["show"], ["why"],
                 ["cancel", "a", "--workstream", "ws"]):
        code, out = cli(proj, capsys, *args)
        assert code == 2, args
        assert out["error"]["code"] == "usage"


def test_cancel_workstream(proj: Project, capsys) -> None:
    conn = conn_of(proj)
    start(conn, "a", "w1")
    conn.close()
    conn = conn_of(proj)
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "d", "completed", "operator_skip")
    conn.close()
    code, report = cli(proj, capsys, "cancel", "--workstream", "ws")
    assert code == 0
    assert {c["task_id"] for c in report["changed"]} == {"a", "b", "c", "e"}
    assert report["workstreams_changed"] == [
        {"workstream_id": "ws", "from_state": "executing", "to_state": "cancelled"}]
    states = {r["task_id"]: r["state"] for r in query(proj, "SELECT task_id, state FROM task")}
    assert states == {"a": "cancelled", "b": "cancelled", "c": "cancelled", "d": "completed",
                      "e": "cancelled"}
    assert query(proj, "SELECT state FROM workstream") == [{"state": "cancelled"}]
    assert task(proj, "a")["worker_id"] is None
    code, out = cli(proj, capsys, "cancel", "--workstream", "nope")
    assert code == 1 and out["error"]["code"] == "unknown_workstream"


# --------------------------------------------------------------------------- retry, skip


def test_retry_failed_task_revives_it_and_its_workstream(proj: Project, capsys) -> None:
    conn = conn_of(proj)
    start(conn, "d", "w1")
    finish(conn, "d", "failed", "execution_failed", outcome="failed", exit_code=3,
           failure_mode="Task-Failed", last_error="boom")
    with db.write_tx(conn):
        transition_in_tx(conn, "workstream", "ws", "failed", "critical_task_failed",
                         completed_at=("sql", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"))
    conn.close()

    code, report = cli(proj, capsys, "retry", "d", "a")
    assert code == 1   # d was retried; a could not be: exit 1 naming it
    assert report["error"]["code"] == "cannot_act" and "cannot retry a (" in \
        report["error"]["message"]
    assert report["changed"] == [{"task_id": "d", "from_state": "failed",
                                  "to_state": "pending"}]
    assert report["skipped"] == [{"task_id": "a", "state": "pending",
                                  "reason": "pending: nothing to retry (only failed or "
                                            "cancelled tasks are retried)"}]
    assert report["workstreams_changed"] == [
        {"workstream_id": "ws", "from_state": "failed", "to_state": "executing"}]
    d = task(proj, "d")
    assert d["state"] == "pending"
    assert (d["last_error"], d["failure_mode"], d["completed_at"], d["next_attempt_at"]) == (
        None, None, None, None)
    assert query(proj, "SELECT state, completed_at FROM workstream") == [
        {"state": "executing", "completed_at": None}]
    reset = query(proj, "SELECT trigger, metadata FROM event WHERE entity_id = 'ws' "
                        "AND to_state = 'executing' ORDER BY seq DESC LIMIT 1")[0]
    assert reset["trigger"] == "operator_reset"
    assert json.loads(reset["metadata"])["operator"] == USER


def test_retry_of_a_running_task_is_skipped(proj: Project, capsys) -> None:
    conn = conn_of(proj)
    start(conn, "a", "w1")
    conn.close()
    code, report = cli(proj, capsys, "retry", "a")
    assert code == 1 and report["changed"] == [] and report["error"]["code"] == "cannot_act"
    assert report["skipped"][0]["reason"].startswith("running: nothing to retry")


def test_skip_pending_unblocks_dependents(proj: Project, capsys) -> None:
    ready = "SELECT task_id FROM ready_task ORDER BY task_id"
    assert [r["task_id"] for r in query(proj, ready)] == ["a", "d", "e"]
    code, report = cli(proj, capsys, "skip", "a")
    assert code == 0
    assert report["changed"] == [{"task_id": "a", "from_state": "pending",
                                  "to_state": "completed"}]
    a = task(proj, "a")
    assert a["state"] == "completed" and a["completed_at"] is not None
    assert [r["task_id"] for r in query(proj, ready)] == ["b", "d", "e"]
    event = query(proj, "SELECT trigger, metadata FROM event WHERE task_id = 'a' "
                        "AND to_state = 'completed'")[0]
    assert event["trigger"] == "operator_skip"
    assert json.loads(event["metadata"])["operator"] == USER


def test_skip_of_a_failed_task_says_retry_first(proj: Project) -> None:
    conn = conn_of(proj)
    start(conn, "d", "w1")
    finish(conn, "d", "failed", "execution_failed", outcome="failed", exit_code=1,
           failure_mode="Task-Failed")
    from kernel.runtime.actions import skip_tasks

    report = skip_tasks(conn, ["d"])
    conn.close()
    assert report.changed == []
    assert "orch retry d" in report.skipped[0]["reason"]


def test_cancel_accepts_a_fixed_time_and_duplicate_ids(proj: Project) -> None:
    conn = conn_of(proj)
    report = cancel_tasks(conn, ["d", "d"], now="2999-01-01T00:00:00.000Z")
    assert report.as_dict()["changed"] == [
        {"task_id": "d", "from_state": "pending", "to_state": "cancelled"}]
    stamp = db.scalar(conn, "SELECT timestamp FROM event WHERE task_id = 'd' "
                            "AND to_state = 'cancelled'")
    conn.close()
    assert stamp == "2999-01-01T00:00:00.000Z"


# --------------------------------------------------------------------------- status, show


def test_status_lists_every_task_and_worker(proj: Project) -> None:
    conn = conn_of(proj)
    start(conn, "a", "w1")
    conn.close()
    code, data = orch_json("--root", str(proj.root), "status")
    assert code == 0
    assert [(t["task_id"], t["workstream_id"], t["state"]) for t in data["tasks"]] == [
        ("a", "ws", "running"), ("b", "ws", "pending"), ("c", "ws", "pending"),
        ("d", "ws", "pending"), ("e", "ws", "pending")]
    assert {"retry_count", "max_retries", "worker_id", "started_at", "completed_at",
            "failure_mode", "last_error"} <= set(data["tasks"][0])
    assert [(w["worker_id"], w["running_task_id"]) for w in data["workers"]] == [
        ("w1", "a"), ("w2", None), ("w3", None)]
    assert data["workstreams"] == [{"workstream_id": "ws", "state": "executing",
                                    "counts": {"pending": 4, "running": 1}, "skipped": 0}]
    assert data["totals"] == {"pending": 4, "running": 1}


def test_status_show_why_text_output(proj: Project, capsys) -> None:
    root = str(proj.root)
    assert run_cli("--root", root, "status") == 0
    out = capsys.readouterr().out
    assert "ws" in out and "w1" in out and "pending" in out
    assert run_cli("--root", root, "show", "b") == 0
    assert "a (pending)" in capsys.readouterr().out
    assert run_cli("--root", root, "why", "b") == 0
    assert "b is pending: it waits for dependency a (pending)." in capsys.readouterr().out


def test_show_task(proj: Project, capsys) -> None:
    conn = conn_of(proj)
    start(conn, "a", "w1")
    with db.write_tx(conn):
        conn.execute("UPDATE attempt SET output = '{\"files_changed\": 2}' WHERE task_id = 'a'")
    conn.close()
    proj.logs_dir.mkdir(parents=True, exist_ok=True)
    (proj.logs_dir / "a.log").write_text("".join(f"line {i}\n" for i in range(100)))
    code, data = cli(proj, capsys, "show", "a")
    assert code == 0
    assert data["task_id"] == "a" and data["state"] == "running" and data["worker_id"] == "w1"
    assert data["definition"] == {"id": "a", "command": "make a"}
    assert data["dependencies"] == []
    assert data["dependents"] == [{"task_id": "b", "state": "pending"}]
    assert data["attempts"][0]["output"] == {"files_changed": 2}
    assert data["attempts"][0]["worker_id"] == "w1"
    assert data["leases"] == []
    assert data["log_tail"] == [f"line {i}" for i in range(60, 100)]
    _code, b = cli(proj, capsys, "show", "b")
    assert b["blocked_by"][0]["blocked_by"] == "a" and b["log_tail"] is None
    code, out = cli(proj, capsys, "show", "nosuch")
    assert code == 1 and out["error"]["code"] == "unknown_task"


# --------------------------------------------------------------------------- why


def sentences(project: Project, task_id: str) -> str:
    with project.open(readonly=True) as conn:
        return "\n".join(why(conn, task_id, project.logs_dir)["sentences"])


def test_why_pending_waits_then_is_stuck(proj: Project) -> None:
    conn = conn_of(proj)
    start(conn, "a", "w1")
    conn.close()
    assert "b is pending: it waits for dependency a (running)." in sentences(proj, "b")
    conn = conn_of(proj)
    finish(conn, "a", "retrying", "execution_failed", outcome="failed", exit_code=2,
           failure_mode="Task-Failed",
           metadata={"next_attempt_at": "2026-11-24T10:15:03.000Z"},
           next_attempt_at="2026-11-24T10:15:03.000Z")
    conn.close()
    text = sentences(proj, "a")
    assert "a is retrying: retry 1 of 2" in text
    assert ("Attempt 1 on worker w1 failed with exit code 2 (Task-Failed); retry 1 of 2 "
            "scheduled for 10:15:03") in text
    conn = conn_of(proj)
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "queued", "retry_delay_elapsed")
    start(conn, "a", "w2")
    finish(conn, "a", "retrying", "task_timeout", outcome="timeout",
           failure_mode="Task-Timeout")
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "queued", "retry_delay_elapsed")
    start(conn, "a", "w1")
    with db.write_tx(conn):
        conn.execute("UPDATE attempt SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
                     "outcome = 'succeeded', exit_code = 0 WHERE task_id = 'a' "
                     "AND finished_at IS NULL")
        transition_in_tx(conn, "task", "a", "validating", "execution_completed", worker_id=None)
        transition_in_tx(conn, "task", "a", "failed", "validation_failed",
                         {"rule": "no_lint_errors"}, failure_mode="Validation-Failed",
                         completed_at=("sql", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"))
    conn.close()
    proj.logs_dir.mkdir(parents=True, exist_ok=True)
    (proj.logs_dir / "a.log").write_text("".join(f"out {i}\n" for i in range(30)))
    text = sentences(proj, "a")
    assert text.startswith("a failed: validation rule no_lint_errors failed.")
    assert "Attempt 2 on worker w2 timed out after 30 s (Task-Timeout)" in text
    assert "Run `orch retry a`" in text
    assert ("b is pending and cannot run until an operator acts: dependency a failed; "
            "run `orch retry a` to run it again.") in sentences(proj, "b")
    assert "upstream task a failed" in sentences(proj, "c")
    conn = proj.connect(readonly=True)
    result = why(conn, "a", proj.logs_dir)
    conn.close()
    assert result["state"] == "failed"
    assert result["log_tail"] == [f"out {i}" for i in range(20, 30)]
    assert [e["to_state"] for e in result["events"]][-2:] == ["validating", "failed"]


def test_why_queued_cancelled_completed_through_the_cli(proj: Project, capsys) -> None:
    conn = conn_of(proj)
    with db.write_tx(conn):
        conn.execute("INSERT INTO task_capability (task_id, capability_id) "
                     "VALUES ('d', 'python'), ('d', 'git')")
        conn.execute("INSERT INTO worker_capability VALUES ('w2', 'python', '1.0.0'), "
                     "('w2', 'git', '1.0.0')")
        transition_in_tx(conn, "task", "d", "queued", "scheduler_assigned")
    start(conn, "e", "w1")
    with db.write_tx(conn):
        conn.execute("UPDATE attempt SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
                     "outcome = 'succeeded', exit_code = 0 WHERE task_id = 'e'")
        transition_in_tx(conn, "task", "e", "validating", "execution_completed", worker_id=None)
        transition_in_tx(conn, "task", "e", "completed", "validation_passed",
                         completed_at=("sql", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"))
    conn.close()
    code, data = cli(proj, capsys, "why", "d")
    assert code == 0 and data["task_id"] == "d" and data["state"] == "queued"
    assert data["sentences"][0].startswith(
        "d is queued: its dependencies completed; it waits for a worker with capabilities "
        "[git, python]")
    _code, data = cli(proj, capsys, "why", "e")
    assert data["sentences"][0].startswith("e completed at ")
    assert data["sentences"][0].endswith(" after 1 attempt.")
    cli(proj, capsys, "cancel", "d")
    _code, data = cli(proj, capsys, "why", "d")
    assert data["sentences"][0].startswith(f"d was cancelled by {USER} at ")
    assert data["events"][-1]["trigger"] == "user_cancelled"
    code, out = cli(proj, capsys, "why", "nosuch")
    assert code == 1 and out["error"]["code"] == "unknown_task"
