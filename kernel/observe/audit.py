"""Reading the audit log: events as dictionaries, filtered, in seq order; and the compliance
report (who did what, when, with which resources, for how long) built from it.

Public API:
    ``list_events(conn, since=0, limit=None, task_id=None, entity_type=None, **filters)
    -> list[dict]`` (filters: ``event``, ``workstream_id``, ``severity``; each event with
    the STATE-OBS-004 fields, ``metadata`` decoded; the live table only);
    ``EVENT_FIELDS``; ``format_event(event) -> str`` (one line for people);
    ``parse_timestamp(text, *, end_of_day=False) -> str`` (ISO-8601 as the user writes it →
    the kernel's ``YYYY-MM-DDTHH:MM:SS.mmmZ``; ``UsageError`` when it is not a timestamp);
    ``report(conn, *, since=None, archive_dir=None, now=None) -> dict`` (the compliance report
    of ``orch audit report``, see its docstring for the keys); ``format_report(report) -> str``;
    ``USAGE_FIELDS`` and ``format_usage(usage) -> str`` (tokens and cost, AUDIT-001).

Stability Guarantees:
    Event dictionaries carry exactly ``EVENT_FIELDS``; fields are only added (consumers ignore
    unknown ones). The event log is append-only; nothing here writes. Keys of the report are
    only added, never renamed; its text form is for people and may change.

Integration Points:
    ``orch events``, ``orch audit report`` (``kernel.cli.audit``), ``orch run --json``
    (``kernel.runtime.progress``). Events are read through ``kernel.store.eventlog``, the one
    reader of the live table and the archives under ``.state/archive/events/``; the report
    also reads ``attempt``, ``lease``, ``task`` and ``workstream``, and the tokens and cost of
    each attempt from the ``attempt_usage`` view (sql/0006_usage.sql), their one definition.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.store.db``,
    ``kernel.store.eventlog``, ``kernel.store.events``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import UsageError
from kernel.store import db
from kernel.store.eventlog import iter_events, read_events
from kernel.store.events import EVENT_FIELDS as EVENT_FIELDS

# Triggers an operator command requests (kernel.runtime.actions stamps their metadata with
# "operator").
OPERATOR_TRIGGERS = ("user_cancelled", "operator_reset", "operator_skip")


def list_events(
    conn: apsw.Connection,
    *,
    since: int = 0,
    limit: int | None = None,
    task_id: str | None = None,
    entity_type: str | None = None,
    **filters: str | None,
) -> list[dict[str, Any]]:
    """Events with ``seq > since``, oldest first, from the live table (``read_events`` without
    archives and without ``source``). A negative ``limit`` means none, as SQLite's ``LIMIT``.
    ``filters``: ``event``, ``workstream_id``, ``severity`` (``eventlog.iter_events``)."""
    return read_events(conn, None, limit=None if limit is None or limit < 0 else limit,
                       since_seq=since, task_id=task_id, entity_type=entity_type,
                       with_source=False, **filters)


def format_event(event: dict[str, Any]) -> str:
    change = ""
    if event["to_state"] is not None:
        change = f" {event['from_state'] or '∅'} -> {event['to_state']}"
    trigger = f" ({event['trigger']})" if event["trigger"] else ""
    entity = f"{event['entity_type']} {event['entity_id']}" if event["entity_id"] else "system"
    return (
        f"{event['seq']:>6}  {event['timestamp']}  {event['severity']:<8} "
        f"{event['event']:<22} {entity}{change}{trigger}"
    )


def parse_timestamp(text: str, *, end_of_day: bool = False, option: str = "timestamp") -> str:
    """An ISO-8601 moment as the kernel writes it (UTC, milliseconds, ``Z``).

    Accepted: ``2026-01-05`` (a date alone is midnight UTC at the start of that day, or with
    ``end_of_day`` its last millisecond), ``2026-01-05T10:00``, ``2026-01-05T10:00:00``,
    ``2026-01-05 10:00:00.123456``, each optionally with ``Z`` or an offset such as ``+02:00``.
    Without a zone the time is UTC. Finer than milliseconds is truncated (an event stamped
    ``.123`` happened at or before ``.1239``)."""
    raw = text.strip()
    try:
        if len(raw) == 10 and raw[4] == "-" and raw[7] == "-":
            day = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
            return clock.iso(day.timestamp() + (86400 - 0.001 if end_of_day else 0))
        parsed = datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
    except (ValueError, IndexError):
        raise UsageError(
            "bad_timestamp", f"{option} {text!r} is not an ISO-8601 timestamp",
            hint="write e.g. 2026-01-05, 2026-01-05T10:00:00Z or 2026-01-05T10:00:00.123Z "
                 "(UTC unless an offset such as +02:00 is given)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return clock.iso(parsed)


# ------------------------------------------------------------------------------------ report


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round(max(0.0, clock.epoch(end) - clock.epoch(start)), 3)


def _actor(event: dict[str, Any]) -> tuple[str, str]:
    """Who acted: ("operator", login) for operator commands, ("worker", id) for what a worker
    reported, ("kernel", "scheduler") for everything the scheduler decided."""
    meta = event["metadata"]
    if meta.get("operator"):
        return "operator", str(meta["operator"])
    if event["entity_type"] == "worker" and event["entity_id"]:
        return "worker", str(event["entity_id"])
    if event["entity_type"] == "task" and event["trigger"] in (
            "worker_started", "execution_completed", "execution_failed", "task_timeout",
            "validation_passed", "validation_failed") and meta.get("worker_id"):
        return "worker", str(meta["worker_id"])
    return "kernel", "scheduler"


def _empty_entity() -> dict[str, Any]:
    return {"first_event": None, "last_event": None, "events": 0, "actors": {},
            "operator_actions": []}


def _empty_task(workstream_id: str | None) -> dict[str, Any]:
    return {**_empty_entity(), "workstream_id": workstream_id, "attempts": 0, "outcomes": [],
            "workers": [], "attempt_seconds": 0.0, "leases": [],
            "first_start": None, "last_end": None}


def _note_event(entry: dict[str, Any], event: dict[str, Any]) -> None:
    entry["first_event"] = entry["first_event"] or event["timestamp"]
    entry["last_event"] = event["timestamp"]
    entry["events"] += 1
    kind, who = _actor(event)
    key = f"{kind}:{who}"
    entry["actors"][key] = entry["actors"].get(key, 0) + 1
    if event["trigger"] in OPERATOR_TRIGGERS and event["metadata"].get("operator"):
        entry["operator_actions"].append({
            "seq": event["seq"], "timestamp": event["timestamp"], "trigger": event["trigger"],
            "operator": event["metadata"]["operator"], "from_state": event["from_state"],
            "to_state": event["to_state"], "entity": f"{event['entity_type']} "
                                                     f"{event['entity_id']}"})


def report(conn: apsw.Connection, *, since: str | None = None,
           archive_dir: Path | None = None, now: float | None = None) -> dict[str, Any]:
    """The compliance report: who did what, when, with which resources, for how long.

    ``since`` (kernel timestamp) limits it to events, attempts and leases from that moment on;
    archived events are read when ``archive_dir`` is given. Keys: ``generated_at``, ``since``,
    ``events_read``; ``summary`` (totals); ``workstreams`` and ``tasks`` keyed by id, each with
    ``first_event``, ``last_event``, ``events``, ``actors`` ({"operator:NAME" | "worker:ID" |
    "kernel:scheduler": events}), ``operator_actions``, ``state`` (now), ``attempts``,
    ``attempt_seconds`` (sum of finished attempts' durations; a running one counts up to now),
    ``wall_seconds`` (first attempt start to last attempt end), ``tokens_used`` and ``cost``
    (sums, None when no attempt reported any), ``usage`` (``USAGE_FIELDS``); tasks add
    ``workstream_id``, ``retry_count``, ``outcomes`` (attempt outcomes in order), ``workers``,
    ``failure_mode``, ``last_error``, ``leases``; workstreams add ``tasks`` and ``task_states``;
    ``actors`` ({"operators": {...}, "workers": {...}}); ``resources`` ({"leases": [...],
    "by_resource": {...}}) with ``seconds_held`` per lease (a lease still held counts up to now);
    ``usage`` ({"totals", "by_model" (attempts that name their model), "tasks_without_usage",
    "attempts_without_usage"}), from the ``attempt_usage`` view (sql/0006_usage.sql). An attempt
    without token data is unknown, never zero: it is counted in ``attempts_without_usage`` and
    left out of the sums; the summary adds ``cost``, ``tasks_without_usage`` and
    ``attempts_without_usage``.
    """
    rep = _Report(stamp_now=clock.iso(time.time() if now is None else now))
    since_ts = since or "0000-00-00T00:00:00.000Z"
    with db.snapshot(conn):
        for event in iter_events(conn, archive_dir, from_ts=since):
            _note_in_report(rep, event)
        attempts = db.rows(
            conn, "SELECT a.*, t.workstream_id FROM attempt a JOIN task t USING (task_id) "
                  "WHERE a.started_at >= ? ORDER BY a.started_at, a.attempt_id", (since_ts,))
        leases = db.rows(
            conn, "SELECT l.lease_id, l.resource_id, l.task_id, t.workstream_id, l.attempt_id, "
                  "l.owner, l.mode, l.amount, l.acquired_at, l.released_at, l.release_reason "
                  "FROM lease l JOIN task t USING (task_id) WHERE l.acquired_at >= ? "
                  "ORDER BY l.acquired_at, l.lease_id", (since_ts,))
        current = {r["task_id"]: r for r in db.rows(
            conn, "SELECT task_id, workstream_id, state, retry_count, failure_mode, last_error "
                  "FROM task")}
        ws_states = dict(conn.execute("SELECT workstream_id, state FROM workstream"))
        usage = {key: _usage_by(conn, key, since_ts) for key in ("task_id", "workstream_id",
                                                                 "model", None)}
    _add_attempts(rep, attempts)
    lease_rows, by_resource = _add_leases(rep, leases)
    _finish_tasks(rep, current)
    _finish_workstreams(rep, attempts, ws_states)
    _add_usage(rep, usage)
    used = _usage_section(rep, usage)
    return {
        "generated_at": rep.stamp_now,
        "since": since,
        "events_read": rep.events_read,
        "summary": _summary(rep, attempts, lease_rows, used),
        "workstreams": dict(sorted(rep.workstreams.items())),
        "tasks": dict(sorted(rep.tasks.items())),
        "actors": {"operators": dict(sorted(rep.operators.items())),
                   "workers": dict(sorted(rep.workers.items()))},
        "resources": {"leases": lease_rows, "by_resource": dict(sorted(by_resource.items()))},
        "usage": used,
    }


@dataclass
class _Report:
    """What the report gathers, by section, before it is sorted into its document."""

    stamp_now: str
    events_read: int = 0
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    workstreams: dict[str, dict[str, Any]] = field(default_factory=dict)
    operators: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _note_in_report(rep: _Report, event: dict[str, Any]) -> None:
    """One event: its task's and workstream's entries, and the operator who acted."""
    rep.events_read += 1
    ws_id = event["workstream_id"]
    if event["task_id"]:
        entry = rep.tasks.setdefault(event["task_id"], _empty_task(ws_id))
        _note_event(entry, event)
    if ws_id:
        _note_event(rep.workstreams.setdefault(ws_id, _empty_entity()), event)
    kind, who = _actor(event)
    if kind == "operator":
        op = rep.operators.setdefault(who, {"actions": 0, "by_trigger": {}, "first": None,
                                            "last": None})
        op["actions"] += 1
        op["by_trigger"][event["trigger"]] = op["by_trigger"].get(event["trigger"], 0) + 1
        op["first"] = op["first"] or event["timestamp"]
        op["last"] = event["timestamp"]


def _add_attempts(rep: _Report, attempts: list[dict[str, Any]]) -> None:
    """The attempts section: per task and per worker, counts, outcomes, seconds, tokens."""
    for a in attempts:
        entry = rep.tasks.setdefault(a["task_id"], _empty_task(a["workstream_id"]))
        end = a["finished_at"] or rep.stamp_now
        duration = _seconds_between(a["started_at"], end) or 0.0
        entry["attempts"] += 1
        entry["outcomes"].append(a["outcome"] or "running")
        if a["worker_id"] and a["worker_id"] not in entry["workers"]:
            entry["workers"].append(a["worker_id"])
        entry["attempt_seconds"] = round(entry["attempt_seconds"] + duration, 3)
        entry["first_start"] = min(filter(None, (entry["first_start"], a["started_at"])))
        entry["last_end"] = max(filter(None, (entry["last_end"], end)))
        if a["worker_id"]:
            w = rep.workers.setdefault(a["worker_id"], {"attempts": 0, "tasks": [],
                                                        "attempt_seconds": 0.0, "outcomes": {}})
            w["attempts"] += 1
            if a["task_id"] not in w["tasks"]:
                w["tasks"].append(a["task_id"])
            w["attempt_seconds"] = round(w["attempt_seconds"] + duration, 3)
            outcome = a["outcome"] or "running"
            w["outcomes"][outcome] = w["outcomes"].get(outcome, 0) + 1


def _add_leases(rep: _Report, leases: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The resources section: each lease with ``seconds_held``, and totals per resource."""
    by_resource: dict[str, dict[str, Any]] = {}
    lease_rows = []
    for lease in leases:
        held = _seconds_between(lease["acquired_at"],
                                lease["released_at"] or rep.stamp_now) or 0.0
        row = {**lease, "seconds_held": held, "held_now": lease["released_at"] is None}
        lease_rows.append(row)
        res = by_resource.setdefault(lease["resource_id"], {
            "leases": 0, "seconds_held": 0.0, "unit_seconds": 0.0, "tasks": []})
        res["leases"] += 1
        res["seconds_held"] = round(res["seconds_held"] + held, 3)
        res["unit_seconds"] = round(res["unit_seconds"] + held * float(lease["amount"]), 3)
        if lease["task_id"] not in res["tasks"]:
            res["tasks"].append(lease["task_id"])
        entry = rep.tasks.setdefault(lease["task_id"], _empty_task(lease["workstream_id"]))
        entry["leases"].append({"resource_id": lease["resource_id"], "mode": lease["mode"],
                                "amount": lease["amount"], "seconds_held": held})
    return lease_rows, by_resource


def _finish_tasks(rep: _Report, current: dict[str, dict[str, Any]]) -> None:
    """The tasks section: each task's state now (None: deleted since) and wall time."""
    for task_id, entry in rep.tasks.items():
        now_row = current.get(task_id)
        entry["state"] = now_row["state"] if now_row else None  # None: deleted since
        entry["retry_count"] = now_row["retry_count"] if now_row else None
        entry["failure_mode"] = now_row["failure_mode"] if now_row else None
        entry["last_error"] = now_row["last_error"] if now_row else None
        if entry["workstream_id"] is None and now_row:
            entry["workstream_id"] = now_row["workstream_id"]
        entry["wall_seconds"] = _seconds_between(entry.pop("first_start"), entry.pop("last_end"))
        if entry["workstream_id"]:
            rep.workstreams.setdefault(entry["workstream_id"], _empty_entity())


def _finish_workstreams(rep: _Report, attempts: list[dict[str, Any]],
                        ws_states: dict[str, str]) -> None:
    """The workstreams section: state now, task states, and their tasks' attempts summed."""
    for ws_id, ws in rep.workstreams.items():
        mine = [t for t in rep.tasks.values() if t["workstream_id"] == ws_id]
        ws["state"] = ws_states.get(ws_id)
        ws["tasks"] = len(mine)
        states: dict[str, int] = {}
        for t in mine:
            key = t["state"] or "deleted"
            states[key] = states.get(key, 0) + 1
        ws["task_states"] = dict(sorted(states.items()))
        ws["attempts"] = sum(t["attempts"] for t in mine)
        ws["attempt_seconds"] = round(sum(t["attempt_seconds"] for t in mine), 3)
        ws_attempts = [a for a in attempts if a["workstream_id"] == ws_id]
        ws["wall_seconds"] = _seconds_between(
            min((a["started_at"] for a in ws_attempts), default=None),
            max((a["finished_at"] or rep.stamp_now for a in ws_attempts), default=None))
        ws["workers"] = sorted({w for t in mine for w in t["workers"]})

# ------------------------------------------------------------------------------------- usage

#: The keys of a usage entry: attempts, those with token data (``attempts_with_usage``) and with
#: a cost, the sums of ``tokens_used``, ``tokens_sent``, ``tokens_received`` and ``cost`` (USD)
#: over the attempts that reported them (None when none did: unknown, not zero), and
#: ``attempts_without_usage``.
USAGE_FIELDS = ("attempts", "attempts_with_usage", "attempts_without_usage", "tokens_used",
                "tokens_sent", "tokens_received", "attempts_with_cost", "cost")

# One query for every grouping: the sums a Datasette canned query over attempt_usage would make.
_USAGE_SQL = """
SELECT {key} AS key, count(*) AS attempts, count(tokens_used) AS attempts_with_usage,
       sum(tokens_used) AS tokens_used, sum(tokens_sent) AS tokens_sent,
       sum(tokens_received) AS tokens_received, count(cost) AS attempts_with_cost,
       round(sum(cost), 6) AS cost
  FROM attempt_usage WHERE started_at >= ? {group}
"""


def _usage_by(conn: apsw.Connection, key: str | None,
              since_ts: str) -> dict[str | None, dict[str, Any]]:
    """Usage entries from ``attempt_usage`` grouped by ``key`` (None: one entry, the totals)."""
    sql = _USAGE_SQL.format(key=key or "NULL", group=f"GROUP BY {key}" if key else "")
    out = {}
    for row in db.rows(conn, sql, (since_ts,)):
        group = row.pop("key")
        row["attempts_without_usage"] = row["attempts"] - row["attempts_with_usage"]
        out[group] = {k: row[k] for k in USAGE_FIELDS}
    return out


def _empty_usage() -> dict[str, Any]:
    return {k: (0 if k.startswith("attempts") else None) for k in USAGE_FIELDS}


def _add_usage(rep: _Report, usage: dict[str | None, dict[Any, dict[str, Any]]]) -> None:
    """Each task's and workstream's ``usage``, ``tokens_used`` and ``cost``."""
    for section, key in ((rep.tasks, "task_id"), (rep.workstreams, "workstream_id")):
        for entity_id, entry in section.items():
            found = usage[key].get(entity_id) or _empty_usage()
            entry["usage"] = found
            entry["tokens_used"], entry["cost"] = found["tokens_used"], found["cost"]


def _usage_section(rep: _Report, usage: dict[str | None, dict[Any, dict[str, Any]]]
                   ) -> dict[str, Any]:
    totals = usage[None].get(None) or _empty_usage()
    by_model = {m: u for m, u in usage["model"].items() if m is not None}
    return {"totals": totals, "by_model": dict(sorted(by_model.items())),
            "attempts_without_usage": totals["attempts_without_usage"],
            "tasks_without_usage": sum(
                1 for t in rep.tasks.values()
                if t["usage"]["attempts"] and not t["usage"]["attempts_with_usage"])}


def _summary(rep: _Report, attempts: list[dict[str, Any]],
             lease_rows: list[dict[str, Any]], used: dict[str, Any]) -> dict[str, Any]:
    """The totals of the report."""
    return {
        "events": rep.events_read,
        "workstreams": len(rep.workstreams),
        "tasks": len(rep.tasks),
        "attempts": len(attempts),
        "attempt_outcomes": _count(a["outcome"] or "running" for a in attempts),
        "attempt_seconds": round(sum(t["attempt_seconds"] for t in rep.tasks.values()), 3),
        "tokens_used": used["totals"]["tokens_used"],
        "cost": used["totals"]["cost"],
        "tasks_without_usage": used["tasks_without_usage"],
        "attempts_without_usage": used["attempts_without_usage"],
        "leases": len(lease_rows),
        "lease_seconds": round(sum(r["seconds_held"] for r in lease_rows), 3),
        "operator_actions": sum(o["actions"] for o in rep.operators.values()),
        "workers": len(rep.workers),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _money(value: float | None) -> str:
    """US dollars as the agents report them (fractions of a cent matter): $0.000123, $1.5."""
    if value is None:
        return "unknown"
    return "$" + (f"{value:.6f}".rstrip("0").rstrip(".") or "0")


def format_usage(usage: dict[str, Any]) -> str:
    """A usage entry (``USAGE_FIELDS``) in a few words: "tokens 730 (700 sent, 30 received),
    cost $0.0012" or "tokens unknown"; "(1 of 3 attempts without usage data)" when partial."""
    if not usage["attempts_with_usage"]:
        text = "tokens unknown"
    else:
        text = f"tokens {usage['tokens_used']:,}"
        if usage["tokens_sent"] is not None and usage["tokens_received"] is not None:
            text += f" ({usage['tokens_sent']:,} sent, {usage['tokens_received']:,} received)"
        text += f", cost {_money(usage['cost'])}"
    if usage["attempts_with_usage"] and usage["attempts_without_usage"]:
        text += (f" ({usage['attempts_without_usage']} of {usage['attempts']} attempts without "
                 "usage data)")
    return text


def _usage_lines(rep: dict[str, Any]) -> list[str]:
    """The usage section of the text: totals, per model, per workstream, the unknowns."""
    used = rep["usage"]
    lines = ["", "Usage (tokens and cost):", f"  total: {format_usage(used['totals'])}"]
    for model, u in used["by_model"].items():
        lines.append(f"  model {model}: {format_usage(u)}, {u['attempts']} attempts")
    for ws_id, ws in rep["workstreams"].items():
        if ws["usage"]["attempts"]:
            lines.append(f"  workstream {ws_id}: {format_usage(ws['usage'])}")
    if used["tasks_without_usage"]:
        lines.append(f"  {used['tasks_without_usage']} tasks without usage data "
                     f"({used['attempts_without_usage']} attempts): counted as unknown, "
                     "not zero")
    return lines


def format_report(rep: dict[str, Any]) -> str:
    """The report as text for people (``orch audit report`` without ``--json``)."""
    s = rep["summary"]
    outcomes = ", ".join(f"{k} {v}" for k, v in s["attempt_outcomes"].items()) or "none"
    lines = [
        f"Audit report generated {rep['generated_at']}"
        + (f", since {rep['since']}" if rep["since"] else ", whole history"),
        f"{s['events']} events, {s['workstreams']} workstreams, {s['tasks']} tasks, "
        f"{s['attempts']} attempts ({outcomes}), "
        f"{_num(s['attempt_seconds'])} s of attempts, tokens {_num(s['tokens_used'])}, "
        f"cost {_money(s['cost'])}, "
        f"{s['leases']} leases ({_num(s['lease_seconds'])} s held), "
        f"{s['operator_actions']} operator actions",
        "",
        "Workstreams:",
    ]
    for ws_id, ws in rep["workstreams"].items():
        states = ", ".join(f"{k} {v}" for k, v in ws["task_states"].items()) or "no tasks"
        lines.append(
            f"  {ws_id}: {ws['state'] or '?'}; tasks: {states}; {ws['attempts']} attempts, "
            f"{_num(ws['attempt_seconds'])} s of attempts, wall {_num(ws['wall_seconds'])} s; "
            f"first {ws['first_event'] or '-'}, last {ws['last_event'] or '-'}")
    lines += ["", "Tasks:"]
    for task_id, t in rep["tasks"].items():
        who = ", ".join(t["workers"]) or "-"
        ops = "; ".join(f"{a['trigger']} by {a['operator']} at {a['timestamp']}"
                        for a in t["operator_actions"])
        lines.append(
            f"  {task_id} ({t['workstream_id']}): {t['state'] or 'deleted'}; attempts "
            f"{t['attempts']} [{', '.join(t['outcomes'])}] on {who}; "
            f"{_num(t['attempt_seconds'])} s, wall {_num(t['wall_seconds'])} s"
            + (f"; {format_usage(t['usage'])}" if t["usage"]["attempts"] else "")
            + (f"; {t['failure_mode']}" if t["failure_mode"] else "")
            + (f"; operator: {ops}" if ops else ""))
    ops_all = rep["actors"]["operators"]
    if ops_all:
        lines += ["", "Operators:"]
        for name, op in ops_all.items():
            kinds = ", ".join(f"{k} {v}" for k, v in op["by_trigger"].items())
            lines.append(f"  {name}: {op['actions']} actions ({kinds}), {op['first']} .. "
                         f"{op['last']}")
    lines += _usage_lines(rep)
    by_res = rep["resources"]["by_resource"]
    if by_res:
        lines += ["", "Resources:"]
        for rid, res in by_res.items():
            lines.append(f"  {rid}: {res['leases']} leases, {_num(res['seconds_held'])} s held "
                         f"({_num(res['unit_seconds'])} unit-seconds) by "
                         f"{', '.join(res['tasks'])}")
    return "\n".join(lines)
