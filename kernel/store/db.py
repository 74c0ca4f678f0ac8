"""The one connection factory: opening ``.state/kernel.db``, pragmas, the writer lock,
transactions.

Public API:
    ``open_connection(path, *, create=False, readonly=False, durability="normal",
    busy_timeout_ms=5000, verify=False)`` returns an ``apsw.Connection`` with the kernel's
    pragmas, checked but not migrated (``kernel.store.schema.connect`` migrates); context
    managers ``write_tx(conn, *, timeout=None)`` (``BEGIN IMMEDIATE``, after
    ``writer_lock(conn, timeout)``),
    ``read_tx(conn)`` and ``open_file(path, *, readonly=True, create=False)`` (an SQLite file
    that is not the live database: backups, archives, copies; no checks, no pragmas, no writer
    lock file), and ``snapshot(conn)`` (a read transaction, or the caller's); ``rows(conn, sql,
    params)`` / ``row(...)`` return dicts, ``scalar(conn, sql, params)`` one value;
    ``upsert_sql(table, key, columns)``; ``insert_rows_in_tx(conn, insert, rows)`` (multi-row
    INSERTs, ``BATCH_PARAMETERS`` values each); ``schema_sql(conn)`` (the snapshot text of
    ``sql/schema.sql``), ``checkpoint(conn)``, ``wal_size(path)``, ``sqlite_version()``,
    ``check_library()``; constants ``MIN_SQLITE_VERSION``, ``DEFAULT_BUSY_TIMEOUT_MS``,
    ``JOURNAL_SIZE_LIMIT``, ``DURABILITY``. Re-exported from ``kernel.store.dbcheck`` (the checks
    before opening, and the migrations): ``check_file``, ``error_for``, ``access_denied``,
    ``locked_error``, ``check_not_newer``, ``Migration``, ``migrations()``,
    ``latest_schema_version()``, ``schema_version(conn)``, ``APPLICATION_ID``, ``SQLITE_MAGIC``,
    ``RESTORE_HINT``, ``DAMAGED_CODES``.

Stability Guarantees:
    A database is only ever migrated forward, and only ``create=True`` (``orch init``, test
    fixtures) makes one: a missing, empty (0-byte) or never-initialised file is otherwise
    refused. Before anything is written, ``open_connection`` runs the checks of
    ``kernel.store.dbcheck``: the file's 100-byte header (SQLite magic, page size, format
    versions), its length against the header's page count (when no
    ``-wal``/``-journal`` is pending), its ``application_id``, and for a ``user_version``
    older than this code that the schema holds no object of a later migration (a version
    lowered by hand) and every table and view of its own. A refused file raises
    ``DatabaseUnavailable`` (exit code 3) with one of the codes ``database_missing``,
    ``not_initialised``, ``database_access_denied``, ``database_unreadable`` (not a file, not
    SQLite), ``database_damaged`` (truncated, damaged header, CorruptError, I/O error),
    ``not_an_orch_database``, ``schema_damaged``, ``schema_too_new``, ``sqlite_too_old``; the
    main file's bytes are left as they were, and when no ``-wal`` was beside it the checks read
    it ``immutable`` so no ``-wal``/``-shm`` is left behind either. An SQLite error met later
    is mapped by ``error_for`` (``database_locked``, ``database_damaged``, ``disk_full``,
    ``database_access_denied``, ``database_error``). Codes are only added, never renamed.

Integration Points:
    Every kernel module gets its connection here. Other SQLite clients (the ``sqlite3`` shell,
    Python's ``sqlite3``, Datasette) may open the same file; the schema stays within SQLite
    3.40's features for them. Never open the file with both apsw and ``sqlite3`` in one process.

Dependencies:
    apsw; ``kernel.base.errors``, ``kernel.store.dbcheck``.

The pragmas, and why:
    journal_mode=WAL        readers (Datasette, exporters, ``orch status``) never block the writer
                            and the writer never blocks them.
    synchronous=NORMAL      in WAL mode a crash cannot corrupt the database; at worst the last
                            transactions before a power loss are lost. ``durability="full"``
                            (``orch.toml`` ``[database] durability = "full"``) makes every commit
                            durable at the cost of an fsync per commit.
    busy_timeout            a writer waits (default 5 s) for another writer instead of failing
                            at once; past it the command exits 3 (Database-Locked).
    foreign_keys=ON         SQLite leaves them off by default; the data model relies on them.
    recursive_triggers=ON   a trigger that moves another row of the same table (a workstream
                            cancelling its tasks) must still fire that row's guard and event
                            triggers; otherwise such nested transitions would go unchecked.
    journal_size_limit      the WAL file is truncated back to 64 MiB after a checkpoint, so a
                            burst of writes cannot leave a huge file behind.
    temp_store=MEMORY       (writers) every statement that fires triggers keeps a statement
                            journal of the pages it changes; past 64 KiB SQLite moves it to a
                            temporary file, which made a transition or an insert cost 20-30 µs
                            of file writes. Statements of the kernel are small, so memory it is.
    writer lock file        ``kernel.db.writer-lock``: kernel writers queue on it (flock) before
                            BEGIN IMMEDIATE, so the next writer wakes the moment the lock is
                            free instead of sleeping in SQLite's busy handler (1, 2, 5, ...
                            100 ms): the tail of claim latency with 16 workers falls several
                            times. Other clients do not use it; the busy timeout still rules.
                            When it cannot be opened (``.state/`` removed), the write fails
                            with ``database_missing`` or ``database_access_denied`` (exit 3).
    wal_checkpoint(RESTART) run periodically by long-lived writers (``checkpoint()``) so that
                            the WAL cannot grow without bound while readers come and go.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import apsw

from kernel.base.errors import DatabaseUnavailable
from kernel.store import dbcheck
from kernel.store.dbcheck import APPLICATION_ID as APPLICATION_ID
from kernel.store.dbcheck import DAMAGED_CODES as DAMAGED_CODES
from kernel.store.dbcheck import RESTORE_HINT as RESTORE_HINT
from kernel.store.dbcheck import SQLITE_MAGIC as SQLITE_MAGIC
from kernel.store.dbcheck import Migration as Migration
from kernel.store.dbcheck import access_denied as access_denied
from kernel.store.dbcheck import check_file as check_file
from kernel.store.dbcheck import check_not_newer as check_not_newer
from kernel.store.dbcheck import error_for as error_for
from kernel.store.dbcheck import latest_schema_version as latest_schema_version
from kernel.store.dbcheck import locked_error as locked_error
from kernel.store.dbcheck import migrations as migrations
from kernel.store.dbcheck import schema_version as schema_version

MIN_SQLITE_VERSION = (3, 51, 3)  # older versions have a WAL corruption bug with several writers
DEFAULT_BUSY_TIMEOUT_MS = 5000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
DURABILITY = {"normal": "NORMAL", "full": "FULL"}


def sqlite_version() -> tuple[int, int, int]:
    major, minor, patch = (int(p) for p in apsw.sqlite_lib_version().split(".")[:3])
    return (major, minor, patch)


def check_library() -> None:
    if sqlite_version() < MIN_SQLITE_VERSION:
        raise DatabaseUnavailable(
            "sqlite_too_old",
            f"SQLite {apsw.sqlite_lib_version()} is older than "
            f"{'.'.join(map(str, MIN_SQLITE_VERSION))}, which has a WAL corruption bug when "
            "several connections write",
            hint="upgrade apsw (pip install -U apsw); it bundles a current SQLite",
        )


def open_connection(
    path: str | os.PathLike[str],
    *,
    create: bool = False,
    readonly: bool = False,
    durability: str = "normal",
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    verify: bool = False,
) -> apsw.Connection:
    """Open the kernel database and set the pragmas; never migrate it (that is
    ``kernel.store.schema.connect``, which every command uses).

    Only ``create=True`` (``orch init``, test fixtures) accepts a missing or empty file and
    builds a new database in it; otherwise such a file is refused (``not_initialised`` /
    ``database_missing``). Before anything is written the file is checked (``check_file``:
    its 100-byte header, its length) and so is what SQLite reads from it (application_id,
    user_version against the objects the schema holds); any refusal is a
    ``DatabaseUnavailable`` (exit 3) and leaves the file as it was. ``verify=True`` also runs
    ``PRAGMA quick_check`` first (``orch run`` and ``orch load``: a damaged file is refused
    before they write). ``readonly`` connections never write (no migration, no pragma that
    writes).
    """
    _check_arguments(create=create, readonly=readonly, durability=durability)
    path = Path(path)
    checked = dbcheck.check_before_open(path, create=create, readonly=readonly)
    conn = _connect(path, readonly=readonly, create=create)
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        _busy_timeouts[conn] = busy_timeout_ms / 1000
        if not checked:
            with read_tx(conn):  # one snapshot: another process may be migrating right now
                dbcheck.check_identity(conn, path, create=create)
        if verify:
            dbcheck.quick_check(conn, path)
        _set_pragmas(conn, readonly=readonly, durability=durability)
    except apsw.Error as exc:
        conn.close()
        raise error_for(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _check_arguments(*, create: bool, readonly: bool, durability: str) -> None:
    check_library()
    if durability not in DURABILITY:
        raise ValueError(f"durability must be one of {sorted(DURABILITY)}, not {durability!r}")
    if create and readonly:
        raise ValueError("a read-only connection cannot create a database")


def _connect(path: str | os.PathLike[str], *, readonly: bool,
             create: bool) -> apsw.Connection:
    """An apsw connection to ``path``; an open failure is the ``DatabaseUnavailable`` of
    ``error_for``."""
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        return apsw.Connection(str(path), flags=flags)
    except apsw.Error as exc:
        raise error_for(exc, path) from exc


def _set_pragmas(conn: apsw.Connection, *, readonly: bool, durability: str) -> None:
    """The pragmas of the module docstring; a reader sets only those that write nothing."""
    conn.pragma("foreign_keys", True)
    conn.pragma("recursive_triggers", True)
    if not readonly:
        if conn.pragma("journal_mode") != "wal":
            conn.pragma("journal_mode", "wal")
        conn.pragma("synchronous", DURABILITY[durability])
        conn.pragma("journal_size_limit", JOURNAL_SIZE_LIMIT)
        conn.pragma("temp_store", "MEMORY")


# Kernel writers queue for the write lock on a lock file beside the database (flock): the
# kernel wakes the next waiter the moment the lock is released. SQLite's own busy handler
# instead sleeps 1, 2, 5, 10, ... up to 100 ms between tries, so with many workers committing
# every millisecond an unlucky claim waits for seconds. Other clients (the sqlite3 shell,
# Datasette) do not take this lock; against them the busy timeout still applies.
_busy_timeouts: weakref.WeakKeyDictionary[apsw.Connection, float] = weakref.WeakKeyDictionary()


class _WaitedTooLong(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _WaitedTooLong()


def _acquire(fd: int, timeout: float) -> bool:
    """flock(fd) within ``timeout`` seconds. In the main thread the wait blocks (woken at once
    on release, bounded by an interval timer); other threads poll every millisecond."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    if threading.current_thread() is not threading.main_thread():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.001)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                continue
        return False
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except _WaitedTooLong:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def writer_lock(conn: apsw.Connection, timeout: float | None = None) -> Iterator[None]:
    """Hold the kernel writers' lock file (see above): ``write_tx`` takes it; a checkpoint that
    must not starve behind the kernel's writers takes it too. Raises ``apsw.BusyError`` after
    ``timeout`` seconds (default: the connection's busy timeout)."""
    if not conn.filename or conn in _plain_files:
        yield
        return
    # Opened per use (~10 µs): nothing to leak, and one lock per holder even within a thread.
    try:
        fd = os.open(f"{conn.filename}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:   # `.state/` removed or made unwritable under a running command
        check_file(conn.filename)   # raises database_missing (exit 3) when the file is gone
        raise access_denied(conn.filename, f"cannot open {conn.filename}.writer-lock "
                                           f"({exc.strerror})") from exc
    try:
        wait = _busy_timeouts.get(conn, DEFAULT_BUSY_TIMEOUT_MS / 1000) if timeout is None \
            else timeout
        if not _acquire(fd, wait):
            raise apsw.BusyError("database is locked: another kernel writer held it beyond the "
                                 "busy timeout")
        yield
    finally:
        os.close(fd)   # releases the lock


# Connections of ``open_file``: SQLite files that are not the live database. They take no
# writer lock file (it would be left beside a backup or an archive).
_plain_files: weakref.WeakSet[apsw.Connection] = weakref.WeakSet()


@contextlib.contextmanager
def open_file(path: str | os.PathLike[str], *, readonly: bool = True, create: bool = False,
              busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Iterator[apsw.Connection]:
    """``with db.open_file(path) as conn:`` an SQLite file that is not the live database (a
    backup, an event archive, a copy being checked or redacted): opened as it is, with none of
    the kernel's checks or pragmas, closed on exit. ``write_tx`` on it takes no writer lock
    file. An open failure is the ``DatabaseUnavailable`` of ``error_for``."""
    conn = _connect(path, readonly=readonly, create=create)
    _plain_files.add(conn)
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def write_tx(conn: apsw.Connection, *, timeout: float | None = None
             ) -> Iterator[apsw.Connection]:
    """A write transaction taken with BEGIN IMMEDIATE: the write lock is held from the start,
    so a transaction never fails half-way for want of it (no SQLITE_BUSY on upgrade). Kernel
    writers first queue on the writer lock file (see above), for ``timeout`` seconds (default:
    the connection's busy timeout)."""
    with writer_lock(conn, timeout):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")


@contextlib.contextmanager
def snapshot(conn: apsw.Connection) -> Iterator[None]:
    """A read transaction, unless the caller already holds a transaction (then it is joined):
    every query inside sees one snapshot either way."""
    if conn.get_autocommit():
        with read_tx(conn):
            yield
    else:
        yield


@contextlib.contextmanager
def read_tx(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """A read transaction: every query inside sees the same snapshot of the database."""
    conn.execute("BEGIN DEFERRED")
    try:
        yield conn
    finally:
        if not conn.get_autocommit():
            conn.execute("COMMIT")


def _dict_row(cursor: apsw.Cursor, row: Sequence[Any]) -> dict[str, Any]:
    return {d[0]: value for d, value in zip(cursor.get_description(), row, strict=True)}


def rows(conn: apsw.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[
    dict[str, Any]
]:
    cursor = conn.cursor()
    cursor.row_trace = _dict_row
    return list(cursor.execute(sql, params))


def row(
    conn: apsw.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()
) -> dict[str, Any] | None:
    found = rows(conn, sql, params)
    return found[0] if found else None


def scalar(
    conn: apsw.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()
) -> Any:
    """The first column of the first row (None when there is no row)."""
    found = conn.execute(sql, params).fetchone()
    return None if found is None else found[0]


def upsert_sql(table: str, key: str, columns: Sequence[str]) -> str:
    """INSERT of ``columns`` into ``table`` that updates every non-key column when ``key``
    already exists (for reference tables; entity tables refuse re-inserts by trigger)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


def schema_sql(conn: apsw.Connection) -> str:
    """The schema as the snapshot ``sql/schema.sql`` holds it: every object, sorted by type and
    name, each statement as SQLite stored it. Generated objects (the machines' illegal-transition
    triggers) are included: they are part of the schema a fresh database has."""
    objects = conn.execute(
        "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite_%' "
        "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 "
        "ELSE 3 END, name"
    ).fetchall()
    header = (
        "-- Generated by `python tools/gen_docs.py` from a freshly migrated database.\n"
        "-- Do not edit: change sql/NNNN_*.sql or docs/state_machines/*.yaml instead.\n"
        f"-- PRAGMA user_version = {schema_version(conn)};\n"
        f"-- PRAGMA application_id = {APPLICATION_ID};\n\n"
    )
    return header + "".join(f"{sql};\n\n" for _type, _name, sql in objects).rstrip() + "\n"


def checkpoint(conn: apsw.Connection, mode: str = "RESTART") -> tuple[int, int, int]:
    """Checkpoint the WAL; RESTART makes the next writer start at the file's beginning, so the
    WAL stops growing. Returns (busy, log frames, checkpointed frames)."""
    if mode not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
        raise ValueError(mode)
    result = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    if result is None:  # not in WAL mode (e.g. an in-memory database)
        return (0, 0, 0)
    busy, log, done = result
    return int(busy), int(log), int(done)


def wal_size(path: str | os.PathLike[str]) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


#: Bound values per multi-row INSERT statement (SQLite allows 32766).
BATCH_PARAMETERS = 2000


def insert_rows_in_tx(conn: apsw.Connection, insert: str, rows: Sequence[tuple[Any, ...]], *,
                batch_parameters: int = BATCH_PARAMETERS, values: str | None = None) -> None:
    """``insert`` (``INSERT INTO t (columns)``) of every row, ``batch_parameters`` values per
    statement (multi-row VALUES), in the order given. ``values`` is one row's VALUES tuple when
    a column is an expression (one ``?`` per value of a row).

    Why not ``executemany``: an INSERT that fires triggers runs in a statement transaction
    (a RAISE(ABORT) in a trigger undoes just that statement), so SQLite first copies every
    existing page the statement changes into the statement journal: for a task, the leaves
    of the task table and its indexes, of the event table and its indexes, and
    sqlite_sequence: about ten 4 KiB pages. The statement journal lives in memory up to
    64 KiB; once a statement outgrew that, it is a temporary file until the transaction ends,
    and with one statement per task every row cost ~21 pwrite calls (seen with strace):
    ~24 us of the ~36 us a task took, where the trigger itself costs ~5 us. One statement per
    batch journals each page once per batch. The triggers still fire for every row.
    """
    if not rows:
        return
    width = len(rows[0])
    per = max(1, batch_parameters // width)
    values = values or "(" + ", ".join("?" * width) + ")"
    full = f"{insert} VALUES {', '.join([values] * per)}"
    for start in range(0, len(rows), per):
        batch = rows[start:start + per]
        sql = full if len(batch) == per else f"{insert} VALUES {', '.join([values] * len(batch))}"
        conn.execute(sql, list(chain.from_iterable(batch)))
