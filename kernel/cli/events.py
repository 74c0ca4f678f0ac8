"""``orch events``: the audit log, oldest first.

Public API:
    ``COMMANDS``.

Stability Guarantees:
    ``--json`` prints ``{"events": [...]}`` with the STATE-OBS-004 fields; with ``--follow`` it
    prints one JSON event per line instead (a stream has no single document).

Integration Points:
    ``kernel.observe.audit.list_events``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.observe.audit``.
"""

from __future__ import annotations

import json
import time

import click

from kernel.base.errors import EXIT_OK, UsageError
from kernel.cli.common import CliState, command, emit
from kernel.observe.audit import format_event, list_events


@command("events")
@click.option("--since", type=int, default=0, show_default=True,
              help="Only events with seq greater than this.")
@click.option("--limit", type=int, default=None, help="At most this many events.")
@click.option("--task", "task_id", default=None, help="Only the events of this task.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--interval", type=float, default=0.5, show_default=True,
              help="Seconds between polls with --follow.")
def events_cmd(state: CliState, since: int, limit: int | None, task_id: str | None,
               follow: bool, interval: float) -> int:
    """Print the audit events (every accepted state transition, and more)."""
    if since < 0:
        raise UsageError("usage", "--since must be 0 or more", hint="events start at seq 1")
    with state.project().open(readonly=True) as conn:
        found = list_events(conn, since=since, limit=limit, task_id=task_id)
        if not follow:
            emit(state, {"events": found},
                 "\n".join(format_event(e) for e in found) if found else "no events")
            return EXIT_OK
        last = since
        try:
            while True:
                for event in found:
                    click.echo(json.dumps(event, sort_keys=True) if state.json
                               else format_event(event))
                    last = event["seq"]
                time.sleep(interval)
                found = list_events(conn, since=last, task_id=task_id)
        except KeyboardInterrupt:
            return EXIT_OK


COMMANDS = [events_cmd]
