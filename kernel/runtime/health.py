"""Worker health, the first phase of a tick: dead and silent workers, and the tasks they held.

Public API:
    ``check_workers(conn, now, ctx, report)`` (the phase alone: ``orch run`` also calls it for
    a last look at its workers when it stops); ``lose_worker_in_tx(conn, now, ctx, worker_id,
    to_state, trigger, mode, reason, exit_code)`` (a lost worker's tasks handed on, the one
    way; a proxy worker whose Dask worker left the cluster calls it for itself).

Stability Guarantees:
    A dead worker process (an exit code the run saw, or its pid gone on this host) is shut down
    with ``worker_crashed``; a worker silent for ``unresponsive_after_missed`` heartbeats goes
    ``unresponsive``, and is killed and shut down (``max_timeout_exceeded``) after
    ``shutdown_after_unresponsive_seconds``. Before a lost worker's tasks are handed on
    (``worker_lost``, the attempt counts), their process groups, and every process carrying the
    worker's id in its environment, are killed: a task never runs twice at the same time. When
    the operator stopped the run (``ctx.interrupted_by_operator``) its tasks go back to the
    queue (``operator_interrupted``) and no failure is counted.

Integration Points:
    ``kernel.runtime.scheduler.tick`` runs it first; ``kernel.runtime.runner`` once more at
    tear-down. Hands tasks on with ``kernel.runtime.attempts.hand_on_in_tx``.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.processes``, ``kernel.runtime.attempts``,
    ``kernel.runtime.context``, ``kernel.store.db``, ``kernel.store.events``,
    ``kernel.store.machines``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.processes import kill_group, kill_pids, pid_alive, pids_with_env
from kernel.runtime import attempts
from kernel.runtime.context import TickContext, TickReport
from kernel.store import db, events
from kernel.store.machines import (
    claimed_states,
    in_list_sql,
    states_allowing,
    terminal_sql,
    terminal_states,
    transition_in_tx,
)


def check_workers(conn: apsw.Connection, now: float, ctx: TickContext,
                  report: TickReport) -> None:
    w = ctx.config.workers
    alive = ctx.alive or pid_alive
    workers = db.rows(conn, f"SELECT * FROM worker WHERE state NOT IN {terminal_sql('worker')}")
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
    # Kill the orphaned command first: a task must never run twice at the same time.
    _kill_what_it_ran(conn, ctx, wk)
    with db.write_tx(conn):
        lose_worker_in_tx(conn, now, ctx, wk["worker_id"], to_state, trigger, mode, reason,
                           exit_code)


def _kill_what_it_ran(conn: apsw.Connection, ctx: TickContext, wk: dict[str, Any]) -> None:
    """The process groups of the worker's open attempts on this host, and whatever its tasks
    started that left their group (setsid, a daemon): every task process carries its worker's
    id in its environment."""
    wid = wk["worker_id"]
    for pgid, host in conn.execute(
            "SELECT a.pgid, a.hostname FROM attempt a JOIN task t ON t.task_id = a.task_id "
            "WHERE a.worker_id = ? AND a.finished_at IS NULL AND a.pgid IS NOT NULL "
            f"AND t.state IN {in_list_sql(claimed_states())}", (wid,)).fetchall():
        if host == ctx.hostname and isinstance(pgid, int):
            kill_group(pgid, ctx.config.workers.kill_grace_seconds)
    if wk["hostname"] == ctx.hostname:
        kill_pids(pids_with_env("ORCH_WORKER_ID", wid), ctx.config.workers.kill_grace_seconds)


def lose_worker_in_tx(conn: apsw.Connection, now: float, ctx: TickContext, wid: str,
                       to_state: str, trigger: str, mode: str, reason: str,
                       exit_code: int | None) -> None:
    stamp = clock.iso(now)
    state = db.scalar(conn, "SELECT state FROM worker WHERE worker_id = ?", (wid,))
    if state in terminal_states("worker"):
        return
    task_ids = [r[0] for r in conn.execute(
        "SELECT task_id FROM task WHERE worker_id = ? UNION "
        "SELECT t.task_id FROM task t JOIN attempt a ON a.task_id = t.task_id "
        "AND a.generation = t.generation WHERE t.state = 'validating' "
        "AND a.worker_id = ? AND a.finished_at IS NULL", (wid, wid))]
    worker_meta = {"at": stamp, "reason": reason, "failure_mode": mode,
                   "tasks_handed_on": task_ids, "exit_code": exit_code}
    if ctx.interrupted_by_operator:
        # The operator stopped the run: its tasks go back to the queue, no failure counted.
        for task_id in task_ids:
            attempts.hand_on_in_tx(conn, task_id, now, failure_mode=None,
                                   reason="interrupted by the operator (the run was stopped)",
                                   backoff=ctx.backoff(), interrupted=True)
        stopped = "shutdown_requested" \
            if state in states_allowing("worker", "shutdown_requested") else trigger
        transition_in_tx(conn, "worker", wid, "shutdown", stopped,
                         {**worker_meta, "failure_mode": None,
                          "reason": "stopped with its run by the operator"},
                         stopped_at=("sql", "MAX(registered_at, ?)", stamp),
                         exit_code=exit_code)
        return
    # The loss is recorded first, so each hand-on and the worker's shutdown can name it as
    # their cause (a worker may only shut down once its task was handed on).
    lost = events.emit_event_in_tx(
        conn, "worker_lost", entity_id=wid, trigger=trigger, at=stamp,
        metadata={k: v for k, v in worker_meta.items() if k != "at"})
    for task_id in task_ids:
        attempts.hand_on_in_tx(conn, task_id, now, failure_mode=mode, reason=reason,
                               backoff=ctx.backoff(), caused_by=lost)
    transition_in_tx(conn, "worker", wid, to_state, trigger, {**worker_meta, "caused_by": lost},
                     stopped_at=("sql", "MAX(registered_at, ?)", stamp), exit_code=exit_code)
