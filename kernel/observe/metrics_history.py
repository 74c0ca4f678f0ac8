"""Metric samples (SPEC OBS-001, OBS-002): the document stored as a ``metric_sample`` row at
every write, pruned after the retention, and written to ``.state/metrics.json``.

Public API:
    ``write_metrics(conn, state_dir, now, *, retention_days=RETENTION_DAYS) -> dict``
        stores a sample row, prunes old ones, then writes ``.state/metrics.json`` atomically
    ``samples(conn, since=None, until=None) -> list[dict]``  stored documents, oldest first
    ``prune_in_tx(conn, now, retention_days=RETENTION_DAYS) -> int``  (inside the caller's
        write transaction)
    ``MetricsTicker(interval)`` with ``.due(now) -> bool``   when the run loop should write
    constants ``METRICS_FILE``, ``RETENTION_DAYS``, ``MIN_RETENTION_DAYS``.

Stability Guarantees:
    ``metrics.json`` is written with sorted keys and a two-space indent via a temporary file,
    fsync and rename (``kernel.observe.documents.write_document``), so a reader never sees a
    torn file. Samples are kept at least ``MIN_RETENTION_DAYS`` (30) days; one sample per
    ``sampled_at`` (a second write at the same moment replaces it).

Integration Points:
    ``orch run`` calls ``write_metrics`` at start, at the end and whenever
    ``MetricsTicker([views] metrics_interval_seconds).due(now)``; ``orch metrics`` writes and
    lists samples; Datasette browses ``metric_sample``, ``metric_history`` and
    ``metric_history_errors`` (sql/0004_metrics.sql).

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.observe.documents``,
    ``kernel.observe.metrics_document``, ``kernel.store.db``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.observe.documents import write_document
from kernel.observe.metrics_document import collect
from kernel.store import db

METRICS_FILE = "metrics.json"
RETENTION_DAYS = 30  # samples older than this are pruned (orch.toml setting: not yet)
MIN_RETENTION_DAYS = 30  # OBS-002: at least 30 days of history stay queryable


def _check_retention(retention_days: float) -> None:
    if retention_days < MIN_RETENTION_DAYS:
        raise ValueError(f"metric samples are kept at least {MIN_RETENTION_DAYS} days "
                         f"(OBS-002), not {retention_days}")


def prune_in_tx(conn: apsw.Connection, now: float, retention_days: float = RETENTION_DAYS) -> int:
    """Delete the samples older than ``retention_days`` before ``now`` (call inside a write
    transaction). A sample exactly ``retention_days`` old is kept. Returns the rows deleted."""
    _check_retention(retention_days)
    conn.execute("DELETE FROM metric_sample WHERE sampled_at < ?",
                 (clock.iso(now - retention_days * 86400),))
    return conn.changes()


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
        prune_in_tx(conn, now, retention_days)
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
