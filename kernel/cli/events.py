"""``orch events``: the audit log, oldest first.

Public API:
    ``COMMANDS``.

Stability Guarantees:
    ``--json`` prints one document, ``{"events": [...]}`` with the STATE-OBS-004 fields.
    ``--jsonl`` prints one JSON event per line instead, the stream to use with ``--follow``
    (``--follow --json`` is a usage error, exit 2: a stream has no single document). Filters
    (``--task``, ``--workstream``, ``--event``, ``--severity``) combine with AND.

Integration Points:
    ``kernel.observe.audit.list_events``; ``kernel.cli.common`` completes ``--task`` and
    ``--workstream``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.observe.audit``,
    ``kernel.observe.prometheus``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from kernel.base.errors import EXIT_OK, UsageError
from kernel.cli.common import CliState, command, complete_tasks, complete_workstreams, emit
from kernel.observe.audit import format_event, list_events
from kernel.observe.prometheus import SEVERITIES


@command("events")
@click.option("--since", type=int, default=0, show_default=True,
              help="Only events with seq greater than this.")
@click.option("--limit", type=int, default=None, help="At most this many events.")
@click.option("--task", "task_id", default=None, shell_complete=complete_tasks,
              help="Only the events of this task.")
@click.option("--workstream", "workstream_id", default=None, metavar="WS",
              shell_complete=complete_workstreams, help="Only the events of this workstream.")
@click.option("--event", "event", default=None, metavar="NAME",
              help="Only events with this name, e.g. task_failed.")
@click.option("--severity", type=click.Choice(SEVERITIES), default=None,
              help="Only events of this severity.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new events until Ctrl-C (with --jsonl for JSON).")
@click.option("--jsonl", is_flag=True,
              help="Print one JSON event per line (a stream; the form to use with --follow).")
@click.option("--interval", type=float, default=0.5, show_default=True,
              help="Seconds between polls with --follow.")
def events_cmd(state: CliState, since: int, limit: int | None, follow: bool, jsonl: bool,
               interval: float, **filters: str | None) -> int:
    """Print the audit events (every accepted state transition, and more)."""
    if since < 0:
        raise UsageError("usage", "--since must be 0 or more", hint="events start at seq 1")
    if follow and state.json:
        raise UsageError("usage", "--json prints one document, and --follow never ends",
                         hint="orch events --follow --jsonl (one JSON event per line)")
    wanted: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
    with state.project().open(readonly=True) as conn:
        found = list_events(conn, since=since, limit=limit, **wanted)
        if not follow and not jsonl:
            emit(state, {"events": found},
                 "\n".join(format_event(e) for e in found) if found else "no events")
            return EXIT_OK
        last = since
        try:
            while True:
                for event in found:
                    click.echo(json.dumps(event, sort_keys=True) if jsonl
                               else format_event(event))
                    last = event["seq"]
                if not follow:
                    return EXIT_OK
                time.sleep(interval)
                found = list_events(conn, since=last, **wanted)
        except KeyboardInterrupt:
            return EXIT_OK


COMMANDS = [events_cmd]
