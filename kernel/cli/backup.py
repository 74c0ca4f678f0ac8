"""``orch backup``, ``orch bundle``, ``orch restore``.

Public API:
    ``COMMANDS``.

Stability Guarantees:
    See ``kernel.cli``: names, options, JSON shapes and exit codes are a contract. ``--json``
    prints the report of ``kernel.maintain.backup`` (``BackupReport``, ``RestoreReport``) or
    ``kernel.maintain.bundle`` (``BundleReport``) as a dictionary. Exit codes: 0 done; 1 refused
    (DEST
    exists without ``--force``, a source that is not a sound orch backup, a kernel using the
    database) or failed; 2 usage (a bad ``--redact`` regex); 3 the project's database is
    missing or unreadable.

Integration Points:
    ``kernel.maintain.backup.backup``, ``kernel.maintain.bundle.bundle``,
    ``kernel.maintain.restore.restore``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.cli.common``,
    ``kernel.maintain.backup``, ``kernel.maintain.bundle``, ``kernel.maintain.restore``.
"""

from __future__ import annotations

from pathlib import Path

import click

from kernel.base.errors import EXIT_OK
from kernel.base.words import plural
from kernel.cli.common import CliState, command, emit
from kernel.maintain import backup as kbackup
from kernel.maintain import bundle as kbundle
from kernel.maintain import restore as krestore


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def _events(count: int, max_seq: int | None, last_at: str | None) -> str:
    if max_seq is None:
        return "no events"
    return f"{plural(count, 'event')} (up to seq {max_seq}, {last_at})"


@command("backup")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def backup_cmd(state: CliState, dest: Path | None, force: bool) -> int:
    """Write a consistent copy of .state/kernel.db to DEST, safe while `orch run` runs.

    DEST defaults to .state/backups/kernel-<UTC timestamp>.db (a directory gets that name
    inside it). The copy is one self-contained SQLite file (online backup API, no -wal),
    checked with integrity_check and quick_check before it is renamed into place.
    """
    report = kbackup.backup(state.project(), dest, force=force)
    emit(state, report.as_dict(),
         f"backup {report.dest}: {_mib(report.bytes)}, {report.pages} pages, "
         f"{_events(report.events, report.max_seq, report.last_event_at)}, schema version "
         f"{report.schema_version}, {report.seconds:.2f} s")
    return EXIT_OK


@command("bundle")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--redact", "redact", multiple=True, metavar="REGEX",
              help="Also redact matches of this Python regex (repeatable; a group named "
                   "`secret` limits the redaction to that group).")
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def bundle_cmd(state: CliState, dest: Path, redact: tuple[str, ...], force: bool) -> int:
    """Write one .tar.gz for a bug report, with secrets redacted.

    It holds a backup of the database, the .state views, the logs, orch.toml, `orch doctor
    --json` and the versions; tokens, keys and passwords are replaced by [REDACTED]
    everywhere, the database copy included. See README.txt inside, and review it before you
    share it.
    """
    project = state.project()
    # `[bundle] redact = [...]` in orch.toml, then the --redact options.
    configured = project.config.bundle.redact
    report = kbundle.bundle(project, dest, extra_patterns=[*configured, *redact], force=force)

    def text() -> None:
        click.echo(f"bundle {report.dest}: {plural(len(report.members), 'file')}, "
                   f"{plural(report.redactions, 'redaction')}, {report.seconds:.2f} s")
        for member in report.members:
            note = f", {member['redactions']} redacted" if member["redactions"] else ""
            click.echo(f"  {member['name']} ({plural(member['bytes'], 'byte')}{note})")
        for error in report.errors:
            click.echo(f"  warning: {error}")

    emit(state, report.as_dict(), text)
    return EXIT_OK


@command("restore")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True,
              help="Replace the current database (it is kept as "
                   ".state/kernel.db.before-restore-<timestamp>).")
def restore_cmd(state: CliState, src: Path, force: bool) -> int:
    """Put the backup SRC in place of .state/kernel.db, then migrate it.

    SRC must be an orch database that passes integrity_check and is not newer than this orch.
    Refused while `orch run` or an `orch worker` uses the database. The current database is
    moved aside, never deleted: restore the kept file to undo.
    """
    report = krestore.restore(state.project(), src, force=force)

    def text() -> None:
        click.echo(f"restored {report.source} -> {report.target}: "
                   f"{_events(report.events, report.max_seq, report.last_event_at)}, schema "
                   f"version {report.source_schema_version} -> {report.schema_version}")
        if report.kept_aside:
            click.echo(f"the previous database is kept as {report.kept_aside}")
            click.echo(f"to undo: {report.undo}")
        if report.log_kept_aside:
            click.echo(f"the previous events file is kept as {report.log_kept_aside}")
        if report.views_warning:
            click.echo(f"warning: {report.views_warning}")

    emit(state, report.as_dict(), text)
    return EXIT_OK


COMMANDS = [backup_cmd, bundle_cmd, restore_cmd]
