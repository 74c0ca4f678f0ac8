"""``orch replay`` and ``orch audit (report | rotate | query | verify)``: the audit log as
history, compliance report, retention and archives (AUDIT-001, AUDIT-002).

Public API:
    ``COMMANDS`` (``replay``, the ``audit`` group).

Stability Guarantees:
    See ``kernel.cli``. ``--json`` shapes: ``replay`` prints ``kernel.observe.replay.replay``'s
    dictionary; ``audit report`` ``kernel.observe.audit.report``'s (its ``usage`` section: tokens
    and cost, docs/operations/AUDIT_REPORT.md); ``audit rotate``
    ``kernel.observe.archive.rotate``'s; ``audit query`` ``{"events": [...], "count",
    "archive_dir"}``
    (each event with its ``source``: ``live`` or the archive file); ``audit verify``
    ``kernel.observe.archive.verify``'s. ``audit rotate`` refuses ``--older-than`` below 90 days
    with
    exit 2 (``retention_too_short``) before it opens the database, unless
    ``--force-short-retention``; ``audit verify`` exits 1 when a check fails. A timestamp that
    is not ISO-8601 is a usage error (exit 2, ``bad_timestamp``).

Integration Points:
    ``kernel.observe.replay``, ``kernel.observe.audit``, ``kernel.observe.archive``,
    ``kernel.store.eventlog`` (``audit query``); archives live in ``.state/archive/events/``
    (docs/operations/AUDIT_RETENTION.md).

Dependencies:
    click; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.cli.common``,
    ``kernel.observe.archive``, ``kernel.observe.audit``, ``kernel.observe.replay``,
    ``kernel.store.eventlog``.
"""

from __future__ import annotations

import click

from kernel.base.errors import EXIT_FAILED, EXIT_OK, UsageError
from kernel.base.words import plural
from kernel.cli.common import CliState, command, complete_tasks, emit
from kernel.observe import archive
from kernel.observe.audit import format_event, format_report, parse_timestamp, report
from kernel.observe.replay import format_replay, replay
from kernel.store import eventlog


@command("replay")
@click.option("--at", "at", required=True, metavar="TIMESTAMP",
              help="ISO-8601 moment (UTC unless an offset is given), e.g. 2026-01-05T10:00:00Z; "
                   "a date alone is midnight UTC.")
def replay_cmd(state: CliState, at: str) -> int:
    """The state of every task, workstream and worker at TIMESTAMP, from the event log alone
    (archived events included)."""
    moment = parse_timestamp(at, option="--at")
    project = state.project()
    with project.open(readonly=True) as conn:
        result = replay(conn, moment, archive_dir=eventlog.archive_dir(project.state_dir))
    emit(state, result, format_replay(result))
    return EXIT_OK


@click.group("audit")
def audit_group() -> None:
    """The audit log: compliance report, retention (rotate), archived events (query, verify)."""


@command("report")
@click.option("--since", default=None, metavar="TIMESTAMP",
              help="Only events, attempts and leases from this moment on (ISO-8601).")
def report_cmd(state: CliState, since: str | None) -> int:
    """Who did what and when, per workstream and task; attempts, time, resource leases, and
    tokens and cost per task, workstream and model (attempts without usage data count as
    unknown, not zero)."""
    since_ts = parse_timestamp(since, option="--since") if since else None
    project = state.project()
    with project.open(readonly=True) as conn:
        rep = report(conn, since=since_ts, archive_dir=eventlog.archive_dir(project.state_dir))
    emit(state, rep, format_report(rep))
    return EXIT_OK


@command("rotate")
@click.option("--older-than", "older_than", default=f"{archive.MIN_RETENTION_DAYS}d",
              show_default=True, metavar="DURATION",
              help=f"Move events older than this (Nd, Nw or Nh); at least "
                   f"{archive.MIN_RETENTION_DAYS}d.")
@click.option("--dry-run", is_flag=True, help="Only say what would be moved.")
@click.option("--force-short-retention", is_flag=True,
              help=f"Allow --older-than below {archive.MIN_RETENTION_DAYS}d (breaks AUDIT-002; "
                   "recorded in the audit_rotated event as a warning).")
def rotate_cmd(state: CliState, older_than: str, dry_run: bool,
               force_short_retention: bool) -> int:
    """Move events older than the retention period into monthly archive files under
    .state/archive/events/ (checked, then deleted from the live log in one transaction)."""
    days = archive.parse_older_than(older_than)
    # Refused before the database is opened: nothing is written, not even a migration.
    archive.check_retention(days, allow_short_retention=force_short_retention)
    project = state.project()
    directory = eventlog.archive_dir(project.state_dir)
    with project.open(readonly=dry_run) as conn:
        result = archive.rotate(conn, directory, older_than_days=days, dry_run=dry_run,
                                allow_short_retention=force_short_retention)

    def text() -> None:
        verb = "would move" if dry_run else "moved"
        if not result["events"]:
            click.echo(f"nothing to rotate: no event is older than {result['cut']} "
                       f"({result['older_than_days']:g} days)")
            return
        click.echo(f"{verb} {plural(result['events'], 'event')} (seq {result['first_seq']}.."
                   f"{result['last_seq']}, older than {result['cut']}) to {directory}:")
        for f in result["files"]:
            sha = f" sha256 {f['file_sha256']}" if "file_sha256" in f else ""
            click.echo(f"  {f['file']}: {plural(f['events'], 'event')} (seq {f['first_seq']}.."
                       f"{f['last_seq']}){sha}")
        if result["rotation_seq"]:
            click.echo(f"recorded as event {result['rotation_seq']} (audit_rotated); check the "
                       "archives with `orch audit verify`")
        if result["retention_override"]:
            click.echo(f"warning: below the {archive.MIN_RETENTION_DAYS}-day minimum retention "
                       "(--force-short-retention)")

    emit(state, result, text)
    return EXIT_OK


@command("query")
@click.option("--since-seq", type=int, default=0, show_default=True,
              help="Only events with seq greater than this.")
@click.option("--from", "from_", default=None, metavar="TIMESTAMP",
              help="Only events at or after this moment (ISO-8601).")
@click.option("--to", "to", default=None, metavar="TIMESTAMP",
              help="Only events at or before this moment (a date alone: the end of that day).")
@click.option("--task", "task_id", default=None, shell_complete=complete_tasks,
              help="Only the events of this task.")
@click.option("--event", "event", default=None, help="Only events with this name, e.g. "
                                                       "task_failed.")
@click.option("--limit", type=int, default=None, help="At most this many events.")
def query_cmd(state: CliState, since_seq: int, from_: str | None, to: str | None,
              task_id: str | None, event: str | None, limit: int | None) -> int:
    """Events from the live log and the archives together, in seq order."""
    if since_seq < 0:
        raise UsageError("usage", "--since-seq must be 0 or more", hint="events start at seq 1")
    if limit is not None and limit < 0:
        raise UsageError("usage", "--limit must be 0 or more", hint="e.g. --limit 100")
    from_ts = parse_timestamp(from_, option="--from") if from_ else None
    to_ts = parse_timestamp(to, end_of_day=True, option="--to") if to else None
    project = state.project()
    directory = eventlog.archive_dir(project.state_dir)
    with project.open(readonly=True) as conn:
        found = eventlog.read_events(conn, directory, limit=limit, since_seq=since_seq,
                                     from_ts=from_ts, to_ts=to_ts, task_id=task_id, event=event)

    def text() -> None:
        if not found:
            click.echo("no events")
        for e in found:
            where = "" if e["source"] == "live" else f"  [{e['source']}]"
            click.echo(format_event(e) + where)

    emit(state, {"events": found, "count": len(found), "archive_dir": str(directory)}, text)
    return EXIT_OK


@command("verify")
def verify_cmd(state: CliState) -> int:
    """Check every archive file against the counts and checksums recorded when it was written,
    and that live log and archives together hold every event exactly once."""
    project = state.project()
    directory = eventlog.archive_dir(project.state_dir)
    with project.open(readonly=True) as conn:
        result = archive.verify(conn, directory)

    def text() -> None:
        if not result["files"]:
            click.echo(f"no archives in {directory}")
        for name, f in result["files"].items():
            click.echo(f"{f['status']:<8} {name}: "
                       f"{plural(f.get('archived_events', 0), 'archived event')}"
                       + "".join(f"\n         {p}" for p in f["problems"] + f["notes"]))
        c = result["continuity"]
        click.echo(f"{'ok' if c['ok'] else 'fail':<8} continuity: "
                   f"{plural(c['archived_events'], 'archived event')}, "
                   f"the live log starts at seq {c['live_first_seq']}")

    emit(state, result, text)
    return EXIT_OK if result["ok"] else EXIT_FAILED


for _sub in (report_cmd, rotate_cmd, query_cmd, verify_cmd):
    audit_group.add_command(_sub)

COMMANDS: list[click.Command] = [replay_cmd, audit_group]
