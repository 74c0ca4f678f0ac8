"""The scheduler lock: one ``orch run`` owns a database at a time.

Public API:
    ``acquire_lock(conn, owner, now, ttl=LOCK_TTL_SECONDS)`` (raises ``SchedulerBusy``);
    ``renew_lock(conn, owner, now, ttl=LOCK_TTL_SECONDS) -> bool``;
    ``release_lock(conn, owner)``; ``holder_alive(held, now) -> bool`` and
    ``live_holder(conn, now)`` (the one rule for "an ``orch run`` holds the lock");
    ``LOCK_TTL_SECONDS``; ``SchedulerBusy`` (exit code 1).

Stability Guarantees:
    The lock is the one row of ``scheduler_lock``. A second ``orch run`` is refused with the
    holder's pid, host and start time, unless the holder is dead (same host: its pid is gone)
    or its lock expired; taking over a lock is logged as ``scheduler_lock_taken_over``. Each
    call is one write transaction.

Integration Points:
    ``kernel.runtime.runner`` takes the lock before it starts any worker, renews it every
    third of ``LOCK_TTL_SECONDS`` and releases it when the run ends; ``orch restore``
    (``kernel.maintain.restore``) and ``orch compliance`` ask ``live_holder`` whether a run
    is active.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.processes``,
    ``kernel.store.db``, ``kernel.store.events``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import OrchError
from kernel.base.processes import pid_alive
from kernel.store import db, events

LOCK_TTL_SECONDS = 15.0


class SchedulerBusy(OrchError):
    pass


def holder_alive(held: Mapping[str, Any], now: float) -> bool:
    """Whether the lock row ``held`` belongs to a live ``orch run``: its lock has not expired,
    and, on this host, its process is still there."""
    if held["hostname"] == socket.gethostname() and not pid_alive(int(held["pid"])):
        return False
    return str(held["expires_at"]) > clock.iso(now)


def live_holder(conn: apsw.Connection, now: float) -> dict[str, Any] | None:
    """The lock row of the ``orch run`` that holds the lock now, or None."""
    held = db.row(conn, "SELECT * FROM scheduler_lock WHERE lock_id = 1")
    return held if held is not None and holder_alive(held, now) else None


def acquire_lock(conn: apsw.Connection, owner: str, now: float,
                 ttl: float = LOCK_TTL_SECONDS) -> None:
    host = socket.gethostname()
    with db.write_tx(conn):
        held = db.row(conn, "SELECT * FROM scheduler_lock WHERE lock_id = 1")
        if held and held["owner"] != owner and holder_alive(held, now):
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
