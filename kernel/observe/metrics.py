"""Operational metrics (SPEC OBS-001, OBS-002): ``.state/metrics.json``, samples kept in the
database, and a Prometheus/OpenMetrics view of the same numbers read at scrape time. This
module gathers the public names of the three modules that implement them: the document
(``kernel.observe.metrics_document``, with the definition of every number), the samples and
the file (``kernel.observe.metrics_history``) and the Prometheus view
(``kernel.observe.prometheus``).

Public API:
    ``collect(conn, now) -> dict``                 the OBS-001 document
    ``write_metrics(conn, state_dir, now, *, retention_days=RETENTION_DAYS) -> dict``
                                                   stores a sample row, prunes old ones, then
                                                   writes ``.state/metrics.json`` atomically
    ``samples(conn, since=None, until=None) -> list[dict]``  stored documents, oldest first
    ``prune_in_tx(conn, now, retention_days=RETENTION_DAYS) -> int``  (inside the caller's
                                                   write transaction)
    ``MetricsTicker(interval)`` with ``.due(now) -> bool``   when the run loop should write
    ``OrchCollector(source, now=None)``; ``registry_for(conn, now=None) -> CollectorRegistry``;
    ``render_openmetrics(conn, now=None) -> bytes``; ``render_prometheus(conn, now=None)``
    ``render_json(doc) -> str`` (the exact text of ``metrics.json``);
    ``start_server(project, host, port) -> (server, thread)``; ``serve(project, host, port)``
    (blocks until Ctrl-C or SIGTERM); ``is_loopback(host) -> bool``
    Models (pydantic, frozen): ``Metrics``, ``WorkstreamMetrics``, ``TaskMetrics``,
    ``WorkerMetrics``, ``MetricsWindow``; constants ``METRICS_SCHEMA_VERSION``,
    ``METRICS_SCHEMA_NAME``, ``METRICS_FILE``, ``RETENTION_DAYS``, ``MIN_RETENTION_DAYS``,
    ``RATE_WINDOW_SECONDS``, ``TASK_STATES``, ``WORKER_STATES``, ``WORKSTREAM_STATES``,
    ``ACTIVE_WORKSTREAM_STATES``, ``ATTEMPT_OUTCOMES``, ``SEVERITIES``, the histogram bucket
    bounds ``*_BUCKETS``.

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
    ``kernel.observe.documents``, ``kernel.observe.metrics_document``,
    ``kernel.observe.metrics_history``, ``kernel.observe.prometheus``.
"""

from __future__ import annotations

from kernel.observe.documents import render_indented as render_json
from kernel.observe.metrics_document import (
    ACTIVE_WORKSTREAM_STATES,
    METRICS_SCHEMA_NAME,
    METRICS_SCHEMA_VERSION,
    RATE_WINDOW_SECONDS,
    TASK_STATES,
    WORKER_STATES,
    WORKSTREAM_STATES,
    Metrics,
    MetricsWindow,
    TaskMetrics,
    WorkerMetrics,
    WorkstreamMetrics,
    collect,
)
from kernel.observe.metrics_history import (
    METRICS_FILE,
    MIN_RETENTION_DAYS,
    RETENTION_DAYS,
    MetricsTicker,
    prune_in_tx,
    samples,
    write_metrics,
)
from kernel.observe.prometheus import (
    ATTEMPT_DURATION_BUCKETS,
    ATTEMPT_OUTCOMES,
    SEVERITIES,
    WORKER_STATE_DURATION_BUCKETS,
    WORKSTREAM_DURATION_BUCKETS,
    OrchCollector,
    is_loopback,
    registry_for,
    render_openmetrics,
    render_prometheus,
    serve,
    start_server,
)

__all__ = [
    "ACTIVE_WORKSTREAM_STATES", "ATTEMPT_DURATION_BUCKETS", "ATTEMPT_OUTCOMES", "METRICS_FILE",
    "METRICS_SCHEMA_NAME", "METRICS_SCHEMA_VERSION", "MIN_RETENTION_DAYS", "RATE_WINDOW_SECONDS",
    "RETENTION_DAYS", "SEVERITIES", "TASK_STATES", "WORKER_STATES", "WORKER_STATE_DURATION_BUCKETS",
    "WORKSTREAM_DURATION_BUCKETS", "WORKSTREAM_STATES", "Metrics", "MetricsTicker", "MetricsWindow",
    "OrchCollector", "TaskMetrics", "WorkerMetrics", "WorkstreamMetrics", "collect", "is_loopback",
    "prune_in_tx", "registry_for", "render_json", "render_openmetrics", "render_prometheus",
    "samples", "serve", "start_server", "write_metrics",
]
