"""``orch demo [--keep DIR]``: the kernel end to end on a generated example project.

Public API:
    ``COMMANDS`` (``demo``).

Stability Guarantees:
    See ``kernel.cli``. ``--json`` prints one document (``kernel.demo.DemoReport.as_dict``).
    Exit 0 when the database refused the illegal transition and ``orch doctor`` passed, 1
    otherwise, 2 for a non-empty ``--keep`` directory. ``--root`` is ignored: the demo always
    builds its own project. The text is for people and may change: progress lines on a
    terminal, a compact summary (no progress) when piped.

Integration Points:
    ``kernel.demo.run_demo``; ``kernel.render.plan_table`` for the plan.

Dependencies:
    click, rich; ``kernel.cli.common``, ``kernel.demo``, ``kernel.render``.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from kernel.cli.common import CliState, command, emit
from kernel.demo import DemoReport, DemoStep, run_demo
from kernel.errors import EXIT_FAILED, EXIT_OK
from kernel.render import plan_table


def _states_line(report: DemoReport) -> str:
    counts = Counter(report.task_states.values())
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"


def _grid(console: Console, rows: list[tuple[str, Text | str]], indent: int = 2) -> None:
    """Label/value rows; long values wrap under their own column."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, value if isinstance(value, Text) else Text(value))
    console.print(Padding(grid, (0, 0, 0, indent), expand=False))


def _print_report(console: Console, report: DemoReport) -> None:
    r = report
    console.print()
    console.print("[bold]orch demo[/]: what the kernel does today, read back from its database.")
    _grid(console, [
        ("Project", f"{r.project}" + (f" (git commit {r.git_commit})" if r.git_commit
                                       else " (not a git repository)")),
        ("Workstream", f"{r.workstream_id} ({r.workstream_state}): {r.tasks_loaded} tasks "
                       f"validated and loaded from tasks/{r.workstream_id}/"),
    ])
    console.print()
    plan_table(r.plan, console)
    console.print()
    console.print("[bold]The state machine lives in the database[/]")
    t = r.illegal_transition
    refused = bool(t.get("rejected"))
    _grid(console, [
        ("Task states", f"{_states_line(r)}. No task has run: running them (`orch run`) "
                        "arrives with the scheduler."),
        ("Ready now", ", ".join(r.ready_tasks) or "none"),
        ("Blocked", (", ".join(sorted({b["task_id"] for b in r.blocked_tasks})) or "none")
         + " (waiting for their dependencies)"),
        ("Audit log", f"{r.event_count} events so far, one per creation or accepted "
                      "transition (`orch events`)"),
        ("Illegal", Text.assemble(
            f"{t.get('from_state')} -> {t.get('to_state')} for {t.get('task_id')}: ",
            ("refused by a trigger", "green") if refused else ("ACCEPTED", "bold red"))),
    ])
    _grid(console, [
        ("SQL", f"UPDATE task SET state = '{t.get('to_state')}', transition_trigger = "
                f"'{t.get('trigger')}' WHERE task_id = '{t.get('task_id')}'"),
        ("error", str(t.get("message"))),
        ("after", f"{t.get('task_id')} is still {t.get('state_after')}; "
                  f"{t.get('events_written')} events written"),
    ], indent=4)
    console.print()
    d = r.doctor
    if d.get("ok"):
        warned = f" ({len(d['warned'])} warnings)" if d.get("warned") else ""
        console.print(f"orch doctor: [green]all {d.get('checks')} checks passed[/]{warned}")
    else:
        console.print(f"orch doctor: [bold red]failed[/] {escape(', '.join(d['failed']))}")
    console.print()
    where = "" if r.removed else f" (cd {escape(str(r.project))})"
    console.print(f"[bold]Where to look[/]{where}")
    for item in r.where_to_look:
        console.print(f"  {escape(item['what'])}")
        console.print(f"      {escape(item['why'])}", style="dim")
    console.print()
    if r.removed:
        console.print(f"Removed the temporary project {escape(str(r.project))}.")
        console.print("Keep one to explore with `orch demo --keep DIR`.")
    else:
        console.print(f"Kept the project in {escape(str(r.project))}.")
    if console.is_terminal:
        console.print(f"[dim]Done in {r.elapsed_seconds:.1f}s.[/]")


def _print_text(console: Console, report: DemoReport) -> None:
    if console.is_terminal:
        _print_report(console, report)
        return
    # Piped: plain text without the padding rich puts at the end of table lines.
    buffer = Console(file=io.StringIO(), width=console.width, color_system=None,
                     highlight=False, force_terminal=False)
    _print_report(buffer, report)
    out = buffer.file
    assert isinstance(out, io.StringIO)
    click.echo("\n".join(line.rstrip() for line in out.getvalue().splitlines()))


@command("demo")
@click.option(
    "--keep",
    "keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Build the example project in DIR (new or empty) and keep it there.",
)
def demo_cmd(state: CliState, keep: Path | None) -> int:
    """Show what orch does today, end to end, on a generated example project.

    Creates a git repository with a tiny Python CLI, runs `orch init` in it, writes a
    workstream of realistic tasks (an Aider edit with context requirements, two branches that
    may run in parallel, lint, pytest, critical tasks, resource requirements), validates and
    loads them, prints the execution plan, shows the database refusing an illegal state
    transition, and runs `orch doctor`. No task is run: that arrives with the scheduler
    (`orch run`). The project lives in a temporary directory that is removed at the end,
    unless --keep DIR is given.
    """
    console = Console(highlight=False)
    live = console.is_terminal and not state.json

    def on_step(step: DemoStep) -> None:
        console.print(f"[green]✓[/] {escape(step.title)} [dim]({step.seconds:.2f}s)[/]")

    if live:
        with console.status("Running the demo…"):
            report = run_demo(keep, on_step=on_step)
    else:
        report = run_demo(keep)
    emit(state, report.as_dict(), lambda: _print_text(console, report))
    good = report.doctor.get("ok") and report.illegal_transition.get("rejected")
    return EXIT_OK if good else EXIT_FAILED


COMMANDS = [demo_cmd]
