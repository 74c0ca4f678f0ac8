"""Database-Locked as an event: a command that gave up on the busy timeout leaves a note, and
the next command that can write the database records it as one ``database_locked`` event.

Public API:
    ``PENDING_NAME`` (``database_locked.pending``, beside ``kernel.db``); ``pending_path(db_path)
    -> Path``; ``note_locked(db_path, command) -> bool`` (add one give-up to the note; False when
    there is no ``.state/`` to write it in); ``record_pending(conn, db_path) -> int | None`` (turn
    the note into the event and delete it; the event's seq, or None).

Stability Guarantees:
    A locked database cannot record its own lock, so the note is a small JSON file
    (``{"command", "first_at", "last_at", "occurrences"}``, written atomically; further
    give-ups add to it). ``record_pending`` writes the event and then removes the note: a crash
    between the two can record one note twice, never lose it. It waits at most
    ``RECORD_WAIT_SECONDS`` for the writer lock, so a still-locked database costs the opening
    command no second busy timeout; the note then stays for the next writer. A note that is not
    valid JSON is still recorded (``occurrences`` 1, ``note_unreadable`` true).

Integration Points:
    ``kernel.cli.run`` calls ``note_locked`` when a command ends with ``database_locked``
    (exit 3); ``kernel.store.schema.connect`` calls ``record_pending`` on every connection it
    opens for writing (one ``stat`` when there is no note).

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.files``, ``kernel.store.db``,
    ``kernel.store.events``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.files import write_atomic
from kernel.store import db, events

PENDING_NAME = "database_locked.pending"
RECORD_WAIT_SECONDS = 0.05


def pending_path(db_path: str | os.PathLike[str]) -> Path:
    return Path(db_path).parent / PENDING_NAME


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"note_unreadable": True}
    return data if isinstance(data, dict) else {"note_unreadable": True}


def note_locked(db_path: str | os.PathLike[str], command: str) -> bool:
    """One more give-up on the busy timeout, by ``command``; False when the project has no
    ``.state/`` directory (or it cannot be written): then nothing is noted."""
    path = pending_path(db_path)
    if not path.parent.is_dir():
        return False
    now = clock.now_iso()
    note = _read(path) or {}
    count = note.get("occurrences")
    note = {"command": note.get("command") or command, "first_at": note.get("first_at") or now,
            "last_at": now, "last_command": command,
            "occurrences": (count if isinstance(count, int) and count > 0 else 0) + 1}
    try:
        write_atomic(path, json.dumps(note, sort_keys=True) + "\n")
    except OSError:
        return False
    return True


def record_pending(conn: apsw.Connection, db_path: str | os.PathLike[str]) -> int | None:
    """The note, if any, as one ``database_locked`` event; the note is then deleted."""
    path = pending_path(db_path)
    note = _read(path)
    if note is None:
        return None
    metadata = {"failure_mode": "Database-Locked", "occurrences": 1, **note}
    try:
        with db.write_tx(conn, timeout=RECORD_WAIT_SECONDS):
            seq = events.emit_event_in_tx(conn, "database_locked", trigger="busy_timeout",
                                          metadata=metadata)
    except apsw.Error:
        return None   # still locked (or not writable now): the next writer records it
    path.unlink(missing_ok=True)
    return seq
