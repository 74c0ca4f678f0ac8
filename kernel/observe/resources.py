"""The resources now: capacity, who holds what, and which ready tasks wait for them.

Public API:
    ``HOLDERS_SQL``, ``WAITING_SQL`` (the two queries, for any reader: Datasette's canned
    queries use them too); ``resources_report(conn) -> dict`` (what ``orch resources --json``
    prints).

Stability Guarantees:
    ``resources_report`` reads in the caller's transaction and writes nothing. Its shape:
    ``{"resources": [{resource_id, type, description, capacity, max_holders, reserved,
    available, amount_held, holders: [{task_id, mode, amount, owner, acquired_at,
    expires_at}], waiting: [{task_id, workstream_id, state, mode, amount}], tokens}]}``;
    ``available`` is what a new lease could still take (``capacity - reserved - held`` for
    pooled resources, the bucket's tokens for rate-limited ones, ``null`` for exclusive and
    shared ones); ``tokens`` only for rate-limited resources. Keys are only added.
    Holders come from the ``active_lease`` view, the rate-limited bucket from
    ``resource_tokens``, waiting tasks from ``resource_waiting`` (sql/0008: the ready tasks
    that need a resource and do not hold it yet): the same rules the scheduler applies, in
    SQL, in one place.

Integration Points:
    ``orch resources`` (kernel.cli.resources); ``orch browse``'s canned query of the same name.

Dependencies:
    apsw; ``kernel.store.db``.
"""

from __future__ import annotations

from typing import Any

import apsw

from kernel.store import db

__all__ = ["HOLDERS_SQL", "RESOURCES_SQL", "WAITING_SQL", "resources_report"]

RESOURCES_SQL = """
SELECT r.resource_id, r.type, r.description, r.capacity, r.max_holders, r.reserved,
       u.amount_held, t.tokens
  FROM resource r
  JOIN resource_usage u ON u.resource_id = r.resource_id
  LEFT JOIN resource_tokens t ON t.resource_id = r.resource_id
 ORDER BY r.resource_id
"""

HOLDERS_SQL = """
SELECT resource_id, task_id, mode, amount, owner, acquired_at, expires_at
  FROM active_lease
 ORDER BY resource_id, acquired_at, task_id
"""

WAITING_SQL = """
SELECT resource_id, task_id, workstream_id, state, mode, amount
  FROM resource_waiting
 ORDER BY resource_id, priority DESC, queued_at, task_id
"""


def _available(row: dict[str, Any]) -> float | None:
    if row["type"] == "pooled":
        return max(0.0, float(row["capacity"] or 0) - float(row["reserved"] or 0)
                   - float(row["amount_held"] or 0))
    if row["type"] == "rate_limited":
        return float(row["tokens"]) if row["tokens"] is not None else None
    return None


def resources_report(conn: apsw.Connection) -> dict[str, Any]:
    """Every resource with its holders and the ready tasks waiting for it."""
    holders: dict[str, list[dict[str, Any]]] = {}
    for row in db.rows(conn, HOLDERS_SQL):
        holders.setdefault(row.pop("resource_id"), []).append(row)
    waiting: dict[str, list[dict[str, Any]]] = {}
    for row in db.rows(conn, WAITING_SQL):
        waiting.setdefault(row.pop("resource_id"), []).append(row)
    out = []
    for row in db.rows(conn, RESOURCES_SQL):
        rid = row["resource_id"]
        tokens = row.pop("tokens")
        row["available"] = _available({**row, "tokens": tokens})
        row["holders"] = holders.get(rid, [])
        row["waiting"] = waiting.get(rid, [])
        if row["type"] == "rate_limited":
            row["tokens"] = tokens
        out.append(row)
    return {"resources": out}
