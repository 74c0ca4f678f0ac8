"""The scheduler: ``tick(conn, now, ctx)`` moves everything that time or other processes made due.

Public API:
    ``tick(conn, now, ctx) -> TickReport``; ``TickContext``, ``TickReport`` (from
    ``kernel.runtime.context``); ``compute_bottom_levels(conn, workstreams=None) -> int``;
    ``warn_deprecated_capabilities(conn, workstreams=None) -> list[dict]`` (at the start of a
    run: one ``capability_deprecated_in_use`` event per deprecated capability in use);
    ``progress_counts(conn, ctx) -> (counts, done, unrunnable)``.

Stability Guarantees:
    One tick, in order: (1) worker health (``kernel.runtime.health``) — a dead worker process
    is ``worker_crashed``, a silent one ``unresponsive`` after ``unresponsive_after_missed``
    heartbeats and shut down after ``shutdown_after_unresponsive_seconds``; the task of a lost
    worker has its orphaned process group killed and is handed on (``worker_lost``); (2)
    expired leases of tasks that no longer run are released; (3) retrying tasks whose backoff
    elapsed are queued; (4) each workstream with ready work gets its git worktree; (5) pending
    tasks whose dependencies all completed are queued (one set-based UPDATE); (6) workstream
    states are derived from their tasks (``kernel.runtime.workstreams``, SPEC.md section 8),
    including critical failures and ``max_duration_seconds``; a completed workstream's branch
    is merged and its worktree removed, a failed or cancelled one is archived; (7) the
    counts, and only when nothing runs, the O(queued) scan for tasks no worker can run (with
    the resource requests no pool can grant). Claims are not the tick's: the kernel's group
    commit (``kernel.runtime.dispatch``) or a worker on its own (``kernel.runtime.claims``)
    makes them, and the transaction that completes a task queues its dependents and claims
    the next task without waiting for a tick. ``bottom_level`` (the critical-path rank
    claims are ordered by) is ``kernel.planning.dag.bottom_levels``.

Integration Points:
    ``kernel.runtime.runner`` (``orch run``) calls ``tick`` in a loop, after taking the
    scheduler lock (``kernel.runtime.lock``); tests call it with a fixed ``now``. Reads the
    views ``ready_task`` and ``queueable_task``; writes through
    ``kernel.store.machines.transition_in_tx`` so the triggers check every change.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.definitions.fit``, ``kernel.planning.dag``,
    ``kernel.planning.plan``, ``kernel.runtime.attempts``, ``kernel.runtime.context``,
    ``kernel.runtime.health``, ``kernel.runtime.leases``, ``kernel.runtime.workstreams``,
    ``kernel.store.db``, ``kernel.store.events``, ``kernel.store.machines``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import apsw

from kernel.base import clock
from kernel.definitions import fit
from kernel.planning import dag
from kernel.planning.plan import unfinished_graph
from kernel.runtime import attempts, leases
from kernel.runtime.context import TickContext, TickReport, scope_sql
from kernel.runtime.health import check_workers
from kernel.runtime.workstreams import derive_workstreams, prepare_worktrees
from kernel.store import db, events
from kernel.store.machines import claimed_states

__all__ = ["TickContext", "TickReport", "compute_bottom_levels", "progress_counts", "tick",
           "warn_deprecated_capabilities"]


def tick(conn: apsw.Connection, now: float, ctx: TickContext) -> TickReport:
    report = TickReport()
    check_workers(conn, now, ctx, report)
    with db.write_tx(conn):
        _release_orphan_leases_in_tx(conn, now)
        report.requeued = attempts.requeue_due_in_tx(conn, now)
    prepared = prepare_worktrees(conn, ctx)
    with db.write_tx(conn):
        report.queued = attempts.queue_ready_in_tx(conn, now, workstreams=prepared)
    derive_workstreams(conn, now, ctx, report)
    scanned = ctx.queue_scanned_at
    report.counts, report.done, report.unrunnable = progress_counts(conn, ctx)
    if ctx.queue_scanned_at != scanned:   # the queue was scanned in this tick
        _check_exhaustion(conn, now, ctx, report)
    _record_unrunnable(conn, now, ctx, report.unrunnable)
    if report.done:
        # The last task may have finished between the derivation and the count (workers
        # commit on their own): derive once more, or the run would end with its workstream
        # still executing. Nothing runs any more, so nothing can change after this one.
        derive_workstreams(conn, now, ctx, report)
    return report


def compute_bottom_levels(conn: apsw.Connection, workstreams: list[str] | None = None) -> int:
    """task.bottom_level = its estimated duration plus the longest chain after it, for every
    unfinished task (``dag.bottom_levels``); the number of tasks ranked."""
    graph, durations = unfinished_graph(conn)
    level = dag.bottom_levels(graph, durations)
    with db.write_tx(conn):
        conn.executemany("UPDATE task SET bottom_level = ? WHERE task_id = ? "
                         "AND bottom_level IS NOT ?",
                         [(v, k, v) for k, v in level.items()])
    return len(level)


_DEPRECATED_IN_USE = """
SELECT c.capability_id, c.deprecated_by, json_group_array(t.task_id) AS tasks
  FROM capability c
  JOIN task_capability tc ON tc.capability_id = c.capability_id
  JOIN task t ON t.task_id = tc.task_id
  JOIN machine_state ms ON ms.machine = 'task' AND ms.state = t.state AND ms.terminal = 0
 WHERE c.stability = 'deprecated'
   AND (? IS NULL OR t.workstream_id IN (SELECT value FROM json_each(?)))
 GROUP BY c.capability_id
 ORDER BY c.capability_id
"""


def warn_deprecated_capabilities(conn: apsw.Connection,
                                 workstreams: list[str] | None = None) -> list[dict[str, Any]]:
    """One ``capability_deprecated_in_use`` event per deprecated capability that an unfinished
    task (of ``workstreams``, default all) needs; the findings, for the caller to print."""
    scope = json.dumps(workstreams) if workstreams else None
    with db.write_tx(conn):
        found = db.rows(conn, _DEPRECATED_IN_USE, (scope, scope))
        for row in found:
            row["tasks"] = sorted(json.loads(row["tasks"]))
            events.emit_event_in_tx(conn, "capability_deprecated_in_use",
                                    entity_id=row["capability_id"], metadata=row)
    return found


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
                                    task_id=u["task_id"], workstream_id=ws,
                                    trigger="no_capable_worker", at=clock.iso(now),
                                    metadata={"reason": u["reason"]},
                                    caused_by=events.last_seq_in_tx(conn, task_id=u["task_id"]))


def _scan_queue(conn: apsw.Connection, ctx: TickContext, scope: str, params: tuple[Any, ...],
                busy: int) -> list[dict[str, Any]]:
    """``fit.unrunnable`` over the queued tasks in scope. The scan is O(queued) and only
    decides whether the run is stalled, so it is made only when nothing runs (``busy`` is 0)
    or never was; while tasks run, the last scan's result stands: a task no worker can run is
    reported (``task_unrunnable``) once the run has nothing else to do, and at its end."""
    now = time.monotonic()
    if ctx.workers_starting:
        return []
    if busy and ctx.queue_scanned_at is not None:
        return ctx.last_unrunnable
    queued = [r[0] for r in conn.execute(f"SELECT task_id FROM task WHERE state = 'queued' "
                                         f"AND {scope}", params)]
    ctx.last_unrunnable = fit.unrunnable(
        conn, queued, no_workers_reason=None if ctx.wait_for_workers
        else "no live worker is left to run it")
    ctx.queue_scanned_at = now
    return ctx.last_unrunnable


def progress_counts(conn: apsw.Connection, ctx: TickContext
                    ) -> tuple[dict[str, int], bool, list[dict[str, Any]]]:
    """Task counts by state in the run's scope, whether nothing more can happen (done), and
    the queued tasks no worker can ever run."""
    scope, params = scope_sql(ctx)
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
        unrunnable = _scan_queue(conn, ctx, scope, params, busy)
    runnable_queued = counts.get("queued", 0) - len(unrunnable)
    done = busy == 0 and not ready_pending and runnable_queued <= 0
    return counts, done, unrunnable
