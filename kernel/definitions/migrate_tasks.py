"""Migrate task files on disk between schema versions (SCHEMA-VER-002): 1.0.0 <-> 2.0.0.

Public API:
    migrate_tasks(tasks_dir, from_version="1.0.0", to_version="2.0.0", dry_run=False, now=None)
        -> MigrationReport       upgrade (or, with to_version="1.0.0", downgrade) every task file
    restore_backup(tasks_dir, backup=None) -> list[str]   put back the newest (or named) backup
    list_backups(tasks_dir) -> list[Path]                 oldest first
    downgrade_v2_to_v1(data) -> dict                      drop the v2 fields from one task dict
    task_files(tasks_dir) -> list[Path]                   the files a migration looks at
    MigrationReport, MigrationError(ValueError), BACKUPS_DIR
    main(argv) -> int        ``python -m kernel.definitions.migrate_tasks [tasks] [--to V]
    [--dry-run]
                             [--restore [NAME]]``

Stability Guarantees:
    All or nothing: every file is read and validated before anything is written; one invalid
    file means no file changes and no backup is made. Before writing, every file that will
    change is copied byte for byte to ``tasks/.backups/<UTC timestamp>/`` with the same
    relative layout; each rewrite is atomic (temp file + ``os.replace``). Output JSON keeps the
    key order, uses a 2-space indent and ends with a newline. Files already at the target
    version are not touched. ``workstream.json`` and dot-directories are skipped. Files are read
    through ``kernel.base.documents`` like ``orch load`` reads them (a FIFO, a directory named
    ``x.json`` or a malformed document is an error of that file, never waited on).

Integration Points:
    The CLI's migrate command calls migrate_tasks / restore_backup and prints the report; the
    per-document conversion is kernel.definitions.task_documents.migrate_v1_to_v2 (also used on
    load), so disk and load migrations cannot drift apart. Documented in docs/schema_migrations/.

Dependencies:
    ``kernel.base.data``, ``kernel.base.errors``, ``kernel.definitions.errors``,
    ``kernel.definitions.fields``, ``kernel.definitions.task_documents``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernel.base.data import schema_url
from kernel.base.errors import OrchError
from kernel.definitions.errors import DefinitionError, Problem
from kernel.definitions.fields import TASK_SCHEMA_VERSION, TASK_V1_SCHEMA_VERSION
from kernel.definitions.task_documents import migrate_v1_to_v2, parse_task, read_task_json

BACKUPS_DIR = ".backups"
V2_FIELDS = ("context_requirements", "validation_rules")
_DIRECTIONS = {
    (TASK_V1_SCHEMA_VERSION, TASK_SCHEMA_VERSION),
    (TASK_SCHEMA_VERSION, TASK_V1_SCHEMA_VERSION),
}
_VERSION_RE = re.compile(r"^([0-9]+)\.([0-9]+)\.[0-9]+")


class MigrationError(OrchError, ValueError):
    """One or more task files cannot be migrated; nothing was written."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = errors
        noun = "file" if len(errors) == 1 else "files"
        super().__init__(
            "migration_failed",
            f"{len(errors)} task {noun} cannot be migrated; nothing was written:\n"
            + "\n".join(str(e) for e in errors),
            hint="fix the files named above, then run the migration again",
        )


@dataclass(frozen=True)
class MigrationReport:
    tasks_dir: Path
    from_version: str
    to_version: str
    dry_run: bool
    changed: tuple[str, ...]  # paths relative to tasks_dir, rewritten (or would be)
    unchanged: tuple[str, ...]  # already at to_version
    backup_dir: Path | None  # None for a dry run or when nothing changed

    def summary(self) -> str:
        verb = "would migrate" if self.dry_run else "migrated"
        lines = [
            f"{verb} {len(self.changed)} task file(s) from {self.from_version} to "
            f"{self.to_version}; {len(self.unchanged)} already at {self.to_version}"
        ]
        lines += [f"  {path}" for path in self.changed]
        if self.backup_dir is not None:
            lines.append(f"backup: {self.backup_dir}")
        return "\n".join(lines)


def task_files(tasks_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in tasks_dir.glob("*/*.json")
        if not path.parent.name.startswith(".") and path.name != "workstream.json"
    )


def downgrade_v2_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A v1.0.0 copy of a v2 task dict: the v2 fields are dropped (lossy), key order kept."""
    out: dict[str, Any] = {}
    if "schema_version" not in data:
        out["schema_version"] = TASK_V1_SCHEMA_VERSION
        out["schema_url"] = schema_url("task", TASK_V1_SCHEMA_VERSION)
    for key, value in data.items():
        if key == "schema_version":
            out[key] = TASK_V1_SCHEMA_VERSION
        elif key == "schema_url":
            out[key] = schema_url("task", TASK_V1_SCHEMA_VERSION)
        elif key not in V2_FIELDS:
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    # The strict parse layer of orch validate/load: a FIFO is refused, not waited on.
    data = read_task_json(path)
    if not isinstance(data, dict):
        raise DefinitionError(str(path), "task definition",
                              [Problem("", "expected a JSON object")])
    return data


def _major_minor(version: Any) -> tuple[str, str] | None:
    match = _VERSION_RE.match(version) if isinstance(version, str) else None
    return (match[1], match[2]) if match else None


def _convert(data: dict[str, Any], name: str, source: str, target: str) -> dict[str, Any] | None:
    """The converted dict, or None when the file is already at the target version."""
    # No schema_version means the current version, as on load
    # (kernel.definitions.task_documents.parse_task).
    version = data.get("schema_version", TASK_SCHEMA_VERSION)
    current = _major_minor(version)
    if current == _major_minor(target):
        return None
    if current != _major_minor(source):
        problem = Problem("schema_version", f"is {version!r}; this migration reads {source}")
        raise DefinitionError(name, "task definition", [problem])
    if target == TASK_SCHEMA_VERSION:
        return migrate_v1_to_v2(data, name)
    parse_task(data, name)  # a downgrade starts from a valid v2 task, so its result is valid v1
    return downgrade_v2_to_v1(data)


def _backup_dir(tasks_dir: Path, now: datetime) -> Path:
    stamp = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    base = tasks_dir / BACKUPS_DIR / stamp.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while candidate.exists():  # two migrations in one second must not share a backup
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def migrate_tasks(
    tasks_dir: Path,
    from_version: str = TASK_V1_SCHEMA_VERSION,
    to_version: str = TASK_SCHEMA_VERSION,
    dry_run: bool = False,
    now: datetime | None = None,
) -> MigrationReport:
    if (from_version, to_version) not in _DIRECTIONS:
        raise ValueError(
            f"cannot migrate task files from {from_version} to {to_version}; supported: "
            "1.0.0 -> 2.0.0 and 2.0.0 -> 1.0.0"
        )
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise FileNotFoundError(f"no tasks directory at {tasks_dir}")
    pending: list[tuple[Path, str, dict[str, Any]]] = []
    unchanged: list[str] = []
    errors: list[DefinitionError] = []
    for path in task_files(tasks_dir):
        rel = path.relative_to(tasks_dir).as_posix()
        try:
            converted = _convert(_read(path), str(path), from_version, to_version)
        except DefinitionError as exc:
            errors.append(exc)
            continue
        if converted is None:
            unchanged.append(rel)
        else:
            pending.append((path, rel, converted))
    if errors:
        raise MigrationError(errors)
    backup = None
    if pending and not dry_run:
        backup = _backup_dir(tasks_dir, now or datetime.now(UTC))
        for path, rel, _ in pending:
            (backup / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, backup / rel)
        for path, _, converted in pending:
            text = json.dumps(converted, indent=2, ensure_ascii=False) + "\n"
            _write_atomic(path, text.encode("utf-8"))
    return MigrationReport(
        tasks_dir=tasks_dir,
        from_version=from_version,
        to_version=to_version,
        dry_run=dry_run,
        changed=tuple(rel for _, rel, _ in pending),
        unchanged=tuple(unchanged),
        backup_dir=backup,
    )


def list_backups(tasks_dir: Path) -> list[Path]:
    root = Path(tasks_dir) / BACKUPS_DIR
    # Timestamps sort as text; a "-2" suffix sorts after its base name, as it should.
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def restore_backup(tasks_dir: Path, backup: str | Path | None = None) -> list[str]:
    """Copy a backup's files back over tasks_dir; returns the restored relative paths.

    Edits made to those files since the migration are overwritten; the backup is kept.
    """
    tasks_dir = Path(tasks_dir)
    backups = list_backups(tasks_dir)
    if backup is None:
        if not backups:
            raise FileNotFoundError(f"no backups in {tasks_dir / BACKUPS_DIR}")
        chosen = backups[-1]
    else:
        chosen = Path(backup)
        if not chosen.is_absolute() and len(chosen.parts) == 1:
            chosen = tasks_dir / BACKUPS_DIR / chosen
        if not chosen.is_dir():
            names = ", ".join(b.name for b in backups) or "none"
            raise FileNotFoundError(f"no backup {backup} (available: {names})")
    restored = []
    for source in sorted(p for p in chosen.rglob("*") if p.is_file()):
        rel = source.relative_to(chosen)
        target = tasks_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, source.read_bytes())
        restored.append(rel.as_posix())
    return restored


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernel.definitions.migrate_tasks", description="Migrate task files on disk."
    )
    parser.add_argument("tasks_dir", nargs="?", default="tasks", type=Path)
    parser.add_argument(
        "--to", default=TASK_SCHEMA_VERSION, choices=[TASK_SCHEMA_VERSION, TASK_V1_SCHEMA_VERSION]
    )
    parser.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    parser.add_argument(
        "--restore", nargs="?", const="", metavar="BACKUP", help="restore a backup (newest)"
    )
    args = parser.parse_args(argv)
    try:
        if args.restore is not None:
            restored = restore_backup(args.tasks_dir, args.restore or None)
            print(f"restored {len(restored)} file(s)")
            return 0
        source = TASK_V1_SCHEMA_VERSION if args.to == TASK_SCHEMA_VERSION else TASK_SCHEMA_VERSION
        print(migrate_tasks(args.tasks_dir, source, args.to, dry_run=args.dry_run).summary())
        return 0
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
