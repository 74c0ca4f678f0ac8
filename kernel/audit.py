"""Reading the audit log: events as dictionaries, filtered, in seq order.

Public API:
    ``list_events(conn, since=0, limit=None, task_id=None, entity_type=None) -> list[dict]``
    (each event with the STATE-OBS-004 fields, ``metadata`` decoded); ``EVENT_FIELDS``;
    ``format_event(event) -> str`` (one line for people).

Stability Guarantees:
    Event dictionaries carry exactly ``EVENT_FIELDS``; fields are only added (consumers ignore
    unknown ones). The event log is append-only; nothing here writes.

Integration Points:
    ``orch events``; later the exporters (``.state/transitions.jsonl``), ``orch why`` and
    ``orch replay`` read events through this module.

Dependencies:
    apsw; ``kernel.db``.
"""

from __future__ import annotations

import json
from typing import Any

import apsw

from kernel import db

EVENT_FIELDS = (
    "seq", "timestamp", "event", "event_type", "severity", "entity_type", "entity_id",
    "workstream_id", "task_id", "from_state", "to_state", "trigger", "caused_by", "metadata",
)


def list_events(
    conn: apsw.Connection,
    *,
    since: int = 0,
    limit: int | None = None,
    task_id: str | None = None,
    entity_type: str | None = None,
) -> list[dict[str, Any]]:
    """Events with ``seq > since``, oldest first."""
    where: list[str] = ["seq > ?"]
    params: list[Any] = [since]
    if task_id is not None:
        where.append("task_id = ?")
        params.append(task_id)
    if entity_type is not None:
        where.append("entity_type = ?")
        params.append(entity_type)
    sql = f"SELECT {', '.join(EVENT_FIELDS)} FROM event WHERE {' AND '.join(where)} ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    events = db.rows(conn, sql, params)
    for event in events:
        event["metadata"] = json.loads(event["metadata"])
    return events


def format_event(event: dict[str, Any]) -> str:
    change = ""
    if event["to_state"] is not None:
        change = f" {event['from_state'] or '∅'} -> {event['to_state']}"
    trigger = f" ({event['trigger']})" if event["trigger"] else ""
    entity = f"{event['entity_type']} {event['entity_id']}" if event["entity_id"] else "system"
    return (
        f"{event['seq']:>6}  {event['timestamp']}  {event['severity']:<8} "
        f"{event['event']:<22} {entity}{change}{trigger}"
    )
