"""Restoring a backup over ``.state/kernel.db``, and the command line that does it.

Public API:
    ``restore(project, src, *, force=False) -> RestoreReport``: check ``src``
    (``kernel.maintain.backup.inspect_database_file``), refuse while the database is in use,
    keep the current database aside as ``.state/kernel.db.before-restore-<timestamp>``, put a
    checked copy of ``src`` in place, migrate it and rewrite the ``.state`` views;
    ``restore_command(project, src)`` (the command line that does it); ``RestoreReport``.

Stability Guarantees:
    ``restore`` never deletes the database it replaces, and never runs while an ``orch run``
    (``scheduler_lock``), a live ``orch worker`` or another process holds the database.
    Refusals raise ``OrchError`` (exit 1) naming the file and what to do; nothing is changed
    then. Whatever the umask, the files a restore writes or keeps aside (the restored
    database, the replaced one and its ``-wal``/``-shm``, the replaced events file) are 0600.

Integration Points:
    ``orch restore`` (``kernel.cli.backup``); ``orch doctor --repair``
    (``kernel.maintain.doctor``) prints ``restore_command`` for the newest usable backup.
    The restored database is migrated by ``Project.open``; the views are rewritten with
    ``kernel.observe.exports.export``.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.maintain.backup``, ``kernel.runtime.executors.local``, ``kernel.runtime.lock``,
    ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import DatabaseUnavailable, OrchError, UsageError
from kernel.base.files import fsync_path, make_private
from kernel.maintain.backup import (
    BACKUP_TIMEOUT_SECONDS,
    STEP_SLEEP_SECONDS,
    copy_checked,
    inspect_database_file,
    remove_with_sidecars,
    unique_path,
    utc_stamp,
)
from kernel.store import db
from kernel.store.project import Project


def _open_processes(paths: Sequence[Path]) -> list[str]:
    """Other processes on this host that have one of ``paths`` open (Linux /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    wanted = {str(p) for p in paths}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        if any(_readlink(fd) in wanted for fd in fds):
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                name = "?"
            found.append(f"process {entry.name} ({name}) has it open")
    return found


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def database_users(project: Project, now: float | None = None) -> list[str]:
    """Why the database is in use, one sentence each: a live ``scheduler_lock`` holder, a live
    ``orch worker``, another process holding the file open. Empty when nobody uses it."""
    from kernel.runtime.executors.local import pid_alive
    from kernel.runtime.lock import live_holder

    now = time.time() if now is None else now
    host = socket.gethostname()
    users: list[str] = []
    path = project.db_path
    if not path.exists():
        return users
    with contextlib.ExitStack() as stack:
        try:
            conn = stack.enter_context(db.open_file(path, busy_timeout_ms=2000))
        except DatabaseUnavailable:
            return users + _open_processes([path, Path(f"{path}-wal")])
        try:
            lock = live_holder(conn, now)
            if lock:
                users.append(f"`orch run` (pid {lock['pid']} on {lock['hostname']}, since "
                                 f"{lock['acquired_at']}) holds the scheduler lock")
            for w in db.rows(conn, "SELECT worker_id, pid, hostname, last_heartbeat_at, "
                             "heartbeat_interval_seconds FROM worker WHERE state IN "
                             "('initializing', 'idle', 'busy') AND pid IS NOT NULL"):
                recent = clock.iso(now - max(60.0, 6 * w["heartbeat_interval_seconds"]))
                if (w["hostname"] == host and w["pid"] != os.getpid() and pid_alive(w["pid"])
                        and (w["last_heartbeat_at"] or "") >= recent):
                    users.append(f"worker {w['worker_id']} (pid {w['pid']}) is running")
        except apsw.Error:  # a damaged or pre-scheduler database: nothing more to learn here
            pass
    return users + _open_processes([path, Path(f"{path}-wal")])


# --------------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class RestoreReport:
    source: str
    target: str
    kept_aside: str | None
    source_schema_version: int
    schema_version: int
    events: int
    max_seq: int | None
    last_event_at: str | None
    seconds: float
    undo: str | None
    log_kept_aside: str | None = None
    views_warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_command(project: Project, src: str | os.PathLike[str]) -> str:
    """The command line that restores ``src`` over the project's database."""
    return (f"orch --root {shlex.quote(str(project.root))} restore "
            f"{shlex.quote(str(src))} --force")


def _move_aside(path: Path, now: float) -> Path:
    """Rename the database, and its -wal/-shm/-journal, to ``<name>.before-restore-<stamp>``.
    A sound database is checkpointed first so the kept file usually stands alone."""
    try:
        with db.open_file(path, readonly=False, busy_timeout_ms=2000) as conn:
            if conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except (apsw.Error, DatabaseUnavailable):
        pass  # damaged: keep every file exactly as it is
    aside = unique_path(path.with_name(f"{path.name}.before-restore-{utc_stamp(now)}"))
    os.replace(path, aside)
    make_private(aside)  # a database made by an older orch, or under another umask, may be 0644
    for suffix in ("-wal", "-shm", "-journal"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{aside}{suffix}"))
            make_private(Path(f"{aside}{suffix}"))
    return aside


def restore(project: Project, src: str | os.PathLike[str], *, force: bool = False,
            timeout: float = BACKUP_TIMEOUT_SECONDS) -> RestoreReport:
    """Replace the project's database with the backup ``src``; the current database is kept
    as ``.state/kernel.db.before-restore-<timestamp>`` (restore that file to undo)."""
    started, now = time.monotonic(), time.time()
    source = Path(src).expanduser().resolve()
    target = project.db_path
    if target.exists() and source.exists() and source.samefile(target):
        raise UsageError("restore_onto_itself", "SRC is the project's database itself",
                         file=str(source), hint="pass a backup file")
    info = inspect_database_file(source, role="backup")
    users = database_users(project, now)
    if users:
        raise OrchError("database_in_use", f"the database is in use: {'; '.join(users)}",
                        file=str(target),
                        hint="stop `orch run` (Ctrl-C) and every `orch worker`, close other "
                             "readers, then retry; nothing was changed")
    if target.exists() and not force:
        raise OrchError("restore_needs_force", "the current database exists and would be replaced",
                        file=str(target),
                        hint="pass --force; the current database is kept as "
                             f"{target.name}.before-restore-<timestamp> so you can undo")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".restore.tmp")
    remove_with_sidecars(tmp)
    with db.open_file(source) as src_conn:
        copy_checked(src_conn, tmp, -1, STEP_SLEEP_SECONDS, timeout)
    aside = _move_aside(target, now) if target.exists() else None
    # The events file mirrors the replaced database: it is kept beside it (it names the events
    # the restore dropped) and written again from the restored one.
    log = project.state_dir / "transitions.jsonl"
    log_aside = None
    if log.exists():
        log_aside = unique_path(log.with_name(f"{log.name}.before-restore-{utc_stamp(now)}"))
        os.replace(log, log_aside)
        make_private(log_aside)
    os.replace(tmp, target)
    fsync_path(target.parent)
    with project.open() as conn:  # migrates the restored file to this orch's schema
        version = db.schema_version(conn)
        views_warning = _export_views(conn, project)
    return RestoreReport(
        source=str(source), target=str(target), kept_aside=str(aside) if aside else None,
        source_schema_version=info.schema_version, schema_version=version, events=info.events,
        max_seq=info.max_seq, last_event_at=info.last_event_at,
        seconds=round(time.monotonic() - started, 3),
        undo=restore_command(project, aside) if aside else None,
        log_kept_aside=str(log_aside) if log_aside else None, views_warning=views_warning)


def _export_views(conn: apsw.Connection, project: Project) -> str | None:
    """Rewrite the .state views from the restored database; a failure is only a warning."""
    try:
        importlib.import_module("kernel.observe.exports").export(conn, project.state_dir, full=True)
    except (ImportError, OSError, apsw.Error, OrchError) as exc:
        return f"the .state views were not rewritten ({exc}); run `orch export`"
    return None
