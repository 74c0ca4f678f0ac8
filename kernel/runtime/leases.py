"""Resource leases (CONC-REG-002): all-or-nothing, with owner, expiry and a fencing generation.

Public API:
    ``acquire_all_in_tx(conn, task_id, *, owner, generation, attempt_id, now, ttl) -> list[Lease]``
    (raises ``LeaseUnavailable``, nothing taken); ``renew_in_tx(conn, owner, now, ttl) -> int``;
    ``release_task_in_tx(conn, task_id, now, reason) -> int``; ``expired(conn, now) -> list[dict]``;
    ``ttl_for(workers) -> float`` (how long a lease lasts without a heartbeat, from ``[workers]``).

Stability Guarantees:
    The guarantees live in SQL (sql/0002_scheduler.sql): triggers on ``INSERT INTO lease`` refuse
    any lease that would break exclusivity, a conflict, ``max_holders``, a pool's capacity or a
    token bucket, from any client; a trigger releases a task's leases whenever it leaves
    running/validating. This module only takes them all-or-nothing inside a SAVEPOINT.

Integration Points:
    ``kernel.runtime.claims`` takes leases in the claim transaction; workers renew them with each
    heartbeat; ``kernel.runtime.scheduler.tick`` reclaims expired ones by handing their task on.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.store.db``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apsw

from kernel.base import clock
from kernel.store import db


def ttl_for(workers: Any) -> float:
    """A lease's time to live, from ``[workers]`` (a ``WorkersConfig``): the heartbeats a worker
    may miss before it is unresponsive, plus the grace before it is shut down."""
    return float(workers.heartbeat_seconds * (workers.unresponsive_after_missed + 1)
                 + workers.shutdown_after_unresponsive_seconds)


class LeaseUnavailable(Exception):
    """A requested resource cannot be leased now (someone else holds it, or no tokens)."""

    def __init__(self, resource_id: str, reason: str) -> None:
        super().__init__(f"{resource_id}: {reason}")
        self.resource_id = resource_id
        self.reason = reason


@dataclass(frozen=True)
class Lease:
    lease_id: int
    resource_id: str
    mode: str
    amount: float


def requirements(conn: apsw.Connection, task_id: str) -> list[tuple[str, str, float]]:
    return [(r, m, a) for r, m, a in conn.execute(
        "SELECT resource_id, mode, amount FROM task_resource WHERE task_id = ? "
        "ORDER BY resource_id", (task_id,))]


def acquire_all_in_tx(conn: apsw.Connection, task_id: str, *, owner: str, generation: int,
                attempt_id: int | None, now: float, ttl: float,
                reqs: list[tuple[str, str, float]] | None = None) -> list[Lease]:
    """Lease every resource the task requires, or none (call inside a write transaction)."""
    reqs = requirements(conn, task_id) if reqs is None else reqs
    if not reqs:
        return []
    acquired, expires = clock.iso(now), clock.iso(now + ttl)
    taken: list[Lease] = []
    conn.execute("SAVEPOINT lease_all")
    try:
        for resource_id, mode, amount in reqs:
            try:
                conn.execute(
                    "INSERT INTO lease (resource_id, task_id, attempt_id, owner, mode, amount, "
                    "generation, acquired_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (resource_id, task_id, attempt_id, owner, mode, amount, generation,
                     acquired, expires))
            except apsw.ConstraintError as exc:
                raise LeaseUnavailable(resource_id, str(exc).split("ConstraintError: ")[-1]) \
                    from None
            taken.append(Lease(conn.last_insert_rowid(), resource_id, mode, amount))
    except BaseException:
        conn.execute("ROLLBACK TO lease_all")
        conn.execute("RELEASE lease_all")
        raise
    conn.execute("RELEASE lease_all")
    return taken


def renew_in_tx(conn: apsw.Connection, owner: str, now: float, ttl: float) -> int:
    conn.execute("UPDATE lease SET expires_at = ? WHERE owner = ? AND released_at IS NULL",
                 (clock.iso(now + ttl), owner))
    return conn.changes()


def release_task_in_tx(conn: apsw.Connection, task_id: str, now: float, reason: str) -> int:
    conn.execute("UPDATE lease SET released_at = MAX(acquired_at, ?), release_reason = ? "
                 "WHERE task_id = ? AND released_at IS NULL", (clock.iso(now), reason, task_id))
    return conn.changes()


def expired(conn: apsw.Connection, now: float) -> list[dict[str, Any]]:
    return db.rows(conn, "SELECT * FROM lease WHERE released_at IS NULL AND expires_at < ? "
                         "ORDER BY lease_id", (clock.iso(now),))


