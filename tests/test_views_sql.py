"""The derived-state views: open_workstream, queueable_task, ready_task, blocked_task,
stuck_task (sql/0001_core.sql, sql/0005_trust.sql)."""

from __future__ import annotations

import apsw

from kernel.store import db
from kernel.store.machines import transition_in_tx


def _ids(conn: apsw.Connection, sql: str) -> list[tuple]:
    return sorted(conn.execute(sql).fetchall())


def test_ready_and_blocked_follow_the_dependencies(db_with_workstream: apsw.Connection) -> None:
    conn = db_with_workstream
    assert _ids(conn, "SELECT task_id, state FROM ready_task") == [("a", "pending")]
    assert _ids(conn, "SELECT task_id, blocked_by, blocked_by_state FROM blocked_task") == [
        ("b", "a", "pending"), ("c", "b", "pending")]
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "queued", "scheduler_assigned")
    assert _ids(conn, "SELECT task_id, state FROM ready_task") == [("a", "queued")]
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "cancelled", "user_cancelled")
    reasons = db.rows(conn, "SELECT task_id, needs_operator, reason FROM blocked_task "
                            "WHERE task_id = 'b'")
    assert reasons == [{"task_id": "b", "needs_operator": 1,
                        "reason": "dependency a is cancelled: it runs only after "
                                  "`orch retry a`"}]
    # c is stuck too, transitively, with a as the root cause.
    assert _ids(conn, "SELECT task_id, root_task_id, root_state FROM stuck_task") == [
        ("b", "a", "cancelled"), ("c", "a", "cancelled")]


def test_skip_unblocks_dependents(db_with_workstream: apsw.Connection) -> None:
    conn = db_with_workstream
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "completed", "operator_skip")
    assert _ids(conn, "SELECT task_id FROM ready_task") == [("b",)]
    assert _ids(conn, "SELECT task_id FROM stuck_task") == []


def test_a_completed_intermediate_ends_the_stuck_chain(db_with_workstream: apsw.Connection
                                                       ) -> None:
    """a failed; b (between a and c) was completed (skipped): c no longer waits on a."""
    conn = db_with_workstream
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "cancelled", "user_cancelled")
        transition_in_tx(conn, "task", "b", "completed", "operator_skip")
    assert _ids(conn, "SELECT task_id FROM stuck_task") == []
    assert _ids(conn, "SELECT task_id FROM queueable_task") == [("c",)]


def _critical_failure(conn: apsw.Connection) -> None:
    """Task a of workstream ws is critical and failed; b and c wait behind it."""
    with db.write_tx(conn):
        conn.execute("UPDATE task SET critical = 1 WHERE task_id = 'a'")
        conn.execute("INSERT INTO task (task_id, workstream_id) VALUES ('free', 'ws')")
        transition_in_tx(conn, "task", "a", "queued", "scheduler_assigned")
        transition_in_tx(conn, "task", "a", "running", "worker_started", worker_id="w1")
        transition_in_tx(conn, "task", "a", "failed", "execution_failed", worker_id=None)


def test_a_critical_failure_halts_its_workstream(db_with_workstream: apsw.Connection) -> None:
    """Nothing more of a workstream whose critical task failed is queueable or ready, even a
    task without dependencies; the workstream is not open."""
    conn = db_with_workstream
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id) VALUES ('other')")
        conn.execute("INSERT INTO task (task_id, workstream_id) VALUES ('o', 'other')")
    _critical_failure(conn)
    assert _ids(conn, "SELECT workstream_id FROM open_workstream") == [("other",)]
    assert _ids(conn, "SELECT task_id FROM queueable_task") == [("o",)]
    assert _ids(conn, "SELECT task_id FROM ready_task") == [("o",)]


def test_a_terminal_workstream_queues_nothing(db_with_workstream: apsw.Connection) -> None:
    """The states that close a workstream come from machine_state, not from a list."""
    conn = db_with_workstream
    with db.write_tx(conn):
        transition_in_tx(conn, "workstream", "ws", "cancelled", "user_cancelled")
    assert _ids(conn, "SELECT task_id FROM queueable_task") == []
    assert _ids(conn, "SELECT workstream_id FROM open_workstream") == []
    with db.write_tx(conn):
        transition_in_tx(conn, "workstream", "ws", "executing", "operator_reset")
    assert _ids(conn, "SELECT task_id FROM queueable_task") == [("a",)]
