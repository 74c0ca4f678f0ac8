"""Workstreams in a tick: their git worktrees, their states derived from their tasks, the merge
of a completed one and the archive of an ended one.

Public API:
    ``prepare_worktrees(conn, ctx) -> list[str] | None`` (the workstreams whose ready tasks
    may be queued); ``derive_workstreams(conn, now, ctx, report)``;
    ``archive_workstream(conn, root, workstream_id)``.

Stability Guarantees:
    A workstream's state follows its tasks (SPEC.md section 8): planned → ready once it has
    tasks, → executing once one started, → validating when every task completed (then its
    branch is merged and its worktree removed: completed, or failed when the merge cannot be
    made), → failed on ``max_duration_seconds`` (every unfinished task is cancelled), on a
    failed critical task once nothing of it runs, or when nothing more can run and some task
    did not complete (queued and retrying tasks are cancelled). A failed, cancelled or
    completed workstream is archived in ``.state/archive/{ws}/`` (a document with
    ``schema_version`` and ``schema_url``: schemas/workstream-archive.schema.json). Creating a
    worktree is tried again each tick after a git failure (a ``worktree_failed`` event); the
    fifth failure stops the run with git's message.

Integration Points:
    ``kernel.runtime.scheduler.tick`` runs these; ``orch cancel --workstream`` archives with
    ``archive_workstream``. Worktrees are ``kernel.runtime.worktree``; the tasks of a failed
    workstream are cancelled with ``kernel.runtime.actions.cancel_task_in_tx``.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.observe.documents``,
    ``kernel.runtime.actions``, ``kernel.runtime.context``, ``kernel.runtime.worktree``,
    ``kernel.store.db``, ``kernel.store.events``, ``kernel.store.machines``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import OrchError
from kernel.observe.documents import WORKSTREAM_ARCHIVE_SCHEMA, header
from kernel.runtime import actions, worktree
from kernel.runtime.context import TickContext, TickReport, scope_sql
from kernel.store import db, events
from kernel.store.machines import (
    claimed_states,
    in_list_sql,
    states_allowing,
    terminal_sql,
    terminal_states,
    transition_in_tx,
)

#: Failures to create a workstream's worktree before the run stops.
WORKTREE_ATTEMPTS = 5


# --------------------------------------------------------------------------- worktrees

def prepare_worktrees(conn: apsw.Connection, ctx: TickContext) -> list[str] | None:
    """Workstreams whose ready tasks may be queued (their worktree exists, or none is used)."""
    scope, params = scope_sql(ctx)
    if not ctx.worktrees:
        return ctx.workstreams
    ready_scope, ready_params = scope_sql(ctx, "r.workstream_id")
    ready = [r[0] for r in conn.execute(
        f"SELECT DISTINCT r.workstream_id FROM ready_task r JOIN workstream w "
        f"ON w.workstream_id = r.workstream_id WHERE r.state = 'pending' AND "
        f"w.worktree_path IS NULL AND w.state NOT IN {terminal_sql('workstream')} "
        f"AND {ready_scope}", ready_params)]
    for ws in ready:
        _make_worktree(conn, ctx, ws)
    return [r[0] for r in conn.execute(
        f"SELECT workstream_id FROM workstream WHERE worktree_path IS NOT NULL AND {scope}",
        params)]


def _make_worktree(conn: apsw.Connection, ctx: TickContext, ws: str) -> None:
    base = db.scalar(conn, "SELECT base_branch FROM workstream WHERE workstream_id = ?", (ws,))
    try:
        wt = worktree.ensure_worktree(ctx.root, ws, base)
    except OrchError as exc:
        # git can fail for a moment (a ref locked by a background `git gc`): log it and try
        # again next tick; give up, stopping the run with git's message, after 5 tries.
        failures = ctx.worktree_failures[ws] = ctx.worktree_failures.get(ws, 0) + 1
        with db.write_tx(conn):
            events.emit_event_in_tx(conn, "worktree_failed", entity_id=ws, workstream_id=ws,
                                    trigger="create_worktree",
                                    metadata={"error": exc.message, "attempt": failures})
        if failures >= WORKTREE_ATTEMPTS:
            raise
        return
    with db.write_tx(conn):
        conn.execute("UPDATE workstream SET worktree_path = ?, branch = ?, base_branch = ? "
                     "WHERE workstream_id = ?", (str(wt.path), wt.branch, wt.base_branch, ws))


# --------------------------------------------------------------------------- states

def derive_workstreams(conn: apsw.Connection, now: float, ctx: TickContext,
                       report: TickReport) -> None:
    """Move every unfinished workstream in scope as far as its tasks allow."""
    scope, params = scope_sql(ctx)
    counts: dict[str, dict[str, int]] = {}
    for ws, state, n in conn.execute(f"SELECT workstream_id, state, tasks FROM task_state_count "
                                     f"WHERE {scope}", params):
        counts.setdefault(ws, {})[state] = n
    for ws in db.rows(conn, f"SELECT * FROM workstream WHERE state NOT IN "
                            f"{terminal_sql('workstream')} AND {scope}", params):
        wid = ws["workstream_id"]
        if ws["state"] == "validating":  # a run stopped before it merged: finish it now
            _finish_workstream(conn, now, ctx, wid, report)
            continue
        c = counts.get(wid, {})
        if sum(c.values()) == 0:
            continue
        with db.write_tx(conn):
            moved = _advance_in_tx(conn, now, ws, c, report)
        if moved == "validating":
            _finish_workstream(conn, now, ctx, wid, report)
        elif moved == "failed":
            archive_workstream(conn, ctx.root, wid)


def _advance_in_tx(conn: apsw.Connection, now: float, ws: dict[str, Any], c: dict[str, int],
                   report: TickReport) -> str | None:
    """planned → ready → executing → validating or failed, as far as the task counts ``c``
    allow; the state the verdict moved it to, else None."""
    wid, state, stamp = ws["workstream_id"], ws["state"], clock.iso(now)
    if state == "planned":
        transition_in_tx(conn, "workstream", wid, "ready", "all_tasks_created", {"at": stamp})
        state = "ready"
    started = sum(c.values()) - c.get("pending", 0) - c.get("queued", 0)
    if state == "ready" and started:
        _start_in_tx(conn, ws, stamp)
        state = report.workstreams[wid] = "executing"
    if state != "executing":
        return None
    verdict = _verdict(conn, wid, ws, c, now)
    if verdict is None:
        return None
    to_state, trigger, meta = verdict
    if to_state == "failed":
        _cancel_unfinished_in_tx(conn, wid, stamp, trigger, meta["reason"])
        transition_in_tx(conn, "workstream", wid, to_state, trigger, {"at": stamp, **meta},
                         completed_at=stamp)
    else:
        transition_in_tx(conn, "workstream", wid, to_state, trigger, {"at": stamp, **meta})
    report.workstreams[wid] = to_state
    return to_state


def _start_in_tx(conn: apsw.Connection, ws: dict[str, Any], stamp: str) -> None:
    """ready → executing, started when its first task started, caused by that start."""
    wid = ws["workstream_id"]
    first = db.scalar(conn, "SELECT MIN(started_at) FROM task WHERE workstream_id = ?",
                      (wid,)) or stamp
    caused_by = db.scalar(conn, "SELECT MIN(seq) FROM event WHERE workstream_id = ? "
                                "AND to_state = 'running' "
                                "AND event_type = 'task_state_transition'", (wid,))
    transition_in_tx(conn, "workstream", wid, "executing", "first_task_started",
                     {"at": stamp, "caused_by": caused_by},
                     started_at=max(first, ws["created_at"]))


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


# --------------------------------------------------------------------------- the end

def _finish_workstream(conn: apsw.Connection, now: float, ctx: TickContext, wid: str,
                       report: TickReport) -> None:
    """validating → completed once its branch is merged (or it ran in place), else failed."""
    ws = db.row(conn, "SELECT * FROM workstream WHERE workstream_id = ?", (wid,))
    assert ws is not None
    meta: dict[str, Any] = {}
    ok, message = True, "no worktree: ran in place"
    if ws["worktree_path"]:
        wt = worktree.Worktree(wid, Path(ws["worktree_path"]), ws["branch"], ws["base_branch"])
        try:
            result = worktree.merge_and_remove(ctx.root, wt)
            ok, message = result.merged, result.message
            meta["merge_commit"] = result.commit
        except OrchError as exc:
            ok, message = False, exc.message
    with db.write_tx(conn):
        # Stamped under the write lock, after the merge: never before a started_at another
        # process committed while the merge ran (workstream_timestamps_ordered).
        stamp = clock.iso(max(now, time.time()))
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
    doc = {
        **header(*WORKSTREAM_ARCHIVE_SCHEMA),
        "workstream": db.row(conn, "SELECT workstream_id, state, base_branch, branch, "
                                   "worktree_path, started_at, completed_at FROM workstream "
                                   "WHERE workstream_id = ?", (wid,)),
        "tasks": db.rows(conn, "SELECT task_id, state, retry_count, failure_mode, last_error, "
                               "started_at, completed_at FROM task WHERE workstream_id = ? "
                               "ORDER BY task_id", (wid,)),
        "archived_at": clock.now_iso(),
    }
    worktree.archive_state(root, wid, doc)
