"""scheduler.tick and the claim transactions, driven with a fixed clock on a real database."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import apsw
import pytest

from kernel.base.clock import epoch, iso
from kernel.base.config import Config, WorkersConfig
from kernel.definitions.models import semver_key
from kernel.runtime import attempts, claims, lock, scheduler
from kernel.store import db

T0 = 1_800_000_000.0
CONFIG = Config(workers=WorkersConfig(heartbeat_seconds=1, unresponsive_after_missed=3,
                                      shutdown_after_unresponsive_seconds=10, retry_jitter=0,
                                      retry_backoff_cap_seconds=100, kill_grace_seconds=0.1))


def _ctx(tmp_path: Path, **kw: object) -> scheduler.TickContext:
    return scheduler.TickContext(root=tmp_path, config=CONFIG, hostname="test-host",
                                 alive=lambda pid: True, **kw)  # type: ignore[arg-type]


def _task(conn: apsw.Connection, task_id: str, *deps: str, ws: str = "ws", **cols: object) -> None:
    names = ["task_id", "workstream_id", "created_at", "updated_at", *cols]
    values = [task_id, ws, iso(T0), iso(T0), *cols.values()]
    conn.execute(f"INSERT INTO task ({', '.join(names)}) VALUES "
                 f"({', '.join('?' for _ in names)})", values)
    conn.executemany("INSERT INTO task_dependency VALUES (?, ?)", [(task_id, d) for d in deps])


def _worker(conn: apsw.Connection, wid: str, *, beat: float = T0,
            caps: dict[str, str] | None = None, pid: int | None = None) -> None:
    conn.execute("INSERT INTO worker (worker_id, pid, hostname, heartbeat_interval_seconds, "
                 "last_heartbeat_at, registered_at, updated_at, version) "
                 "VALUES (?, ?, 'test-host', 1, ?, ?, ?, '1.0.0')",
                 (wid, pid, iso(beat), iso(T0 - 100), iso(T0 - 100)))
    conn.executemany("INSERT INTO worker_capability VALUES (?, ?, ?)",
                     [(wid, c, v) for c, v in (caps or {}).items()])
    conn.execute("UPDATE worker SET state = 'idle', transition_trigger = 'registration_complete' "
                 "WHERE worker_id = ?", (wid,))


@pytest.fixture
def conn(fresh_db: apsw.Connection) -> apsw.Connection:
    with db.write_tx(fresh_db):
        fresh_db.execute("INSERT INTO workstream (workstream_id, created_at, updated_at) "
                         "VALUES ('ws', ?, ?)", (iso(T0 - 100), iso(T0 - 100)))
    return fresh_db


def _states(conn: apsw.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT task_id, state FROM task"))


def test_tick_queues_ready_tasks_and_derives_the_workstream(conn: apsw.Connection,
                                                             tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "a")
        _task(conn, "b", "a")
    report = scheduler.tick(conn, T0, _ctx(tmp_path))
    assert report.queued == 1 and _states(conn) == {"a": "queued", "b": "pending"}
    assert db.scalar(conn, "SELECT state FROM workstream") == "ready"
    assert not report.done


def test_claims_follow_priority_then_critical_path_then_age(conn: apsw.Connection,
                                                            tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "old", estimated_duration_seconds=10)
        _task(conn, "long", estimated_duration_seconds=500)
        _task(conn, "urgent", priority=5)
        _task(conn, "after_long", "long")
        _worker(conn, "w1")
    scheduler.compute_bottom_levels(conn)
    scheduler.tick(conn, T0, _ctx(tmp_path))
    order = []
    for i in range(3):
        claim = claims.claim_next(conn, "w1", T0 + i, lease_ttl=30)
        assert claim is not None
        order.append(claim.task_id)
        claims.finish_execution(conn, claim, T0 + i + 0.5, outcome="succeeded", exit_code=0,
                                error=None, duration=0.5, backoff={})
    assert order == ["urgent", "long", "after_long"]  # after_long queued by long's completion


def test_a_worker_without_the_capability_is_not_given_the_task(conn: apsw.Connection,
                                                               tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "needs_aider")
        conn.execute("INSERT INTO task_capability VALUES ('needs_aider', 'cap-aider', '2.0.0')")
        _worker(conn, "old", caps={"cap-aider": "1.5.0"})
        _worker(conn, "new", caps={"cap-aider": "2.1.0"})
    report = scheduler.tick(conn, T0, _ctx(tmp_path))
    assert report.queued == 1
    assert claims.claim_next(conn, "old", T0, lease_ttl=30) is None
    claim = claims.claim_next(conn, "new", T0, lease_ttl=30)
    assert claim is not None and claim.task_id == "needs_aider"


def test_max_parallelism_caps_running_tasks_of_a_workstream(conn: apsw.Connection,
                                                            tmp_path: Path) -> None:
    with db.write_tx(conn):
        conn.execute("UPDATE workstream SET max_parallelism = 1")
        _task(conn, "a")
        _task(conn, "b")
        _worker(conn, "w1")
        _worker(conn, "w2")
    scheduler.tick(conn, T0, _ctx(tmp_path))
    assert claims.claim_next(conn, "w1", T0, lease_ttl=30) is not None
    assert claims.claim_next(conn, "w2", T0, lease_ttl=30) is None


def test_failure_retries_with_exponential_backoff_then_fails(conn: apsw.Connection,
                                                             tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "flaky", max_retries=2, retry_delay_seconds=2)
        _worker(conn, "w1", beat=T0 + 1000)
    ctx = _ctx(tmp_path)
    now = T0
    delays = []
    for attempt in range(3):
        scheduler.tick(conn, now, ctx)
        claim = claims.claim_next(conn, "w1", now, lease_ttl=30)
        assert claim is not None and claim.attempt_no == attempt + 1
        state = claims.finish_execution(conn, claim, now + 1, outcome="failed", exit_code=3,
                                        error=None, duration=1, backoff=ctx.backoff())
        if attempt < 2:
            assert state == "retrying"
            due = db.scalar(conn, "SELECT next_attempt_at FROM task")
            delays.append(round(epoch(str(due)) - (now + 1), 3))
            scheduler.tick(conn, now + 1.5, ctx)
            assert _states(conn)["flaky"] == "retrying"  # not before the delay
            now = epoch(str(due))
        else:
            assert state == "failed"
    assert delays == [2.0, 4.0]
    task = db.row(conn, "SELECT * FROM task")
    assert task is not None
    assert (task["retry_count"], task["failure_mode"], task["last_error"]) == \
        (2, "Task-Failed", "exit code 3")
    outcomes = [r[0] for r in conn.execute("SELECT outcome FROM attempt ORDER BY attempt_no")]
    assert outcomes == ["failed", "failed", "failed"]


def test_retry_backoff_is_read_from_the_workers_config(tmp_path: Path) -> None:
    assert attempts.retry_backoff(CONFIG.workers) == {"cap": 100, "jitter": 0}
    assert _ctx(tmp_path).backoff() == attempts.retry_backoff(CONFIG.workers)
    assert attempts.retry_backoff(WorkersConfig()) == {"cap": 600.0, "jitter": 0.1}


def test_backoff_is_capped_and_jittered_upwards_only() -> None:
    assert attempts.backoff_delay(30, 10, cap=600, jitter=0.1) == 600
    import random

    rng = random.Random(1)
    got = [attempts.backoff_delay(1, 2, cap=100, jitter=0.5, rng=rng) for _ in range(50)]
    assert all(4 <= d <= 6 for d in got) and len(set(got)) > 1


def test_a_silent_worker_goes_unresponsive_then_its_task_is_handed_on(
        conn: apsw.Connection, tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "a", max_retries=1, retry_delay_seconds=100)
        _worker(conn, "w1", beat=T0)
        _worker(conn, "w2", beat=T0 + 20)
    ctx = _ctx(tmp_path)
    scheduler.tick(conn, T0, ctx)
    claim = claims.claim_next(conn, "w1", T0, lease_ttl=30)
    assert claim is not None
    scheduler.tick(conn, T0 + 2, ctx)  # 2 s < 3 missed heartbeats
    assert db.scalar(conn, "SELECT state FROM worker WHERE worker_id = 'w1'") == "busy"
    scheduler.tick(conn, T0 + 3.5, ctx)
    assert db.scalar(conn, "SELECT state FROM worker WHERE worker_id = 'w1'") == "unresponsive"
    assert _states(conn)["a"] == "running"  # it may still come back: wait
    report = scheduler.tick(conn, T0 + 15, ctx)
    assert report.workers_lost == ["w1"]
    assert db.scalar(conn, "SELECT state FROM worker WHERE worker_id = 'w1'") == "shutdown"
    task = db.row(conn, "SELECT state, retry_count, failure_mode, worker_id FROM task")
    assert task == {"state": "retrying", "retry_count": 1, "failure_mode": "Worker-Unresponsive",
                    "worker_id": None}
    event = db.row(conn, "SELECT trigger, metadata FROM event WHERE event = 'task_retry'")
    assert event is not None and event["trigger"] == "worker_lost"
    # The lost worker reports late: its generation is stale, so nothing changes.
    assert claims.finish_execution(conn, claim, T0 + 16, outcome="succeeded", exit_code=0,
                                   error=None, duration=1, backoff={}) == "stale"
    assert _states(conn)["a"] == "retrying"
    stale = db.row(conn, "SELECT metadata FROM event WHERE event = 'stale_result_rejected'")
    assert stale is not None
    assert json.loads(stale["metadata"])["generation"] == claim.generation


def test_a_dead_worker_on_its_last_attempt_fails_the_task(conn: apsw.Connection,
                                                          tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "a", max_retries=0)
        _worker(conn, "w1", pid=999_999)
    ctx = _ctx(tmp_path)
    scheduler.tick(conn, T0, ctx)
    assert claims.claim_next(conn, "w1", T0, lease_ttl=30) is not None
    ctx.alive = lambda pid: pid != 999_999
    scheduler.tick(conn, T0 + 0.5, ctx)
    worker = db.row(conn, "SELECT state FROM worker")
    assert worker == {"state": "shutdown"}
    trig = db.scalar(conn, "SELECT trigger FROM event WHERE event = 'worker_crashed'")
    assert trig == "worker_crashed"
    assert db.row(conn, "SELECT state, failure_mode FROM task") == \
        {"state": "failed", "failure_mode": "Worker-Crashed"}
    assert db.scalar(conn, "SELECT outcome FROM attempt") == "lost"


def test_a_critical_failure_halts_the_workstream_and_lets_running_tasks_finish(
        conn: apsw.Connection, tmp_path: Path) -> None:
    """SPEC.md section 8: a critical failure stops new work in its workstream (nothing more is
    queued or claimed), running tasks finish, then the workstream fails; what waited in the
    queue is cancelled by the kernel's own trigger, never the operator's user_cancelled."""
    with db.write_tx(conn):
        _task(conn, "crit", critical=1, priority=9)
        _task(conn, "other", priority=5)
        _task(conn, "waiting")
        _task(conn, "later", "other")
        _worker(conn, "w1")
        _worker(conn, "w2")
    ctx = _ctx(tmp_path)
    scheduler.tick(conn, T0, ctx)
    c1 = claims.claim_next(conn, "w1", T0, lease_ttl=30)
    c2 = claims.claim_next(conn, "w2", T0, lease_ttl=30)
    assert c1 and c2 and {c1.task_id, c2.task_id} == {"crit", "other"}
    crit, other = (c1, c2) if c1.task_id == "crit" else (c2, c1)
    claims.finish_execution(conn, crit, T0 + 1, outcome="failed", exit_code=1, error=None,
                            duration=1, backoff={})
    report = scheduler.tick(conn, T0 + 2, ctx)
    assert db.scalar(conn, "SELECT state FROM workstream") == "executing"
    assert _states(conn) == {"crit": "failed", "other": "running", "waiting": "queued",
                             "later": "pending"}
    assert not report.done
    # The free worker claims nothing: the workstream is halted.
    assert claims.claim_next(conn, "w1", T0 + 2, lease_ttl=30) is None
    # The running task finishes normally; its dependent is not queued.
    assert claims.finish_execution(conn, other, T0 + 3, outcome="succeeded", exit_code=0,
                                   error=None, duration=2, backoff={}) == "completed"
    report = scheduler.tick(conn, T0 + 4, ctx)
    assert report.workstreams["ws"] == "failed"
    assert _states(conn) == {"crit": "failed", "other": "completed", "waiting": "cancelled",
                             "later": "pending"}
    cancel = db.row(conn, "SELECT trigger, severity FROM event WHERE task_id = 'waiting' "
                          "AND to_state = 'cancelled'")
    assert cancel == {"trigger": "workstream_failed", "severity": "warning"}
    assert db.scalar(conn, "SELECT COUNT(*) FROM event WHERE trigger = 'user_cancelled'") == 0
    failed = db.row(conn, "SELECT trigger, caused_by FROM event WHERE event = "
                          "'workstream_failed'")
    crit_failed = db.scalar(conn, "SELECT seq FROM event WHERE task_id = 'crit' "
                                  "AND to_state = 'failed'")
    assert failed == {"trigger": "critical_task_failed", "caused_by": crit_failed}
    assert (tmp_path / ".state" / "archive" / "ws" / "latest.json").exists()
    assert report.done


def test_an_operator_cancel_is_not_a_critical_workstream_event(conn: apsw.Connection,
                                                              tmp_path: Path) -> None:
    from kernel.runtime.actions import cancel_tasks

    with db.write_tx(conn):
        _task(conn, "a")
        _task(conn, "b")
        _worker(conn, "w1")
    ctx = _ctx(tmp_path)
    scheduler.tick(conn, T0, ctx)
    claim = claims.claim_next(conn, "w1", T0, lease_ttl=30)
    assert claim is not None
    cancel_tasks(conn, ["b" if claim.task_id == "a" else "a"], now=T0 + 1)
    claims.finish_execution(conn, claim, T0 + 2, outcome="succeeded", exit_code=0, error=None,
                            duration=1, backoff={})
    report = scheduler.tick(conn, T0 + 3, ctx)
    assert report.workstreams["ws"] == "failed"
    ev = db.row(conn, "SELECT trigger, severity FROM event WHERE event = 'workstream_failed'")
    assert ev == {"trigger": "tasks_not_completed", "severity": "error"}


def test_a_workstream_past_max_duration_times_out(conn: apsw.Connection, tmp_path: Path) -> None:
    with db.write_tx(conn):
        conn.execute("UPDATE workstream SET max_duration_seconds = 60")
        _task(conn, "slow")
        _task(conn, "next", "slow")
        _worker(conn, "w1", beat=T0 + 100)
    ctx = _ctx(tmp_path)
    scheduler.tick(conn, T0, ctx)
    assert claims.claim_next(conn, "w1", T0, lease_ttl=30) is not None
    scheduler.tick(conn, T0 + 1, ctx)
    assert db.scalar(conn, "SELECT state FROM workstream") == "executing"
    scheduler.tick(conn, T0 + 62, ctx)
    ev = db.row(conn, "SELECT severity, metadata FROM event WHERE event = 'workstream_timeout'")
    assert ev is not None and ev["severity"] == "critical"
    assert _states(conn) == {"slow": "cancelled", "next": "cancelled"}


def test_all_completed_completes_the_workstream_in_place(conn: apsw.Connection,
                                                         tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "a")
        _worker(conn, "w1")
    ctx = _ctx(tmp_path)
    scheduler.tick(conn, T0, ctx)
    claim = claims.claim_next(conn, "w1", T0, lease_ttl=30)
    assert claim is not None
    assert claims.finish_execution(conn, claim, T0 + 1, outcome="succeeded", exit_code=0,
                                   error=None, duration=1, backoff={}) == "completed"
    report = scheduler.tick(conn, T0 + 2, ctx)
    assert report.done and report.workstreams["ws"] == "completed"
    events = [r[0] for r in conn.execute("SELECT event FROM event WHERE entity_type = "
                                         "'workstream' ORDER BY seq")]
    assert events == ["workstream_created", "workstream_ready", "workstream_started",
                      "workstream_validating", "workstream_completed"]


def test_a_task_no_worker_can_take_is_reported_not_waited_for(conn: apsw.Connection,
                                                              tmp_path: Path) -> None:
    with db.write_tx(conn):
        _task(conn, "a")
        conn.execute("INSERT INTO task_capability VALUES ('a', 'cap-gpu', NULL)")
        _worker(conn, "w1")
    report = scheduler.tick(conn, T0, _ctx(tmp_path))
    assert report.done
    assert report.unrunnable == [{"task_id": "a",
                                  "reason": "no registered worker offers cap-gpu"}]
    # Said once in the log, so `orch why` can tell it after the workers are gone.
    scheduler.tick(conn, T0 + 1, _ctx(tmp_path))
    assert db.rows(conn, "SELECT task_id, json_extract(metadata, '$.reason') AS reason "
                         "FROM event WHERE event = 'task_unrunnable'") == [
        {"task_id": "a", "reason": "no registered worker offers cap-gpu"}]


@pytest.mark.parametrize("offered, runs", [("1.0.0", True), ("1.2.0", True), ("0.9.9", False),
                                           ("1.0.0-rc.1", False)])
def test_min_version_is_the_lowest_version_of_each_capability(
        conn: apsw.Connection, tmp_path: Path, offered: str, runs: bool) -> None:
    """SPEC.md section 3: ``min_version`` is the lowest version that every listed capability
    must have on the worker (the spec's own example value is 1.0.0; the worker's package
    version plays no part)."""
    with db.write_tx(conn):
        _task(conn, "a")
        conn.execute("INSERT INTO task_capability VALUES ('a', 'cap-pytest-001', '1.0.0')")
        _worker(conn, "w1", caps={"cap-pytest-001": offered})
        conn.execute("UPDATE worker SET version = '0.1.0'")
    report = scheduler.tick(conn, T0, _ctx(tmp_path))
    claim = claims.claim_next(conn, "w1", T0, lease_ttl=30)
    assert (claim is not None) == runs
    if not runs:
        assert report.unrunnable == [{"task_id": "a", "reason": "no registered worker offers "
                                      f"cap-pytest-001 >= 1.0.0 (has {offered})"}]


def test_semver_order() -> None:
    versions = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0",
                "1.0.1", "1.2.0", "1.10.0", "2.0.0"]
    assert sorted(reversed(versions), key=semver_key) == versions
    assert semver_key("1.0.0+build.7") == semver_key("1.0.0")


def test_one_scheduler_per_database(conn: apsw.Connection) -> None:
    lock.acquire_lock(conn, "first", T0)
    with pytest.raises(lock.SchedulerBusy, match=f"pid {os.getpid()}"):
        lock.acquire_lock(conn, "second", T0 + 1)
    lock.acquire_lock(conn, "second", T0 + lock.LOCK_TTL_SECONDS + 1)  # expired
    assert db.scalar(conn, "SELECT owner FROM scheduler_lock") == "second"
    assert db.scalar(conn, "SELECT COUNT(*) FROM event "
                           "WHERE event = 'scheduler_lock_taken_over'") == 1
    assert not lock.renew_lock(conn, "first", T0 + 20)
    with db.write_tx(conn):  # a holder on this host whose process is gone
        conn.execute("UPDATE scheduler_lock SET pid = 999999, hostname = ?",
                     (socket.gethostname(),))
    lock.acquire_lock(conn, "third", T0 + 21)
    lock.release_lock(conn, "third")
    assert db.scalar(conn, "SELECT COUNT(*) FROM scheduler_lock") == 0
