"""Recovery end to end: a worker killed or frozen mid-task, a late result from a lost claim, and
`orch run` itself killed mid-run. Real processes; every claim read back from the event log or a
ledger the task commands write."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from kernel.base import clock
from kernel.runtime import claims
from kernel.store import db, schema
from tests.e2e import (
    events,
    first,
    group_gone,
    intervals,
    kill_quietly,
    make_project,
    pid_gone,
    query,
    start_run,
    states,
    stop,
    task,
    wait_for,
)

# Attempt 1 hangs (until its worker is lost); any later attempt succeeds at once.
HANGS_FIRST_TIME = "sh -c 'if [ \"$ORCH_ATTEMPT\" = 1 ]; then exec sleep 30; fi'"


def _running_attempt(root: Path, task_id: str) -> dict[str, Any] | None:
    found = query(root, "SELECT a.*, w.pid AS worker_pid FROM attempt a "
                        "JOIN task t ON t.task_id = a.task_id AND t.generation = a.generation "
                        "JOIN worker w ON w.worker_id = a.worker_id "
                        "WHERE a.task_id = ? AND t.state = 'running' AND a.pgid IS NOT NULL",
                  (task_id,))
    return found[0] if found else None


def _claim_of(root: Path, attempt: dict[str, Any]) -> claims.Claim:
    """The Claim the lost worker held for ``attempt`` (what it would report with)."""
    t = query(root, "SELECT * FROM task WHERE task_id = ?", (attempt["task_id"],))[0]
    return claims.Claim(
        task_id=t["task_id"], workstream_id=t["workstream_id"], worker_id=attempt["worker_id"],
        generation=attempt["generation"], attempt_id=attempt["attempt_id"],
        attempt_no=attempt["attempt_no"], type=t["type"], command=t["command"],
        definition=json.loads(t["definition"]), timeout_seconds=t["timeout_seconds"],
        retry_count=0, max_retries=t["max_retries"],
        retry_delay_seconds=t["retry_delay_seconds"], worktree_path=None)


def _run_until_attempt(root: Path, task_id: str, workers: int) -> tuple[Any, dict[str, Any]]:
    proc = start_run(root, workers=workers)
    attempt = wait_for(lambda: _running_attempt(root, task_id), message=f"{task_id} to run")
    return proc, attempt


def test_a_killed_worker_hands_its_task_on_and_its_late_result_is_rejected(
        tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_project(root, [task("victim", command=HANGS_FIRST_TIME, max_retries=2,
                             retry_delay=0.2, timeout=60)])
    proc, lost = _run_until_attempt(root, "victim", workers=2)
    try:
        os.kill(lost["worker_pid"], signal.SIGKILL)
        code, out, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, out + err
    assert states(root) == {"victim": "completed"}
    # The orphaned command of the dead worker was killed before the task ran again.
    assert group_gone(lost["pgid"])

    evs = events(root)
    crashed = next(e for e in evs if e["event"] == "worker_crashed"
                   and e["entity_id"] == lost["worker_id"])
    assert crashed["metadata"]["tasks_handed_on"] == ["victim"]
    assert crashed["metadata"]["exit_code"] == -signal.SIGKILL
    retry = first(evs, "task_retry", "victim")
    assert retry["trigger"] == "worker_lost"
    assert retry["metadata"]["failure_mode"] == "Worker-Crashed"
    assert retry["metadata"]["lost_worker"] == lost["worker_id"]
    attempts = query(root, "SELECT * FROM attempt ORDER BY attempt_no")
    assert [(a["outcome"], a["generation"]) for a in attempts] == \
        [("lost", lost["generation"]), ("succeeded", lost["generation"] + 1)]
    assert attempts[1]["worker_id"] != lost["worker_id"], "another worker finished it"
    second_start = [e for e in evs if e["event"] == "task_started"][1]
    assert second_start["seq"] > retry["seq"]

    # The killed worker's result arrives late: fenced off by the generation, nothing changes.
    before_task = query(root, "SELECT * FROM task")
    before_attempts = query(root, "SELECT * FROM attempt ORDER BY attempt_no")
    last_seq = evs[-1]["seq"]
    conn = schema.connect(root / ".state" / "kernel.db")
    try:
        old = _claim_of(root, lost)
        for outcome, code in (("succeeded", 0), ("failed", 1)):
            got = claims.finish_execution(conn, old, time.time(), outcome=outcome,
                                          exit_code=code, error=None, duration=1.0,
                                          backoff={"cap": 1, "jitter": 0})
            assert got == "stale"
    finally:
        conn.close()
    assert query(root, "SELECT * FROM task") == before_task
    assert query(root, "SELECT * FROM attempt ORDER BY attempt_no") == before_attempts
    late = events(root, since=last_seq)
    assert [e["event"] for e in late] == ["stale_result_rejected"] * 2
    assert late[0]["metadata"]["generation"] == lost["generation"]
    assert late[0]["metadata"]["current_generation"] == lost["generation"] + 1
    assert late[0]["metadata"]["current_state"] == "completed"


def test_a_frozen_worker_is_declared_unresponsive_and_its_task_handed_on(
        tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_project(root, [task("victim", command=HANGS_FIRST_TIME, max_retries=1,
                             retry_delay=0.1, timeout=60)])
    proc, lost = _run_until_attempt(root, "victim", workers=2)
    try:
        # Frozen: alive, but no more heartbeats. Stopped while the test holds the write lock,
        # so it cannot be frozen half-way through a write transaction of its own.
        conn = schema.connect(root / ".state" / "kernel.db")
        try:
            with db.write_tx(conn):
                os.kill(lost["worker_pid"], signal.SIGSTOP)
        finally:
            conn.close()
        code, out, err = stop(proc)
    finally:
        kill_quietly(lost["worker_pid"])
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, out + err
    assert states(root) == {"victim": "completed"}
    assert group_gone(lost["pgid"])
    assert pid_gone(lost["worker_pid"]), "the scheduler killed the frozen worker"
    evs = events(root)
    wevs = [e for e in evs if e["entity_id"] == lost["worker_id"]]
    unresponsive = next(e for e in wevs if e["to_state"] == "unresponsive")
    shutdown = next(e for e in wevs if e["to_state"] == "shutdown")
    assert unresponsive["trigger"] == "health_check_timeout"
    assert shutdown["trigger"] == "max_timeout_exceeded"
    # 3 missed heartbeats of 0.2 s, then 1 s unresponsive (orch.toml of the test project).
    assert unresponsive["metadata"]["seconds_since_heartbeat"] >= 0.6
    assert clock.epoch(shutdown["timestamp"]) - clock.epoch(unresponsive["timestamp"]) \
        >= 1.0 - 0.001
    retry = first(evs, "task_retry", "victim")
    assert (retry["trigger"], retry["metadata"]["failure_mode"]) == \
        ("worker_lost", "Worker-Unresponsive")
    assert retry["seq"] > unresponsive["seq"]


LEDGER = 'echo "{kind} {tid} $ORCH_GENERATION $ORCH_WORKER_ID $(date +%s.%N)" >> {ledger}'
HOLD = "while [ ! -e {release} ]; do sleep 0.02; done"


def test_a_killed_scheduler_is_replaced_and_no_task_runs_twice_at_once(tmp_path: Path) -> None:
    """kill -9 `orch run` while its workers run t00..t02 (they hold until released); a second
    `orch run` takes over and starts its own workers while the orphaned ones still run; then
    the held tasks are released. No task may run twice at the same time, or be run again."""
    root = tmp_path / "p"
    ledger, release = root / "ledger.txt", root / "release"
    root.mkdir()
    ids = [f"t{i:02d}" for i in range(30)]
    held = ids[:3]        # claimed first (same critical path, lowest ids)
    make_project(root, [
        task(tid, deps=[ids[i - 5]] if i >= 5 else [], shell=True, command="; ".join([
            LEDGER.format(kind="start", tid=tid, ledger=ledger),
            HOLD.format(release=release) if tid in held else "sleep 0.1",
            LEDGER.format(kind="end", tid=tid, ledger=ledger)]))
        for i, tid in enumerate(ids)])

    def lines() -> list[list[str]]:
        return [ln.split() for ln in (ledger.read_text() if ledger.exists() else "").splitlines()]

    first_run = start_run(root, workers=3)
    second = None
    try:
        wait_for(lambda: {ln[1] for ln in lines() if ln[0] == "start"} >= set(held),
                 message="the held tasks to start")
        first_run.kill()            # kill -9 `orch run`; its workers carry on with their task
        first_run.wait()
        assert query(root, "SELECT pid FROM scheduler_lock") == [{"pid": first_run.pid}]
        old = {r["worker_id"]: r["pid"] for r in query(
            root, "SELECT worker_id, pid FROM worker WHERE scheduler_owner LIKE ?",
            (f"run-{first_run.pid}-%",))}
        assert len(old) == 3
        second = start_run(root, workers=3)
        wait_for(lambda: any(ln[0] == "start" and ln[3] not in old for ln in lines()),
                 message="the second run to start a task while the old workers still run")
        assert all(not pid_gone(pid) for pid in old.values()), "old workers still running"
        release.touch()
        code, out, err = stop(second, timeout=20)
    finally:
        for proc in (first_run, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, out + err
    assert set(states(root).values()) == {"completed"}
    wait_for(lambda: all(pid_gone(p) for p in old.values()), timeout=5,
             message="the old workers to exit")

    runs: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for kind, tid, generation, _worker, at in lines():
        assert kind not in runs[(tid, generation)], f"generation {generation} of {tid} ran twice"
        runs[(tid, generation)][kind] = float(at)
    by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (tid, _), r in runs.items():
        assert set(r) == {"start", "end"}, f"a run of {tid} never ended"
        by_task[tid].append((r["start"], r["end"]))
    assert set(by_task) == set(ids)
    for tid, spans in by_task.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, f"{tid} ran twice at the same time: {spans}"
    # The orphaned workers were alive: their tasks were left to them, not run again.
    for tid in held:
        assert len(by_task[tid]) == 1, tid
    assert {a["worker_id"] for a in query(
        root, "SELECT worker_id FROM attempt WHERE task_id IN (?, ?, ?)", held)} <= set(old)

    evs = events(root)
    taken = [e for e in evs if e["event"] == "scheduler_lock_taken_over"]
    assert len(taken) == 1 and taken[0]["metadata"]["previous"]["pid"] == first_run.pid
    ivs = intervals(evs)
    for a in ivs:
        for b in ivs:
            assert a is b or a.task_id != b.task_id or not a.overlaps(b)
    old_states = query(root, "SELECT state FROM worker WHERE scheduler_owner LIKE ?",
                       (f"run-{first_run.pid}-%",))
    assert {w["state"] for w in old_states} == {"shutdown"}


def test_stopping_a_run_lets_the_running_task_finish(tmp_path: Path) -> None:
    """`kill PID` (like Ctrl-C) drains: the running task finishes, nothing new starts."""
    root = tmp_path / "p"
    go = root / "go"
    make_project(root, [
        task("slow", command=f"sh -c 'while [ ! -e {go} ]; do sleep 0.02; done'"),
        task("next", deps=["slow"]),
    ])
    proc, _ = _run_until_attempt(root, "slow", workers=1)
    try:
        os.kill(proc.pid, signal.SIGTERM)
        wait_for(lambda: query(root, "SELECT 1 FROM worker WHERE stop_requested = 1"),
                 message="the run to ask its worker to stop")
        go.touch()
        code, out, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, out + err
    got = states(root)
    assert got["slow"] == "completed"
    assert got["next"] in ("queued", "pending")
    assert query(root, "SELECT COUNT(*) AS n FROM attempt WHERE task_id = 'next'") == [{"n": 0}]
