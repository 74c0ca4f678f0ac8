"""The one connection factory: opening ``.state/kernel.db``, checks, pragmas, transactions.

Public API:
    ``open_connection(path, *, create=False, readonly=False, durability="normal",
    busy_timeout_ms=5000, verify=False)`` returns an ``apsw.Connection`` with the kernel's
    pragmas, checked but not migrated (``kernel.store.schema.connect`` migrates);
    ``check_file(path, *, create=False)`` (the checks made before SQLite opens
    the file); ``error_for(exc, path)`` (the ``DatabaseUnavailable`` for an ``apsw.Error``);
    ``access_denied(path, why)``, ``locked_error(path)``; context managers ``write_tx(conn)``
    (``BEGIN IMMEDIATE``, after ``writer_lock(conn)``), ``read_tx(conn)`` and
    ``open_file(path, *, readonly=True, create=False)`` (an SQLite file that is not the live
    database: backups, archives, copies; no checks, no pragmas, no writer lock file), and
    ``snapshot(conn)`` (a read transaction, or the caller's); ``rows(conn, sql, params)`` /
    ``row(...)`` return dicts, ``scalar(conn, sql, params)`` one value;
    ``upsert_sql(table, key, columns)``;
    ``migrations()``,
    ``latest_schema_version()``, ``schema_version(conn)``, ``check_not_newer(conn, path)``,
    ``schema_sql(conn)`` (the snapshot
    text of ``sql/schema.sql``), ``checkpoint(conn)``, ``wal_size(path)``, ``sqlite_version()``;
    constants ``APPLICATION_ID``, ``MIN_SQLITE_VERSION``, ``SQLITE_MAGIC``, ``RESTORE_HINT``,
    ``DAMAGED_CODES`` (the error codes of a file a backup or ``orch init`` must replace).

Stability Guarantees:
    A database is only ever migrated forward, and only ``create=True`` (``orch init``, test
    fixtures) makes one: a missing, empty (0-byte) or never-initialised file is otherwise
    refused. Before anything is written, ``open_connection`` checks the file's 100-byte header
    (SQLite
    magic, page size, format versions), its length against the header's page count (when no
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
    apsw; ``kernel.base.data``, ``kernel.base.errors``.

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
    wal_checkpoint(RESTART) run periodically by long-lived writers (``checkpoint()``) so that
                            the WAL cannot grow without bound while readers come and go.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import signal
import stat
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import apsw

from kernel.base.data import sql_dir
from kernel.base.errors import DatabaseUnavailable

APPLICATION_ID = 0x4F524348  # "ORCH" in ASCII
MIN_SQLITE_VERSION = (3, 51, 3)  # older versions have a WAL corruption bug with several writers
DEFAULT_BUSY_TIMEOUT_MS = 5000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
DURABILITY = {"normal": "NORMAL", "full": "FULL"}

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_SQL_DDL = re.compile(
    r"^\s*(CREATE|DROP)\s+(?:UNIQUE\s+)?(?:TEMP(?:ORARY)?\s+)?(TABLE|INDEX|VIEW|TRIGGER)\s+"
    r"(?:IF\s+(?:NOT\s+)?EXISTS\s+)?[\"`\[]?(\w+)", re.I | re.M)

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100

RESTORE_HINT = (
    "restore a backup with `orch restore BACKUP --force` (`orch doctor --repair` names the "
    "newest one in .state/backups/ and what restoring it would lose), or move the file away "
    "and run `orch init` for a new, empty database"
)
EMPTY_HINT = (
    "restore a backup with `orch restore BACKUP --force` (`orch doctor --repair` names the "
    "newest one in .state/backups/), or delete the file and run `orch init` for a new, empty "
    "database (then `orch load` makes every task, finished or not, pending again)"
)
FOREIGN_HINT = (
    "check --root: this is not orch's file. If it replaced orch's database, restore a backup "
    "with `orch restore BACKUP --force`; or move it away and run `orch init`"
)
# Codes of a database file that is there but cannot be used as it is: the cure is a backup
# (`orch restore`) or a new database (`orch init`), never a retry.
DAMAGED_CODES = frozenset({"not_initialised", "database_unreadable", "database_damaged",
                           "not_an_orch_database", "schema_damaged"})


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


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


def migrations() -> list[Migration]:
    found = []
    for path in sorted(sql_dir().glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path))
    numbers = [m.number for m in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations must be numbered 0001, 0002, ... without gaps: {numbers}")
    return found


def latest_schema_version() -> int:
    return len(migrations())


def schema_version(conn: apsw.Connection) -> int:
    return int(conn.pragma("user_version"))


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
    check_library()
    if durability not in DURABILITY:
        raise ValueError(f"durability must be one of {sorted(DURABILITY)}, not {durability!r}")
    if create and readonly:
        raise ValueError("a read-only connection cannot create a database")
    path = Path(path)
    new = check_file(path, create=create)
    checked = new or _check_identity_untouched(path, create=create)
    if not readonly and path.exists() and not os.access(path, os.R_OK | os.W_OK):
        # SQLite would quietly open it read-only and fail at the first write.
        raise access_denied(path, "this user may not write to the database file")
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        conn = apsw.Connection(str(path), flags=flags)
    except apsw.Error as exc:
        raise error_for(exc, path) from exc
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        _busy_timeouts[conn] = busy_timeout_ms / 1000
        if not checked:
            with read_tx(conn):  # one snapshot: another process may be migrating right now
                _check_identity(conn, path, create=create)
        if verify:
            _quick_check(conn, path)
        conn.pragma("foreign_keys", True)
        conn.pragma("recursive_triggers", True)
        if not readonly:
            if conn.pragma("journal_mode") != "wal":
                conn.pragma("journal_mode", "wal")
            conn.pragma("synchronous", DURABILITY[durability])
            conn.pragma("journal_size_limit", JOURNAL_SIZE_LIMIT)
            conn.pragma("temp_store", "MEMORY")
    except apsw.Error as exc:
        conn.close()
        raise error_for(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def locked_error(path: str | os.PathLike[str]) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        "database_locked",
        f"{path} stayed locked by another writer beyond the busy timeout",
        file=str(path),
        hint="another orch process is writing; retry, or find it with `orch doctor`",
    )


# ------------------------------------------------------------------- is this file our database?


def _damaged(path: Path, message: str, code: str = "database_damaged",
             hint: str = RESTORE_HINT) -> DatabaseUnavailable:
    return DatabaseUnavailable(code, message, file=str(path), hint=hint)


def access_denied(path: str | os.PathLike[str], why: str) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        "database_access_denied", f"permission denied: {why}", file=str(path),
        hint="run orch as the user who owns .state/ (`ls -la .state`), or fix the owner and "
             "mode of .state/ and kernel.db (0700 and 0600, owned by that user)",
    )


def _journal_pending(path: Path) -> bool:
    """A non-empty ``-wal`` or ``-journal`` beside the file: its header and length may lag
    behind the real database until SQLite replays or rolls them back."""
    for suffix in ("-wal", "-journal"):
        try:
            if os.stat(f"{path}{suffix}").st_size > 0:
                return True
        except FileNotFoundError:
            continue
        except OSError:
            return True  # cannot tell: do not judge the length
    return False


def _header_problem(header: bytes, size: int, path: Path) -> DatabaseUnavailable | None:
    """What is wrong with the first 100 bytes of a non-empty file, and its length."""
    if header[: len(SQLITE_MAGIC)] != SQLITE_MAGIC[: len(header)]:
        return _damaged(path, "the database file is not an SQLite database (it does not begin "
                              "with the SQLite header: a text file, garbage, or a damaged "
                              "header)", code="database_unreadable")
    if len(header) < HEADER_BYTES:
        return _damaged(path, f"the database file is truncated: {size} bytes, shorter than "
                              f"the {HEADER_BYTES}-byte SQLite header")
    raw_page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        return _damaged(path, f"the database file's header is damaged: page size "
                              f"{raw_page_size} is not a power of two from 512 to 65536")
    if header[18] not in (1, 2) or header[19] not in (1, 2):
        return _damaged(path, f"the database file's header is damaged: unknown file format "
                              f"versions {header[18]}/{header[19]}")
    if header[21:24] != b"\x40\x20\x20":
        return _damaged(path, "the database file's header is damaged: its payload fractions "
                              "are not SQLite's (64/32/32)")
    if _journal_pending(path):
        return None
    if size % page_size:
        return _damaged(path, f"the database file is truncated: {size} bytes is not a whole "
                              f"number of {page_size}-byte pages")
    pages = int.from_bytes(header[28:32], "big")
    change_counter = int.from_bytes(header[24:28], "big")
    valid_for = int.from_bytes(header[92:96], "big")
    # The header's page count is only meaningful when "version-valid-for" matches the change
    # counter (SQLite >= 3.7.0 always keeps them so).
    if pages and change_counter == valid_for and size < pages * page_size:
        return _damaged(path, f"the database file is truncated: its header counts {pages} "
                              f"pages of {page_size} bytes ({pages * page_size} bytes) but the "
                              f"file has {size} bytes")
    return None


def check_file(path: str | os.PathLike[str], *, create: bool = False) -> bool:
    """Check, without SQLite and without writing anything, that ``path`` can be an orch
    database: a regular file, readable, its 100-byte header SQLite's (magic string, page size,
    format versions) and its length consistent with the header's page count (when no
    ``-wal``/``-journal`` is pending). Returns True when there is no database yet (no file, or
    an empty one), which only ``create=True`` accepts; raises ``DatabaseUnavailable`` (exit
    3) otherwise: ``database_missing``, ``not_initialised`` (0 bytes),
    ``database_access_denied``, ``database_unreadable`` (not a file, not SQLite),
    ``database_damaged`` (truncated, damaged header)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        if create:
            return True
        raise DatabaseUnavailable(
            "database_missing", "no database here", file=str(path),
            hint="run `orch init` in the project root (or pass --root DIR); if the project had "
                 "a database, restore a backup with `orch restore BACKUP`",
        ) from exc
    except PermissionError as exc:
        raise access_denied(path, f"cannot look into {path.parent}") from exc
    except OSError as exc:
        raise _damaged(path, f"the database file cannot be read: {exc.strerror}",
                       code="database_unreadable") from exc
    if stat.S_ISDIR(st.st_mode):
        raise _damaged(path, "the database file is a directory, not a file",
                       code="database_unreadable")
    if not stat.S_ISREG(st.st_mode):
        raise _damaged(path, "the database file is not a regular file (a device, FIFO or "
                             "socket)", code="database_unreadable")
    if st.st_size == 0:
        if create:
            return True
        raise _damaged(path, "the database file is empty (0 bytes): nothing was ever written "
                             "to it, or it was truncated", code="not_initialised",
                       hint=EMPTY_HINT)
    try:
        with open(path, "rb") as fh:
            header = fh.read(HEADER_BYTES)
    except PermissionError as exc:
        raise access_denied(path, "this user may not read the database file") from exc
    except OSError as exc:
        raise _damaged(path, f"the database file cannot be read: {exc.strerror}",
                       code="database_unreadable") from exc
    problem = _header_problem(header, st.st_size, path)
    if problem is not None:
        raise problem
    return False


def error_for(exc: apsw.Error, path: str | os.PathLike[str]) -> DatabaseUnavailable:
    """The ``DatabaseUnavailable`` (exit 3) for an SQLite error met on ``path``: locked,
    damaged (CorruptError, NotADBError, IOError), unopenable, not writable, disk full; any
    other SQLite error is ``database_error``."""
    path = Path(path)
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return locked_error(path)
    if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
        return _damaged(path, f"the database file is damaged: {exc}")
    if isinstance(exc, apsw.IOError):
        return _damaged(path, f"the database file cannot be read or written (I/O error: {exc})",
                        hint="check the disk (free space, `dmesg`), then run `orch doctor`; "
                             "if the file is damaged: " + RESTORE_HINT)
    if isinstance(exc, apsw.FullError):
        return DatabaseUnavailable("disk_full", f"the disk is full: {exc}", file=str(path),
                                   hint="free some space, then retry; nothing was committed")
    if isinstance(exc, apsw.ReadOnlyError | apsw.PermissionsError | apsw.AuthError):
        return access_denied(path, f"SQLite may not write to it ({exc})")
    if isinstance(exc, apsw.CantOpenError):
        if not os.access(path.parent, os.W_OK | os.X_OK) or (
                path.exists() and not os.access(path, os.R_OK)):
            return access_denied(path, f"SQLite cannot open it ({exc})")
        return _damaged(path, f"the database file cannot be opened: {exc}",
                        code="database_unreadable")
    return DatabaseUnavailable(
        "database_error", f"SQLite error: {exc}", file=str(path),
        hint="run `orch doctor`; if every check passes, this is a bug in orch: report it with "
             "the output of `orch bundle`",
    )


def _check_identity_untouched(path: Path, *, create: bool) -> bool:
    """``_check_identity`` on a connection that creates no file: when no ``-wal`` or
    ``-journal`` is beside the database, the file alone holds it, and SQLite can read it as
    ``immutable`` (no locks, no ``-shm``/``-wal`` left behind by a refused file). Returns False
    (not checked) when sidecars exist: then the caller checks on its own connection."""
    if any(os.path.lexists(f"{path}{suffix}") for suffix in ("-wal", "-journal")):
        return False
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?immutable=1"
    try:
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error as exc:
        raise error_for(exc, path) from exc
    try:
        _check_identity(conn, path, create=create)
    except apsw.Error as exc:
        raise error_for(exc, path) from exc
    finally:
        conn.close()
    return True


def _check_identity(conn: apsw.Connection, path: Path, *, create: bool) -> None:
    """Refuse, before anything is written, a database that is not orch's, not initialised
    (unless ``create``), newer than this code, or whose schema does not match its version."""
    app_id = int(conn.pragma("application_id"))
    version = schema_version(conn)
    if app_id == APPLICATION_ID and version == latest_schema_version():
        return  # the usual case; reading sqlite_schema would cost a parse of the whole schema
    objects = {
        name: kind for kind, name in conn.execute(
            "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
    }
    if app_id not in (0, APPLICATION_ID):
        raise _damaged(path, f"the database file belongs to another application "
                             f"(application_id {app_id:#x}, orch's is {APPLICATION_ID:#x})",
                       code="not_an_orch_database", hint=FOREIGN_HINT)
    if version == 0 and not objects:
        if create:
            return
        raise _damaged(path, "the database file holds no orch schema: it was never "
                             "initialised", code="not_initialised", hint=EMPTY_HINT)
    if app_id == 0:
        raise _damaged(path, "the database file holds "
                             + ("tables" if objects else f"user_version {version}")
                             + " but was not created by orch (its application_id is 0)",
                       code="not_an_orch_database", hint=FOREIGN_HINT)
    check_not_newer(conn, path)
    problem = _schema_problem(version, objects)
    if problem:
        message, actual = problem
        hint = RESTORE_HINT
        if actual is not None:
            hint = (f"if its user_version was changed by hand, set it back (`PRAGMA "
                    f"user_version = {actual}` in the sqlite3 shell); otherwise " + RESTORE_HINT)
        raise _damaged(path, message, code="schema_damaged", hint=hint)


@functools.cache
def _migration_objects() -> tuple[dict[str, tuple[int, str]], frozenset[str]]:
    """(name -> (the migration that first creates it, its type)) for every table, index, view
    and trigger the migrations create, and the names some migration drops for good."""
    introduced: dict[str, tuple[int, str]] = {}
    dropped: set[str] = set()
    for migration in migrations():
        sql = _SQL_COMMENT.sub("", migration.sql)
        for match in _SQL_DDL.finditer(sql):
            verb, kind, name = match.group(1).upper(), match.group(2).lower(), match.group(3)
            if verb == "CREATE":
                introduced.setdefault(name, (migration.number, kind))
                dropped.discard(name)
            else:
                dropped.add(name)
    return introduced, frozenset(dropped)


def _schema_problem(version: int, objects: dict[str, str]) -> tuple[str, int | None] | None:
    """Why the objects of an orch database do not fit its ``user_version`` (and the version
    they do fit, when that is clear), or None. Objects a later migration introduces must not
    exist yet (a migration would fail on them, or run twice); the tables and views of the
    migrations up to ``version`` must."""
    introduced, dropped = _migration_objects()
    later = sorted(name for name, (number, _) in introduced.items()
                   if number > version and name in objects and name not in dropped)
    if later:
        actual = max(introduced[name][0] for name in later)
        shown = ", ".join(later[:4]) + (", ..." if len(later) > 4 else "")
        return (f"the database schema does not match its version: user_version is {version} "
                f"but it already holds objects of migration {actual} ({shown}); migrating it "
                "again would fail or corrupt it", actual)
    missing = sorted(name for name, (number, kind) in introduced.items()
                     if number <= version and kind in ("table", "view")
                     and name not in objects and name not in dropped)
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        return (f"the database schema is damaged: schema version {version} lacks "
                f"{len(missing)} of its tables and views ({shown})", None)
    return None


def _quick_check(conn: apsw.Connection, path: Path) -> None:
    result = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if result != ["ok"]:
        raise _damaged(path, f"the database file is damaged (quick_check: {'; '.join(result)})")


def check_not_newer(conn: apsw.Connection, path: Path) -> None:
    version, latest = schema_version(conn), latest_schema_version()
    if version > latest:
        from kernel import __version__

        raise DatabaseUnavailable(
            "schema_too_new",
            f"the database has schema version {version}, newer than this orch {__version__} "
            f"understands (up to {latest})",
            file=str(path),
            hint="upgrade orch (pip install -U orch-kernel); the database was not changed",
        )



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
    fd = os.open(f"{conn.filename}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
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
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        conn = apsw.Connection(str(path), flags=flags)
    except apsw.Error as exc:
        raise error_for(exc, path) from exc
    _plain_files.add(conn)
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def write_tx(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """A write transaction taken with BEGIN IMMEDIATE: the write lock is held from the start,
    so a transaction never fails half-way for want of it (no SQLITE_BUSY on upgrade). Kernel
    writers first queue on the writer lock file (see above)."""
    with writer_lock(conn):
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
