"""``orch plan [WS] [--format table|json|mermaid|dot|svg] [--output FILE]``: the execution plan
of workstreams.

Public API:
    ``COMMANDS`` (``plan``).

Stability Guarantees:
    See ``kernel.cli``. ``--json`` is ``--format json``: with WS it prints that workstream's
    DAG-VIEW-003 document (plus ``external_dependencies``), without WS
    ``{"workstreams": {id: document}}`` (``{}`` for a project with no workstreams, exit 0).
    ``--json`` together with ``--format mermaid|dot|svg`` is a usage error (exit 2). With
    ``--format json`` (or ``--json``) errors are printed as the JSON error document
    ``{"error": {...}}`` on stdout too, with the same exit codes. Mermaid, DOT and SVG
    draw one workstream: WS is required unless the project holds exactly one (then that one is
    drawn); with several the command exits 2 and lists them. An unknown WS exits 1 with
    ``unknown_workstream``. The table is for people and may change; it fits 80 columns on a
    terminal; piped, the stages are tab-separated with every task id whole.
    ``--output FILE`` writes a diagram to FILE (replaced whole) instead of stdout; it is a usage
    error with the table or JSON. The SVG is the picture of ``orch browse``'s DAG pages (one
    renderer, ``kernel.planning.svg``), all stages in one file, without links.

Integration Points:
    ``kernel.planning.plan`` (documents from the database), ``kernel.planning.render`` (table,
    Mermaid, DOT), ``kernel.planning.svg`` (SVG).
    Everything is read in one snapshot from a read-only connection; nothing is written.

Dependencies:
    apsw, click, rich; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.planning.plan``,
    ``kernel.planning.render``, ``kernel.planning.svg``, ``kernel.store.db``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import apsw
import click
from rich.table import Table
from rich.text import Text

from kernel.base.errors import EXIT_OK, OrchError, UsageError
from kernel.cli.common import (
    CliState,
    command,
    complete_workstreams,
    emit,
    emit_error,
    make_console,
    print_table,
)
from kernel.planning.plan import all_workstreams, plan_document, workstream_plan
from kernel.planning.render import (
    CRITICAL_MARK,
    format_duration,
    plan_dot,
    plan_mermaid,
    plan_table,
)
from kernel.store import db
from kernel.store.db import locked_error

FORMATS = ("table", "json", "mermaid", "dot", "svg")
DIAGRAMS = ("mermaid", "dot", "svg")
_EMPTY = (
    "No workstreams loaded yet: nothing to plan.\n"
    "Write tasks/<workstream>/<task>.json, check them with `orch validate`, import them\n"
    "with `orch load`, then run `orch plan` again. `orch demo` shows a worked example."
)


def _diagram_workstream(workstream: str | None, known: list[str], fmt: str) -> str | None:
    """The one workstream a diagram draws, None for an empty project."""
    if workstream is not None or len(known) <= 1:
        return workstream if workstream is not None else (known[0] if known else None)
    raise UsageError(
        "usage",
        f"--format {fmt} draws one workstream; this project has {len(known)}: "
        + ", ".join(known),
        hint=f"name one: orch plan {known[0]} --format {fmt}",
    )


def _piped_table(plan: dict) -> Table:
    """The plan's stages for a program: every task id whole (the terminal table cuts long
    lists to fit 80 columns), printed tab-separated by ``print_table``."""
    table = Table(title=Text(f"Execution plan {plan['workstream_id']}"))
    for name in ("stage", "tasks", "parallelism", "estimated", "critical"):
        table.add_column(name)
    for stage in plan["stages"]:
        table.add_row(str(stage["stage"]), Text(", ".join(stage["parallel_tasks"])),
                      str(stage["max_parallelism"]),
                      format_duration(stage["estimated_duration_seconds"]),
                      CRITICAL_MARK if stage["critical_path"] else "")
    return table


def _print_tables(plans: dict[str, dict]) -> None:
    console = make_console()
    for index, plan in enumerate(plans.values()):
        if index:
            console.print()
        if console.is_terminal:
            plan_table(plan, console)
        else:
            print_table(console, _piped_table(plan))
            click.echo("critical path\t" + (" -> ".join(plan["critical_path_tasks"])
                                             or "(empty)"))
        for edge in plan["external_dependencies"]:
            console.print(
                f"External: {edge['task_id']} waits for {edge['depends_on']} "
                f"(workstream {edge['workstream_id']})",
                markup=False,
                soft_wrap=True,
            )


@command("plan")
@click.argument("workstream", required=False, shell_complete=complete_workstreams)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="table (default), json (same as --json), mermaid, dot or svg.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the diagram (mermaid, dot or svg) to this file instead of stdout.")
def plan_cmd(state: CliState, workstream: str | None, fmt: str | None,
             output: str | None) -> int:
    """Show the execution plan: stages of tasks that may run in parallel, the lanes each uses
    (max_parallelism), estimated durations and the critical path.

    Without WORKSTREAM the table and JSON cover every workstream; Mermaid, DOT and SVG draw one
    workstream, so name it unless the project holds only one. Dependencies on tasks of other
    workstreams are not part of a workstream's graph; they are listed as external.
    """
    if state.json and fmt not in (None, "json"):
        raise UsageError(
            "usage",
            f"--json prints the plan as JSON; it cannot be combined with --format {fmt}",
            hint=f"drop --json to get {fmt} source",
        )
    fmt = "json" if state.json else (fmt or "table")
    state.json = fmt == "json"
    if output is not None and fmt not in DIAGRAMS:
        raise UsageError("usage", f"--output writes a diagram; --format {fmt} prints to stdout",
                         hint="use --format mermaid, dot or svg with --output")
    try:
        return _plan(state, workstream, fmt, output)
    except OrchError as err:
        if fmt != "json":
            raise
        # `--format json` without `--json`: kernel.cli.run only sees --json in argv, so the
        # error document is printed here (one JSON document on stdout, errors included).
        emit_error(err, True)
        return err.exit_code
    except apsw.BusyError:
        if fmt != "json":
            raise
        locked = locked_error(".state/kernel.db")
        emit_error(locked, True)
        return locked.exit_code


def _diagram(fmt: str, dag_doc: dict, plan_doc: dict) -> str:
    if fmt == "svg":
        from kernel.planning.svg import plan_svg

        return plan_svg(dag_doc, plan_doc)
    return (plan_mermaid if fmt == "mermaid" else plan_dot)(dag_doc, plan_doc)


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    target = Path(output)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        raise OrchError("output_unwritable", f"cannot write {output}: {exc.strerror}",
                        file=output, hint="choose a file in a directory you can write") from exc


def _plan(state: CliState, workstream: str | None, fmt: str, output: str | None) -> int:
    now = datetime.now(UTC)
    with state.project().open(readonly=True) as conn, db.read_tx(conn):
        known = all_workstreams(conn)
        if fmt in DIAGRAMS:
            chosen = _diagram_workstream(workstream, known, fmt)
            if chosen is None:
                click.echo(_EMPTY, err=True)
                return EXIT_OK
            dag_doc, plan_doc = workstream_plan(conn, chosen, now)
            _write(_diagram(fmt, dag_doc, plan_doc), output)
            return EXIT_OK
        names = [workstream] if workstream is not None else known
        plans = {name: plan_document(conn, name, now) for name in names}
    if workstream is not None:
        emit(state, plans[workstream], lambda: _print_tables(plans))
    elif not plans:
        emit(state, {"workstreams": {}}, _EMPTY)
    else:
        emit(state, {"workstreams": plans}, lambda: _print_tables(plans))
    return EXIT_OK


COMMANDS = [plan_cmd]
