"""The scheduler: ``tick(conn, now, ctx)`` moves everything that time or other processes made due.

Public API:
    ``TickContext``, ``TickReport``, ``tick(conn, now, ctx) -> TickReport``;
    ``acquire_lock`` / ``renew_lock`` / ``release_lock`` (one ``orch run`` per database);
    ``compute_bottom_levels(conn, workstreams)``; ``check_workers`` (tick phase 1 alone, for a
    run's last look at its workers); ``progress_counts(conn, ctx)``; ``SchedulerBusy``.

Stability Guarantees:
    One tick, in order: (1) worker health — a dead worker process is ``worker_crashed``, a
    silent one ``unresponsive`` after ``unresponsive_after_missed`` heartbeats and shut down
    after ``shutdown_after_unresponsive_seconds``; the task of a lost worker has its orphaned
    process group killed and is handed on (``worker_lost``); (2) expired leases of tasks that no
    longer run are released; (3) retrying tasks whose backoff elapsed are queued; (4) each
    workstream with ready work gets its git worktree; (5) pending tasks whose dependencies all
    completed are queued (one set-based UPDATE); (6) workstream states are derived from their
    tasks (SPEC.md section 8), including critical failures and ``max_duration_seconds``; a
    completed workstream's branch is merged and its worktree removed, a failed or cancelled one
    is archived. Claims are made by the workers themselves (``kernel.runtime.claims``), so a
    completing
    worker queues and claims the next task without waiting for a tick.

Integration Points:
    ``kernel.runtime.runner`` (``orch run``) calls ``tick`` in a loop; tests call it with a fixed
    ``now``. Reads the views ``ready_task`` and ``blocked_task``; writes through
    ``kernel.store.machines.transition_in_tx`` so the triggers check every change.

Dependencies:
    apsw, networkx; ``kernel.base.clock``, ``kernel.base.config``, ``kernel.base.errors``,
    ``kernel.base.processes``, ``kernel.definitions.fit``, ``kernel.planning.dag``,
    ``kernel.runtime.actions``, ``kernel.runtime.claims``, ``kernel.runtime.leases``,
    ``kernel.runtime.worktree``, ``kernel.store.db``, ``kernel.store.events``,
    ``kernel.store.machines``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import networkx as nx

from kernel.base import clock
from kernel.base.config import Config
from kernel.base.errors import OrchError
from kernel.base.processes import kill_group, kill_pids, pid_alive, pids_with_env
from kernel.definitions import fit
from kernel.planning import dag
from kernel.runtime import actions, claims, leases
from kernel.store import db, events
from kernel.store.machines import (
    claimed_states,
    in_list_sql,
    states_allowing,
    terminal_sql,
    terminal_states,
    transition_in_tx,
)

LOCK_TTL_SECONDS = 15.0


class SchedulerBusy(OrchError):
    pass


@dataclass
class TickContext:
    root: Path
    config: Config
    workstreams: list[str] | None = None          # scope; None: all
    worktrees: bool = False                        # run workstreams in git worktrees
    hostname: str = field(default_factory=socket.gethostname)
    exited: dict[str, int] = field(default_factory=dict)   # worker_id -> exit code (children)
    alive: Callable[[int], bool] | None = None
    reported_exhaustion: set[str] = field(default_factory=set)
    worktree_failures: dict[str, int] = field(default_factory=dict)
    #: Wait for workers when none is alive (``orch run --workers 0``: they join by hand).
    wait_for_workers: bool = True
    #: The operator stopped the run: workers that end now are not crashes, and their tasks are
    #: put back in the queue (trigger operator_interrupted) instead of failing an attempt.
    interrupted_by_operator: bool = False
    #: task_id -> reason already recorded as a task_unrunnable event in this run.
    reported_unrunnable: dict[str, str] = field(default_factory=dict)

    def backoff(self) -> dict[str, float]:
        return claims.retry_backoff(self.config.workers)


@dataclass
class TickReport:
    queued: int = 0
    requeued: int = 0
    workers_lost: list[str] = field(default_factory=list)
    workstreams: dict[str, str] = field(default_factory=dict)   # ws -> new state
    counts: dict[str, int] = field(default_factory=dict)
    done: bool = False
    unrunnable: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- the lock

def acquire_lock(conn: apsw.Connection, owner: str, now: float,
                 ttl: float = LOCK_TTL_SECONDS) -> None:
    host = socket.gethostname()
    with db.write_tx(conn):
        held = db.row(conn, "SELECT * FROM scheduler_lock WHERE lock_id = 1")
        if held and held["owner"] != owner:
            dead = held["hostname"] == host and not pid_alive(held["pid"])
            if not dead and held["expires_at"] > clock.iso(now):
                raise SchedulerBusy(
                    "scheduler_running",
                    f"another `orch run` owns this database: pid {held['pid']} on "
                    f"{held['hostname']}, since {held['acquired_at']}",
                    hint=f"wait for it to finish or stop it; if it died, its lock expires at "
                         f"{held['expires_at']}. `orch worker` can join it instead",
                    exit_code=1)
        stamp = clock.iso(now)
        conn.execute(
            "INSERT INTO scheduler_lock (lock_id, owner, pid, hostname, acquired_at, renewed_at, "
            "expires_at) VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (lock_id) DO UPDATE SET "
            "owner = excluded.owner, pid = excluded.pid, hostname = excluded.hostname, "
            "acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, "
            "expires_at = excluded.expires_at",
            (owner, os.getpid(), host, stamp, stamp, clock.iso(now + ttl)))
        if held and held["owner"] != owner:
            events.emit_event_in_tx(conn, "scheduler_lock_taken_over", trigger="lock_expired",
                              at=stamp, metadata={"previous": held, "owner": owner})


def renew_lock(conn: apsw.Connection, owner: str, now: float,
               ttl: float = LOCK_TTL_SECONDS) -> bool:
    with db.write_tx(conn):
        conn.execute("UPDATE scheduler_lock SET renewed_at = ?, expires_at = ? "
                     "WHERE lock_id = 1 AND owner = ?",
                     (clock.iso(now), clock.iso(now + ttl), owner))
        return conn.changes() == 1


def release_lock(conn: apsw.Connection, owner: str) -> None:
    with db.write_tx(conn):
        conn.execute("DELETE FROM scheduler_lock WHERE lock_id = 1 AND owner = ?", (owner,))


# ----------------------------------------------------------------------------- planning

def compute_bottom_levels(conn: apsw.Connection, workstreams: list[str] | None = None) -> int:
    """task.bottom_level = its estimated duration plus the longest chain after it."""
    tasks = {t: d for t, d in conn.execute(
        "SELECT task_id, estimated_duration_seconds FROM task WHERE state NOT IN "
        f"{terminal_sql('task')}")}
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(tasks)
    graph.add_edges_from((p, c) for c, p in conn.execute(
        "SELECT task_id, depends_on FROM task_dependency") if p in tasks and c in tasks)
    level = dag.bottom_levels(graph, {t: float(d) for t, d in tasks.items()})
    with db.write_tx(conn):
        conn.executemany("UPDATE task SET bottom_level = ? WHERE task_id = ? "
                         "AND bottom_level IS NOT ?",
                         [(v, k, v) for k, v in level.items()])
    return len(level)


# ----------------------------------------------------------------------------- the tick

def tick(conn: apsw.Connection, now: float, ctx: TickContext) -> TickReport:
    report = TickReport()
    check_workers(conn, now, ctx, report)
    with db.write_tx(conn):
        _release_orphan_leases_in_tx(conn, now)
        report.requeued = claims.requeue_due_in_tx(conn, now)
    prepared = _prepare_worktrees(conn, ctx)
    with db.write_tx(conn):
        report.queued = claims.queue_ready_in_tx(conn, now, workstreams=prepared)
    _derive_workstreams(conn, now, ctx, report)
    _check_exhaustion(conn, now, ctx, report)
    report.counts, report.done, report.unrunnable = progress_counts(conn, ctx)
    _record_unrunnable(conn, now, ctx, report.unrunnable)
    if report.done:
        # The last task may have finished between the derivation and the count (workers
        # commit on their own): derive once more, or the run would end with its workstream
        # still executing. Nothing runs any more, so nothing can change after this one.
        _derive_workstreams(conn, now, ctx, report)
    return report


def _scope_sql(ctx: TickContext, column: str = "workstream_id") -> tuple[str, tuple[Any, ...]]:
    if ctx.workstreams is None:
        return "1", ()
    return f"{column} IN (SELECT value FROM json_each(?))", (json.dumps(ctx.workstreams),)


def check_workers(conn: apsw.Connection, now: float, ctx: TickContext,
                   report: TickReport) -> None:
    w = ctx.config.workers
    alive = ctx.alive or pid_alive
    workers = db.rows(conn, "SELECT * FROM worker WHERE state <> 'shutdown'")
    for wk in workers:
        wid, state = wk["worker_id"], wk["state"]
        code = ctx.exited.get(wid)
        dead = code is not None or (wk["hostname"] == ctx.hostname and wk["pid"] is not None
                                    and not alive(int(wk["pid"])))
        beat = clock.epoch(wk["last_heartbeat_at"] or wk["registered_at"])
        silent = now - beat > wk["heartbeat_interval_seconds"] * w.unresponsive_after_missed
        if dead:
            _lose_worker(conn, now, ctx, wk, "shutdown", "worker_crashed", "Worker-Crashed",
                         f"worker {wid} died" + (f" (exit code {code})" if code is not None
                                                 else " (its process is gone)"),
                         exit_code=code)
            report.workers_lost.append(wid)
        elif state in states_allowing("worker", "health_check_timeout") and silent:
            with db.write_tx(conn):
                transition_in_tx(conn, "worker", wid, "unresponsive", "health_check_timeout",
                                 {"at": clock.iso(now),
                                  "seconds_since_heartbeat": round(now - beat, 3),
                                  "missed_heartbeats": w.unresponsive_after_missed},
                                 expect={"state": state})
        elif state == "unresponsive" and \
                now - clock.epoch(wk["updated_at"]) > w.shutdown_after_unresponsive_seconds:
            if wk["hostname"] == ctx.hostname and wk["pid"]:
                try:
                    os.kill(int(wk["pid"]), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _lose_worker(conn, now, ctx, wk, "shutdown", "max_timeout_exceeded",
                         "Worker-Unresponsive",
                         f"worker {wid} stopped answering for more than "
                         f"{w.shutdown_after_unresponsive_seconds:g} s")
            report.workers_lost.append(wid)


def _lose_worker(conn: apsw.Connection, now: float, ctx: TickContext, wk: dict[str, Any],
                 to_state: str, trigger: str, mode: str, reason: str,
                 exit_code: int | None = None) -> None:
    wid = wk["worker_id"]
    # Kill the orphaned command first: a task must never run twice at the same time.
    for pgid, host in conn.execute(
            "SELECT a.pgid, a.hostname FROM attempt a JOIN task t ON t.task_id = a.task_id "
            "WHERE a.worker_id = ? AND a.finished_at IS NULL AND a.pgid IS NOT NULL "
            f"AND t.state IN {in_list_sql(claimed_states())}", (wid,)).fetchall():
        if host == ctx.hostname and isinstance(pgid, int):
            kill_group(pgid, ctx.config.workers.kill_grace_seconds)
    if wk["hostname"] == ctx.hostname:
        # And whatever its tasks started that left their process group (setsid, a daemon):
        # every task process carries its worker's id in its environment.
        kill_pids(pids_with_env("ORCH_WORKER_ID", wid), ctx.config.workers.kill_grace_seconds)
    stamp = clock.iso(now)
    interrupted = ctx.interrupted_by_operator
    with db.write_tx(conn):
        state = db.scalar(conn, "SELECT state FROM worker WHERE worker_id = ?", (wid,))
        if state == "shutdown":
            return
        task_ids = [r[0] for r in conn.execute(
            "SELECT task_id FROM task WHERE worker_id = ? UNION "
            "SELECT t.task_id FROM task t JOIN attempt a ON a.task_id = t.task_id "
            "AND a.generation = t.generation WHERE t.state = 'validating' "
            "AND a.worker_id = ? AND a.finished_at IS NULL", (wid, wid))]
        worker_meta = {"at": stamp, "reason": reason, "failure_mode": mode,
                       "tasks_handed_on": task_ids, "exit_code": exit_code}
        if interrupted:
            # The operator stopped the run: its tasks go back to the queue, no failure counted.
            for task_id in task_ids:
                claims.hand_on_in_tx(conn, task_id, now, failure_mode=None,
                                     reason="interrupted by the operator (the run was stopped)",
                                     backoff=ctx.backoff(), interrupted=True)
            transition_in_tx(conn, "worker", wid, "shutdown",
                             "shutdown_requested"
                             if state in states_allowing("worker", "shutdown_requested")
                             else trigger,
                             {**worker_meta, "failure_mode": None,
                              "reason": "stopped with its run by the operator"},
                             stopped_at=("sql", "MAX(registered_at, ?)", stamp),
                             exit_code=exit_code)
            return
        # The loss is recorded first, so each hand-on and the worker's shutdown can name it
        # as their cause (a worker may only shut down once its task was handed on).
        lost = events.emit_event_in_tx(
            conn, "worker_lost", entity_id=wid, trigger=trigger, at=stamp,
            metadata={k: v for k, v in worker_meta.items() if k != "at"})
        for task_id in task_ids:
            claims.hand_on_in_tx(conn, task_id, now, failure_mode=mode, reason=reason,
                                 backoff=ctx.backoff(), caused_by=lost)
        transition_in_tx(conn, "worker", wid, to_state, trigger, {**worker_meta, "caused_by": lost},
                         stopped_at=("sql", "MAX(registered_at, ?)", stamp), exit_code=exit_code)


def _release_orphan_leases_in_tx(conn: apsw.Connection, now: float) -> None:
    """Expired leases whose task no longer runs under that generation (defensive)."""
    for lease in leases.expired(conn, now):
        current = conn.execute("SELECT state, generation FROM task WHERE task_id = ?",
                               (lease["task_id"],)).fetchone()
        if current is None or current[0] not in claimed_states() \
                or current[1] != lease["generation"]:
            conn.execute("UPDATE lease SET released_at = MAX(acquired_at, ?), "
                         "release_reason = 'expired' WHERE lease_id = ?",
                         (clock.iso(now), lease["lease_id"]))


def _prepare_worktrees(conn: apsw.Connection, ctx: TickContext) -> list[str] | None:
    """Workstreams whose ready tasks may be queued (their worktree exists, or none is used)."""
    scope, params = _scope_sql(ctx)
    if not ctx.worktrees:
        return ctx.workstreams
    from kernel.runtime import worktree

    ready_scope, ready_params = _scope_sql(ctx, "r.workstream_id")
    ready = [r[0] for r in conn.execute(
        f"SELECT DISTINCT r.workstream_id FROM ready_task r JOIN workstream w "
        f"ON w.workstream_id = r.workstream_id WHERE r.state = 'pending' AND "
        f"w.worktree_path IS NULL AND w.state NOT IN {terminal_sql('workstream')} "
        f"AND {ready_scope}", ready_params)]
    for ws in ready:
        base = db.scalar(conn, "SELECT base_branch FROM workstream WHERE workstream_id = ?",
                         (ws,))
        try:
            wt = worktree.ensure_worktree(ctx.root, ws, base)
        except OrchError as exc:
            # git can fail for a moment (a ref locked by a background `git gc`): log it and
            # try again next tick; give up, stopping the run with git's message, after 5 tries.
            failures = ctx.worktree_failures[ws] = ctx.worktree_failures.get(ws, 0) + 1
            with db.write_tx(conn):
                events.emit_event_in_tx(conn, "worktree_failed", entity_id=ws, workstream_id=ws,
                                  trigger="create_worktree",
                                  metadata={"error": exc.message, "attempt": failures})
            if failures >= 5:
                raise
            continue
        with db.write_tx(conn):
            conn.execute("UPDATE workstream SET worktree_path = ?, branch = ?, base_branch = ? "
                         "WHERE workstream_id = ?", (str(wt.path), wt.branch, wt.base_branch, ws))
    return [r[0] for r in conn.execute(
        f"SELECT workstream_id FROM workstream WHERE worktree_path IS NOT NULL AND {scope}",
        params)]


def _derive_workstreams(conn: apsw.Connection, now: float, ctx: TickContext,
                        report: TickReport) -> None:
    scope, params = _scope_sql(ctx)
    stamp = clock.iso(now)
    counts: dict[str, dict[str, int]] = {}
    for ws, state, n in conn.execute(f"SELECT workstream_id, state, tasks FROM task_state_count "
                                     f"WHERE {scope}", params):
        counts.setdefault(ws, {})[state] = n
    for ws in db.rows(conn, f"SELECT * FROM workstream WHERE state NOT IN "
                            f"{terminal_sql('workstream')} AND {scope}", params):
        wid, state = ws["workstream_id"], ws["state"]
        if state == "validating":  # a run stopped before it merged: finish the merge now
            _finish_workstream(conn, now, ctx, wid, report)
            continue
        c = counts.get(wid, {})
        total = sum(c.values())
        if total == 0:
            continue
        with db.write_tx(conn):
            if state == "planned":
                transition_in_tx(conn, "workstream", wid, "ready", "all_tasks_created",
                                 {"at": stamp})
                state = "ready"
            started = total - c.get("pending", 0) - c.get("queued", 0)
            if state == "ready" and started:
                first = db.scalar(conn, "SELECT MIN(started_at) FROM task "
                                        "WHERE workstream_id = ?", (wid,)) or stamp
                transition_in_tx(conn, "workstream", wid, "executing", "first_task_started",
                                 {"at": stamp, "caused_by": db.scalar(
                                     conn, "SELECT MIN(seq) FROM event WHERE workstream_id = ? "
                                           "AND to_state = 'running' "
                                           "AND event_type = 'task_state_transition'", (wid,))},
                                 started_at=max(first, ws["created_at"]))
                state = "executing"
                report.workstreams[wid] = state
            if state != "executing":
                continue
            verdict = _verdict(conn, wid, ws, c, now)
            if verdict is None:
                continue
            to_state, trigger, meta = verdict
            if to_state == "failed":
                _cancel_unfinished_in_tx(conn, wid, stamp, trigger, meta["reason"])
                transition_in_tx(conn, "workstream", wid, to_state, trigger, {"at": stamp, **meta},
                                 completed_at=stamp)
            else:
                transition_in_tx(conn, "workstream", wid, to_state, trigger, {"at": stamp, **meta})
            report.workstreams[wid] = to_state
        if report.workstreams.get(wid) == "validating":
            _finish_workstream(conn, now, ctx, wid, report)
        elif report.workstreams.get(wid) == "failed":
            archive_workstream(conn, ctx.root, wid)


def _last_event(conn: apsw.Connection, wid: str, states: tuple[str, ...],
                where: str = "1", params: tuple[Any, ...] = ()) -> int | None:
    """The seq of the newest task event of ``wid`` into one of ``states`` (for caused_by)."""
    found = db.scalar(
        conn, f"SELECT MAX(e.seq) FROM event e JOIN task t ON t.task_id = e.task_id "
              f"WHERE e.workstream_id = ? AND e.event_type = 'task_state_transition' "
              f"AND e.to_state IN (SELECT value FROM json_each(?)) AND {where}",
        (wid, json.dumps(states), *params))
    return None if found is None else int(found)


def _verdict(conn: apsw.Connection, wid: str, ws: dict[str, Any], c: dict[str, int],
             now: float) -> tuple[str, str, dict[str, Any]] | None:
    """The workstream's next state from its tasks (SPEC.md section 8), or None to stay
    executing. A critical failure halts the workstream (``open_workstream`` no longer lists
    it): nothing more is queued or claimed, running tasks finish, then it fails."""
    total = sum(c.values())
    if c.get("completed", 0) == total:
        return "validating", "all_tasks_completed", {
            "caused_by": _last_event(conn, wid, ("completed",))}
    limit = ws["max_duration_seconds"]
    if limit and ws["started_at"] and now - clock.epoch(ws["started_at"]) > limit:
        return "failed", "workstream_timeout", {
            "failure_mode": "Workstream-Timeout",
            "reason": f"running longer than max_duration_seconds ({limit:g} s)"}
    running = sum(c.get(s, 0) for s in claimed_states())
    critical = db.scalar(conn, "SELECT group_concat(task_id, ', ') FROM task WHERE "
                               "workstream_id = ? AND critical = 1 AND state = 'failed'", (wid,))
    if critical:
        if running:
            return None   # halted: the running tasks finish first
        return "failed", "critical_task_failed", {
            "failure_mode": "Workstream-Failed", "reason": f"critical task {critical} failed",
            "caused_by": _last_event(conn, wid, ("failed",), "t.critical = 1")}
    active = running + c.get("retrying", 0) + c.get("queued", 0)
    ready = db.scalar(conn, "SELECT COUNT(*) FROM queueable_task WHERE workstream_id = ?",
                      (wid,))
    ended = _ended_uncompleted()
    failed = sum(c.get(s, 0) for s in ended)
    if active == 0 and not ready and failed:
        bad = db.scalar(conn, "SELECT group_concat(task_id || ' (' || state || ')', ', ') "
                              f"FROM task WHERE workstream_id = ? AND state IN "
                              f"{in_list_sql(ended)}", (wid,))
        return "failed", "tasks_not_completed", {
            "failure_mode": "Workstream-Failed",
            "reason": f"nothing more can run: {bad} did not complete",
            "caused_by": _last_event(conn, wid, ended)}
    return None


def _ended_uncompleted() -> tuple[str, ...]:
    """The terminal task states other than completed (failed, cancelled)."""
    return tuple(s for s in terminal_states("task") if s != "completed")


def _cancel_unfinished_in_tx(conn: apsw.Connection, wid: str, stamp: str, ws_trigger: str,
                             reason: str) -> None:
    """Cancel what a failed workstream stops, by the trigger that failed it (the task machine
    says which states each trigger cancels): a critical failure cancels only what waits to run
    again (running tasks finished before it failed; pending ones wait for `orch retry`); a
    timeout cancels everything unfinished, running tasks included (their workers see the claim
    is gone and kill the process group)."""
    task_trigger = "workstream_timeout" if ws_trigger == "workstream_timeout" \
        else "workstream_failed"
    states = states_allowing("task", task_trigger, "cancelled")
    for (task_id,) in conn.execute(
            "SELECT task_id FROM task WHERE workstream_id = ? AND state IN "
            "(SELECT value FROM json_each(?)) ORDER BY task_id",
            (wid, json.dumps(states))).fetchall():
        actions.cancel_task_in_tx(
            conn, str(task_id), stamp, trigger=task_trigger,
            metadata={"at": stamp, "reason": f"workstream {wid} failed: {reason}"},
            last_error=f"cancelled: workstream {wid} failed: {reason}")


def _finish_workstream(conn: apsw.Connection, now: float, ctx: TickContext, wid: str,
                       report: TickReport) -> None:
    ws = db.row(conn, "SELECT * FROM workstream WHERE workstream_id = ?", (wid,))
    assert ws is not None
    meta: dict[str, Any] = {}
    ok, message = True, "no worktree: ran in place"
    if ws["worktree_path"]:
        from kernel.runtime import worktree

        wt = worktree.Worktree(wid, Path(ws["worktree_path"]), ws["branch"], ws["base_branch"])
        try:
            result = worktree.merge_and_remove(ctx.root, wt)
            ok, message = result.merged, result.message
            meta["merge_commit"] = result.commit
        except OrchError as exc:
            ok, message = False, exc.message
    stamp = clock.iso(now)
    with db.write_tx(conn):
        if ok:
            transition_in_tx(conn, "workstream", wid, "completed", "validation_passed",
                             {"at": stamp, "merge": message, **meta}, completed_at=stamp,
                             worktree_path=None if ws["worktree_path"] else ws["worktree_path"])
        else:
            transition_in_tx(conn, "workstream", wid, "failed", "validation_failed",
                             {"at": stamp, "failure_mode": "Workstream-Failed",
                              "reason": f"merge failed: {message}"}, completed_at=stamp)
    report.workstreams[wid] = "completed" if ok else "failed"
    archive_workstream(conn, ctx.root, wid)


def archive_workstream(conn: apsw.Connection, root: Path, wid: str) -> None:
    """Write the workstream's final state to ``.state/archive/{ws}/`` (failed, cancelled or
    completed workstreams; the worktree of a failed or cancelled one is kept)."""
    from kernel.runtime import worktree

    doc = {
        "workstream": db.row(conn, "SELECT workstream_id, state, base_branch, branch, "
                                   "worktree_path, started_at, completed_at FROM workstream "
                                   "WHERE workstream_id = ?", (wid,)),
        "tasks": db.rows(conn, "SELECT task_id, state, retry_count, failure_mode, last_error, "
                               "started_at, completed_at FROM task WHERE workstream_id = ? "
                               "ORDER BY task_id", (wid,)),
        "archived_at": clock.now_iso(),
    }
    worktree.archive_state(root, wid, doc)


def _check_exhaustion(conn: apsw.Connection, now: float, ctx: TickContext,
                      report: TickReport) -> None:
    queued = [r[0] for r in conn.execute("SELECT task_id FROM task WHERE state = 'queued'")]
    if not queued:
        return
    for req in fit.impossible_requests(conn, queued):
        key = f"{req['task_id']}:{req['resource_id']}"
        if key in ctx.reported_exhaustion:
            continue
        ctx.reported_exhaustion.add(key)
        seen = db.scalar(conn, "SELECT 1 FROM event WHERE event = 'resource_exhausted' AND "
                               "task_id = ? AND json_extract(metadata, '$.resource_id') = ?",
                         (req["task_id"], req["resource_id"]))
        if seen:
            continue
        ws = db.scalar(conn, "SELECT workstream_id FROM task WHERE task_id = ?",
                       (req["task_id"],))
        with db.write_tx(conn):
            events.emit_event_in_tx(conn, "resource_exhausted", entity_id=req["resource_id"],
                              task_id=req["task_id"], workstream_id=ws,
                              trigger="lease_impossible", at=clock.iso(now),
                              metadata={"resource_id": req["resource_id"],
                                        "requested": req["requested"],
                                        "available": req["available"],
                                        "failure_mode": "Resource-Exhaustion"})


def _record_unrunnable(conn: apsw.Connection, now: float, ctx: TickContext,
                       found: list[dict[str, Any]]) -> None:
    """A ``task_unrunnable`` event per task (and reason) that no worker can run, once: so the
    log says why it stalled, and ``orch why`` can say it after the workers are gone."""
    new = [u for u in found if ctx.reported_unrunnable.get(u["task_id"]) != u["reason"]]
    if not new:
        return
    with db.write_tx(conn):
        for u in new:
            ctx.reported_unrunnable[u["task_id"]] = u["reason"]
            last = db.row(conn, "SELECT event, metadata FROM event WHERE task_id = ? "
                                "ORDER BY seq DESC LIMIT 1", (u["task_id"],))
            if last and last["event"] == "task_unrunnable" and \
                    json.loads(last["metadata"]).get("reason") == u["reason"]:
                continue
            ws = db.scalar(conn, "SELECT workstream_id FROM task WHERE task_id = ?",
                           (u["task_id"],))
            events.emit_event_in_tx(conn, "task_unrunnable", entity_id=u["task_id"],
                              task_id=u["task_id"], workstream_id=ws, trigger="no_capable_worker",
                              at=clock.iso(now), metadata={"reason": u["reason"]},
                              caused_by=events.last_seq_in_tx(conn, task_id=u["task_id"]))


def progress_counts(conn: apsw.Connection, ctx: TickContext
              ) -> tuple[dict[str, int], bool, list[dict[str, Any]]]:
    scope, params = _scope_sql(ctx)
    counts = {s: n for s, n in conn.execute(
        f"SELECT state, SUM(tasks) FROM task_state_count WHERE {scope} GROUP BY state", params)}
    busy = sum(counts.get(s, 0) for s in claimed_states())
    # Retrying tasks will be queued again, unless their workstream halted (a critical failure):
    # then the workstream fails once nothing runs, and cancels them.
    busy += db.scalar(conn, f"SELECT COUNT(*) FROM task WHERE state = 'retrying' AND {scope} "
                            f"AND workstream_id IN (SELECT workstream_id FROM open_workstream)",
                      params) or 0
    ready_pending = db.scalar(conn, f"SELECT COUNT(*) FROM queueable_task WHERE {scope}",
                              params)
    unrunnable: list[dict[str, Any]] = []
    if counts.get("queued"):
        queued = [r[0] for r in conn.execute(f"SELECT task_id FROM task WHERE state = 'queued' "
                                             f"AND {scope}", params)]
        unrunnable = fit.unrunnable(
            conn, queued, no_workers_reason=None if ctx.wait_for_workers
            else "no live worker is left to run it")
    runnable_queued = counts.get("queued", 0) - len(unrunnable)
    done = busy == 0 and not ready_pending and runnable_queued <= 0
    return counts, done, unrunnable
