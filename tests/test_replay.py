"""orch replay: the state rebuilt from the event log equals the tables as they were.

A run is driven with the real scheduler, claim, operator and worker-loss code on a real database
with a fixed clock; after every step the task, workstream and worker tables are snapshotted, and
replay at that moment (and between steps) must give exactly the snapshot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apsw
import pytest

from kernel.base.clock import epoch, iso
from kernel.base.config import Config, WorkersConfig
from kernel.base.errors import UsageError
from kernel.observe.audit import parse_timestamp
from kernel.observe.replay import format_replay, replay
from kernel.runtime import actions, claims, scheduler
from kernel.store import db, machines
from kernel.store.machines import transition_in_tx

from .conftest import orch_json, run_cli

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
CONFIG = Config(workers=WorkersConfig(heartbeat_seconds=1, unresponsive_after_missed=3,
                                      shutdown_after_unresponsive_seconds=10, retry_jitter=0,
                                      retry_backoff_cap_seconds=100, kill_grace_seconds=0.1))
TASK_COLUMNS = ("state", "workstream_id", "retry_count", "worker_id", "generation",
                "failure_mode", "last_error", "next_attempt_at", "started_at", "completed_at")


def _at(t: float) -> str:
    return json.dumps({"at": iso(t)})


def _setup(conn: apsw.Connection) -> None:
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id, created_at, updated_at, "
                     "transition_metadata) VALUES ('ws', ?, ?, ?)", (iso(T0), iso(T0), _at(T0)))
        for task_id, extra in (("a", {"max_retries": 2, "retry_delay_seconds": 1}),
                               ("b", {}), ("c", {"timeout_seconds": 5}), ("d", {})):
            cols = {"task_id": task_id, "workstream_id": "ws", "created_at": iso(T0 + 1),
                    "updated_at": iso(T0 + 1), "transition_metadata": _at(T0 + 1), **extra}
            conn.execute(f"INSERT INTO task ({', '.join(cols)}) VALUES "
                         f"({', '.join('?' for _ in cols)})", list(cols.values()))
        conn.execute("INSERT INTO task_dependency VALUES ('b', 'a')")
        for wid, pid in (("w1", 101), ("w2", 102)):
            conn.execute(
                "INSERT INTO worker (worker_id, pid, hostname, heartbeat_interval_seconds, "
                "last_heartbeat_at, registered_at, updated_at, version, transition_metadata) "
                "VALUES (?, ?, 'test-host', 1, ?, ?, ?, '1.0.0', ?)",
                (wid, pid, iso(T0 + 10_000), iso(T0 + 2), iso(T0 + 2), _at(T0 + 2)))
            transition_in_tx(conn, "worker", wid, "idle", "registration_complete",
                             {"at": iso(T0 + 3)})


def _snapshot(conn: apsw.Connection) -> dict[str, Any]:
    tasks = {r["task_id"]: {c: r[c] for c in TASK_COLUMNS}
             for r in db.rows(conn, "SELECT * FROM task")}
    return {
        "tasks": tasks,
        "workstreams": dict(conn.execute("SELECT workstream_id, state FROM workstream")),
        "workers": {r["worker_id"]: (r["state"], r["pid"], r["hostname"])
                    for r in db.rows(conn, "SELECT * FROM worker")},
    }


def _projection(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "tasks": {tid: {c: t[c] for c in TASK_COLUMNS} for tid, t in result["tasks"].items()},
        "workstreams": {wid: ws["state"] for wid, ws in result["workstreams"].items()},
        "workers": {wid: (w["state"], w["pid"], w["hostname"])
                    for wid, w in result["workers"].items()},
    }


def _claim(conn: apsw.Connection, worker: str, now: float) -> claims.Claim:
    claim = claims.claim_next(conn, worker, now, lease_ttl=30)
    assert claim is not None
    return claim


def _succeed(conn: apsw.Connection, claim: claims.Claim, now: float,
             ctx: scheduler.TickContext) -> None:
    assert claims.finish_execution(conn, claim, now, outcome="succeeded", exit_code=0, error=None,
                                   duration=1, backoff=ctx.backoff()) == "completed"


def _recorded_run(conn: apsw.Connection, root: Path) -> list[tuple[float, dict[str, Any]]]:
    """Drive a run step by step; (moment, snapshot) after every step."""
    ctx = scheduler.TickContext(root=root, config=CONFIG, hostname="test-host",
                                alive=lambda pid: True)
    snaps: list[tuple[float, dict[str, Any]]] = []

    def step(t: float) -> None:
        snaps.append((t, _snapshot(conn)))

    _setup(conn)
    step(T0 + 3)
    t = T0 + 10  # queue a, c, d; the workstream gets ready
    scheduler.tick(conn, t, ctx)
    step(t)
    t = T0 + 20  # a on w1, c on w2; the workstream executes
    a1, c1 = _claim(conn, "w1", t), _claim(conn, "w2", t)
    assert (a1.task_id, c1.task_id) == ("a", "c")
    scheduler.tick(conn, t, ctx)
    step(t)
    t = T0 + 30  # a fails and retries, c times out and fails, d is cancelled by an operator
    assert claims.finish_execution(conn, a1, t, outcome="failed", exit_code=3, error=None,
                                   duration=10, backoff=ctx.backoff()) == "retrying"
    assert claims.finish_execution(conn, c1, t, outcome="timeout", exit_code=None,
                                   error="timed out after 5 s", duration=5,
                                   backoff=ctx.backoff()) == "failed"
    actions.cancel_tasks(conn, ["d"], now=t)
    step(t)
    t = T0 + 40  # a is requeued and claimed again; c and d are retried by an operator
    scheduler.tick(conn, t, ctx)
    a2 = _claim(conn, "w1", t)
    actions.retry_tasks(conn, ["c", "d"], now=t)
    step(t)
    t = T0 + 50  # w1 dies while running a: a is handed on (retrying), w1 shut down
    ctx.exited["w1"] = 137
    scheduler.tick(conn, t, ctx)
    assert db.scalar(conn, "SELECT state FROM task WHERE task_id = 'a'") == "retrying"
    assert a2.task_id == "a"
    step(t)
    t = T0 + 60  # w2 runs what is queued, one task at a time: a (third attempt), b, c, d
    scheduler.tick(conn, t, ctx)
    done = []
    while (claim := claims.claim_next(conn, "w2", t + len(done), lease_ttl=30)) is not None:
        _succeed(conn, claim, t + len(done) + 0.5, ctx)
        done.append((claim.task_id, claim.attempt_no))
        if len(done) == 2:
            step(t + 1.5)
    assert sorted(done) == [("a", 3), ("b", 1), ("c", 2), ("d", 1)]
    step(t + len(done))
    t = T0 + 70  # the workstream completes
    scheduler.tick(conn, t, ctx)
    step(t)
    return snaps


@pytest.fixture
def recorded(fresh_db: apsw.Connection,
             tmp_path: Path) -> tuple[apsw.Connection, list[tuple[float, dict[str, Any]]]]:
    return fresh_db, _recorded_run(fresh_db, tmp_path)


def test_replay_equals_the_tables_at_every_step(recorded: tuple[Any, Any]) -> None:
    conn, snaps = recorded
    final = snaps[-1][1]
    assert final["workstreams"] == {"ws": "completed"}
    assert {t["state"] for t in final["tasks"].values()} == {"completed"}
    assert final["workers"]["w1"][0] == "shutdown"
    assert len(snaps) >= 5
    seen_states = set()
    for moment, snap in snaps:
        result = replay(conn, iso(moment))
        assert _projection(result) == snap, f"replay at {iso(moment)} differs"
        assert result["complete"] and result["events_read"] > 0
        # Any moment before the next event gives the same state.
        following = db.scalar(conn, "SELECT MIN(timestamp) FROM event WHERE timestamp > ?",
                              (iso(moment),))
        if following is not None:
            just_before = iso(epoch(following) - 0.001)
            assert _projection(replay(conn, just_before)) == snap
        seen_states |= {t["state"] for t in snap["tasks"].values()}
    # The run went through every interesting state at a snapshot.
    assert {"pending", "queued", "running", "retrying", "failed", "completed"} <= seen_states


def test_replay_at_five_moments_carries_the_details(recorded: tuple[Any, Any]) -> None:
    conn, _snaps = recorded
    at = {k: replay(conn, iso(T0 + k)) for k in (0, 20, 30, 40, 50)}
    assert at[0]["tasks"] == {} and at[0]["workstreams"]["ws"]["state"] == "planned"
    assert at[20]["tasks"]["a"]["worker_id"] == "w1"
    assert at[20]["workers"]["w1"]["task_id"] == "a"
    assert at[20]["workstreams"]["ws"]["state"] == "executing"
    a30 = at[30]["tasks"]["a"]
    assert (a30["state"], a30["retry_count"], a30["failure_mode"], a30["last_error"]) == (
        "retrying", 1, "Task-Failed", "exit code 3")
    assert at[30]["tasks"]["c"]["failure_mode"] == "Task-Timeout"
    assert at[30]["tasks"]["d"]["last_error"] == machines.CANCELLED_ERROR
    assert at[40]["tasks"]["c"]["state"] == "pending"
    assert at[40]["tasks"]["c"]["last_error"] is None
    a50 = at[50]["tasks"]["a"]
    assert (a50["state"], a50["retry_count"], a50["failure_mode"]) == (
        "retrying", 2, "Worker-Crashed")
    assert at[50]["workers"]["w1"]["state"] == "shutdown"
    assert at[50]["workers"]["w1"]["task_id"] is None
    text = format_replay(at[30])
    assert "tasks: 4 (cancelled 1, failed 1, pending 1, retrying 1)" in text
    assert "task a (ws): retrying, retry 1, next attempt at" in text


def test_replay_before_anything_is_empty(recorded: tuple[Any, Any]) -> None:
    conn, _snaps = recorded
    result = replay(conn, "2000-01-01T00:00:00.000Z")
    assert result["tasks"] == result["workstreams"] == result["workers"] == {}
    assert result["events_read"] == 0 and result["last_seq"] is None
    assert "Nothing was in progress" in format_replay(result)


@pytest.mark.parametrize(("text", "expected"), [
    ("2027-01-15", "2027-01-15T00:00:00.000Z"),
    ("2027-01-15T08:00", "2027-01-15T08:00:00.000Z"),
    ("2027-01-15T08:00:00Z", "2027-01-15T08:00:00.000Z"),
    ("2027-01-15T08:00:00.123Z", "2027-01-15T08:00:00.123Z"),
    ("2027-01-15 08:00:00.123999", "2027-01-15T08:00:00.123Z"),
    ("2027-01-15T10:00:00+02:00", "2027-01-15T08:00:00.000Z"),
])
def test_timestamps_in_every_iso_form(text: str, expected: str) -> None:
    assert parse_timestamp(text) == expected


def test_a_date_alone_can_mean_the_end_of_that_day() -> None:
    assert parse_timestamp("2027-01-15", end_of_day=True) == "2027-01-15T23:59:59.999Z"
    with pytest.raises(UsageError, match="not an ISO-8601 timestamp"):
        parse_timestamp("yesterday")


def test_orch_replay_cli(project, capsys) -> None:
    conn = project.connect()
    try:
        _recorded_run(conn, project.root)
    finally:
        conn.close()
    code, data = orch_json("--root", str(project.root), "replay", "--at", iso(T0 + 30))
    assert code == 0
    assert set(data) >= {"at", "tasks", "workstreams", "workers", "events_read"}
    assert data["tasks"]["a"]["state"] == "retrying" and data["events_read"] > 0
    assert run_cli("--root", str(project.root), "replay", "--at", "2027-01-15T08:00:40Z") == 0
    out = capsys.readouterr().out
    assert "State at 2027-01-15T08:00:40.000Z" in out and "task a (ws): running on w1" in out
    code, data = orch_json("--root", str(project.root), "replay", "--at", "last tuesday")
    assert code == 2 and data["error"]["code"] == "bad_timestamp"
    assert "2026-01-05T10:00:00Z" in data["error"]["hint"]
