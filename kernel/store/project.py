"""A user's project on disk: where its root, database, definitions and views are.

Public API:
    ``Project(root)`` with ``state_dir``, ``db_path``, ``tasks_dir``, ``capabilities_dir``,
    ``config_path``, ``logs_dir``, ``config``, ``connect(readonly=False)``, ``require_db()``;
    ``find_root(start=None) -> Path``; ``init_project(root) -> InitReport``.

Stability Guarantees:
    The layout is a contract: ``.state/kernel.db`` (the source of truth), ``.state/*.json`` (views),
    ``tasks/{workstream}/{task}.json``, ``capabilities/*.yaml``, ``orch.toml``. ``init_project`` is
    idempotent and never overwrites a file that exists.

Integration Points:
    Every command resolves its project through ``find_root`` (``--root`` overrides it).

Dependencies:
    apsw; ``kernel.base.config``, ``kernel.base.data``, ``kernel.base.errors``,
    ``kernel.store.db``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import apsw

from kernel.base.config import DEFAULT_CONFIG_TOML, Config, load_config
from kernel.base.data import defaults_dir
from kernel.base.errors import DatabaseUnavailable
from kernel.store import db

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
        if not self.db_path.exists():
            raise DatabaseUnavailable(
                "not_initialised",
                f"no orch database at {self.db_path}",
                file=str(self.db_path),
                hint="run `orch init` in your project (or pass --root DIR)",
            )

    def connect(self, *, readonly: bool = False) -> apsw.Connection:
        self.require_db()
        cfg = self.config.database
        return db.connect(
            self.db_path,
            readonly=readonly,
            durability=cfg.durability,
            busy_timeout_ms=cfg.busy_timeout_ms,
        )


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
    root = root.resolve()
    project = Project(root)
    report = InitReport(root)
    for directory in (project.state_dir, project.tasks_dir, project.capabilities_dir):
        if directory.exists():
            report.kept.append(str(directory.relative_to(root)) + "/")
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
    existed = project.db_path.exists()
    conn = db.connect(project.db_path, durability=project.config.database.durability)
    try:
        report.schema_version = db.schema_version(conn)
    finally:
        conn.close()
    (report.kept if existed else report.created).append(
        str(project.db_path.relative_to(root))
    )
    return report
