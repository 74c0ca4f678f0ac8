"""``orch resources``: capacity, current holders and waiting tasks of every resource.

Public API:
    ``COMMANDS`` (``resources``).

Stability Guarantees:
    See ``kernel.cli``. ``--json`` prints ``kernel.observe.resources.resources_report``'s
    document. Exit 0; nothing is written. ``--all`` also lists resources nobody holds or waits
    for (the text hides them by default; the JSON always has every resource).

Integration Points:
    ``kernel.observe.resources`` (the queries, shared with ``orch browse``).

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.observe.resources``,
    ``kernel.store.db``.
"""

from __future__ import annotations

from typing import Any

import click

from kernel.base.errors import EXIT_OK
from kernel.cli.common import CliState, command, emit
from kernel.observe.resources import resources_report
from kernel.store import db


def _capacity(r: dict[str, Any]) -> str:
    if r["type"] == "pooled":
        return f"{r['amount_held']:g} of {r['capacity']:g} units held ({r['available']:g} free)"
    if r["type"] == "rate_limited":
        return f"{r['tokens']:g} of {r['capacity']:g} tokens in the bucket"
    holders = len(r["holders"])
    limit = "" if r["max_holders"] in (None, -1) else f", at most {r['max_holders']}"
    return f"{holders} holder{'s' if holders != 1 else ''}{limit}"


def _print(data: dict[str, Any], everything: bool) -> None:
    shown = [r for r in data["resources"] if everything or r["holders"] or r["waiting"]]
    if not data["resources"]:
        click.echo("no resources are loaded yet: `orch load` reads capabilities/resources.yaml")
        return
    if not shown:
        click.echo(f"{len(data['resources'])} resources: none is held, no task waits for one "
                   "(--all lists them)")
        return
    for r in shown:
        click.echo(click.style(r["resource_id"], bold=True) + f"  {r['type']}: {_capacity(r)}")
        for h in r["holders"]:
            amount = h["mode"] if h["mode"] != "units" else f"{h['amount']:g} units"
            click.echo(f"  held by    {h['task_id']} ({amount}) since {h['acquired_at']}")
        for w in r["waiting"]:
            amount = w["mode"] if w["mode"] != "units" else f"{w['amount']:g} units"
            click.echo(f"  waiting    {w['task_id']} ({amount}, {w['state']})")


@command("resources")
@click.option("--all", "everything", is_flag=True,
              help="Also list the resources nobody holds or waits for.")
def resources_cmd(state: CliState, everything: bool) -> int:
    """Show each resource's capacity, the tasks holding it now and the ready tasks waiting.

    Example: orch resources --all
    """
    with state.project().open(readonly=True) as conn, db.read_tx(conn):
        data = resources_report(conn)
    emit(state, data, lambda: _print(data, everything))
    return EXIT_OK


COMMANDS = [resources_cmd]
