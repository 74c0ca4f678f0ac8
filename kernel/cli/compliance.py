"""``orch compliance``: one line per requirement ID, PASS / WARN / FAIL / N/A, with fixes.

Public API:
    ``COMMANDS`` (``compliance``).

Stability Guarantees:
    See ``kernel.cli``. Exit 0 when nothing FAILs (with ``--strict``: nor WARNs), 1 otherwise,
    2 for an ``--only`` prefix that matches no ID. ``--json`` prints
    ``kernel.maintain.compliance.ComplianceReport.as_dict()``. The text: one line per ID, then
    each violation indented (``file:line: message``) and the suggested fix.

Integration Points:
    ``kernel.maintain.compliance.run_compliance``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.maintain.compliance``.
"""

from __future__ import annotations

import click

from kernel.base.errors import EXIT_FAILED, EXIT_OK, UsageError
from kernel.cli.common import CliState, command, emit
from kernel.maintain.compliance import REQUIREMENTS, ComplianceReport, run_compliance

_COLOUR = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "N/A": "blue"}
_SHOWN = 10


def _print(report: ComplianceReport) -> None:
    for r in report.results:
        label = click.style(f"{r.status:<4}", fg=_COLOUR[r.status], bold=True)
        click.echo(f"{label}  {r.req_id:<15} {r.reason}")
        for v in r.violations[:_SHOWN]:
            where = f"{v.file}:{v.line}: " if v.file and v.line else f"{v.file}: " if v.file \
                else ""
            click.echo(f"        {where}{v.message}")
        if len(r.violations) > _SHOWN:
            click.echo(f"        ... and {len(r.violations) - _SHOWN} more (--json lists all)")
        if r.fix and r.status in ("FAIL", "WARN"):
            click.echo(f"        fix: {r.fix}")
    c = report.counts()
    verdict = "compliant" if report.ok() else "not compliant"
    click.echo(click.style(f"{len(report.results)} requirements: {c['PASS']} pass, "
                           f"{c['WARN']} warn, {c['FAIL']} fail, {c['N/A']} not applicable: "
                           f"{verdict}" + (" (--strict)" if report.strict else ""),
                           fg="green" if report.ok() else "red"))


@command("compliance")
@click.option("--strict", is_flag=True, help="A WARN fails too.")
@click.option("--only", "only", metavar="PREFIX", default=None,
              help="Only the requirement IDs starting with PREFIX (e.g. STATE-OBS, DAG-VIEW-002).")
def compliance_cmd(state: CliState, strict: bool, only: str | None) -> int:
    """Check every requirement ID of the specification against this project, its state and
    orch's documentation: PASS, WARN, FAIL or N/A per ID, with file, line and a fix.

    Exit 0 when nothing fails (--strict: nothing warns either), 1 otherwise.

    Example: orch compliance --only STATE-OBS
    """
    if only is not None and not any(r.req_id.startswith(only.upper()) for r in REQUIREMENTS):
        raise UsageError("unknown_requirement", f"no requirement ID starts with {only!r}",
                         hint="the areas are " + ", ".join(sorted(
                             {r.req_id.rsplit("-", 1)[0] for r in REQUIREMENTS})))
    report = run_compliance(state.project(), only=only, strict=strict)
    emit(state, report.as_dict(), lambda: _print(report))
    return EXIT_OK if report.ok() else EXIT_FAILED


COMMANDS = [compliance_cmd]
