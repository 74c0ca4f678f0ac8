"""The metrics document (SPEC OBS-001): what ``.state/metrics.json`` and every stored sample
hold, read from the database in one read transaction.

Public API:
    ``collect(conn, now) -> dict``      the OBS-001 document (see "Definitions")
    ``pairs(conn, sql, params=()) -> dict[str, int]``  a (key, count) query as a dict
    ``errors_since(conn, since) -> dict[str, int]``  failure-mode occurrences since a kernel
                                        timestamp (None: ever), every mode listed (0 when none)
    Models (pydantic, frozen): ``Metrics``, ``WorkstreamMetrics``, ``TaskMetrics``,
    ``WorkerMetrics``, ``MetricsWindow``; constants ``METRICS_SCHEMA_VERSION``,
    ``METRICS_SCHEMA_NAME``, ``RATE_WINDOW_SECONDS``, ``TASK_STATES``, ``WORKER_STATES``,
    ``WORKSTREAM_STATES``, ``ACTIVE_WORKSTREAM_STATES``.

Definitions (every number is read from the database in one read transaction; ``now`` is the
time of the sample, epoch seconds; "today" is [UTC midnight of ``now``, ``now``]; "the last
hour" is [``now`` - 3600 s, ``now``]):
    workstreams.<state>       workstreams in that state now (one field per machine state)
    workstreams.active        workstreams executing or validating now
    workstreams.total         all workstreams
    workstreams.completed_today / failed_today
                              distinct workstreams with a transition into completed / failed
                              today (from the event log)
    tasks.<state>             tasks in that state now, named as the task machine names them
                              (pending, queued, running, validating, retrying, completed, failed,
                              cancelled); ``running`` does not include ``validating``
    tasks.total               all tasks
    tasks.avg_duration_seconds
                              mean of finished_at - started_at over the attempts whose outcome
                              is ``succeeded`` (all of them; post-execution validation included);
                              null while no attempt has succeeded
    tasks.completion_rate_per_hour
                              ``task_completed`` events in the last hour (``orch skip`` is not a
                              completion)
    workers.<state>           workers in that state now (initializing, idle, busy, unresponsive,
                              shutdown)
    workers.total             workers not shut down
    workers.avg_utilization   busy worker-seconds / alive worker-seconds over the last hour, from
                              the workers' state transitions (a worker is alive from its
                              registration event until it enters shutdown); 0.0 when no worker
                              was alive in the last hour
    errors.<mode_id>          rows of the ``failure_occurrence`` view (sql/0004_metrics.sql)
                              dated today, for every mode of the ``failure_mode`` table (0 when
                              none)
    window                    the bounds used: ``today_since``, ``last_hour_since``

Stability Guarantees:
    The document follows ``schemas/metrics.schema.json`` (``METRICS_SCHEMA_VERSION``, semver:
    fields are only added in a minor version).

Integration Points:
    ``kernel.observe.metrics_history`` stores and writes the document;
    ``kernel.observe.prometheus`` reads the same numbers at scrape time;
    ``kernel.observe.schemas`` publishes the model's JSON Schema; ``kernel.observe.metrics``
    gathers the public names.

Dependencies:
    apsw, pydantic; ``kernel.base.clock``, ``kernel.definitions.models``,
    ``kernel.observe.documents``, ``kernel.store.db``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import apsw
from pydantic import BaseModel, ConfigDict, Field

from kernel.base import clock
from kernel.definitions.models import SEMVER_PATTERN
from kernel.observe.documents import header
from kernel.store import db

METRICS_SCHEMA_VERSION = "1.0.0"
METRICS_SCHEMA_NAME = "metrics"
RATE_WINDOW_SECONDS = 3600

TASK_STATES = ("pending", "queued", "running", "validating", "retrying", "completed", "failed",
               "cancelled")
WORKER_STATES = ("initializing", "idle", "busy", "unresponsive", "shutdown")
WORKSTREAM_STATES = ("planned", "ready", "executing", "validating", "completed", "failed",
                     "cancelled")
ACTIVE_WORKSTREAM_STATES = ("executing", "validating")

_TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"

# --------------------------------------------------------------------------------- the model

Count = Annotated[int, Field(ge=0)]
Timestamp = Annotated[str, Field(pattern=_TIMESTAMP_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsWindow(_Model):
    """The time bounds the windowed numbers use (ISO-8601 UTC, ms)."""

    today_since: Timestamp = Field(description="UTC midnight of the sample's day.")
    last_hour_since: Timestamp = Field(description="The sample's time minus one hour.")


class WorkstreamMetrics(_Model):
    """Workstreams: counts by state now, and terminal transitions today."""

    active: Count = Field(description="Workstreams executing or validating now.")
    completed_today: Count = Field(
        description="Distinct workstreams that entered completed since UTC midnight.")
    failed_today: Count = Field(
        description="Distinct workstreams that entered failed since UTC midnight.")
    total: Count = Field(description="All workstreams.")
    planned: Count
    ready: Count
    executing: Count
    validating: Count
    completed: Count
    failed: Count
    cancelled: Count


class TaskMetrics(_Model):
    """Tasks: counts by state now (the task machine's names), durations and throughput."""

    pending: Count
    queued: Count
    running: Count = Field(description="Tasks in state running (validating is counted apart).")
    validating: Count
    retrying: Count
    completed: Count
    failed: Count
    cancelled: Count
    total: Count = Field(description="All tasks.")
    avg_duration_seconds: Annotated[float, Field(ge=0)] | None = Field(
        description="Mean finished_at - started_at of succeeded attempts; null when none.")
    completion_rate_per_hour: Annotated[float, Field(ge=0)] = Field(
        description="task_completed events in the last hour.")


class WorkerMetrics(_Model):
    """Workers: counts by state now and their utilization over the last hour."""

    total: Count = Field(description="Workers not shut down.")
    initializing: Count
    idle: Count
    busy: Count
    unresponsive: Count
    shutdown: Count
    avg_utilization: Annotated[float, Field(ge=0, le=1)] = Field(
        description="Busy worker-seconds / alive worker-seconds over the last hour (0 if none).")


class Metrics(_Model):
    """The metrics document (.state/metrics.json, SPEC OBS-001)."""

    schema_version: Annotated[str, Field(pattern=SEMVER_PATTERN)]
    schema_url: str = Field(description="URL of this document's JSON Schema.")
    timestamp: Timestamp = Field(description="When the sample was taken (ISO-8601 UTC, ms).")
    window: MetricsWindow
    workstreams: WorkstreamMetrics
    tasks: TaskMetrics
    workers: WorkerMetrics
    errors: dict[str, Count] = Field(
        description="Occurrences today per failure mode id (every mode listed, 0 when none).")


# ------------------------------------------------------------------------------- collecting


def _day_start(now: float) -> float:
    d = datetime.fromtimestamp(now, UTC)
    return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def pairs(conn: apsw.Connection, sql: str, params: Sequence[Any] = ()) -> dict[str, int]:
    """A two-column query (key, count) as a dict."""
    return {str(k): int(v or 0) for k, v in conn.execute(sql, params).fetchall()}


def _counts(conn: apsw.Connection, table: str, states: Sequence[str]) -> dict[str, int]:
    found = pairs(conn, f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
    return {s: int(found.get(s, 0)) for s in states} | {
        "total": int(sum(found.values()))}


def _failure_modes(conn: apsw.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT mode_id FROM failure_mode ORDER BY mode_id")]


def errors_since(conn: apsw.Connection, since: str | None) -> dict[str, int]:
    """Rows of the ``failure_occurrence`` view from ``since`` on (None: all of them) per
    failure mode, every mode of the ``failure_mode`` table listed (0 when none)."""
    counts = {m: 0 for m in _failure_modes(conn)}
    sql = "SELECT mode_id, COUNT(*) FROM failure_occurrence"
    params: tuple[Any, ...] = ()
    if since is not None:
        sql += " WHERE timestamp >= ?"
        params = (since,)
    for mode, n in conn.execute(sql + " GROUP BY mode_id", params):
        counts[mode] = int(n)
    return counts


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _utilization(conn: apsw.Connection, since: float, now: float) -> float:
    """Busy worker-seconds / alive worker-seconds within [since, now], from worker events."""
    start, end = clock.iso(since), clock.iso(now)
    events = conn.execute(
        "SELECT entity_id, timestamp, from_state, to_state FROM event "
        "WHERE entity_type = 'worker' AND timestamp >= ? AND timestamp <= ? ORDER BY seq",
        (start, end)).fetchall()
    by_worker: dict[str, list[tuple[float, str | None, str | None]]] = {}
    for worker_id, ts, from_state, to_state in events:
        by_worker.setdefault(str(worker_id), []).append(
            (clock.epoch(str(ts)), _opt_str(from_state), _opt_str(to_state)))
    current = {str(w): str(s) for w, s in conn.execute("SELECT worker_id, state FROM worker")}
    alive = busy = 0.0
    for worker_id, state_now in current.items():
        timeline = by_worker.get(worker_id, [])
        # The state at the window's start: the first event's from_state (None: registered in the
        # window, not alive before), else the current state held all along.
        state: str | None = timeline[0][1] if timeline else state_now
        t = since
        for ts, _from, to_state in [*timeline, (now, None, None)]:
            ts = min(max(ts, t), now)
            if state is not None and state != "shutdown":
                alive += ts - t
                if state == "busy":
                    busy += ts - t
            state, t = to_state, ts
    return round(busy / alive, 4) if alive > 0 else 0.0


def _collect(conn: apsw.Connection, now: float) -> dict[str, Any]:
    today, hour = clock.iso(_day_start(now)), clock.iso(now - RATE_WINDOW_SECONDS)
    stamp = clock.iso(now)
    ws = _counts(conn, "workstream", WORKSTREAM_STATES)
    ws_today = pairs(
        conn,
        "SELECT to_state, COUNT(DISTINCT entity_id) FROM event WHERE entity_type = 'workstream' "
        "AND to_state IN ('completed', 'failed') AND timestamp >= ? AND timestamp <= ? "
        "GROUP BY to_state", (today, stamp))
    tasks = _counts(conn, "task", TASK_STATES)
    avg = db.scalar(conn, "SELECT AVG((julianday(finished_at) - julianday(started_at)) * 86400.0) "
                          "FROM attempt WHERE outcome = 'succeeded' AND finished_at IS NOT NULL")
    completions = db.scalar(conn, "SELECT COUNT(*) FROM event WHERE entity_type = 'task' "
                                  "AND event = 'task_completed' AND timestamp >= ? "
                                  "AND timestamp <= ?", (hour, stamp))
    workers = _counts(conn, "worker", WORKER_STATES)
    errors = errors_since(conn, today)
    doc = {
        **header(METRICS_SCHEMA_NAME, METRICS_SCHEMA_VERSION),
        "timestamp": stamp,
        "window": {"today_since": today, "last_hour_since": hour},
        "workstreams": {
            **{s: ws[s] for s in WORKSTREAM_STATES},
            "total": ws["total"],
            "active": sum(ws[s] for s in ACTIVE_WORKSTREAM_STATES),
            "completed_today": int(ws_today.get("completed", 0)),
            "failed_today": int(ws_today.get("failed", 0)),
        },
        "tasks": {
            **{s: tasks[s] for s in TASK_STATES},
            "total": tasks["total"],
            "avg_duration_seconds": None if avg is None else round(max(float(avg), 0.0), 3),
            "completion_rate_per_hour": float(completions or 0),
        },
        "workers": {
            **{s: workers[s] for s in WORKER_STATES},
            "total": workers["total"] - workers["shutdown"],
            "avg_utilization": _utilization(conn, now - RATE_WINDOW_SECONDS, now),
        },
        "errors": errors,
    }
    return Metrics.model_validate(doc).model_dump(mode="json")


def collect(conn: apsw.Connection, now: float) -> dict[str, Any]:
    """The OBS-001 document as of ``now`` (epoch seconds); see the module's "Definitions".

    Reads in one read transaction (or inside the caller's transaction, if one is open).
    """
    with db.snapshot(conn):
        return _collect(conn, now)

