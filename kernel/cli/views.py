"""``orch export``: rewrite every ``.state/`` view from the database.

Public API:
    ``COMMANDS``.

Stability Guarantees:
    ``--json`` prints the export report: ``{timestamp, last_event_seq, tasks, events_appended,
    files_written, workstreams_skipped, seconds, warnings}``. Exit 0 when the views were
    written, 1 when an export problem was reported as a warning.

Integration Points:
    ``kernel.observe.exports.export`` (the same function ``orch run`` calls in the background).

Dependencies:
    click; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.cli.common``,
    ``kernel.observe.exports``.
"""

from __future__ import annotations

import click

from kernel.base.errors import EXIT_FAILED, EXIT_OK
from kernel.base.words import plural
from kernel.cli.common import CliState, command, emit
from kernel.observe.exports import export


@command("export")
def export_cmd(state: CliState) -> int:
    """Rewrite the JSON views under .state/ from the database (current.json, the indices,
    DAG, plan and checkpoint files; transitions.jsonl gets the events it lacks)."""
    project = state.project()
    with project.open(readonly=True) as conn:
        report = export(conn, project.state_dir)

    def text() -> None:
        click.echo(f"exported {plural(report.tasks, 'task')} and "
                   f"{plural(report.events_appended, 'new event')} "
                   f"(up to seq {report.last_event_seq}) into "
                   f"{plural(len(report.files_written), 'file')} "
                   f"under {project.state_dir} in {report.seconds:.2f} s")
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)

    emit(state, report.as_dict(), text)
    return EXIT_FAILED if report.warnings else EXIT_OK


COMMANDS: list[click.Command] = [export_cmd]
