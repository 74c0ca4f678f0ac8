"""Operator actions on tasks and workstreams: cancel, retry, skip.

Public API:
    ``cancel_tasks(conn, task_ids, *, now=None, reason="user") -> OperatorReport``;
    ``cancel_workstream(conn, workstream_id, *, now=None) -> OperatorReport``;
    ``retry_tasks(conn, task_ids, *, now=None) -> OperatorReport``;
    ``skip_tasks(conn, task_ids, *, now=None) -> OperatorReport``;
    ``OperatorReport`` (``changed``, ``skipped``, ``workstreams_changed``,
    ``workstreams_skipped``, ``as_dict()``); ``cancel_task_in_tx(conn, task_id, stamp, *,
    trigger, metadata, last_error, attempt_error=None)`` (the one cancel of a task, the
    operator's and a failed workstream's, inside the caller's write transaction).

Stability Guarantees:
    Each call is one short ``BEGIN IMMEDIATE`` transaction (safe while ``orch run`` runs in
    another process): every id is checked first and an unknown one raises ``OrchError`` with
    code ``unknown_task`` (or ``unknown_workstream``), exit 1, before anything changes. A task
    already in a state the action does not apply to is reported in ``skipped`` with a reason,
    never an error. Every change goes through ``kernel.store.machines.transition_in_tx`` with
    metadata ``{"at", "operator", ...}``, so its event records when and who.

Integration Points:
    ``orch cancel | retry | skip`` (``kernel.cli.operator``); the scheduler cancels the tasks of
    a failed workstream with ``cancel_task_in_tx``. A worker notices a cancelled
    running task by polling its state and kills the process group; leases are released by SQL
    triggers on entering pending / completed / failed / cancelled (not here).

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.identity``,
    ``kernel.store.db``, ``kernel.store.machines``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import OrchError
from kernel.base.identity import operator_name
from kernel.store import db
from kernel.store.machines import (
    CANCELLED_ERROR,
    in_list_sql,
    states_allowing,
    terminal_sql,
    terminal_states,
    transition_in_tx,
)


@dataclass
class OperatorReport:
    """What an operator action did: ``changed`` tasks ({task_id, from_state, to_state}),
    ``skipped`` tasks ({task_id, state, reason}), and the same for workstreams."""

    changed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    workstreams_changed: list[dict[str, Any]] = field(default_factory=list)
    workstreams_skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stamp(now: datetime | float | str | None) -> str:
    """``now`` as the kernel writes time; a string is taken as already formatted."""
    return now if isinstance(now, str) else clock.iso(now)


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _task_states(conn: apsw.Connection, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """{task_id: {state, workstream_id}} for every id; raises unknown_task naming the missing."""
    found: dict[str, dict[str, Any]] = {}
    for task_id in task_ids:
        got = db.row(conn, "SELECT task_id, state, workstream_id FROM task WHERE task_id = ?",
                     (task_id,))
        if got is not None:
            found[task_id] = got
    missing = [t for t in task_ids if t not in found]
    if missing:
        label = "task" if len(missing) == 1 else "tasks"
        raise OrchError(
            "unknown_task",
            f"unknown {label}: {', '.join(missing)} (nothing was changed)",
            hint="`orch status` lists the tasks of this project",
        )
    return found


def _retryable() -> tuple[str, ...]:
    """The task states `orch retry` resets to pending (failed, cancelled)."""
    return states_allowing("task", "operator_reset", "pending")


def _metadata(stamp: str, **extra: Any) -> dict[str, Any]:
    return {"at": stamp, "operator": operator_name(), **extra}


def cancel_task_in_tx(conn: apsw.Connection, task_id: str, stamp: str, *, trigger: str,
                      metadata: dict[str, Any], last_error: str,
                      attempt_error: str | None = None) -> None:
    """Cancel one unfinished task (the caller checked its state may be cancelled by
    ``trigger``) and close its open attempt as cancelled, keeping the attempt's own error, else
    ``attempt_error``. The one cancel of the operator (``user_cancelled``) and of a failed
    workstream (``workstream_failed``, ``workstream_timeout``); its worker sees the claim is
    gone and kills the process group."""
    transition_in_tx(conn, "task", task_id, "cancelled", trigger, metadata,
                     worker_id=None,  # running_iff_worker: no state after running keeps one
                     completed_at=stamp, last_error=last_error)
    conn.execute(
        "UPDATE attempt SET finished_at = MAX(started_at, ?), outcome = 'cancelled', "
        "error_message = COALESCE(error_message, ?) "
        "WHERE task_id = ? AND finished_at IS NULL",
        (stamp, attempt_error, task_id),
    )


def _cancel_in_tx(conn: apsw.Connection, task_ids: list[str], stamp: str, reason: str,
                  report: OperatorReport) -> None:
    states = _task_states(conn, task_ids)
    for task_id in task_ids:
        state = states[task_id]["state"]
        if state not in states_allowing("task", "user_cancelled"):
            report.skipped.append({"task_id": task_id, "state": state,
                                   "reason": f"already {state}: nothing to cancel"})
            continue
        cancel_task_in_tx(conn, task_id, stamp, trigger="user_cancelled",
                          metadata=_metadata(stamp, reason=reason), last_error=CANCELLED_ERROR,
                          attempt_error=CANCELLED_ERROR)
        report.changed.append({"task_id": task_id, "from_state": state,
                               "to_state": "cancelled"})


def cancel_tasks(conn: apsw.Connection, task_ids: Iterable[str], *,
                 now: datetime | float | str | None = None, reason: str = "user") -> OperatorReport:
    """Cancel every non-terminal task of ``task_ids`` (trigger ``user_cancelled``)."""
    ids, stamp, report = _unique(task_ids), _stamp(now), OperatorReport()
    with db.write_tx(conn):
        _cancel_in_tx(conn, ids, stamp, reason, report)
    return report


def cancel_workstream(conn: apsw.Connection, workstream_id: str, *,
                      now: datetime | float | str | None = None) -> OperatorReport:
    """Cancel all non-terminal tasks of a workstream, then the workstream, in one transaction."""
    stamp, report = _stamp(now), OperatorReport()
    with db.write_tx(conn):
        ws_state = db.scalar(conn, "SELECT state FROM workstream WHERE workstream_id = ?",
                             (workstream_id,))
        if ws_state is None:
            raise OrchError(
                "unknown_workstream",
                f"unknown workstream: {workstream_id} (nothing was changed)",
                hint="`orch status` lists the workstreams of this project",
            )
        # Its terminal tasks are left alone and not reported: they are not news.
        live = [
            str(r[0]) for r in conn.execute(
                "SELECT task_id FROM task WHERE workstream_id = ? "
                f"AND state NOT IN {terminal_sql('task')} ORDER BY task_id",
                (workstream_id,),
            ).fetchall()
        ]
        _cancel_in_tx(conn, live, stamp, "workstream_cancelled", report)
        if ws_state in states_allowing("workstream", "user_cancelled"):
            transition_in_tx(conn, "workstream", workstream_id, "cancelled", "user_cancelled",
                             _metadata(stamp), completed_at=stamp)
            report.workstreams_changed.append({"workstream_id": workstream_id,
                                               "from_state": ws_state, "to_state": "cancelled"})
        else:
            why = (f"already {ws_state}" if ws_state in terminal_states("workstream")
                   else f"{ws_state}: a workstream in {ws_state} cannot be cancelled")
            report.workstreams_skipped.append({"workstream_id": workstream_id,
                                               "state": ws_state, "reason": why})
    return report


def retry_tasks(conn: apsw.Connection, task_ids: Iterable[str], *,
                now: datetime | float | str | None = None) -> OperatorReport:
    """Failed or cancelled tasks -> pending (``operator_reset``); a failed or cancelled
    workstream of one of them -> executing (``operator_reset``)."""
    ids, stamp, report = _unique(task_ids), _stamp(now), OperatorReport()
    with db.write_tx(conn):
        states = _task_states(conn, ids)
        revive: list[str] = []
        for task_id in ids:
            state, ws = states[task_id]["state"], states[task_id]["workstream_id"]
            if state not in _retryable():
                why = ("completed: nothing to retry" if state == "completed"
                       else f"{state}: nothing to retry (only failed or cancelled tasks are "
                            "retried)")
                report.skipped.append({"task_id": task_id, "state": state, "reason": why})
                continue
            transition_in_tx(conn, "task", task_id, "pending", "operator_reset", _metadata(stamp),
                             last_error=None, failure_mode=None, completed_at=None,
                             next_attempt_at=None)
            report.changed.append({"task_id": task_id, "from_state": state,
                                   "to_state": "pending"})
            if ws not in revive:
                revive.append(ws)
        for ws in revive:
            ws_state = db.scalar(conn, "SELECT state FROM workstream WHERE workstream_id = ?",
                                 (ws,))
            if ws_state in states_allowing("workstream", "operator_reset", "executing"):
                # The max_duration_seconds clock restarts: a timed-out workstream gets its
                # full time again.
                transition_in_tx(conn, "workstream", ws, "executing", "operator_reset",
                                 _metadata(stamp), completed_at=None, started_at=stamp)
                report.workstreams_changed.append({"workstream_id": ws, "from_state": ws_state,
                                                   "to_state": "executing"})
    return report


def skip_tasks(conn: apsw.Connection, task_ids: Iterable[str], *,
               now: datetime | float | str | None = None) -> OperatorReport:
    """Pending tasks -> completed without running (``operator_skip``), unblocking dependents.

    In a workstream that runs nothing more (not in ``open_workstream``: failed, cancelled, or
    halted by a critical failure) a skip is bookkeeping: it is accepted, and ``notes`` says
    which `orch retry` revives the workstream; until then nothing of it is queued."""
    ids, stamp, report = _unique(task_ids), _stamp(now), OperatorReport()
    halted: list[str] = []
    with db.write_tx(conn):
        states = _task_states(conn, ids)
        for task_id in ids:
            state = states[task_id]["state"]
            if state not in states_allowing("task", "operator_skip"):
                if state in _retryable():
                    why = (f"{state}: only a pending task can be skipped; `orch retry "
                           f"{task_id}` runs it again")
                elif state == "completed":
                    why = "already completed: nothing to skip"
                else:
                    why = f"{state}: only a pending task can be skipped"
                report.skipped.append({"task_id": task_id, "state": state, "reason": why})
                continue
            transition_in_tx(conn, "task", task_id, "completed", "operator_skip", _metadata(stamp),
                             completed_at=stamp)
            report.changed.append({"task_id": task_id, "from_state": state,
                                   "to_state": "completed"})
            ws = states[task_id]["workstream_id"]
            if ws not in halted and not db.scalar(
                    conn, "SELECT 1 FROM open_workstream WHERE workstream_id = ?", (ws,)):
                # Skipping is bookkeeping: nothing of a failed, cancelled or halted workstream
                # runs until `orch retry` of a failed task revives it. Say so.
                halted.append(ws)
                blockers = [r[0] for r in conn.execute(
                    "SELECT task_id FROM task WHERE workstream_id = ? AND state IN "
                    f"{in_list_sql(_retryable())} ORDER BY critical DESC, task_id", (ws,))]
                fix = f"`orch retry {' '.join(blockers[:5])}`" if blockers else "`orch retry`"
                report.notes.append(f"workstream {ws} runs nothing more until {fix} revives "
                                    "it; the skipped tasks then count as completed")
    return report
