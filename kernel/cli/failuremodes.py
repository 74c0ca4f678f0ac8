"""``orch failure-modes [MODE]``: the failure-mode catalog, or one mode with its related modes
and its decision tree.

Public API:
    ``COMMANDS`` (``failure-modes``).

Stability Guarantees:
    See ``kernel.cli``. ``--json`` prints ``kernel.observe.failure_modes.catalog_report()``
    (``{"version", "modes": [...], "sections": [{section, category, modes}]}``) or, with MODE,
    ``mode_report(MODE)`` (the mode's fields, ``related``, ``related_modes`` and
    ``decision_tree``). Exit 0; an unknown MODE is exit 1 with the known modes in the message.
    Nothing is read from or written to a project: the catalog ships with orch.

Integration Points:
    ``kernel.observe.failure_modes`` (the reports, from ``docs/failure_modes/failure_modes.yaml``).

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.observe.failure_modes``.
"""

from __future__ import annotations

from typing import Any

import click

from kernel.base.errors import EXIT_OK
from kernel.cli.common import CliState, command, emit
from kernel.observe import failure_modes


def _print_catalog(data: dict[str, Any]) -> None:
    by_id = {m["mode_id"]: m for m in data["modes"]}
    width = max(len(m) for m in by_id)
    for section in data["sections"]:
        click.echo(click.style(section["section"], bold=True))
        for mode_id in section["modes"]:
            m = by_id[mode_id]
            click.echo(f"  {mode_id:<{width}}  {m['event']:<26}  {m['severity']:<8}  "
                       f"{m['detection']}")
    click.echo("Details, related modes and the decision tree: orch failure-modes MODE")


def _print_mode(m: dict[str, Any]) -> None:
    click.echo(click.style(f"{m['mode_id']}", bold=True) + f"  ({m['section']})")
    for label, key in (("detection", "detection"), ("probability", "probability"),
                       ("impact", "impact"), ("recovery", "automatic_recovery"),
                       ("manual", "manual_intervention")):
        click.echo(f"  {label + ':':<13}{m[key]}")
    meta = ", ".join(m["event_metadata"])
    click.echo(f"  {'event:':<13}{m['event']} ({m['severity']})"
               + (f", metadata {meta}" if meta else ""))
    click.echo(f"  {'retried:':<13}{'yes' if m['retryable'] else 'no'}")
    click.echo("Related modes:")
    for r in m["related_modes"] or [{"mode_id": "none", "event": "", "detection": ""}]:
        click.echo(f"  {r['mode_id']}" + (f"  {r['event']}: {r['detection']}"
                                          if r["event"] else ""))
    tree = m["decision_tree"]
    click.echo("Decision tree:")
    click.echo(f"  1. detect:    {tree['detect']}")
    click.echo("  2. automatic:" + ("" if tree["automatic"] else " none"))
    for step in tree["automatic"]:
        click.echo(f"     - {failure_modes.step_label(step['if'])}: {step['then']}")
    click.echo(f"  3. escalate:  {tree['escalate']}")
    click.echo(f"  4. a person:  {tree['person']}")


@command("failure-modes")
@click.argument("mode", required=False)
def failure_modes_cmd(state: CliState, mode: str | None) -> int:
    """List the failure modes, or show one MODE with its related modes and decision tree."""
    if mode is None:
        data = failure_modes.catalog_report()
        emit(state, data, lambda: _print_catalog(data))
    else:
        one = failure_modes.mode_report(mode)
        emit(state, one, lambda: _print_mode(one))
    return EXIT_OK


COMMANDS = [failure_modes_cmd]
