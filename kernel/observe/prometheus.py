"""The metrics for Prometheus (SPEC OBS-001): an OpenMetrics / Prometheus text view of the
same numbers as ``metrics.json``, plus counters and histograms, read from the database at
scrape time.

Public API:
    ``OrchCollector(source, now=None)``; ``registry_for(conn, now=None) -> CollectorRegistry``;
    ``render_openmetrics(conn, now=None) -> bytes``; ``render_prometheus(conn, now=None)``;
    ``start_server(project, host, port) -> (server, thread)``; ``serve(project, host, port)``
    (blocks until Ctrl-C or SIGTERM); ``is_loopback(host) -> bool``; ``ATTEMPT_OUTCOMES``,
    ``SEVERITIES`` and the histogram bucket bounds ``*_BUCKETS``.

Stability Guarantees:
    Every scrape reads in one read transaction. Prometheus metric names and labels (see
    docs/operations/METRICS.md) only change with a CHANGELOG entry. The registry holds only
    the orch collector (no process or platform metrics).

Integration Points:
    ``orch metrics --openmetrics FILE`` and ``--serve HOST:PORT`` (``kernel.cli.metrics``);
    Prometheus scrapes ``serve``; node_exporter's textfile collector reads
    ``render_prometheus``. The gauges come from ``kernel.observe.metrics_document.collect``.

Dependencies:
    apsw, prometheus_client; ``kernel.observe.metrics_document``, ``kernel.store.db``,
    ``kernel.store.machines``, ``kernel.store.project``.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any
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

from kernel import __version__
from kernel.observe.metrics_document import (
    METRICS_SCHEMA_VERSION,
    TASK_STATES,
    WORKER_STATES,
    WORKSTREAM_STATES,
    collect,
    errors_since,
    pairs,
)
from kernel.store import db
from kernel.store.machines import terminal_sql, terminal_states

if TYPE_CHECKING:
    from kernel.store.project import Project

ATTEMPT_OUTCOMES = ("succeeded", "failed", "timeout", "cancelled", "lost", "validation_failed",
                    "not_started")
SEVERITIES = ("info", "warning", "error", "critical")

# Histogram bucket upper bounds, seconds (+Inf is added).
ATTEMPT_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WORKSTREAM_DURATION_BUCKETS = (10, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
WORKER_STATE_DURATION_BUCKETS = (0.1, 1, 10, 60, 300, 900, 3600, 14400, 86400)


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
    """Every metric family, read inside the caller's read transaction."""
    return [*_gauges(conn, now), *_counters(conn), *_histograms(conn)]


def _gauges(conn: apsw.Connection, now: float) -> list[Metric]:
    """The build info and the numbers of the metrics document."""
    doc = collect(conn, now)
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
    return out


def _counters(conn: apsw.Connection) -> list[Metric]:
    """Totals over the whole event log: completions, failures, events by severity, failure-mode
    occurrences."""
    completed = db.scalar(conn, "SELECT COUNT(*) FROM event WHERE entity_type = 'task' "
                                "AND event = 'task_completed'")
    failed = db.scalar(conn, "SELECT COUNT(*) FROM event WHERE entity_type = 'task' "
                             "AND to_state = 'failed'")
    out: list[Metric] = [
        CounterMetricFamily("orch_tasks_completed",
                            "Task completions (task_completed events) in the event log.",
                            value=int(completed or 0)),
        CounterMetricFamily("orch_tasks_failed",
                            "Task transitions into failed in the event log.",
                            value=int(failed or 0))]
    events = CounterMetricFamily("orch_events", "Audit events by severity.", labels=["severity"])
    by_sev = pairs(conn, "SELECT severity, COUNT(*) FROM event GROUP BY severity")
    for sev in SEVERITIES:
        events.add_metric([sev], int(by_sev.get(sev, 0)))
    out.append(events)
    failures = CounterMetricFamily("orch_failures",
                                   "Failure-mode occurrences (the failure_occurrence view).",
                                   labels=["mode"])
    for mode, n in errors_since(conn, None).items():
        failures.add_metric([mode], n)
    out.append(failures)
    return out


def _histograms(conn: apsw.Connection) -> list[Metric]:
    """Durations: finished attempts by outcome, finished workstreams by final state, workers'
    finished stays by state."""
    attempts = conn.execute(
        "SELECT outcome, (julianday(finished_at) - julianday(started_at)) * 86400.0 "
        "FROM attempt WHERE finished_at IS NOT NULL AND outcome IS NOT NULL").fetchall()
    workstreams = conn.execute(
        "SELECT state, (julianday(COALESCE(completed_at, updated_at)) - julianday(started_at)) "
        "* 86400.0 FROM workstream WHERE started_at IS NOT NULL "
        f"AND state IN {terminal_sql('workstream')}").fetchall()
    stays = conn.execute(
        "SELECT state, seconds FROM (SELECT to_state AS state, "
        "(julianday(LEAD(timestamp) OVER w) - julianday(timestamp)) * 86400.0 AS seconds "
        "FROM event WHERE entity_type = 'worker' AND to_state IS NOT NULL "
        "WINDOW w AS (PARTITION BY entity_id ORDER BY seq)) "
        "WHERE seconds IS NOT NULL AND state <> 'shutdown'").fetchall()
    return [
        _histogram("orch_task_attempt_duration",
                   "Duration of finished task attempts, by outcome.", "outcome",
                   _durations(attempts, ATTEMPT_OUTCOMES), ATTEMPT_DURATION_BUCKETS),
        _histogram("orch_workstream_duration",
                   "Duration of finished workstreams (started_at to completed_at), "
                   "by final state.", "state",
                   _durations(workstreams, terminal_states("workstream")),
                   WORKSTREAM_DURATION_BUCKETS),
        _histogram("orch_worker_state_duration",
                   "Time workers spent in a state before leaving it (finished stays).",
                   "state",
                   _durations(stays, [s for s in WORKER_STATES if s != "shutdown"]),
                   WORKER_STATE_DURATION_BUCKETS),
    ]


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
            with contextlib.closing(self.source()) as conn, db.snapshot(conn):
                families = _families(conn, now)
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
