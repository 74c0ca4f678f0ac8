"""``orch demo [--dir DIR | --temp]``: orch running a realistic workstream end to end.

Public API:
    ``COMMANDS`` (``demo``).

Stability Guarantees:
    See ``kernel.cli``. Exit 0 when every task completed and the workstream was merged, 1
    otherwise (the project is then kept, and the output says where), 2 for a non-empty
    ``--dir`` directory. The project is kept in a new directory (``--dir``, default
    ``./orch-demo``, ``orch-demo-2``, ...) unless ``--temp`` asks for a temporary one.
    ``--root`` is ignored: the demo always builds its own project.
    ``--json`` streams nothing and prints one document at the end
    (``kernel.demo.DemoReport.as_dict``: ``ok``, ``project``, ``counts``, ``summary``, ...).
    The text is for people and may change: the run's live progress on a terminal
    (``kernel.runtime.progress``), only its summary when piped.

Integration Points:
    ``kernel.demo`` (``prepare``, ``execute``, ``cleanup``);
    ``kernel.runtime.progress.make_progress``
    for the run; ``kernel.planning.render.plan_table`` for the plan.

Dependencies:
    click, rich; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.cli.common``,
    ``kernel.demo``, ``kernel.planning.render``, ``kernel.runtime.progress``,
    ``kernel.runtime.runner``.
"""

from __future__ import annotations

import io
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from kernel.base.errors import EXIT_FAILED, EXIT_OK, UsageError
from kernel.base.words import plural
from kernel.cli.common import CliState, command, emit
from kernel.demo import (
    BASE_BRANCH,
    BRANCHES,
    FLAKY_TASK,
    WORKERS,
    WORKSTREAM,
    DemoReport,
    DemoStep,
    cleanup,
    detect_tools,
    execute,
    prepare,
)
from kernel.planning.render import plan_table


def _show(console: Console, draw: Callable[[Console], None]) -> None:
    """Draw on the terminal, or as plain text without rich's trailing padding when piped."""
    if console.is_terminal:
        draw(console)
        return
    buffer = Console(file=io.StringIO(), width=console.width, color_system=None,
                     highlight=False, force_terminal=False)
    draw(buffer)
    out = buffer.file
    assert isinstance(out, io.StringIO)
    text = "\n".join(line.rstrip() for line in out.getvalue().splitlines())
    if text:
        click.echo(text)


def _grid(console: Console, rows: list[tuple[str, Text | str]], indent: int = 2) -> None:
    """Label/value rows; long values wrap under their own column."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, value if isinstance(value, Text) else Text(value))
    console.print(Padding(grid, (0, 0, 0, indent), expand=False))


def _intro(console: Console) -> None:
    console.print("[bold]orch demo[/]: a small Python project, a workstream of six tasks, and "
                  f"`orch run` running them with {plural(WORKERS, 'worker')}.")


def _plan(console: Console, report: DemoReport) -> None:
    console.print()
    plan_table(report.plan, console)
    console.print()
    tools = report.tools
    console.print(f"[bold]orch run[/] --workers {WORKERS} --workstream {WORKSTREAM} "
                  f"[dim](tests: {escape(tools.tests)}, lint: {escape(tools.lint)}; each "
                  "command's output goes to .state/logs/)[/]")


def _happened(report: DemoReport) -> list[tuple[str, Text | str]]:
    r = report
    rows: list[tuple[str, Text | str]] = []
    s = r.summary
    if s is not None:
        done = s.counts.get("completed", 0)
        rows.append(("Tasks", Text.assemble(
            (f"{done} of {s.total} completed", "green" if s.ok else "bold red"),
            f" in {s.elapsed_seconds:.1f} s by {WORKERS} worker processes, each in the "
            f"workstream's git worktree .state/worktrees/{WORKSTREAM}")))
    f = r.flaky
    if f:
        if f.get("state") == "completed" and f.get("retry_events"):
            delay = f.get("retry_delay_seconds")
            rows.append(("Retried", f"{FLAKY_TASK} failed its first attempt on purpose, was "
                                    f"retried {delay:.1f} s later and completed "
                                    f"({f['attempts']} attempts)" if delay is not None else
                                    f"{FLAKY_TASK} completed after {f['attempts']} attempts"))
        else:
            rows.append(("Retried", f"{FLAKY_TASK}: {f.get('state')} after "
                                    f"{f.get('attempts')} attempts"))
    if r.parallel:
        best = max(r.parallel, key=lambda p: p["seconds"])
        a, b = best["tasks"]
        rows.append(("Parallel", f"{a} ran beside {b} for {best['seconds']:.1f} s (branches "
                                 f"{' -> '.join(BRANCHES['tests'])} and "
                                 f"{' -> '.join(BRANCHES['cli'])}); the edits took turns on "
                                 "the exclusive git_repo_write lease"))
    elif s is not None:
        rows.append(("Parallel", "the two branches did not overlap this time"))
    for a in r.agents:
        tokens = f", {a['tokens_used']} tokens" if a.get("tokens_used") else ""
        files = ", ".join(a.get("files_modified") or []) or "no file"
        how = ("judged by its diff, checked by its rules, then committed"
               if a["state"] == "completed" else f"see `orch why {a['task_id']}`")
        rows.append((f"Agent {a['task_id']}", Text.assemble(
            (a["state"], "green" if a["state"] == "completed" else "bold red"),
            f" after {plural(a['attempts'], 'attempt')}: changed "
            f"{files}{tokens} ({a.get('agent') or '-'}, model {a.get('model') or '-'}); "
            f"{how}")))
    m = r.merge
    if m.get("merged"):
        commit = (m.get("commit") or "")[:7]
        rows.append(("Merged", f"{m['branch']} into {BASE_BRANCH} at {commit}; worktree and "
                               "branch " + ("removed" if m.get("worktree_removed")
                                            else "still there")))
    elif s is not None:
        rows.append(("Merged", Text(f"no: workstream {WORKSTREAM} is {r.workstream_state}",
                                    "bold red")))
    if r.git_log:
        rows.append((f"git log {BASE_BRANCH}", "\n".join(r.git_log[:6])))
    d = r.doctor
    if d:
        rows.append(("orch doctor", f"all {d.get('checks')} checks passed" if d.get("ok")
                     else Text(f"failed: {', '.join(d['failed'])}", "bold red")))
    return rows


def _after(console: Console, report: DemoReport) -> None:
    console.print()
    console.print("[bold]What happened[/] (read back from .state/kernel.db and git)")
    _grid(console, _happened(report))
    console.print()
    if not report.kept and report.ok:  # cleanup() removes it next
        console.print("[bold]Where to look[/] (this temporary project is removed next: "
                      "`orch demo` without --temp keeps one)")
    else:
        console.print(f"[bold]Where to look[/] (in {escape(_shown(report.project))})")
    shown = _shown(report.project)
    for item in report.where_to_look:
        what = item["what"]
        if report.kept and shown != shlex.quote(str(report.project)):  # as the user types it
            what = what.replace(shlex.quote(str(report.project)), shown)
        console.print(Padding(Text(what), (0, 0, 0, 2), expand=False))
        console.print(Padding(Text(item["why"], style="dim"), (0, 0, 0, 6), expand=False))
    console.print()


def _ending(console: Console, report: DemoReport) -> None:
    where = escape(str(report.project))
    if report.removed:
        console.print(f"Removed the temporary project {where}. `orch demo` without --temp "
                      "keeps one to explore.")
    elif report.ok:
        shown = escape(_shown(report.project))
        console.print(f"The project is kept in [bold]{shown}[/]: `cd {shown}` and try "
                      "`orch status`, `orch why smoke-test-cli`, `orch browse --open`. "
                      f"Remove it with `rm -rf {shown}`.")
    else:
        root = escape(shlex.quote(str(report.project)))
        console.print(f"[bold red]Not every task completed.[/] The project is kept in {where}: "
                      f"start with `orch --root {root} status`.")
    if console.is_terminal:
        console.print(f"[dim]Done in {report.elapsed_seconds:.1f} s.[/]")


def _new_dir(base: Path) -> Path:
    """``base/orch-demo``, or the first of ``orch-demo-2``, ``orch-demo-3``, ... that is free."""
    candidate, n = base / "orch-demo", 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = base / f"orch-demo-{n}"
    return candidate


def _shown(path: Path) -> str:
    """``path`` as the user would type it: relative to the current directory when inside it."""
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return shlex.quote(str(path))
    return shlex.quote(str(rel))


@command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Build the project in DIR (new or empty) and keep it there. Default: a new directory "
    "orch-demo (orch-demo-2, ...) in the current directory.",
)
@click.option("--keep", "keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", hidden=True, help="The same as --dir (its earlier name).")
@click.option("--temp", is_flag=True,
              help="Build it in a temporary directory instead, removed after a good run.")
@click.option(
    "--agent",
    type=click.Choice(["auto", "mini", "aider"]),
    default="auto",
    show_default=True,
    help="Who makes the code edits: the real Aider CLI, or a minimal built-in agent CLI; "
    "auto: Aider when `aider` is on PATH, else the built-in one. Both talk to a scripted "
    "model the demo serves on 127.0.0.1.",
)
def demo_cmd(state: CliState, directory: Path | None, keep: Path | None, temp: bool,
             agent: str) -> int:
    """Run an example workstream end to end on a generated project, with live progress.

    Creates a git repository holding a small Python package (textstats) with tests, runs
    `orch init`, writes a workstream of six tasks (three code edits made by a coding agent
    talking to a scripted model on 127.0.0.1, a test run, lint, a smoke test that fails once
    and succeeds on retry, two branches that run in parallel), loads it and runs it with
    `orch run` and 3 workers in about fifteen seconds. The
    workstream's branch is merged into main. Then it prints where to look (.state/,
    `orch status`, `orch why`, `orch audit report`, git log). The project is kept, in a new
    directory orch-demo of the current directory unless --dir DIR names another (or --temp
    asks for a temporary one), and the output says how to remove it.

    Example: orch demo && cd orch-demo && orch status
    """
    if (directory or keep) and temp:
        raise UsageError("demo_dir_and_temp", "--temp and --dir exclude each other",
                         hint="keep one of them")
    where = directory or keep or (None if temp else _new_dir(Path.cwd()))
    if agent == "auto":
        agent = "aider" if shutil.which("aider") else "mini"
    from kernel.runtime.progress import make_progress
    from kernel.runtime.runner import Progress

    console = Console(highlight=False)
    text = not state.json

    def on_step(step: DemoStep) -> None:
        if step.key != "run":
            _show(console, lambda c: c.print(
                f"[green]✓[/] {escape(step.title)} [dim]({step.seconds:.2f} s)[/]"))

    if text:
        _show(console, _intro)
    report = prepare(where, on_step=on_step if text else None, tools=detect_tools(agent=agent))
    if text:
        _show(console, lambda c: _plan(c, report))
        sys.stdout.flush()
    progress = make_progress(False, console.is_terminal) if text else Progress()
    try:
        execute(report, progress=progress, on_step=on_step if text else None)
    except BaseException:
        if not report.kept:
            report.kept = True
        click.echo(f"The demo project is kept in {report.project}.", err=True)
        raise
    if text:
        _show(console, lambda c: _after(c, report))
    cleanup(report)
    if text:
        _show(console, lambda c: _ending(c, report))
    else:
        emit(state, report.as_dict(), "")
    return EXIT_OK if report.ok else EXIT_FAILED


COMMANDS = [demo_cmd]
