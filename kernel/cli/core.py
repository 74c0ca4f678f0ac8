"""``orch init`` and ``orch doctor``.

Public API:
    ``COMMANDS`` (the click commands this module adds to ``orch``).

Stability Guarantees:
    See ``kernel.cli``: names, options, JSON shapes and exit codes are a contract.

Integration Points:
    ``kernel.project.init_project``, ``kernel.doctor.diagnose``.

Dependencies:
    click, rich; ``kernel.cli.common``.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from kernel.cli.common import CliState, command, emit
from kernel.doctor import diagnose
from kernel.errors import EXIT_FAILED, EXIT_OK
from kernel.project import init_project


@command("init")
def init_cmd(state: CliState) -> int:
    """Create .state/kernel.db, tasks/, capabilities/ and a commented orch.toml.

    Idempotent: files that exist are kept, never overwritten.
    """
    report = init_project(state.root_or_cwd())

    def text() -> None:
        click.echo(f"orch project at {report.root}")
        for path in report.created:
            click.echo(f"  created  {path}")
        for path in report.kept:
            click.echo(f"  kept     {path}")
        click.echo(f"schema version {report.schema_version}. Next: write tasks/<workstream>/"
                   "<task>.json, then `orch validate` and `orch load`.")

    emit(
        state,
        {"root": str(report.root), "created": report.created, "kept": report.kept,
         "schema_version": report.schema_version},
        text,
    )
    return EXIT_OK


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@command("doctor")
def doctor_cmd(state: CliState) -> int:
    """Check integrity, schema and library versions, invariants (as SQL queries) and WAL size."""
    checks = diagnose(state.project())
    failed = [c for c in checks if c.status == "fail"]

    def text() -> None:
        table = Table(show_header=True, header_style="bold", box=None)
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for c in checks:
            table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail)
        console = Console()
        console.print(table)
        for c in failed:
            console.print(f"[bold red]FAIL[/] {c.name}: {c.detail}", soft_wrap=True)
            for r in c.rows[:5]:
                console.print(f"     {r}", soft_wrap=True)
            if c.hint:
                console.print(f"     hint: {c.hint}", soft_wrap=True)
        console.print("[bold red]problems found[/]" if failed else "[green]all checks passed[/]")

    emit(state, {"ok": not failed, "checks": [c.as_dict() for c in checks]}, text)
    return EXIT_FAILED if failed else EXIT_OK


COMMANDS = [init_cmd, doctor_cmd]
