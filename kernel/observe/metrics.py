"""Operational metrics (SPEC OBS-001, OBS-002): ``.state/metrics.json``, samples kept in the
database, and a Prometheus/OpenMetrics view of the same numbers read at scrape time.

Public API:
    ``collect(conn, now) -> dict``                 the OBS-001 document (see "Definitions")
    ``write_metrics(conn, state_dir, now, *, retention_days=RETENTION_DAYS) -> dict``
                                                   stores a sample row, prunes old ones, then
                                                   writes ``.state/metrics.json`` atomically
    ``samples(conn, since=None, until=None) -> list[dict]``  stored documents, oldest first
    ``prune(conn, now, retention_days=RETENTION_DAYS) -> int``  (inside a write transaction)
    ``MetricsTicker(interval)`` with ``.due(now) -> bool``   when the run loop should write
    ``OrchCollector(source, now=None)``; ``registry_for(conn, now=None) -> CollectorRegistry``;
    ``render_openmetrics(conn, now=None) -> bytes``; ``render_prometheus(conn, now=None)``
    ``render_json(doc) -> str``;
    ``start_server(project, host, port) -> (server, thread)``; ``serve(project, host, port)``
    (blocks until Ctrl-C or SIGTERM); ``is_loopback(host) -> bool``
    Models (pydantic, frozen): ``Metrics``, ``WorkstreamMetrics``, ``TaskMetrics``,
    ``WorkerMetrics``, ``MetricsWindow``; constants ``METRICS_SCHEMA_VERSION``,
    ``METRICS_FILE``, ``RETENTION_DAYS``, ``MIN_RETENTION_DAYS``, ``RATE_WINDOW_SECONDS``,
    the histogram bucket bounds ``*_BUCKETS``.

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
    fields are only added in a minor version). ``metrics.json`` is written with sorted keys via
    a temporary file, fsync and rename, so a reader never sees a torn file. Samples are kept at
    least ``MIN_RETENTION_DAYS`` (30) days. Prometheus metric names and labels (see
    docs/operations/METRICS.md) only change with a CHANGELOG entry.

Integration Points:
    ``orch run`` calls ``write_metrics`` at start, at the end and whenever
    ``MetricsTicker([views] metrics_interval_seconds).due(now)``; ``orch metrics`` (kernel.cli)
    prints, renders, serves and lists history; Prometheus scrapes ``serve``; Datasette browses
    ``metric_sample``, ``metric_history``, ``metric_history_errors`` and ``failure_occurrence``.

Dependencies:
    apsw, prometheus_client, pydantic; ``kernel.base.clock``, ``kernel.definitions.models``,
    ``kernel.observe.documents``, ``kernel.store.db``, ``kernel.store.machines``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any
from wsgiref.simple_server import WSGIServer

import apsw
from prometheus_client import exposition
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from kernel import __version__
from kernel.base import clock
from kernel.definitions.models import SEMVER_PATTERN
from kernel.observe.documents import header, render_indented, write_document
from kernel.store import db
from kernel.store.machines import terminal_sql, terminal_states

if TYPE_CHECKING:
    from kernel.store.project import Project

METRICS_SCHEMA_VERSION = "1.0.0"
METRICS_SCHEMA_NAME = "metrics"
METRICS_FILE = "metrics.json"
RETENTION_DAYS = 30  # samples older than this are pruned (orch.toml setting: not yet)
MIN_RETENTION_DAYS = 30  # OBS-002: at least 30 days of history stay queryable
RATE_WINDOW_SECONDS = 3600

TASK_STATES = ("pending", "queued", "running", "validating", "retrying", "completed", "failed",
               "cancelled")
WORKER_STATES = ("initializing", "idle", "busy", "unresponsive", "shutdown")
WORKSTREAM_STATES = ("planned", "ready", "executing", "validating", "completed", "failed",
                     "cancelled")
ACTIVE_WORKSTREAM_STATES = ("executing", "validating")
ATTEMPT_OUTCOMES = ("succeeded", "failed", "timeout", "cancelled", "lost", "validation_failed",
                    "not_started")
SEVERITIES = ("info", "warning", "error", "critical")

# Histogram bucket upper bounds, seconds (+Inf is added).
ATTEMPT_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WORKSTREAM_DURATION_BUCKETS = (10, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
WORKER_STATE_DURATION_BUCKETS = (0.1, 1, 10, 60, 300, 900, 3600, 14400, 86400)

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


def _pairs(conn: apsw.Connection, sql: str, params: Sequence[Any] = ()) -> dict[str, int]:
    """A two-column query (key, count) as a dict."""
    return {str(k): int(v or 0) for k, v in conn.execute(sql, params).fetchall()}


def _counts(conn: apsw.Connection, table: str, states: Sequence[str]) -> dict[str, int]:
    found = _pairs(conn, f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
    return {s: int(found.get(s, 0)) for s in states} | {
        "total": int(sum(found.values()))}


def _failure_modes(conn: apsw.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT mode_id FROM failure_mode ORDER BY mode_id")]


def _errors_since(conn: apsw.Connection, since: str | None) -> dict[str, int]:
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
    ws_today = _pairs(
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
    errors = _errors_since(conn, today)
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


# --------------------------------------------------------------------------- samples, files


def _check_retention(retention_days: float) -> None:
    if retention_days < MIN_RETENTION_DAYS:
        raise ValueError(f"metric samples are kept at least {MIN_RETENTION_DAYS} days "
                         f"(OBS-002), not {retention_days}")


def prune(conn: apsw.Connection, now: float, retention_days: float = RETENTION_DAYS) -> int:
    """Delete the samples older than ``retention_days`` before ``now`` (call inside a write
    transaction). A sample exactly ``retention_days`` old is kept. Returns the rows deleted."""
    _check_retention(retention_days)
    conn.execute("DELETE FROM metric_sample WHERE sampled_at < ?",
                 (clock.iso(now - retention_days * 86400),))
    return conn.changes()


def render_json(doc: dict[str, Any]) -> str:
    """The exact text of ``metrics.json``: sorted keys, two-space indent, trailing newline."""
    return render_indented(doc)


def write_metrics(conn: apsw.Connection, state_dir: str | os.PathLike[str], now: float, *,
                  retention_days: float = RETENTION_DAYS) -> dict[str, Any]:
    """Collect the document, store it as a ``metric_sample`` row and prune samples older than
    the retention (one short write transaction), then write ``state_dir/metrics.json``
    atomically (``metrics.json.tmp``, fsync, rename). Call it outside a transaction. Returns
    the document."""
    _check_retention(retention_days)
    doc = collect(conn, now)
    with db.write_tx(conn):
        conn.execute(
            "INSERT INTO metric_sample (sampled_at, schema_version, document) VALUES (?, ?, ?) "
            "ON CONFLICT (sampled_at) DO UPDATE SET schema_version = excluded.schema_version, "
            "document = excluded.document",
            (doc["timestamp"], doc["schema_version"],
             json.dumps(doc, sort_keys=True, separators=(",", ":"))))
        prune(conn, now, retention_days)
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_document(directory / METRICS_FILE, doc, indented=True)
    return doc


def _as_iso(t: str | float | datetime | None) -> str | None:
    if t is None or isinstance(t, str):
        return t
    return clock.iso(t)


def samples(conn: apsw.Connection, since: str | float | datetime | None = None,
            until: str | float | datetime | None = None) -> list[dict[str, Any]]:
    """The stored documents with ``since <= timestamp <= until`` (ISO text, epoch seconds or a
    datetime; None: no bound), oldest first."""
    sql, params = "SELECT document FROM metric_sample WHERE 1 = 1", []
    if since is not None:
        sql += " AND sampled_at >= ?"
        params.append(_as_iso(since))
    if until is not None:
        sql += " AND sampled_at <= ?"
        params.append(_as_iso(until))
    return [json.loads(r[0]) for r in conn.execute(sql + " ORDER BY sampled_at", params)]


class MetricsTicker:
    """When the run loop should call ``write_metrics``: ``due(now)`` is True on the first call
    and then once ``interval`` seconds have passed since the last True (which starts the next
    interval)."""

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the metrics interval must be positive")
        self.interval = float(interval)
        self.last: float | None = None

    def due(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.interval:
            return False
        self.last = now
        return True


# -------------------------------------------------------------------------------- Prometheus


def _histogram(name: str, doc: str, label: str, groups: dict[str, list[float]],
               bounds: Sequence[float], unit: str = "seconds") -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label], unit=unit)
    for key in sorted(groups):
        values = sorted(groups[key])
        buckets: list[tuple[str, float]] = [
            (_bound(b), float(bisect.bisect_right(values, b))) for b in bounds]
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([key], buckets, float(sum(values)))
    return family


def _bound(b: float) -> str:
    return repr(float(b))


def _durations(rows: Iterable[Sequence[Any]], keys: Iterable[str]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {k: [] for k in keys}
    for key, seconds in rows:
        if seconds is not None:
            groups.setdefault(str(key), []).append(max(float(seconds), 0.0))
    return groups


def _families(conn: apsw.Connection, now: float) -> list[Metric]:
    doc = _collect(conn, now)
    out: list[Metric] = []

    def gauge(name: str, help_: str, label: str, values: dict[str, int], states: Sequence[str],
              ) -> None:
        family = GaugeMetricFamily(name, help_, labels=[label])
        for s in states:
            family.add_metric([s], values[s])
        out.append(family)

    info = InfoMetricFamily("orch_build", "orch version and database schema version.")
    info.add_metric([], {"version": __version__,
                         "schema_version": str(db.schema_version(conn)),
                         "metrics_schema_version": METRICS_SCHEMA_VERSION})
    out.append(info)
    gauge("orch_tasks", "Tasks by state now.", "state", doc["tasks"], TASK_STATES)
    gauge("orch_workers", "Workers by state now.", "state", doc["workers"], WORKER_STATES)
    gauge("orch_workstreams", "Workstreams by state now.", "state", doc["workstreams"],
          WORKSTREAM_STATES)
    out.append(GaugeMetricFamily(
        "orch_workers_utilization_ratio",
        "Busy worker-seconds / alive worker-seconds over the last hour.",
        value=doc["workers"]["avg_utilization"]))
    out.append(GaugeMetricFamily(
        "orch_task_completion_rate_per_hour", "task_completed events in the last hour.",
        value=doc["tasks"]["completion_rate_per_hour"]))

    completed = db.scalar(conn, "SELECT COUNT(*) FROM event WHERE entity_type = 'task' "
                                "AND event = 'task_completed'")
    failed = db.scalar(conn, "SELECT COUNT(*) FROM event WHERE entity_type = 'task' "
                             "AND to_state = 'failed'")
    out.append(CounterMetricFamily("orch_tasks_completed",
                                   "Task completions (task_completed events) in the event log.",
                                   value=int(completed or 0)))
    out.append(CounterMetricFamily("orch_tasks_failed",
                                   "Task transitions into failed in the event log.",
                                   value=int(failed or 0)))
    events = CounterMetricFamily("orch_events", "Audit events by severity.", labels=["severity"])
    by_sev = _pairs(conn, "SELECT severity, COUNT(*) FROM event GROUP BY severity")
    for sev in SEVERITIES:
        events.add_metric([sev], int(by_sev.get(sev, 0)))
    out.append(events)
    failures = CounterMetricFamily("orch_failures",
                                   "Failure-mode occurrences (the failure_occurrence view).",
                                   labels=["mode"])
    for mode, n in _errors_since(conn, None).items():
        failures.add_metric([mode], n)
    out.append(failures)

    attempts = conn.execute(
        "SELECT outcome, (julianday(finished_at) - julianday(started_at)) * 86400.0 "
        "FROM attempt WHERE finished_at IS NOT NULL AND outcome IS NOT NULL").fetchall()
    out.append(_histogram("orch_task_attempt_duration",
                          "Duration of finished task attempts, by outcome.", "outcome",
                          _durations(attempts, ATTEMPT_OUTCOMES), ATTEMPT_DURATION_BUCKETS))
    workstreams = conn.execute(
        "SELECT state, (julianday(COALESCE(completed_at, updated_at)) - julianday(started_at)) "
        "* 86400.0 FROM workstream WHERE started_at IS NOT NULL "
        f"AND state IN {terminal_sql('workstream')}").fetchall()
    out.append(_histogram("orch_workstream_duration",
                          "Duration of finished workstreams (started_at to completed_at), "
                          "by final state.", "state",
                          _durations(workstreams, terminal_states("workstream")),
                          WORKSTREAM_DURATION_BUCKETS))
    stays = conn.execute(
        "SELECT state, seconds FROM (SELECT to_state AS state, "
        "(julianday(LEAD(timestamp) OVER w) - julianday(timestamp)) * 86400.0 AS seconds "
        "FROM event WHERE entity_type = 'worker' AND to_state IS NOT NULL "
        "WINDOW w AS (PARTITION BY entity_id ORDER BY seq)) "
        "WHERE seconds IS NOT NULL AND state <> 'shutdown'").fetchall()
    out.append(_histogram("orch_worker_state_duration",
                          "Time workers spent in a state before leaving it (finished stays).",
                          "state",
                          _durations(stays, [s for s in WORKER_STATES if s != "shutdown"]),
                          WORKER_STATE_DURATION_BUCKETS))
    return out


class OrchCollector(Collector):
    """Reads the kernel database at every collect (scrape).

    ``source`` is an open connection (left open) or a callable returning a fresh connection
    (closed after each collect, so concurrent scrapes never share one). ``now`` fixes the clock
    (epoch seconds); None reads ``time.time()`` at each collect.
    """

    def __init__(self, source: apsw.Connection | Callable[[], apsw.Connection],
                 now: float | None = None) -> None:
        self.source = source
        self.now = now
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # no collect at registration: the database is read at scrape time only

    def collect(self) -> Iterator[Metric]:
        now = time.time() if self.now is None else self.now
        if isinstance(self.source, apsw.Connection):
            with self._lock, db.snapshot(self.source):
                families = _families(self.source, now)
        else:
            conn = self.source()
            try:
                with db.snapshot(conn):
                    families = _families(conn, now)
            finally:
                conn.close()
        yield from families


def registry_for(conn: apsw.Connection | Callable[[], apsw.Connection],
                 now: float | None = None) -> CollectorRegistry:
    """A registry holding only the orch collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrchCollector(conn, now))
    return registry


def render_openmetrics(conn: apsw.Connection, now: float | None = None) -> bytes:
    """The metrics in the OpenMetrics text format (ends with ``# EOF``)."""
    return bytes(openmetrics_exposition.generate_latest(registry_for(conn, now)))


def render_prometheus(conn: apsw.Connection, now: float | None = None) -> bytes:
    """The metrics in the Prometheus text format 0.0.4 (node_exporter's textfile collector)."""
    return bytes(exposition.generate_latest(registry_for(conn, now)))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def start_server(project: Project, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; every scrape opens a read-only
    connection and reads in one read transaction. The database is migrated first (so the
    views the scrape reads exist). Use ``server.server_address`` for the bound port (port 0
    picks a free one); stop with ``server.shutdown(); server.server_close()``."""
    project.connect().close()  # migrate once; scrapes only read
    registry = registry_for(lambda: project.connect(readonly=True))
    server, thread = exposition.start_http_server(port, addr=host.strip("[]"),
                                                  registry=registry)
    return server, thread


def serve(project: Project, host: str, port: int, *,
          on_ready: Callable[[str, int], None] | None = None) -> None:
    """Serve the metrics until Ctrl-C (or SIGTERM, in the main thread), then stop cleanly.
    ``on_ready(host, port)`` is called once the socket is bound."""
    server, thread = start_server(project, host, port)
    previous: Any = None
    main = threading.current_thread() is threading.main_thread()

    def _term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if main:
        previous = signal.signal(signal.SIGTERM, _term)
    try:
        if on_ready is not None:
            bound = server.server_address
            on_ready(str(bound[0]), int(bound[1]))
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        # shutdown() waits for the serving loop to notice; never let Ctrl-C hang on it.
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(5)
        server.server_close()
        if main:
            signal.signal(signal.SIGTERM, previous)
