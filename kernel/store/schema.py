"""Bringing a database up to date: the migrations, then the state machines and failure modes.

Public API:
    ``connect(path, *, create=False, readonly=False, durability="normal",
    busy_timeout_ms=5000, verify=False)`` opens the file through
    ``kernel.store.db.open_connection`` and, unless ``readonly``, migrates it (``migrate``):
    the connection every command uses; a writable one also records a pending
    ``database_locked`` note (``kernel.store.lockrecord``). ``migrate(conn, path)`` applies
    each pending migration in its own write transaction, then loads the state machines
    (``ensure_machines``) and the failure-mode catalog (``ensure_failure_modes``) into their tables.

Stability Guarantees:
    A database is only ever migrated forward: a file newer than this code is refused
    (``schema_too_new``, exit 3) before anything is written. Each migration commits with its
    ``user_version``, so a crash between two leaves a database a later ``connect`` finishes.
    Two processes migrating at once are safe: each migration re-reads ``user_version`` under
    the write lock. Any SQLite error while migrating is the ``DatabaseUnavailable`` of
    ``db.error_for`` and the connection is closed.

Integration Points:
    ``kernel.store.project.Project.connect`` and ``init_project``, the test fixtures and the
    benches open databases here; ``orch doctor`` opens with ``db.open_connection`` when the
    migration is what it must diagnose. Opening (``kernel.store.db``) and bringing up to date
    (this module) are separate so the state-machine and reference modules, which need
    ``db.write_tx``, sit above ``db`` without an import cycle.

Dependencies:
    apsw; ``kernel.store.db``, ``kernel.store.lockrecord``, ``kernel.store.machines``,
    ``kernel.store.reference``.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from kernel.store import db, lockrecord
from kernel.store.machines import ensure_machines
from kernel.store.reference import ensure_failure_modes


def migrate(conn: apsw.Connection, path: str | os.PathLike[str]) -> None:
    """Apply every pending migration, then load the state machines and failure modes."""
    path = Path(path)
    db.check_not_newer(conn, path)
    pending = [m for m in db.migrations() if m.number > db.schema_version(conn)]
    for migration in pending:
        with db.write_tx(conn):
            # Another process may have migrated while we waited for the write lock.
            if db.schema_version(conn) >= migration.number:
                continue
            conn.execute(migration.sql)
            conn.pragma("application_id", db.APPLICATION_ID)
            conn.pragma("user_version", migration.number)
    ensure_machines(conn)
    ensure_failure_modes(conn)


def connect(
    path: str | os.PathLike[str],
    *,
    create: bool = False,
    readonly: bool = False,
    durability: str = "normal",
    busy_timeout_ms: int = db.DEFAULT_BUSY_TIMEOUT_MS,
    verify: bool = False,
) -> apsw.Connection:
    """Open the kernel database (``db.open_connection``: the file checks, the pragmas) and,
    unless ``readonly``, migrate it and load the state machines.

    Only ``create=True`` (``orch init``, test fixtures) accepts a missing or empty file and
    builds a new database in it; otherwise such a file is refused (``not_initialised`` /
    ``database_missing``). ``verify=True`` also runs ``PRAGMA quick_check`` before anything is
    written (``orch run`` and ``orch load``).
    """
    conn = db.open_connection(path, create=create, readonly=readonly, durability=durability,
                              busy_timeout_ms=busy_timeout_ms, verify=verify)
    if readonly:
        return conn
    try:
        migrate(conn, path)
        lockrecord.record_pending(conn, path)   # Database-Locked, noted by a command before
    except apsw.Error as exc:
        conn.close()
        raise db.error_for(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    return conn
