"""The state of every task, workstream and worker at a past moment, rebuilt from the event log
alone (AUDIT-001, STATE-OBS-002).

Public API:
    ``replay(conn, at, *, archive_dir=None) -> dict`` with ``at`` (the moment, as the kernel
    writes time), ``tasks`` / ``workstreams`` / ``workers`` ({id: {...}}), ``events_read``,
    ``last_seq`` (the last event applied), ``complete`` (false when the live log does not
    start at seq 1 and the events before it could not all be read: archived by a rotation but
    no ``archive_dir`` given or a recorded archive file missing, or gone without any rotation
    record (``log_start_missing``); ``partial_from_seq`` then names the seq from which the
    reconstruction is complete and ``note`` says why) and ``counts`` (states per kind);
    ``format_replay(result) -> str`` (the text of ``orch replay``); ``TERMINAL``.

Stability Guarantees:
    The state at ``at`` is the result of applying, in seq order, every event whose timestamp is
    at or before ``at``. Nothing here writes. Per task: ``state``, ``workstream_id``,
    ``retry_count``, ``worker_id`` (set only while running, as in the table), ``generation``,
    ``failure_mode``, ``last_error``, ``next_attempt_at``, ``started_at``, ``completed_at``,
    ``last_event_seq``, ``last_event_at``, ``last_trigger``; these equal the ``task`` table's
    columns at that moment for every change the kernel makes (tests/test_replay.py checks it).
    Per workstream: ``state``, ``last_event_seq``, ``last_event_at``, ``last_trigger``. Per
    worker: ``state``, ``pid``, ``hostname``, ``executor``, ``task_id`` (the task it runs),
    ``last_event_seq``, ``last_event_at``, ``last_trigger``. Keys are only added.

Integration Points:
    ``orch replay --at TIMESTAMP`` (``kernel.cli.audit``). Reads the ``event`` table and, when
    given ``archive_dir`` (``.state/archive/events``), the archives through
    ``kernel.store.eventlog.iter_events``. The events are written by the triggers of
    sql/0001_core.sql (creation and transition events carry ``to_state``; task transitions
    carry ``worker_id``, ``retry_count`` and ``generation`` in their metadata) and by the
    kernel's transition metadata (``error``, ``failure_mode``, ``next_attempt_at``).

Dependencies:
    apsw; ``kernel.observe.archive``, ``kernel.store.db``, ``kernel.store.eventlog``,
    ``kernel.store.machines``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw

from kernel.observe import archive
from kernel.store import db
from kernel.store.eventlog import iter_events
from kernel.store.machines import CANCELLED_ERROR, terminal_states

# Transitions that clear a task's error columns (kernel.runtime.claims._complete_in_tx,
# kernel.runtime.actions.retry).
_CLEARS_ERROR = ("validation_passed", "operator_reset")
_ENTITIES = ("task", "workstream", "worker")


def _new_task(event: dict[str, Any]) -> dict[str, Any]:
    return {"state": None, "workstream_id": event["workstream_id"], "retry_count": 0,
            "worker_id": None, "generation": 0, "failure_mode": None, "last_error": None,
            "next_attempt_at": None, "started_at": None, "completed_at": None}


def _apply_task(task: dict[str, Any], event: dict[str, Any]) -> None:
    meta, trigger, to_state = event["metadata"], event["trigger"], event["to_state"]
    stamp = event["timestamp"]
    task["state"] = to_state
    if event["workstream_id"]:
        task["workstream_id"] = event["workstream_id"]
    if "retry_count" in meta:
        task["retry_count"] = meta["retry_count"]
    if "generation" in meta:
        task["generation"] = meta["generation"]
    # running_iff_worker: the event's worker_id is the old one when the task leaves running.
    task["worker_id"] = meta.get("worker_id") if to_state == "running" else None
    if to_state == "running" and task["started_at"] is None:
        task["started_at"] = stamp
    if trigger in _CLEARS_ERROR:
        task["failure_mode"] = task["last_error"] = None
    if "failure_mode" in meta:
        task["failure_mode"] = meta["failure_mode"]
    if "error" in meta:
        task["last_error"] = meta["error"]
    elif trigger == "user_cancelled":
        # kernel.runtime.actions writes CANCELLED_ERROR; the scheduler cancelling the tasks of a
        # failed workstream writes "cancelled: <reason>".
        if meta.get("operator"):
            task["last_error"] = CANCELLED_ERROR
        elif meta.get("reason"):
            task["last_error"] = f"cancelled: {meta['reason']}"
    if to_state == "retrying":
        task["next_attempt_at"] = meta.get("next_attempt_at")
    elif to_state in ("queued", "pending"):
        task["next_attempt_at"] = None
    if to_state in terminal_states("task"):
        task["completed_at"] = stamp
    elif trigger == "operator_reset":
        task["completed_at"] = None


def _note(entity: dict[str, Any], event: dict[str, Any]) -> None:
    entity["last_event_seq"] = event["seq"]
    entity["last_event_at"] = event["timestamp"]
    entity["last_trigger"] = event["trigger"]


def replay(conn: apsw.Connection, at: str, *,
           archive_dir: Path | None = None) -> dict[str, Any]:
    """The state at ``at`` (a kernel timestamp, see ``kernel.observe.audit.parse_timestamp``)."""
    entities: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in _ENTITIES}
    read = 0
    last_seq = None
    with db.snapshot(conn):
        start = archive.log_start(conn)
        first_live = start["live_first_seq"]
        missing = archive.missing_files(conn, archive_dir) if archive_dir is not None else []
        complete = first_live in (None, 1) or (
            start["explained"] and archive_dir is not None and not missing)
        for event in iter_events(conn, archive_dir, to_ts=at):
            read += 1
            last_seq = event["seq"]
            _apply(entities, event)
    tasks, workers = entities["task"], entities["worker"]
    for wk in workers.values():
        wk["task_id"] = None
    for task_id, task in tasks.items():
        if task["worker_id"] in workers:
            workers[task["worker_id"]]["task_id"] = task_id
    result: dict[str, Any] = {
        "at": at,
        "tasks": dict(sorted(tasks.items())),
        "workstreams": dict(sorted(entities["workstream"].items())),
        "workers": dict(sorted(workers.items())),
        "events_read": read,
        "last_seq": last_seq,
        "complete": complete,
        "partial_from_seq": None if complete else first_live,
        "log_start_missing": not start["explained"],
    }
    result["counts"] = {kind: _counts(result[f"{kind}s"]) for kind in _ENTITIES}
    if not complete:
        result["note"] = _partial_note(start, missing, archive_dir is not None)
    return result


def _apply(entities: dict[str, dict[str, dict[str, Any]]], event: dict[str, Any]) -> None:
    """One event applied to the tasks, workstreams and workers (``entities`` by kind)."""
    kind, entity_id = event["entity_type"], event["entity_id"]
    if kind not in _ENTITIES or not entity_id:
        return
    tasks = entities["task"]
    if event["event"] == "task_deleted":
        tasks.pop(entity_id, None)
        return
    if event["to_state"] is None:
        # Not a state change (fencing, definition updates, worktree errors).
        if kind == "task" and entity_id in tasks and event["workstream_id"]:
            tasks[entity_id]["workstream_id"] = event["workstream_id"]
        return
    if kind == "task":
        task = tasks.setdefault(entity_id, _new_task(event))
        _apply_task(task, event)
        _note(task, event)
    elif kind == "workstream":
        ws = entities["workstream"].setdefault(entity_id, {"state": None})
        ws["state"] = event["to_state"]
        _note(ws, event)
    else:
        wk = entities["worker"].setdefault(entity_id, {"state": None, "pid": None,
                                                       "hostname": None, "executor": None,
                                                       "task_id": None})
        wk["state"] = event["to_state"]
        meta = event["metadata"]
        for key in ("pid", "hostname", "executor"):
            if meta.get(key) is not None:
                wk[key] = meta[key]
        _note(wk, event)


def _partial_note(start: dict[str, Any], missing: list[str], archives_given: bool) -> str:
    first, rotated = start["live_first_seq"], start["rotated_through"]
    if not start["explained"]:
        lost = f"{rotated + 1} to {first - 1}"
        return (f"partial reconstruction, complete only from seq {first}: the log start is "
                f"missing: events {lost} are neither in the live log nor recorded as rotated "
                "by `orch audit rotate` (`orch doctor` fails event_log_start_explained); "
                "entities whose events were there may be missing or wrong")
    why = (f"the archive files {', '.join(missing)} are missing" if missing
           else "no archive directory was given" if not archives_given
           else "not every archive could be read")
    return (f"partial reconstruction, complete only from seq {first}: events before seq "
            f"{first} were archived by `orch audit rotate` and not all were read ({why}): "
            "entities created before then may be missing or incomplete")


def _counts(entities: dict[str, dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entities.values():
        out[e["state"]] = out.get(e["state"], 0) + 1
    return dict(sorted(out.items()))


def format_replay(result: dict[str, Any], *, limit: int = 50) -> str:
    """Counts by state, then every entity that is not in a terminal state."""
    lines = [f"State at {result['at']}, rebuilt from {result['events_read']} events"
             + (f" (up to seq {result['last_seq']})" if result["last_seq"] else "")
             + ("" if result["complete"]
                else f": PARTIAL, complete only from seq {result['partial_from_seq']}")]
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    for kind in _ENTITIES:
        entities = result[f"{kind}s"]
        counts = ", ".join(f"{state} {n}" for state, n in result["counts"][kind].items())
        lines.append(f"{kind}s: {len(entities)}" + (f" ({counts})" if counts else ""))
    active: list[str] = []
    for ws_id, ws in result["workstreams"].items():
        if ws["state"] not in terminal_states("workstream"):
            active.append(f"  workstream {ws_id}: {ws['state']} since {ws['last_event_at']}")
    for task_id, t in result["tasks"].items():
        if t["state"] in terminal_states("task"):
            continue
        text = f"  task {task_id} ({t['workstream_id']}): {t['state']}"
        if t["worker_id"]:
            text += f" on {t['worker_id']}"
        if t["retry_count"]:
            text += f", retry {t['retry_count']}"
        if t["state"] == "retrying" and t["next_attempt_at"]:
            text += f", next attempt at {t['next_attempt_at']}"
        if t["last_error"] and t["state"] == "retrying":
            text += f", last error: {t['last_error']}"
        active.append(text + f" (since {t['last_event_at']})")
    for wid, wk in result["workers"].items():
        if wk["state"] not in terminal_states("worker"):
            busy = f" running {wk['task_id']}" if wk["task_id"] else ""
            active.append(f"  worker {wid}: {wk['state']}{busy}")
    if active:
        lines += ["", "Not finished at that moment:"]
        lines += active[:limit]
        if len(active) > limit:
            lines.append(f"  ... and {len(active) - limit} more (--json lists everything)")
    else:
        lines += ["", "Nothing was in progress at that moment."]
    return "\n".join(lines)
