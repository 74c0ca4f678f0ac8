"""Backups of ``.state/kernel.db``, safe while the kernel runs, and checks of a backup file.

Public API:
    ``backup(project_or_db_path, dest=None, *, force=False) -> BackupReport``: one
    self-contained SQLite file (online backup API, journal_mode DELETE, checked, fsynced,
    renamed into place); ``dest=None`` means ``default_backup_path`` (``.state/backups/
    kernel-<UTC timestamp>.db``).
    ``inspect_database_file(path) -> DatabaseInfo`` (is it a sound orch database, and what does
    it hold); ``list_backups(project)`` (newest first); ``SQLITE_MAGIC``, ``BACKUPS_DIR``.
    Helpers shared with ``kernel.maintain.restore``, ``kernel.maintain.redact`` and
    ``kernel.maintain.bundle``: ``finish_single_file(path)`` (make a copy a checked
    rollback-journal file), ``copy_checked(src, tmp, ...)`` (copy a connection into a new
    private file and check it), ``remove_with_sidecars(path)``, ``unique_path(path)``,
    ``utc_stamp(now)``. Restoring is ``kernel.maintain.restore``.

Stability Guarantees:
    A backup is never a raw copy of the WAL-mode file: it is an SQLite snapshot taken with the
    backup API, so it is consistent (gapless events up to its ``max_seq``) and holds every
    transaction committed before it started. An existing destination is never overwritten
    without ``force``; a failed backup leaves no partial file behind. Refusals raise
    ``OrchError`` (exit 1) naming the file and what to do. Error codes are only added.
    Whatever the umask, a backup is 0600 from the moment it is created (``.state/backups/``
    0700): it holds commands, logs and events.

Integration Points:
    ``orch backup|restore`` (``kernel.cli.backup``); ``orch bundle`` (``kernel.maintain.bundle``)
    puts a
    backup in the bundle; ``orch doctor --repair`` (``kernel.maintain.doctor``) finds the newest
    backup
    with ``list_backups`` and checks it with ``inspect_database_file``.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.store.db``, ``kernel.store.project``, ``kernel.store.schema``.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import DatabaseUnavailable, OrchError, UsageError
from kernel.base.files import fsync_path, make_private, open_private, private_dir
from kernel.store import db, schema
from kernel.store.project import Project

SQLITE_MAGIC = b"SQLite format 3\x00"
BACKUPS_DIR = "backups"
PAGES_PER_STEP = 256          # pages copied per backup step (1 MiB at the 4 KiB page size)
STEP_SLEEP_SECONDS = 0.005    # pause between steps: the source's writers get the lock
MAX_RESTARTS = 3              # a source written to this often is then copied in one step
BACKUP_TIMEOUT_SECONDS = 120.0

# --------------------------------------------------------------------------------- backup


@dataclass(frozen=True)
class BackupReport:
    source: str
    dest: str
    pages: int
    bytes: int
    events: int
    max_seq: int | None
    last_event_at: str | None
    schema_version: int
    seconds: float
    steps: int
    restarts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DatabaseInfo:
    """What ``inspect_database_file`` found in a sound orch database file."""

    path: str
    bytes: int
    modified_at: str
    schema_version: int
    events: int
    first_seq: int | None
    max_seq: int | None
    last_event_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def utc_stamp(now: float | None = None) -> str:
    """``now`` (default: the current time) as a compact UTC timestamp for file names."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def unique_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def default_backup_path(state_dir: Path, now: float | None = None) -> Path:
    """``<state_dir>/backups/kernel-<UTC timestamp>.db`` (``-2``, ``-3``... when taken)."""
    return unique_path(state_dir / BACKUPS_DIR / f"kernel-{utc_stamp(now)}.db")



def _create_private(path: Path) -> None:
    """Create ``path`` empty and 0600 before SQLite opens it: SQLite then keeps that mode, and
    gives its journal the same one, so the copy is never readable by others, not even for the
    moment between its creation and a chmod."""
    open_private(path, "wb").close()


def remove_with_sidecars(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _sidecars(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal")) if p.exists()]


def finish_single_file(path: Path) -> tuple[int, dict[str, Any]]:
    """Make ``path`` a rollback-journal file, check it, and describe it. Raises when a check
    fails. Returns (page count, event summary)."""
    with db.open_file(path, readonly=False) as conn:
        if str(conn.pragma("journal_mode")).lower() != "delete":
            conn.pragma("journal_mode", "delete")
        for check in ("integrity_check", "quick_check"):
            result = [str(r[0]) for r in conn.execute(f"PRAGMA {check}").fetchall()]
            if result != ["ok"]:
                raise OrchError("backup_check_failed",
                                f"the copy failed PRAGMA {check}: {'; '.join(result[:5])}",
                                file=str(path),
                                hint="the source database is probably damaged: run "
                                     "`orch doctor`; no backup was written")
        pages = int(conn.pragma("page_count"))
        summary = {**_event_summary(conn), "schema_version": db.schema_version(conn)}
    if _sidecars(path):
        raise OrchError("backup_not_single_file",
                        f"the copy still has {', '.join(p.name for p in _sidecars(path))}",
                        file=str(path), hint="report this as a bug")
    return pages, summary


def _event_summary(conn: apsw.Connection) -> dict[str, Any]:
    try:
        found = db.row(conn, "SELECT COUNT(*) AS n, MIN(seq) AS first, MAX(seq) AS last "
                             "FROM event") or {}
        count, first, last = found.get("n") or 0, found.get("first"), found.get("last")
        last_at = db.scalar(conn, "SELECT timestamp FROM event WHERE seq = ?", (last,))
    except apsw.SQLError:  # no event table (schema version 0)
        return {"events": 0, "first_seq": None, "max_seq": None, "last_event_at": None}
    return {"events": int(count), "first_seq": first, "max_seq": last, "last_event_at": last_at}


def _copy_pages(src: apsw.Connection, dest_path: Path, pages_per_step: int,
                step_sleep: float, timeout: float) -> tuple[int, int]:
    """Copy ``src`` into ``dest_path`` with the backup API, a few pages at a time. A write by
    another connection restarts the copy; after ``MAX_RESTARTS`` restarts the rest is copied in
    one step, which in WAL mode holds only a read snapshot, so writers still go on."""
    deadline = time.monotonic() + timeout
    steps = restarts = 0
    with db.open_file(dest_path, readonly=False, create=True) as dest, \
            dest.backup("main", src, "main") as job:
        previous: int | None = None
        while not job.done:
            pages = pages_per_step if restarts < MAX_RESTARTS else -1
            try:
                job.step(pages)
            except (apsw.BusyError, apsw.LockedError) as exc:
                if time.monotonic() > deadline:
                    raise db.locked_error(dest_path) from exc
                time.sleep(step_sleep * 10)
                continue
            steps += 1
            if previous is not None and not job.done and job.remaining >= previous:
                restarts += 1
            previous = job.remaining
            if not job.done:
                time.sleep(step_sleep)
    return steps, restarts


def copy_checked(src: apsw.Connection, tmp: Path, pages_per_step: int, step_sleep: float,
                  timeout: float) -> tuple[int, int, int, dict[str, Any]]:
    """Copy ``src`` into the new private file ``tmp``, make it a checked single file and sync
    it: (steps, restarts, pages, event summary). On any failure ``tmp`` is removed."""
    try:
        _create_private(tmp)
        steps, restarts = _copy_pages(src, tmp, pages_per_step, step_sleep, timeout)
        pages, summary = finish_single_file(tmp)
        make_private(tmp)
        fsync_path(tmp)
    except BaseException:
        remove_with_sidecars(tmp)
        raise
    return steps, restarts, pages, summary


def _resolve_source(source: Project | str | os.PathLike[str]) -> tuple[Path, Path]:
    """(database path, state directory) of a project, a project root or a database file."""
    if isinstance(source, Project):
        source.require_db()
        return source.db_path, source.state_dir
    path = Path(source).resolve()
    if path.is_dir():
        project = Project(path)
        project.require_db()
        return project.db_path, project.state_dir
    if not path.exists():
        raise OrchError("database_missing", f"no database at {path}", file=str(path),
                        hint="pass a project root or an existing kernel.db", exit_code=3)
    return path, path.parent


def _check_dest(dest: Path, source: Path, force: bool) -> None:
    if dest.exists() and source.exists() and dest.samefile(source):
        raise UsageError("backup_onto_source", "DEST is the database itself",
                         file=str(dest), hint="choose another DEST")
    live = _sidecars(dest)
    if live:
        raise OrchError("destination_in_use",
                        f"DEST looks like a live database (it has "
                        f"{', '.join(p.name for p in live)} next to it)",
                        file=str(dest), hint="choose another DEST; --force will not replace it")
    if dest.exists() and not force:
        raise OrchError("destination_exists", "DEST already exists", file=str(dest),
                        hint="pass --force to overwrite it, or choose another DEST")


def backup(
    project_or_db_path: Project | str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    pages_per_step: int = PAGES_PER_STEP,
    step_sleep: float = STEP_SLEEP_SECONDS,
    timeout: float = BACKUP_TIMEOUT_SECONDS,
) -> BackupReport:
    """Write a consistent, checked, single-file copy of the database to ``dest`` (default:
    ``.state/backups/kernel-<timestamp>.db``; a directory gets that name inside it). Safe while
    ``orch run`` writes: only a read snapshot of the source is held."""
    started = time.monotonic()
    source, state_dir = _resolve_source(project_or_db_path)
    if dest is None:
        private_dir(state_dir / BACKUPS_DIR)
        target = default_backup_path(state_dir)
    else:
        target = Path(dest).expanduser().resolve()
        if target.is_dir():
            target = unique_path(target / f"kernel-{utc_stamp()}.db")
    _check_dest(target, source, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    remove_with_sidecars(tmp)
    with contextlib.closing(schema.connect(source, readonly=True)) as src:
        steps, restarts, pages, summary = copy_checked(src, tmp, pages_per_step, step_sleep,
                                                        timeout)
    os.replace(tmp, target)
    fsync_path(target.parent)
    return BackupReport(
        source=str(source), dest=str(target), pages=pages, bytes=target.stat().st_size,
        events=summary["events"], max_seq=summary["max_seq"],
        last_event_at=summary["last_event_at"], schema_version=summary["schema_version"],
        seconds=round(time.monotonic() - started, 3), steps=steps, restarts=restarts)


# --------------------------------------------------------------------------------- checks


def inspect_database_file(path: str | os.PathLike[str], *, role: str = "backup") -> DatabaseInfo:
    """Check that ``path`` is a sound orch database this kernel can use: an SQLite file, orch's
    application_id, a schema not newer than this orch, and ``integrity_check`` ok. Raises
    ``OrchError`` (exit 1) with a code ``<role>_missing|not_sqlite|foreign|too_new|damaged``."""
    path = Path(path)
    if not path.is_file():
        raise OrchError(f"{role}_missing", f"the {role} file does not exist or is not a file",
                        file=str(path), hint="check the path (backups are in .state/backups/)")
    with open(path, "rb") as fh:
        header = fh.read(len(SQLITE_MAGIC))
    if header != SQLITE_MAGIC:
        raise OrchError(f"{role}_not_sqlite", f"the {role} file is not an SQLite database",
                        file=str(path), hint="pick a file written by `orch backup`")
    with contextlib.ExitStack() as stack:
        try:
            conn = stack.enter_context(db.open_file(path))
        except DatabaseUnavailable as exc:
            raise OrchError(f"{role}_damaged", f"the {role} file cannot be opened: {exc.message}",
                            file=str(path), hint="pick another backup") from exc
        try:
            app_id = int(conn.pragma("application_id"))
            version = db.schema_version(conn)
            if app_id != db.APPLICATION_ID:
                raise OrchError(f"{role}_foreign",
                                f"the {role} file is not an orch database "
                                f"(application_id {app_id:#x})",
                                file=str(path), hint="pick a file written by `orch backup`")
            latest = db.latest_schema_version()
            if version > latest:
                from kernel import __version__

                raise OrchError(f"{role}_too_new",
                                f"the {role} file has schema version {version}, newer "
                                f"than this orch {__version__} understands (up to {latest})",
                                file=str(path), hint="upgrade orch (pip install -U orch-kernel)")
            result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
            summary = _event_summary(conn)
        except apsw.Error as exc:  # NotADBError, CorruptError, ...
            raise OrchError(f"{role}_damaged", f"the {role} file is damaged: {exc}", file=str(path),
                            hint="pick another backup") from exc
    if result != ["ok"]:
        raise OrchError(f"{role}_damaged",
                        f"the {role} file fails integrity_check: {'; '.join(result[:5])}",
                        file=str(path), hint="pick another backup")
    stat = path.stat()
    return DatabaseInfo(path=str(path), bytes=stat.st_size, modified_at=clock.iso(stat.st_mtime),
                        schema_version=version, events=summary["events"],
                        first_seq=summary["first_seq"], max_seq=summary["max_seq"],
                        last_event_at=summary["last_event_at"])


def _has_sqlite_header(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def list_backups(project: Project) -> list[Path]:
    """The files in ``.state/backups/``, newest first (by modification time, then name)."""
    directory = project.state_dir / BACKUPS_DIR
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if p.is_file() and not p.name.endswith((".tmp", "-wal", "-shm", "-journal"))
             and (p.suffix == ".db" or _has_sqlite_header(p))]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
