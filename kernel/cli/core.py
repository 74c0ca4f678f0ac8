"""``orch init`` and ``orch doctor``.

Public API:
    ``COMMANDS`` (the click commands this module adds to ``orch``).

Stability Guarantees:
    See ``kernel.cli``: names, options, JSON shapes and exit codes are a contract.

Integration Points:
    ``kernel.store.project.init_project``, ``kernel.maintain.doctor.diagnose`` and
    ``kernel.maintain.doctor.repair``.

Dependencies:
    click, rich; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.demo.example``,
    ``kernel.maintain.doctor``, ``kernel.store.project``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kernel.base.errors import EXIT_FAILED, EXIT_OK, OrchError
from kernel.cli.common import CliState, command, emit, make_console, print_table
from kernel.maintain import doctor as kdoctor
from kernel.store.project import init_project


@command("init")
@click.option("--example", is_flag=True,
              help="Also write a runnable example project: a small Python package in git and "
              "a workstream of six tasks (agent edits by a scripted stand-in, tests, lint, a "
              "retried smoke test). Never overwrites a file.")
def init_cmd(state: CliState, example: bool) -> int:
    """Create .state/kernel.db, tasks/, capabilities/ and a commented orch.toml.

    Idempotent: files that exist are kept, never overwritten. The only command that creates a
    database (.state/ 0700, kernel.db 0600); an existing one is migrated as every command
    does, and an empty, damaged or foreign one is refused (exit 3), never replaced. Refuses
    to turn orch's own source checkout into a project.

    Example: mkdir my-project && cd my-project && orch init --example && orch run
    """
    root = state.root_or_cwd()
    _not_orch_source(root)
    if example:
        return _init_example(state, root)
    report = init_project(root)

    def text() -> None:
        click.echo(f"orch project at {report.root}")
        for path in report.created:
            click.echo(f"  created  {path}")
        for path in report.kept:
            click.echo(f"  kept     {path}")
        click.echo(f"schema version {report.schema_version}. Next: write tasks/<workstream>/"
                   "<task>.json (or start from `orch init --example` in an empty directory), "
                   "then `orch validate` and `orch load`.")

    emit(
        state,
        {"root": str(report.root), "created": report.created, "kept": report.kept,
         "schema_version": report.schema_version},
        text,
    )
    return EXIT_OK


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _not_orch_source(root: Path) -> None:
    """orch's own checkout is no place for a project: its tasks/ and orch.toml would be
    mixed into orch's source."""
    root = root.resolve()
    marker = root / "pyproject.toml"
    if ((root / "kernel" / "cli" / "__init__.py").is_file() and marker.is_file()
            and 'name = "orch-kernel"' in marker.read_text(encoding="utf-8", errors="replace")):
        raise OrchError(
            "init_in_orch_source",
            f"{root} is orch's own source checkout: a project here would mix its tasks/, "
            "orch.toml and .state/ into orch's source",
            hint="make the project in a directory of its own: mkdir ../my-project && "
                 "cd ../my-project && orch init")


def _init_example(state: CliState, root: Path) -> int:
    from kernel.demo.example import write_example

    report = write_example(root)

    def text() -> None:
        click.echo(f"orch example project at {report.root} ({report.git})")
        click.echo(f"  wrote {len(report.written)} files: textstats/ (a small Python "
                   "package), tests/, scripts/, orch.toml and "
                   f"tasks/{report.workstream}/ (6 tasks)")
        click.echo("  the agent edits are made by a scripted stand-in (prepared edits, no "
                   "model): [agents.mini] in orch.toml says how to run a real agent instead")
        if report.committed is None:
            click.echo("  commit the files before `orch run` (its worktrees are made from the "
                       "last commit): git add -A && git commit -m 'orch example'")
        click.echo("Next: orch validate && orch load && orch plan, then orch run")

    emit(state, report.as_dict(), text)
    return EXIT_OK


@command("doctor")
@click.option("--repair", is_flag=True,
              help="Also recreate lost or altered views, triggers and indexes from the shipped "
                   "schema and rewrite the .state views; on a damaged database change nothing "
                   "and name the backup to restore and what it would lose.")
def doctor_cmd(state: CliState, repair: bool) -> int:
    """Check integrity, versions, the schema, invariants (as SQL queries), the log and the WAL.

    With --repair, on a sound database recreate missing or altered views, triggers and indexes
    from the shipped schema (tables are never touched) and rebuild the .state views; for a
    damaged one (never modified), print what restoring the newest backup in .state/backups/
    would lose (compared with .state/transitions.jsonl) and the exact `orch restore` command.
    """
    project = state.project()
    if repair:  # record: a failed check is a state_corruption event (State-Corruption)
        checks, fixed = kdoctor.repair(project, record=True)
    else:
        checks, fixed = kdoctor.diagnose(project, record=True), None
    failed = [c for c in checks if c.status == "fail"]

    def text() -> None:
        table = Table(show_header=True, header_style="bold", box=None)
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for c in checks:
            table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail)
        console = make_console()
        print_table(console, table)
        for c in failed:
            console.print(f"[bold red]FAIL[/] {c.name}: {c.detail}", soft_wrap=True)
            for r in c.rows[:5]:
                console.print(f"     {r}", soft_wrap=True)
            if c.hint:
                console.print(f"     hint: {c.hint}", soft_wrap=True)
        console.print("[bold red]problems found[/]" if failed else "[green]all checks passed[/]")
        if fixed is not None:
            _print_repair(console, fixed)

    data: dict[str, Any] = {"ok": not failed, "checks": [c.as_dict() for c in checks]}
    if fixed is not None:
        data["repair"] = fixed.as_dict()
    emit(state, data, text)
    return EXIT_FAILED if failed or (fixed is not None and not fixed.ok) else EXIT_OK


def _print_repair(console: Console, fixed: kdoctor.RepairReport) -> None:
    console.print("[bold]repair[/]")
    if fixed.damaged and fixed.restore is not None:
        plan = fixed.restore
        console.print("  the database is damaged; it was not changed.", soft_wrap=True)
        for bad in plan["invalid_backups"]:
            console.print(f"  unusable backup {bad['path']}: {bad['problem']}", soft_wrap=True)
        console.print(f"  {plan['summary']}", soft_wrap=True, markup=False)
        if plan["command"]:
            console.print(f"\n  {plan['command']}\n", soft_wrap=True, markup=False)
        return
    if fixed.schema is not None:
        _print_schema_repair(console, fixed.schema)
    if fixed.views_error:
        console.print(f"  [bold red]views not rebuilt[/]: {fixed.views_error}", soft_wrap=True)
    else:
        console.print("  the .state views were rebuilt from the database", soft_wrap=True)


def _print_schema_repair(console: Console, schema: dict[str, Any]) -> None:
    if schema.get("error"):
        console.print(f"  [bold red]schema not repaired[/]: {escape(schema['error'])}",
                      soft_wrap=True)
    for name in schema["recreated"]:
        console.print(f"  recreated {name} from the shipped schema", soft_wrap=True,
                      markup=False)
    for bad in schema["failed"]:
        console.print(f"  [bold red]could not recreate[/] {bad['type']} {bad['name']}: "
                      f"{escape(bad['error'])}", soft_wrap=True)
    for left in schema["not_repaired"]:
        console.print(f"  left alone: {left['type']} {left['name']}: {left['why']}",
                      soft_wrap=True, markup=False)
    if schema["user_version"]:
        console.print(f"  user_version set back from {schema['user_version']['from']} to "
                      f"{schema['user_version']['to']}: the schema matches this orch's",
                      soft_wrap=True)
    if not any(schema[k] for k in ("recreated", "failed", "not_repaired", "user_version")) \
            and not schema.get("error"):
        console.print("  the schema needed no change", soft_wrap=True)


COMMANDS = [init_cmd, doctor_cmd]
