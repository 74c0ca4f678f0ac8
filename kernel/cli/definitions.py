"""``orch validate``, ``orch load`` and ``orch migrate-tasks``: the definitions on disk.

Public API:
    ``COMMANDS`` (the click commands this module adds to ``orch``); ``format_problems(problems)``
    (the text listing both commands print); ``BACKGROUND_EXPORT_TASKS``.

Stability Guarantees:
    See ``kernel.cli``. ``validate --json`` prints ``{"ok", "problems": [{code, severity, file,
    line, column, path, message, hint}], "counts": {errors, warnings, files, tasks,
    workstreams, migrated}}``, plus ``"error": {code, message, file, line, hint}`` (the first
    error) when there is one; exit 1 on any error, 0 with warnings only. ``load --json``
    prints ``LoadReport.as_dict()`` on success; on failure the validate shape plus ``error``,
    exit 1; ``load --json`` adds ``"views"``: ``"written"`` (before the command exits),
    ``"background"`` or ``"unchanged"``. ``validate`` writes nothing but its parse cache;
    ``load`` writes all or nothing, prints its result as soon as the load has committed, then
    brings the ``.state/`` views up to date (``kernel.observe.exports.export_after_change``;
    skipped when nothing changed): before it exits, or, when it wrote
    ``BACKGROUND_EXPORT_TASKS`` tasks or more, in a detached background process.

Integration Points:
    ``kernel.definitions.check.validate``, ``kernel.definitions.load.load``,
    ``kernel.definitions.migrate_tasks``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.cli.common``,
    ``kernel.definitions.check``, ``kernel.definitions.fields``, ``kernel.definitions.load``,
    ``kernel.definitions.migrate_tasks``, ``kernel.definitions.records``,
    ``kernel.observe.exports``, ``kernel.store.project``.
"""

from __future__ import annotations

import os
import sys
from itertools import groupby
from pathlib import Path

import click

from kernel.base.errors import EXIT_FAILED, EXIT_OK, OrchError, UsageError
from kernel.base.words import plural
from kernel.cli.common import CliState, command, emit
from kernel.definitions.check import ValidationResult, validate
from kernel.definitions.fields import TASK_SCHEMA_VERSION, TASK_V1_SCHEMA_VERSION
from kernel.definitions.load import LoadError, LoadReport, load
from kernel.definitions.migrate_tasks import list_backups, migrate_tasks, restore_backup
from kernel.definitions.records import ERROR, ValidationProblem, problem_order
from kernel.observe.exports import export_after_change
from kernel.store.project import Project

_COLOUR = {"error": "red", "warning": "yellow"}
# A load that writes this many tasks brings the views up to date in a background process:
# a full export of 100k tasks plans every workstream (seconds), after the load has committed.
BACKGROUND_EXPORT_TASKS = 10_000


def format_problems(problems: list[ValidationProblem]) -> list[str]:
    """Problems grouped by file, in file and line order; errors red, warnings yellow."""
    lines: list[str] = []
    ordered = sorted(problems, key=problem_order)
    for file, group in groupby(ordered, key=lambda p: p.file or "(the project)"):
        lines.append(click.style(file, bold=True))
        for p in group:
            where = f"{file}:{p.line}" + (f":{p.column}" if p.column else "") if p.line else file
            label = click.style(f"{p.severity:<7}", fg=_COLOUR[p.severity], bold=True)
            at = f" {p.path}:" if p.path else ""
            lines.append(f"  {label} {where}{at} {p.message} [{p.code}]")
            if p.hint:
                lines.append(f"          hint: {p.hint}")
    return lines


def _counts_line(result: ValidationResult) -> str:
    c = result.counts()
    migrated = f", {c['migrated']} migrated from v1" if c["migrated"] else ""
    text = (f"{plural(c['files'], 'task file')}, {plural(c['tasks'], 'valid task')} in "
            f"{plural(c['workstreams'], 'workstream')}{migrated}: "
            f"{plural(c['errors'], 'error')}, {plural(c['warnings'], 'warning')}")
    return click.style(text, fg="red" if c["errors"] else ("yellow" if c["warnings"]
                                                            else "green"))


@command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
def validate_cmd(state: CliState, paths: tuple[str, ...]) -> int:
    """Check task files, workstream files and the registries, reporting every problem.

    PATHS may be task files, directories or registry YAML files; default: the project's
    tasks/ and capabilities/. Reads the database if there is one (dependencies on loaded
    tasks), never writes. Exit 1 on any error; warnings alone exit 0.
    """
    result = validate(state.project(), list(paths) or None)

    def text() -> None:
        for line in format_problems(result.problems):
            click.echo(line)
        click.echo(_counts_line(result))

    data = result.as_dict()
    if not result.ok:
        data["error"] = _error(result.problems).as_dict()
    emit(state, data, text)
    return EXIT_OK if result.ok else EXIT_FAILED


def _error(problems: list[ValidationProblem]) -> OrchError:
    """The ``error`` object of a failed ``validate --json``: the first error, and how many."""
    errors = [p for p in problems if p.severity == ERROR]
    first = errors[0]
    where = f"{first.path}: " if first.path else ""
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return OrchError("invalid_definitions", f"{where}{first.message}{more}", file=first.file,
                     line=first.line, hint=first.hint or "fix the problems listed")


@command("load")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
def load_cmd(state: CliState, paths: tuple[str, ...]) -> int:
    """Validate, then import the definitions into the database in one transaction.

    Creates workstreams and tasks, updates pending tasks whose file changed, and moves
    planned workstreams to ready. Unchanged files are a no-op; any error loads nothing.
    """
    project = state.project()
    try:
        report = load(project, list(paths) or None)
    except LoadError as err:
        problems = err.problems
        errors = sum(1 for p in problems if p.severity == ERROR)
        data = {"ok": False, "error": err.as_dict(),
                "problems": [p.as_dict() for p in problems],
                "counts": {"errors": errors, "warnings": len(problems) - errors}}

        def failed() -> None:
            for line in format_problems(problems):
                click.echo(line)
            click.secho(f"{plural(errors, 'error')}: nothing was loaded", fg="red", bold=True)

        emit(state, data, failed)
        return EXIT_FAILED
    changed = report.changed
    # The result is printed as soon as the load has committed; the views are brought up to
    # date after it: before the command exits, or for a large load in a background process.
    export = changed and project.config.views.export
    background = (export and _written(report) >= BACKGROUND_EXPORT_TASKS
                  and hasattr(os, "fork"))
    data = report.as_dict()
    data["views"] = "background" if background else "written" if export else "unchanged"

    def text() -> None:
        for line in format_problems(report.warnings):
            click.echo(line)
        click.echo(report.summary())
        if background:
            click.echo("views: being brought up to date in the background "
                       "(`orch export` waits for them)")

    emit(state, data, text)
    sys.stdout.flush()
    sys.stderr.flush()
    if background:
        _export_in_background(project)
        return EXIT_OK
    exported = export_after_change(project) if export else None
    for warning in exported.warnings if exported and not state.json else ():
        click.echo(f"warning: {warning}", err=True)
    return EXIT_OK


def _written(report: LoadReport) -> int:
    return report.tasks_created + len(report.tasks_updated)


def _export_in_background(project: Project) -> None:
    """Bring the views up to date in a detached process (a new session, its standard streams
    on /dev/null, reparented at once: nobody waits for it). Exports take the views lock and
    read the database when they hold it, so a later export never leaves older views behind."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:
        if os.fork() == 0:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            export_after_change(project)
    finally:
        os._exit(0)


@command("migrate-tasks")
@click.option("--from", "from_version", default=TASK_V1_SCHEMA_VERSION, show_default=True,
              help="Schema version the files are at.")
@click.option("--to", "to_version", default=TASK_SCHEMA_VERSION, show_default=True,
              help="Schema version to write (2.0.0 -> 1.0.0 drops the v2 fields).")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--restore-backup", "restore", is_flag=False, flag_value="", default=None,
              metavar="[NAME]", help="Put back a backup of tasks/.backups/ (default: the "
              "newest; give DIRECTORY before this option).")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=str))
def migrate_tasks_cmd(state: CliState, from_version: str, to_version: str, dry_run: bool,
                      restore: str | None, directory: str | None) -> int:
    """Rewrite task files between schema versions, with a backup (all or nothing).

    DIRECTORY defaults to the project's tasks/. Every changed file is first copied to
    tasks/.backups/<UTC timestamp>/; --restore-backup copies one back.
    """
    tasks_dir = Path(directory) if directory else state.project().tasks_dir
    try:
        if restore is not None:
            backups = list_backups(tasks_dir)
            name = restore or (backups[-1].name if backups else None)
            restored = restore_backup(tasks_dir, restore or None)
            emit(state, {"backup": name, "restored": restored},
                 f"restored {len(restored)} file(s) from backup {name}")
            return EXIT_OK
        report = migrate_tasks(tasks_dir, from_version, to_version, dry_run=dry_run)
    except FileNotFoundError as exc:
        raise OrchError("not_found", str(exc), hint="see `orch migrate-tasks --help`") from None
    except OrchError:
        raise
    except ValueError as exc:
        raise UsageError("usage", str(exc)) from None
    emit(state, {"dry_run": report.dry_run, "from": report.from_version,
                 "to": report.to_version, "changed": list(report.changed),
                 "unchanged": list(report.unchanged),
                 "backup": str(report.backup_dir) if report.backup_dir else None},
         report.summary())
    return EXIT_OK


COMMANDS = [validate_cmd, load_cmd, migrate_tasks_cmd]
