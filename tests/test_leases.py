"""Lease guards in SQL (sql/0002_scheduler.sql): no client can oversubscribe a resource."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.base.clock import iso
from kernel.runtime import leases
from kernel.store import db, schema

T0 = 1_800_000_000.0


def _setup(conn: apsw.Connection, tasks: int = 6) -> None:
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        conn.executemany("INSERT INTO task (task_id, workstream_id) VALUES (?, 'ws')",
                         [(f"t{i}",) for i in range(tasks)])
        conn.execute(
            "INSERT INTO resource (resource_id, type, max_holders, capacity, refill_per_second, "
            "reserved) VALUES ('x', 'exclusive', 1, NULL, NULL, 0), "
            "('s', 'shared', 2, NULL, NULL, 0), ('p', 'pooled', -1, 5, NULL, 1), "
            "('r', 'rate_limited', -1, 2, 1.0, 0), ('fw', 'exclusive', 1, NULL, NULL, 0), "
            "('fr', 'shared', -1, NULL, NULL, 0)")
        conn.execute("INSERT INTO resource_conflict VALUES ('fw', 'fr'), ('fw', 'fw')")


@pytest.fixture
def conn(fresh_db: apsw.Connection) -> apsw.Connection:
    _setup(fresh_db)
    return fresh_db


def _lease(conn: apsw.Connection, task: str, resource: str, mode: str = "exclusive",
           amount: float = 1, at: float = T0) -> None:
    conn.execute(
        "INSERT INTO lease (resource_id, task_id, owner, mode, amount, generation, acquired_at, "
        "expires_at) VALUES (?, ?, 'w', ?, ?, 1, ?, ?)",
        (resource, task, mode, amount, iso(at), iso(at + 60)))


def _refused(conn: apsw.Connection, *args: object, match: str) -> None:
    with pytest.raises(apsw.ConstraintError, match=match):
        _lease(conn, *args)  # type: ignore[arg-type]


def test_exclusive_resource_has_one_holder(conn: apsw.Connection) -> None:
    _lease(conn, "t0", "x")
    _refused(conn, "t1", "x", "exclusive", match="lease refused")
    _refused(conn, "t1", "x", "shared", match="lease refused")
    _lease(conn, "t0", "x")  # the same task may hold its own resource twice (re-lease)
    leases.release_task_in_tx(conn, "t0", T0 + 1, "done")
    _lease(conn, "t1", "x")


def test_shared_resource_respects_max_holders_and_exclusive_mode(conn: apsw.Connection) -> None:
    _lease(conn, "t0", "s", "shared")
    _lease(conn, "t1", "s", "shared")
    _refused(conn, "t2", "s", "shared", match="lease refused")
    _refused(conn, "t2", "s", "exclusive", match="lease refused")


def test_pool_never_exceeds_capacity_minus_reserved(conn: apsw.Connection) -> None:
    _lease(conn, "t0", "p", "units", 2)
    _lease(conn, "t1", "p", "units", 2)
    _refused(conn, "t2", "p", "units", 1, match="not enough units")  # 5 - 1 reserved = 4
    leases.release_task_in_tx(conn, "t0", T0 + 1, "done")
    _lease(conn, "t2", "p", "units", 2)


def test_conflicting_resources_are_never_held_by_two_tasks(conn: apsw.Connection) -> None:
    _lease(conn, "t0", "fr", "shared")
    _lease(conn, "t1", "fr", "shared")
    _refused(conn, "t2", "fw", match="conflicting")
    leases.release_task_in_tx(conn, "t0", T0 + 1, "done")
    leases.release_task_in_tx(conn, "t1", T0 + 1, "done")
    _lease(conn, "t2", "fw")
    _refused(conn, "t3", "fr", "shared", match="conflicting")
    _lease(conn, "t2", "fr", "shared")  # a task never conflicts with itself


def test_token_bucket_refills_at_its_rate(conn: apsw.Connection) -> None:
    _lease(conn, "t0", "r", "units", 1, T0)
    _lease(conn, "t1", "r", "units", 1, T0)
    _refused(conn, "t2", "r", "units", 1, T0 + 0.5, match="rate limit")
    _lease(conn, "t2", "r", "units", 1, T0 + 1.01)
    _refused(conn, "t3", "r", "units", 1, T0 + 1.5, match="rate limit")
    _lease(conn, "t3", "r", "units", 2, T0 + 10)  # refilled to capacity, never beyond
    _refused(conn, "t4", "r", "units", 1, T0 + 10, match="rate limit")
    tokens = db.scalar(conn, "SELECT tokens FROM resource_bucket WHERE resource_id = 'r'")
    assert tokens == pytest.approx(0.0)


def test_acquire_all_is_all_or_nothing(conn: apsw.Connection) -> None:
    _lease(conn, "t0", "x")
    with db.write_tx(conn):
        conn.execute("INSERT INTO task_resource VALUES ('t1', 'p', 'units', 2), "
                     "('t1', 'x', 'exclusive', 1)")
    with db.write_tx(conn), pytest.raises(leases.LeaseUnavailable) as err:
        leases.acquire_all_in_tx(conn, "t1", owner="w", generation=1, attempt_id=None, now=T0,
                                 ttl=30)
    assert err.value.resource_id == "x"
    assert db.scalar(conn, "SELECT COUNT(*) FROM lease WHERE task_id = 't1'") == 0
    leases.release_task_in_tx(conn, "t0", T0 + 1, "done")
    with db.write_tx(conn):
        got = leases.acquire_all_in_tx(conn, "t1", owner="w", generation=1, attempt_id=None,
                                       now=T0 + 2, ttl=30)
    assert sorted(g.resource_id for g in got) == ["p", "x"]
    usage = {r["resource_id"]: r for r in db.rows(conn, "SELECT * FROM resource_usage")}
    assert usage["p"]["amount_held"] == 2 and usage["x"]["holder_tasks"] == "t1"


def test_a_released_lease_stays_released(conn: apsw.Connection) -> None:
    _lease(conn, "t0", "x")
    leases.release_task_in_tx(conn, "t0", T0 + 1, "done")
    with pytest.raises(apsw.ConstraintError, match="released lease cannot be changed"):
        conn.execute("UPDATE lease SET released_at = NULL")


def test_leaving_running_releases_the_tasks_leases(conn: apsw.Connection) -> None:
    with db.write_tx(conn):
        conn.execute("INSERT INTO worker (worker_id) VALUES ('w1')")
        conn.execute("UPDATE worker SET state = 'idle', "
                     "transition_trigger = 'registration_complete'")
        conn.execute("UPDATE task SET state = 'queued', transition_trigger = 'scheduler_assigned' "
                     "WHERE task_id = 't0'")
        conn.execute("UPDATE task SET state = 'running', transition_trigger = 'worker_started', "
                     "worker_id = 'w1' WHERE task_id = 't0'")
        _lease(conn, "t0", "x")
        _lease(conn, "t0", "p", "units", 3)
    with db.write_tx(conn):
        conn.execute("UPDATE task SET state = 'cancelled', transition_trigger = 'user_cancelled', "
                     "worker_id = NULL WHERE task_id = 't0'")
    held = db.scalar(conn, "SELECT COUNT(*) FROM lease WHERE released_at IS NULL")
    reasons = {r[0] for r in conn.execute("SELECT release_reason FROM lease")}
    assert held == 0 and reasons == {"task cancelled"}


def test_the_guards_hold_for_a_python_sqlite3_client(tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    conn = schema.connect(path, create=True)
    _setup(conn)
    _lease(conn, "t0", "x")
    conn.close()
    other = sqlite3.connect(path)  # the system SQLite (3.40), as Datasette or a script would
    try:
        with pytest.raises(sqlite3.IntegrityError, match="lease refused"):
            other.execute("INSERT INTO lease (resource_id, task_id, owner, mode, amount, "
                          "generation, acquired_at, expires_at) VALUES ('x', 't1', 'me', "
                          "'exclusive', 1, 1, '2027-01-01T00:00:00.000Z', "
                          "'2027-01-01T00:01:00.000Z')")
    finally:
        other.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3), st.booleans()), max_size=30))
def test_random_pool_traffic_never_oversubscribes(tmp_path_factory: pytest.TempPathFactory,
                                                  ops: list[tuple[int, int, bool]]) -> None:
    conn = schema.connect(tmp_path_factory.mktemp("pool") / "kernel.db", create=True)
    _setup(conn)
    try:
        for task, amount, release in ops:
            if release:
                leases.release_task_in_tx(conn, f"t{task}", T0 + 1, "done")
                continue
            try:
                _lease(conn, f"t{task}", "p", "units", amount)
            except apsw.ConstraintError:
                pass
            held = db.scalar(conn, "SELECT COALESCE(SUM(amount), 0) FROM lease "
                                   "WHERE resource_id = 'p' AND released_at IS NULL")
            assert held is not None and held <= 4
    finally:
        conn.close()
