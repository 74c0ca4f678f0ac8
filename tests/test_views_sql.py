"""The derived-state views: ready_task, blocked_task, stuck_task."""

from __future__ import annotations

import apsw

from kernel import db
from kernel.machines import transition


def _ids(conn: apsw.Connection, sql: str) -> list[tuple]:
    return sorted(conn.execute(sql).fetchall())


def test_ready_and_blocked_follow_the_dependencies(db_with_workstream: apsw.Connection) -> None:
    conn = db_with_workstream
    assert _ids(conn, "SELECT task_id, state FROM ready_task") == [("a", "pending")]
    assert _ids(conn, "SELECT task_id, blocked_by, blocked_by_state FROM blocked_task") == [
        ("b", "a", "pending"), ("c", "b", "pending")]
    with db.write_tx(conn):
        transition(conn, "task", "a", "queued", "scheduler_assigned")
    assert _ids(conn, "SELECT task_id, state FROM ready_task") == [("a", "queued")]
    with db.write_tx(conn):
        transition(conn, "task", "a", "cancelled", "user_cancelled")
    reasons = db.rows(conn, "SELECT task_id, needs_operator, reason FROM blocked_task "
                            "WHERE task_id = 'b'")
    assert reasons == [{"task_id": "b", "needs_operator": 1,
                        "reason": "dependency a is cancelled: it runs only after "
                                  "`orch retry a` or `orch skip a`"}]
    # c is stuck too, transitively, with a as the root cause.
    assert _ids(conn, "SELECT task_id, root_task_id, root_state FROM stuck_task") == [
        ("b", "a", "cancelled"), ("c", "a", "cancelled")]


def test_skip_unblocks_dependents(db_with_workstream: apsw.Connection) -> None:
    conn = db_with_workstream
    with db.write_tx(conn):
        transition(conn, "task", "a", "completed", "operator_skip")
    assert _ids(conn, "SELECT task_id FROM ready_task") == [("b",)]
    assert _ids(conn, "SELECT task_id FROM stuck_task") == []
