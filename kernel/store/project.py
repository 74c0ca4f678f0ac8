"""A user's project on disk: where its root, database, definitions and views are.

Public API:
    ``Project(root)`` with ``state_dir``, ``db_path``, ``tasks_dir``, ``capabilities_dir``,
    ``config_path``, ``logs_dir``, ``config``, ``connect(readonly=False, verify=False)``,
    ``open(readonly=False,
    verify=False)`` (the same connection as a context manager, closed on exit),
    ``require_db()``; ``find_root(start=None) -> Path``; ``init_project(root) -> InitReport``.

Stability Guarantees:
    The layout is a contract: ``.state/kernel.db`` (the source of truth), ``.state/*.json`` (views),
    ``tasks/{workstream}/{task}.json``, ``capabilities/*.yaml``, ``orch.toml``. ``init_project`` is
    idempotent and never overwrites a file that exists. It is the only place a project's
    database is created: ``.state/`` 0700 and ``kernel.db`` 0600 whatever the umask (when it
    creates them), the database built in a temporary file and linked into place whole.
    ``Project.connect`` never creates one: a missing, empty, damaged or foreign file is
    refused with ``DatabaseUnavailable`` (exit 3), also by ``init_project`` itself, which also
    refuses to create one beside a leftover non-empty ``kernel.db-wal`` (SQLite would replay
    it into the new file).

Integration Points:
    Every command resolves its project through ``find_root`` (``--root`` overrides it).

Dependencies:
    apsw; ``kernel.base.config``, ``kernel.base.data``, ``kernel.base.errors``,
    ``kernel.base.files``, ``kernel.store.db``, ``kernel.store.schema``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import apsw

from kernel.base.config import DEFAULT_CONFIG_TOML, Config, load_config
from kernel.base.data import defaults_dir
from kernel.base.errors import DatabaseUnavailable
from kernel.base.files import fsync_path, open_private, private_dir
from kernel.store import db, schema

STATE_DIR = ".state"
DB_NAME = "kernel.db"


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` holding ``.state/``, else ``start``."""
    start = (start or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / STATE_DIR).is_dir():
            return candidate
    return start


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_NAME

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def capabilities_dir(self) -> Path:
        return self.root / "capabilities"

    @property
    def config_path(self) -> Path:
        return self.root / "orch.toml"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    def require_db(self) -> None:
        """Raise ``DatabaseUnavailable`` (exit 3) when there is no ``.state/kernel.db`` at
        all (``not_initialised``) or it cannot be looked at (``database_access_denied``).
        What the file holds is checked when it is opened (``schema.connect``, ``db.check_file``)."""
        try:
            os.lstat(self.db_path)
        except PermissionError as exc:
            raise db.access_denied(self.db_path, f"cannot look into {self.state_dir}") from exc
        except OSError as exc:
            raise DatabaseUnavailable(
                "not_initialised",
                f"no orch database at {self.db_path}",
                file=str(self.db_path),
                hint="run `orch init` in your project (or pass --root DIR); if the project had "
                     "a database, restore a backup with `orch restore BACKUP`",
            ) from exc

    def connect(self, *, readonly: bool = False, verify: bool = False) -> apsw.Connection:
        """The project's database (``schema.connect``): never created here, only by
        ``init_project``; ``verify`` runs ``PRAGMA quick_check`` before anything is written."""
        self.require_db()
        cfg = self.config.database
        return schema.connect(
            self.db_path,
            readonly=readonly,
            durability=cfg.durability,
            busy_timeout_ms=cfg.busy_timeout_ms,
            verify=verify,
        )

    @contextlib.contextmanager
    def open(self, *, readonly: bool = False, verify: bool = False
             ) -> Iterator[apsw.Connection]:
        """``with project.open() as conn:`` the connection of ``connect``, closed on exit."""
        conn = self.connect(readonly=readonly, verify=verify)
        try:
            yield conn
        finally:
            conn.close()


@dataclass
class InitReport:
    root: Path
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    schema_version: int = 0


def _write_if_missing(path: Path, text: str, report: InitReport, root: Path) -> None:
    rel = str(path.relative_to(root))
    if path.exists():
        report.kept.append(rel)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    report.created.append(rel)


def init_project(root: Path) -> InitReport:
    """``orch init``: create what is missing (``.state/`` 0700, ``tasks/``, ``capabilities/``,
    ``orch.toml``, the registries, the database 0600), keep what exists. The only place a new
    database is made: built in a temporary file and linked into place whole, so a crash never
    leaves an empty or half-made ``kernel.db``. An existing database is opened (and migrated)
    as every command does: an empty, damaged or foreign one is refused (exit 3), never
    replaced."""
    root = root.resolve()
    project = Project(root)
    report = InitReport(root)
    for directory in (project.state_dir, project.tasks_dir, project.capabilities_dir):
        if directory.exists():
            report.kept.append(str(directory.relative_to(root)) + "/")
        else:
            if directory == project.state_dir:
                private_dir(directory)  # the database, logs and events are the owner's only
            else:
                directory.mkdir(parents=True)
            report.created.append(str(directory.relative_to(root)) + "/")
    # The kernel's own files never show up in `git status` (so git_clean stays meaningful),
    # without touching the user's .gitignore.
    _write_if_missing(
        project.state_dir / ".gitignore",
        "# Written by orch init: the kernel's state is not part of your repository.\n*\n",
        report, root,
    )
    _write_if_missing(project.config_path, DEFAULT_CONFIG_TOML, report, root)
    for name in ("registry.yaml", "resources.yaml"):
        source = defaults_dir() / name
        target = project.capabilities_dir / name
        if source.exists():
            if target.exists():
                report.kept.append(str(target.relative_to(root)))
            else:
                shutil.copyfile(source, target)
                report.created.append(str(target.relative_to(root)))
    durability = project.config.database.durability
    created = not os.path.lexists(project.db_path) and _create_database(project, durability)
    conn = schema.connect(project.db_path, durability=durability)
    try:
        report.schema_version = db.schema_version(conn)
    finally:
        conn.close()
    (report.created if created else report.kept).append(
        str(project.db_path.relative_to(root))
    )
    return report


def _create_database(project: Project, durability: str) -> bool:
    """Build a new database beside ``kernel.db`` (0600 whatever the umask) and link it into
    place. False when another ``orch init`` linked its own first (then that one is kept)."""
    for suffix in ("-wal", "-journal"):
        orphan = Path(f"{project.db_path}{suffix}")
        if orphan.is_file() and orphan.stat().st_size > 0:
            # SQLite would replay it into the new file: the old database's pages in a new one.
            raise DatabaseUnavailable(
                "database_missing",
                f"there is no database, but its {orphan.name} is still there: the database "
                "was deleted or moved without it",
                file=str(project.db_path),
                hint=f"put the database back beside {orphan.name}, or restore a backup with "
                     f"`orch restore BACKUP`; to start afresh, move {orphan.name} away and run "
                     "`orch init` again",
            )
    tmp = project.state_dir / f"{DB_NAME}.init-{os.getpid()}.tmp"
    _remove_with_sidecars(tmp)
    try:
        try:
            open_private(tmp, "wb").close()
        except PermissionError as exc:
            raise db.access_denied(project.db_path,
                                   f"cannot create files in {project.state_dir}") from exc
        conn = schema.connect(tmp, create=True, durability=durability)
        conn.close()  # the last connection: SQLite checkpoints and removes the -wal
        fsync_path(tmp)
        try:
            os.link(tmp, project.db_path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            if os.path.lexists(project.db_path):
                return False
            os.rename(tmp, project.db_path)
        fsync_path(project.state_dir)
        return True
    finally:
        _remove_with_sidecars(tmp)


def _remove_with_sidecars(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".writer-lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
