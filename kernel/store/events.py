"""The catalog of events that are not state transitions, and the one way to emit them.

Public API:
    ``EVENT_FIELDS`` (an event row's columns, in order); ``LIFECYCLE`` (the events the SQL
    triggers write when a row is created or deleted); ``EventDef`` (name, event_type, severity,
    entity_type, doc); ``CATALOG`` (name → EventDef);
    ``emit_event_in_tx(conn, name, *, entity_id=None, task_id=None, workstream_id=None,
    trigger=None, caused_by=None, metadata=None, at=None, severity=None) -> int`` (the new
    event's seq); ``emit_events_in_tx(conn, name, events, *, trigger=None, at=None)`` (many of one
    kind, in
    batches); ``last_seq_in_tx(conn, ...)``; ``STAMP_SQL``.

Stability Guarantees:
    Transition events are written by the SQL triggers from the machine tables (their names are
    in ``docs/state_machines/*.yaml``). Every other event is declared here once, with its type,
    default severity, entity and one line of documentation, and emitted only through
    ``emit_event_in_tx``: an undeclared name raises ``KeyError``. Names are only added, never
    renamed
    (the audit log is a contract). An event's timestamp is never earlier than the event before
    it (``STAMP_SQL``), so timestamp order is seq order, as for the trigger-written events.

Integration Points:
    The claims, the scheduler, the loader and the audit rotation emit through here; the
    generated docs list ``CATALOG``; ``orch why`` and Datasette read the events back.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.store.db``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from kernel.base import clock
from kernel.store import db

#: The columns of an event, in the order every reader and the archive files keep them.
EVENT_FIELDS = (
    "seq", "timestamp", "event", "event_type", "severity", "entity_type", "entity_id",
    "workstream_id", "task_id", "from_state", "to_state", "trigger", "caused_by", "metadata",
)


@dataclass(frozen=True)
class EventDef:
    name: str
    event_type: str
    severity: str
    entity_type: str
    doc: str


_DEFS = (
    EventDef("stale_result_rejected", "task_fencing", "warning", "task",
             "A worker reported on a claim it no longer holds (the task was cancelled or handed "
             "on): the report changed nothing."),
    EventDef("task_unrunnable", "task_unrunnable", "error", "task",
             "No registered worker can ever run this queued task (a capability or version "
             "nobody offers); the reason is in metadata.reason."),
    EventDef("capability_deprecated_in_use", "capability", "warning", "system",
             "`orch run` started with unfinished tasks that need a deprecated capability; "
             "metadata names it, what replaces it (deprecated_by) and the tasks."),
    EventDef("worker_lost", "worker_crashed", "error", "worker",
             "The kernel found a worker dead (its process is gone) or silent past the limit; "
             "the hand-on of its task and its shutdown name this event in caused_by."),
    EventDef("resource_exhausted", "resource", "critical", "resource",
             "A task requests more of a pooled or rate-limited resource than it can ever give "
             "(Resource-Exhaustion); the task waits queued, limits are never raised."),
    EventDef("worktree_failed", "workstream_worktree", "error", "workstream",
             "Creating the workstream's git worktree failed; it is tried again next tick, and "
             "the run stops after 5 failures."),
    EventDef("scheduler_lock_taken_over", "scheduler", "warning", "system",
             "An `orch run` took over the database from a previous one whose lock expired or "
             "whose process is gone."),
    EventDef("workstream_definition_updated", "workstream_definition", "info", "workstream",
             "`orch load` changed the definition of a workstream that had not started."),
    EventDef("task_definition_updated", "task_definition", "info", "task",
             "`orch load` changed the definition of a task that had not started."),
    EventDef("dependency_cycle_detected", "task_definition", "critical", "workstream",
             "`orch load` was refused because task dependencies form a cycle "
             "(Dependency-Cycle); metadata.cycle lists the tasks in order, metadata.cycles "
             "every cycle found. Nothing else of the load was written."),
    EventDef("state_corruption", "integrity", "critical", "system",
             "`orch doctor` found a failed integrity, schema or invariant check "
             "(State-Corruption); metadata.checks names them. Written once per distinct set "
             "of findings, while the database can be written."),
    EventDef("database_locked", "database", "warning", "system",
             "A command gave up waiting for the database's write lock (Database-Locked, exit "
             "code 3); recorded by the next command that writes, from "
             ".state/database_locked.pending (metadata: command, last_command, first_at, "
             "last_at, occurrences)."),
    EventDef("audit_rotated", "audit_retention", "info", "system",
             "`orch audit rotate` moved old events into monthly archive files (warning when the "
             "retention was shortened by --force-short-retention)."),
)

CATALOG: dict[str, EventDef] = {d.name: d for d in _DEFS}

#: Events the SQL triggers write when a row is created or deleted (sql/0001_core.sql,
#: sql/0005_trust.sql). The transition events are not listed here: each transition of
#: docs/state_machines/*.yaml names its event, and the transition triggers write it.
LIFECYCLE: dict[str, EventDef] = {d.name: d for d in (
    EventDef("task_created", "task_state_transition", "info", "task",
             "`orch load` inserted the task (to_state is its first state, normally pending)."),
    EventDef("task_deleted", "task_state_transition", "warning", "task",
             "`orch load` deleted a task whose file was removed before the task ever started "
             "(trigger definition_removed); from_state is the state it had."),
    EventDef("workstream_created", "workstream_state_transition", "info", "workstream",
             "`orch load` inserted the workstream."),
    EventDef("worker_started", "worker_registration", "info", "worker",
             "A worker registered itself (`orch worker`, or one `orch run` started)."),
)}

#: The timestamp of a new event: the caller's time, or the time of the event before it when
#: that is later (the caller read its clock before it held the write lock).
STAMP_SQL = ("MAX(?, COALESCE((SELECT e.timestamp FROM event e ORDER BY e.seq DESC LIMIT 1), "
             "''))")


_INSERT = ("INSERT INTO event (timestamp, event, event_type, severity, entity_type, entity_id, "
           "workstream_id, task_id, trigger, caused_by, metadata)")
_VALUES = f"({STAMP_SQL}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def emit_event_in_tx(conn: apsw.Connection, name: str, *, entity_id: str | None = None,
               task_id: str | None = None, workstream_id: str | None = None,
               trigger: str | None = None, caused_by: int | None = None,
               metadata: Mapping[str, Any] | None = None, at: str | None = None,
               severity: str | None = None) -> int:
    """Append one declared event (the caller holds the write transaction); returns its seq."""
    d = CATALOG[name]
    conn.execute(
        f"{_INSERT} VALUES {_VALUES}",
        (at or clock.now_iso(), name, d.event_type, severity or d.severity, d.entity_type,
         entity_id, workstream_id, task_id, trigger, caused_by,
         json.dumps(dict(metadata or {}), sort_keys=True)))
    return int(conn.last_insert_rowid())


def emit_events_in_tx(conn: apsw.Connection, name: str, events: Sequence[Mapping[str, Any]], *,
                      trigger: str | None = None, at: str | None = None,
                      batch_parameters: int = db.BATCH_PARAMETERS) -> None:
    """Append many events of one declared kind, in order, a multi-row INSERT per batch (the
    loader's bulk path; see ``db.insert_rows_in_tx``). Each mapping may hold ``entity_id``,
    ``workstream_id``, ``task_id``, ``caused_by`` and ``metadata``."""
    d = CATALOG[name]
    stamp = at or clock.now_iso()
    rows = [(stamp, name, d.event_type, d.severity, d.entity_type, e.get("entity_id"),
             e.get("workstream_id"), e.get("task_id"), trigger, e.get("caused_by"),
             json.dumps(dict(e.get("metadata") or {}), sort_keys=True)) for e in events]
    db.insert_rows_in_tx(conn, _INSERT, rows, batch_parameters=batch_parameters, values=_VALUES)


def last_seq_in_tx(conn: apsw.Connection, *, task_id: str | None = None,
                   entity_id: str | None = None, to_state: str | None = None,
                   event: str | None = None) -> int | None:
    """The seq of the newest live event matching the filters (for ``caused_by``)."""
    where, params = [], []
    for column, value in (("task_id", task_id), ("entity_id", entity_id),
                          ("to_state", to_state), ("event", event)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    found = conn.execute(f"SELECT MAX(seq) FROM event WHERE {' AND '.join(where) or '1'}",
                         params).fetchone()
    return None if found is None or found[0] is None else int(found[0])
