"""The event log as it is stored: the live ``event`` table and the monthly archive files that
``orch audit rotate`` moves old events into (AUDIT-002); the archive file format, and the one
reader of events, live and archived together.

Public API:
    ``iter_events(conn, directory, *, since_seq=0, from_ts=None, to_ts=None, task_id=None,
    event=None, entity_type=None, with_source=True)`` and ``read_events(..., limit=None) ->
    list[dict]`` (archived then live events in seq order, ``metadata`` decoded, each with
    ``source``: ``live`` or the archive's file name, unless ``with_source=False``);
    ``live_first_seq(conn)``; ``archive_dir(state_dir) -> Path`` (``.state/archive/events``);
    ``archive_files(directory) -> {month: path}``; ``month_file(month) -> str``;
    ``open_archive(path)`` (a context manager: an archive read-only, its format checked);
    ``open_archive_for_write(path, month, kernel_schema)`` (a context manager: the month's
    archive, created 0600 with its schema when missing); ``columns(conn)`` (the event columns
    a file has); ``select_list(conn)`` (``EVENT_FIELDS`` as a select list of that file);
    ``ARCHIVE_APPLICATION_ID``; ``ARCHIVE_FORMAT_VERSION``; ``CHECKSUM_FIELDS``.

Stability Guarantees:
    Event dictionaries carry exactly ``EVENT_FIELDS`` (plus ``source``); fields are only added.
    Archived rows whose seq is still live (left by an interrupted rotation) are read from the
    live table only, so every seq is read once. The archive file format (``archive_info`` says
    ``format_version``) and the checksum definition (``CHECKSUM_FIELDS``: sha256 over one line
    per event, in seq order, each line the compact JSON array of these columns, metadata as its
    stored text; docs/operations/AUDIT_RETENTION.md) only change with a new format version that
    readers still understand; columns are only added (readers fill missing ones with NULL).
    Archive files are created 0600, and their directory 0700, whatever the umask; they are
    opened with ``kernel.store.db.open_file``, so no writer lock file is left beside them.
    Nothing here writes to the live database.

Integration Points:
    ``kernel.observe.archive`` (rotation and verification) writes and checks the files;
    ``kernel.observe.audit`` (``list_events``, the report), ``kernel.observe.replay``,
    ``kernel.observe.status`` (``orch why``), ``kernel.observe.exports`` (transitions.jsonl)
    and ``orch audit query`` read events here. Archive files are plain SQLite: ``sqlite3``,
    Python's ``sqlite3`` and Datasette read them.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.store.db``, ``kernel.store.events``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import DatabaseUnavailable, OrchError
from kernel.base.files import make_private, open_private, private_dir
from kernel.store import db
from kernel.store.events import EVENT_FIELDS

ARCHIVE_APPLICATION_ID = 0x4F524345  # "ORCE": an orch event archive
ARCHIVE_FORMAT_VERSION = 1
# The checksum of a set of events: sha256 over one line per event, in seq order, each line the
# JSON array (compact, UTF-8) of these columns, metadata as its stored text. Fixed for format 1.
CHECKSUM_FIELDS = EVENT_FIELDS
_FILE = re.compile(r"^events-(\d{4}-\d{2})\.sqlite$")

_ARCHIVE_SCHEMA = f"""
CREATE TABLE event (
    seq           INTEGER PRIMARY KEY,
    timestamp     TEXT NOT NULL,
    event         TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    severity      TEXT NOT NULL,
    entity_type   TEXT NOT NULL,
    entity_id     TEXT,
    workstream_id TEXT,
    task_id       TEXT,
    from_state    TEXT,
    to_state      TEXT,
    trigger       TEXT,
    caused_by     INTEGER,
    metadata      TEXT NOT NULL DEFAULT '{{}}'
) STRICT;
CREATE INDEX event_by_task ON event (task_id, seq) WHERE task_id IS NOT NULL;
CREATE INDEX event_by_time ON event (timestamp);
CREATE TRIGGER event_archive_no_update BEFORE UPDATE ON event
BEGIN
    SELECT RAISE(ABORT, 'an archived event cannot be changed');
END;
CREATE TRIGGER event_archive_no_delete BEFORE DELETE ON event
BEGIN
    SELECT RAISE(ABORT, 'an archived event cannot be deleted: archives are removed as \
whole files (docs/operations/AUDIT_RETENTION.md)');
END;
CREATE TABLE archive_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
PRAGMA application_id = {ARCHIVE_APPLICATION_ID};
PRAGMA user_version = {ARCHIVE_FORMAT_VERSION};
"""


def archive_dir(state_dir: Path) -> Path:
    """Where a project's event archives live: ``.state/archive/events``."""
    return Path(state_dir) / "archive" / "events"


def month_file(month: str) -> str:
    """The archive file of a month (``YYYY-MM``): ``events-YYYY-MM.sqlite``."""
    return f"events-{month}.sqlite"


def archive_files(directory: Path | None) -> dict[str, Path]:
    """The archive files in ``directory`` by month (``YYYY-MM``), oldest first."""
    if directory is None or not Path(directory).is_dir():
        return {}
    found = {}
    for path in sorted(Path(directory).iterdir()):
        match = _FILE.match(path.name)
        if match and path.is_file():
            found[match.group(1)] = path
    return found


# ------------------------------------------------------------------------------ archive files


def columns(conn: apsw.Connection, schema: str = "main") -> list[str]:
    """The columns of the ``event`` table of ``conn`` (empty when it has none)."""
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info(event)")]


def select_list(conn: apsw.Connection) -> str:
    """EVENT_FIELDS as a select list; a column an older archive lacks reads as NULL."""
    have = set(columns(conn))
    return ", ".join(f if f in have else f"NULL AS {f}" for f in EVENT_FIELDS)


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[apsw.Connection]:
    """An archive file, read-only; ``OrchError`` (``archive_unreadable``, ``not_an_archive``)
    when it cannot be read or is not an orch event archive."""
    with contextlib.ExitStack() as stack:
        try:
            conn = stack.enter_context(db.open_file(path, readonly=True))
            app_id = int(conn.pragma("application_id"))
        except (apsw.Error, DatabaseUnavailable) as exc:
            cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
            raise OrchError("archive_unreadable",
                            f"cannot read the event archive {path}: {cause or exc}",
                            file=str(path),
                            hint="restore the file from a backup; `orch audit verify` checks "
                                 "every archive") from cause
        if app_id != ARCHIVE_APPLICATION_ID:
            raise OrchError("not_an_archive", f"{path} is not an orch event archive "
                            f"(application_id {app_id:#x})", file=str(path),
                            hint="move files that orch did not write out of "
                                 ".state/archive/events/")
        yield conn


@contextlib.contextmanager
def open_archive_for_write(path: Path, month: str,
                           kernel_schema: int) -> Iterator[apsw.Connection]:
    """The archive file of ``month``, read-write: created (0600, in a 0700 directory) with the
    archive schema and ``archive_info`` when missing; ``OrchError`` when it is not an orch
    event archive, has a newer format or holds another month."""
    private_dir(path.parent)
    if not path.exists():  # created 0600 before SQLite opens it, so it and its journal stay so
        open_private(path, "wb").close()
    make_private(path)
    with db.open_file(path, readonly=False, create=True) as conn:
        conn.pragma("journal_mode", "delete")  # one self-contained file, no -wal beside it
        conn.pragma("synchronous", "FULL")
        with db.write_tx(conn):
            _check_or_create_in_tx(conn, path, month, kernel_schema)
        yield conn


def _check_or_create_in_tx(conn: apsw.Connection, path: Path, month: str,
                           kernel_schema: int) -> None:
    """A new file gets the archive schema and ``archive_info``; an existing one must be an
    archive of ``month`` in a format this code reads."""
    app_id = int(conn.pragma("application_id"))
    if app_id == 0 and not columns(conn):
        conn.execute(_ARCHIVE_SCHEMA)
        conn.executemany("INSERT INTO archive_info (key, value) VALUES (?, ?)", [
            ("format", "orch-event-archive"),
            ("format_version", str(ARCHIVE_FORMAT_VERSION)),
            ("month", month),
            ("created_at", clock.now_iso()),
            ("kernel_schema_version", str(kernel_schema)),
            ("checksum", "sha256 over one JSON array per event in seq order: "
                         + json.dumps(list(CHECKSUM_FIELDS))),
        ])
    elif app_id != ARCHIVE_APPLICATION_ID:
        raise OrchError("not_an_archive",
                        f"{path} exists but is not an orch event archive",
                        file=str(path), hint="move it out of .state/archive/events/")
    elif int(conn.pragma("user_version")) > ARCHIVE_FORMAT_VERSION:
        raise OrchError("archive_too_new",
                        f"{path} has archive format "
                        f"{conn.pragma('user_version')}, newer than this orch writes",
                        file=str(path), hint="upgrade orch (pip install -U orch-kernel)")
    stored = db.scalar(conn, "SELECT value FROM archive_info WHERE key = 'month'")
    if stored != month:
        raise OrchError("archive_month_mismatch",
                        f"{path} holds the events of {stored}, not {month}",
                        file=str(path), hint="restore the file's original name")


# ---------------------------------------------------------------------------------- reading


_FILTERS = (("since_seq", "seq > ?"), ("below_seq", "seq < ?"), ("from_ts", "timestamp >= ?"),
            ("to_ts", "timestamp <= ?"), ("task_id", "task_id = ?"), ("event", "event = ?"),
            ("entity_type", "entity_type = ?"), ("workstream_id", "workstream_id = ?"),
            ("severity", "severity = ?"))


def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for name, clause in _FILTERS:
        if filters.get(name) is not None:
            where.append(clause)
            params.append(filters[name])
    return " AND ".join(where) or "1", params


def _decoded(cursor: Iterable[Sequence[Any]], source: str | None) -> Iterator[dict[str, Any]]:
    for values in cursor:
        event = dict(zip(EVENT_FIELDS, values, strict=True))
        try:
            event["metadata"] = json.loads(event["metadata"]) if event["metadata"] else {}
        except ValueError:
            pass
        if source is not None:
            event["source"] = source
        yield event


def _archive_iter(path: Path, where: str, params: list[Any],
                  with_source: bool) -> Iterator[dict[str, Any]]:
    with open_archive(path) as arc:
        yield from _decoded(arc.execute(
            f"SELECT {select_list(arc)} FROM event WHERE {where} ORDER BY seq", params),
            path.name if with_source else None)


def live_first_seq(conn: apsw.Connection) -> int | None:
    """The lowest seq of the live ``event`` table (None when it is empty)."""
    found = db.scalar(conn, "SELECT MIN(seq) FROM event")
    return None if found is None else int(found)


def iter_events(conn: apsw.Connection, directory: Path | None, *, since_seq: int = 0,
                from_ts: str | None = None, to_ts: str | None = None,
                task_id: str | None = None, event: str | None = None,
                entity_type: str | None = None, workstream_id: str | None = None,
                severity: str | None = None,
                with_source: bool = True) -> Iterator[dict[str, Any]]:
    """Archived (from ``directory``, when given) then live events matching every filter, in
    seq order, each with ``source`` (``live`` or the archive's file name; left out with
    ``with_source=False``). Archived rows whose seq is still live (left by an interrupted
    rotation) are read from the live table only. ``from_ts`` / ``to_ts`` are inclusive kernel
    timestamps."""
    first_live = live_first_seq(conn)
    filters: dict[str, Any] = {"since_seq": since_seq, "from_ts": from_ts, "to_ts": to_ts,
                               "task_id": task_id, "event": event, "entity_type": entity_type,
                               "workstream_id": workstream_id, "severity": severity}
    if directory is not None and (first_live is None or first_live > since_seq + 1):
        where, params = _where({**filters, "below_seq": first_live})
        sources = [_archive_iter(path, where, params, with_source)
                   for month, path in archive_files(directory).items()
                   if (from_ts is None or month >= from_ts[:7])
                   and (to_ts is None or month <= to_ts[:7])]
        yield from heapq.merge(*sources, key=lambda e: e["seq"])
    where, params = _where(filters)
    yield from _decoded(conn.execute(
        f"SELECT {', '.join(EVENT_FIELDS)} FROM event WHERE {where} ORDER BY seq", params),
        "live" if with_source else None)


def read_events(conn: apsw.Connection, directory: Path | None, *, limit: int | None = None,
                **filters: Any) -> list[dict[str, Any]]:
    """``iter_events`` as a list (at most ``limit`` events), read in one snapshot."""
    with db.snapshot(conn):
        found = iter_events(conn, directory, **filters)
        return list(itertools.islice(found, limit) if limit is not None else found)
