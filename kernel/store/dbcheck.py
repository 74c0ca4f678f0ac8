"""Is this file our database? The checks made before the kernel opens ``.state/kernel.db``, and
the migrations this version knows.

Public API:
    ``check_file(path, *, create=False) -> bool`` (the checks made before SQLite opens the
    file: a regular file, its 100-byte header, its length); ``check_before_open(path, *,
    create, readonly) -> bool`` (``check_file``, then what SQLite reads from the file, on an
    ``immutable`` connection when no journal is beside it: True when that was checked);
    ``check_identity(conn, path, *, create)`` (application_id, user_version, the schema's
    objects, on an open connection); ``quick_check(conn, path)``; ``check_not_newer(conn,
    path)``; ``error_for(exc, path)`` (the ``DatabaseUnavailable`` for an ``apsw.Error``);
    ``access_denied(path, why)``, ``locked_error(path)``; ``Migration``, ``migrations()``,
    ``latest_schema_version()``, ``schema_version(conn)``; constants ``APPLICATION_ID``,
    ``SQLITE_MAGIC``, ``HEADER_BYTES``, ``RESTORE_HINT``, ``EMPTY_HINT``, ``FOREIGN_HINT``,
    ``DAMAGED_CODES`` (the error codes of a file a backup or ``orch init`` must replace).
    ``kernel.store.db`` re-exports the public names its callers use.

Stability Guarantees:
    Nothing here writes to the file: a refused file's bytes are left as they were, and when no
    ``-wal``/``-journal`` was beside it, it is read ``immutable`` so no ``-wal``/``-shm`` is left
    behind either. A refused file raises ``DatabaseUnavailable`` (exit code 3) with one of the
    codes ``database_missing``, ``not_initialised``, ``database_access_denied``,
    ``database_unreadable`` (not a file, not SQLite), ``database_damaged`` (truncated, damaged
    header, CorruptError, I/O error), ``not_an_orch_database``, ``schema_damaged``,
    ``schema_too_new``; an SQLite error met later is mapped by ``error_for``
    (``database_locked``, ``database_damaged``, ``disk_full``, ``database_access_denied``,
    ``database_error``). Codes are only added, never renamed. Migrations are numbered 0001,
    0002, ... without gaps.

Integration Points:
    ``kernel.store.db.open_connection`` runs these checks before and right after it opens a
    connection; ``orch doctor`` and ``orch load`` call ``check_file`` on their own; the
    migrations are applied by ``kernel.store.schema``.

Dependencies:
    apsw; ``kernel.base.data``, ``kernel.base.errors``.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import apsw

from kernel.base.data import sql_dir
from kernel.base.errors import DatabaseUnavailable

APPLICATION_ID = 0x4F524348  # "ORCH" in ASCII

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
    """``check_identity`` on a connection that creates no file: when no ``-wal`` or
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
        check_identity(conn, path, create=create)
    except apsw.Error as exc:
        raise error_for(exc, path) from exc
    finally:
        conn.close()
    return True


def check_identity(conn: apsw.Connection, path: Path, *, create: bool) -> None:
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


def quick_check(conn: apsw.Connection, path: Path) -> None:
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



def check_before_open(path: Path, *, create: bool, readonly: bool) -> bool:
    """Everything that can be checked before the kernel's own connection opens ``path``:
    ``check_file``, then (unless there is no database yet, or a journal is beside it)
    ``check_identity`` on an ``immutable`` connection, and for a writer, that this user may
    write the file. True when the identity was checked (or there is nothing to check yet);
    False when the caller must check it on its own connection."""
    new = check_file(path, create=create)
    checked = new or _check_identity_untouched(path, create=create)
    if not readonly and path.exists() and not os.access(path, os.R_OK | os.W_OK):
        # SQLite would quietly open it read-only and fail at the first write.
        raise access_denied(path, "this user may not write to the database file")
    return checked
