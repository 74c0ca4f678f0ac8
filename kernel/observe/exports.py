"""The ``.state/`` views: JSON files an agent reads to understand the whole state without code.

Public API:
    ``export(conn, state_dir, *, full=True, now=None, cache=None) -> ExportReport``
        writes every view from one read snapshot of the database (STATE-OBS-001..006,
        DAG-VIEW-001..003, checkpoints); ``full=False`` skips the per-workstream files whose
        workstream did not change since the export that filled ``cache``.
    ``Exporter(db_path, state_dir, min_interval=0.25, budget=0.1)``: a background thread that
        exports after commits, coalesced: ``request()``, ``close()``.
    ``export_after_change(project)``: one best-effort export after a command changed state.
    ``read_view(state_dir, name) -> dict`` (an index, or current.json when the index is stale);
    ``last_exported_seq(path) -> int``.
    Document models (frozen pydantic, ``extra='forbid'``, JSON Schemas in ``schemas/``):
    ``CurrentState``, ``StatusIndex``, ``WorkstreamIndex``, ``WorkerIndex``, ``Checkpoint``;
    ``VIEWS_SCHEMA_VERSION``; ``EVENT_LINE_FIELDS``.

Stability Guarantees:
    Files and their top-level keys are only added to. Every document carries ``schema_version``
    and ``schema_url``; keys are sorted and rows come in key order (task_id, workstream_id,
    worker_id, seq). The update order is STATE-OBS-003: ``current.json.tmp`` is written and
    fsynced, renamed over ``current.json``, and only then are the new events appended to
    ``transitions.jsonl``; the indices follow. The events file is append-only: an export appends
    exactly the events with a seq above the last complete line, so a process killed at any step
    loses nothing and duplicates nothing at the next export (a torn last line is cut off and
    written again; a leftover ``.tmp`` is replaced). ``current.json`` holds ``last_event_seq``:
    the state it shows is the state after that event. Indices name their ``source_timestamp``
    (the ``timestamp`` of the current.json they were derived from); one older than current.json
    by more than ``STALE_AFTER_SECONDS`` is stale and ``read_view`` falls back to current.json.
    Exports only read the database, so they never block a writer.

Integration Points:
    ``orch run`` runs an ``Exporter`` beside its loop (``[views] export = false`` turns it off);
    ``orch export`` calls ``export``; ``orch load``, ``cancel``, ``retry`` and ``skip`` call
    ``export_after_change``; ``orch doctor --repair`` rebuilds the files with ``export``.
    ``kernel.planning.plan.workstream_plan`` makes the DAG and plan documents; the events of
    transitions.jsonl are read through ``kernel.store.eventlog`` (live and archived).

Dependencies:
    apsw, pydantic; ``kernel.base.clock``, ``kernel.base.data``, ``kernel.base.errors``,
    ``kernel.base.files``, ``kernel.planning.plan``, ``kernel.store.db``,
    ``kernel.store.eventlog``, ``kernel.store.events``, ``kernel.store.schema``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import apsw
from pydantic import BaseModel, ConfigDict

from kernel.base import clock
from kernel.base.data import schema_url
from kernel.base.files import write_atomic
from kernel.store import db, eventlog, schema
from kernel.store.events import EVENT_FIELDS

VIEWS_SCHEMA_VERSION = "1.0.0"
STALE_AFTER_SECONDS = 60.0
CURRENT = "current.json"
TRANSITIONS = "transitions.jsonl"
# A line of transitions.jsonl is an event as `orch events --json` prints it.
EVENT_LINE_FIELDS = EVENT_FIELDS

# ------------------------------------------------------------------------------------------
# Document models: they define the JSON Schemas and let tests validate what was written. The
# exporter builds plain dicts with exactly these keys (validating 100,000 rows through
# pydantic on every export would cost more than the export itself).
# ------------------------------------------------------------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_name: ClassVar[str] = ""


class TaskView(_Doc):
    task_id: str
    workstream_id: str
    name: str
    type: str
    state: str
    critical: bool
    priority: int
    attempts: int
    last_worker: str | None
    """The worker of the latest attempt (``assigned_worker`` is cleared when a task stops)."""
    last_exit_code: int | None
    retry_count: int
    max_retries: int
    assigned_worker: str | None
    created_at: str
    queued_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str
    next_attempt_at: str | None
    last_error: str | None
    failure_mode: str | None
    waiting_for: list[str]
    """Prerequisites not completed yet (only for tasks that are still pending)."""


class WorkstreamView(_Doc):
    workstream_id: str
    name: str
    state: str
    base_branch: str | None
    branch: str | None
    worktree_path: str | None
    max_parallelism: int | None
    max_duration_seconds: float | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    updated_at: str
    task_counts: dict[str, int]


class WorkerView(_Doc):
    worker_id: str
    name: str
    state: str
    executor: str
    pid: int | None
    hostname: str | None
    version: str | None
    capabilities: list[str]
    current_task: str | None
    last_heartbeat_at: str | None
    registered_at: str
    stopped_at: str | None
    exit_code: int | None


class ResourceHolder(_Doc):
    lease_id: int
    resource_id: str
    task_id: str
    owner: str
    mode: str
    amount: float
    acquired_at: str
    expires_at: str


class CurrentState(_Doc):
    """``.state/current.json`` (STATE-OBS-001)."""

    schema_name: ClassVar[str] = "current-state"
    schema_version: str
    schema_url: str
    timestamp: str
    last_event_seq: int
    counts: dict[str, int]
    workstreams: list[WorkstreamView]
    tasks: list[TaskView]
    workers: list[WorkerView]
    resources: list[ResourceHolder]


class StatusIndex(_Doc):
    """``.state/by_status.json``: task ids per task state (STATE-OBS-005)."""

    schema_name: ClassVar[str] = "by-status"
    schema_version: str
    schema_url: str
    generated_at: str
    source_timestamp: str
    statuses: dict[str, list[str]]


class WorkstreamEntry(_Doc):
    state: str
    task_counts: dict[str, int]
    tasks: list[str]
    running: list[str]
    failed: list[str]


class WorkstreamIndex(_Doc):
    """``.state/by_workstream.json``: each workstream's state, counts and tasks."""

    schema_name: ClassVar[str] = "by-workstream"
    schema_version: str
    schema_url: str
    generated_at: str
    source_timestamp: str
    workstreams: dict[str, WorkstreamEntry]


class WorkerEntry(_Doc):
    state: str
    current_task: str | None
    last_heartbeat_at: str | None
    tasks: list[str]


class WorkerIndex(_Doc):
    """``.state/by_worker.json``: each worker's state and the tasks assigned to it now."""

    schema_name: ClassVar[str] = "by-worker"
    schema_version: str
    schema_url: str
    generated_at: str
    source_timestamp: str
    workers: dict[str, WorkerEntry]


class Checkpoint(_Doc):
    """``.state/checkpoints/{ws}_latest.json``: where a workstream stands, to resume from."""

    schema_name: ClassVar[str] = "checkpoint"
    schema_version: str
    schema_url: str
    timestamp: str
    last_event_seq: int
    workstream_id: str
    state: str
    completed: list[str]
    failed: list[str]
    pending: list[str]
    in_progress: list[str]
    cancelled: list[str]
    resources_held: list[ResourceHolder]


DOCUMENT_MODELS: tuple[type[_Doc], ...] = (
    CurrentState, StatusIndex, WorkstreamIndex, WorkerIndex, Checkpoint)


def _header(model: type[_Doc]) -> dict[str, str]:
    name = model.schema_name
    return {"schema_version": VIEWS_SCHEMA_VERSION,
            "schema_url": schema_url(name, VIEWS_SCHEMA_VERSION)}


# ------------------------------------------------------------------------------------------
# Reading one snapshot
# ------------------------------------------------------------------------------------------

# Each task row of current.json is built as JSON by SQLite (json_object, keys listed in sorted
# order, so the text equals json.dumps(sort_keys=True)): for 100,000 tasks this is several times
# faster than Python dicts and the encoder. ``tests/test_views.py`` checks the rows against the
# TaskView schema and the tables.
_TASK_JSON_FIELDS = {
    "assigned_worker": "t.worker_id",
    "attempts": "ifnull(a.n, 0)",
    "completed_at": "t.completed_at",
    "created_at": "t.created_at",
    "critical": "json(CASE WHEN t.critical THEN 'true' ELSE 'false' END)",
    "failure_mode": "t.failure_mode",
    "last_error": "t.last_error",
    "last_exit_code": "a.exit_code",
    "last_worker": "a.worker_id",
    "max_retries": "t.max_retries",
    "name": "t.name",
    "next_attempt_at": "t.next_attempt_at",
    "priority": "t.priority",
    "queued_at": "t.queued_at",
    "retry_count": "t.retry_count",
    "started_at": "t.started_at",
    "state": "t.state",
    "task_id": "t.task_id",
    "type": "t.type",
    "updated_at": "t.updated_at",
}
# The last two keys, in sorted order, are appended in Python: "waiting_for" (the prerequisites
# of a pending task that have not completed, found with a dict of states instead of 300,000
# index lookups) and "workstream_id".
assert list(_TASK_JSON_FIELDS) == sorted(_TASK_JSON_FIELDS)
assert max(_TASK_JSON_FIELDS) < "waiting_for" < "workstream_id"
# With a single max() aggregate, SQLite takes the bare columns from the row holding the max.
_TASKS_SQL = f"""
WITH a AS (SELECT task_id, count(*) AS n, max(attempt_no), worker_id, exit_code
             FROM attempt GROUP BY task_id)
SELECT t.task_id, t.workstream_id, t.state, t.worker_id,
       json_object({", ".join(f"'{k}', {v}" for k, v in _TASK_JSON_FIELDS.items())})
  FROM task t LEFT JOIN a ON a.task_id = t.task_id
 ORDER BY t.task_id
"""
# Prerequisites of pending tasks, one row per task (the primary key of task_dependency is
# (task_id, depends_on): read in order, no sort).
_PENDING_DEPS_SQL = """
SELECT d.task_id, group_concat(d.depends_on, char(31)) FROM task_dependency d
 WHERE d.task_id IN (SELECT task_id FROM task WHERE state = 'pending')
 GROUP BY d.task_id
"""


class RawRows(list[str]):
    """Rows that already are JSON text (rendered as they are, one per line)."""


_WORKSTREAM_COLUMNS = (
    "workstream_id", "name", "state", "base_branch", "branch", "worktree_path",
    "max_parallelism", "max_duration_seconds", "created_at", "started_at", "completed_at",
    "updated_at",
)
_WORKER_COLUMNS = (
    "worker_id", "name", "state", "executor", "pid", "hostname", "version",
    "last_heartbeat_at", "registered_at", "stopped_at", "exit_code",
)
_LEASE_COLUMNS = (
    "lease_id", "resource_id", "task_id", "owner", "mode", "amount", "acquired_at", "expires_at",
)
# What changes a workstream's DAG and plan documents besides task states: its tasks, their
# definitions and dependencies, its own row. Compared between exports: when only states
# changed, the cached documents get the new statuses instead of being planned again.
_DEFINITIONS_SQL = """
SELECT t.workstream_id, count(*), group_concat(t.task_id || ':' || ifnull(t.definition_sha256, ''),
       ',')
  FROM (SELECT workstream_id, task_id, definition_sha256 FROM task ORDER BY task_id) t
 GROUP BY t.workstream_id
"""
_EDGES_SQL = """
SELECT t.workstream_id, count(*) FROM task_dependency d JOIN task t ON t.task_id = d.task_id
 GROUP BY t.workstream_id
"""
_WORKSTREAM_FP_SQL = """
SELECT workstream_id, ifnull(definition_sha256, '') || '/' || ifnull(max_parallelism, '')
  FROM workstream
"""


def _definition_fingerprints(conn: apsw.Connection) -> dict[str, str]:
    edges: dict[str, int] = {ws: n for ws, n in conn.execute(_EDGES_SQL)}
    own: dict[str, str] = {ws: fp for ws, fp in conn.execute(_WORKSTREAM_FP_SQL)}
    out = {}
    for wsid, n, ids in conn.execute(_DEFINITIONS_SQL):
        digest = hashlib.blake2b(ids.encode(), digest_size=16).hexdigest()
        out[wsid] = f"{n}/{edges.get(wsid, 0)}/{own.get(wsid, '')}/{digest}"
    return out


# (task_id, workstream_id, state, worker_id): plain tuples, as SQLite returns them; 100,000
# objects would cost more than the query.
_TaskState = tuple[str, str, str, str | None]


@dataclass
class _Snapshot:
    timestamp: str
    last_seq: int
    tasks: list[_TaskState]
    task_rows: RawRows
    workstreams: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    leases: list[dict[str, Any]]
    fingerprints: dict[str, str]


def _rows(conn: apsw.Connection, sql: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in conn.execute(sql)]


def _json_strings(items: list[str]) -> str:
    """A JSON array of strings; ids need no escaping (ID_PATTERN), but anything may be in a
    database, so anything else goes through the encoder."""
    plain = "".join(items)
    if plain.isprintable() and '"' not in plain and "\\" not in plain:
        return '["' + '","'.join(items) + '"]'
    return _dumps(items)


def _read(conn: apsw.Connection, now: str) -> _Snapshot:
    fetched: list[Any] = conn.execute(_TASKS_SQL).fetchall()
    tasks: list[_TaskState] = [row[:4] for row in fetched]
    completed = {row[0] for row in fetched if row[2] == "completed"}
    waiting: dict[str, str] = {}
    for tid, deps in conn.execute(_PENDING_DEPS_SQL):
        open_deps = [d for d in deps.split("\x1f") if d not in completed]
        if open_deps:
            waiting[tid] = _json_strings(sorted(open_deps))
    ws_json = {row[1]: _dumps(row[1]) for row in fetched}
    rows = RawRows(
        f'{text[:-1]},"waiting_for":{waiting.get(tid, "[]")},"workstream_id":{ws_json[wsid]}}}'
        for tid, wsid, _, _, text in fetched)
    del fetched
    counts: dict[str, dict[str, int]] = {}
    for ws, state, n in conn.execute(
            "SELECT workstream_id, state, count(*) FROM task GROUP BY 1, 2 ORDER BY 1, 2"):
        counts.setdefault(ws, {})[state] = n
    workstreams = _rows(conn, f"SELECT {', '.join(_WORKSTREAM_COLUMNS)} FROM workstream "
                              "ORDER BY workstream_id", _WORKSTREAM_COLUMNS)
    for ws_row in workstreams:
        ws_row["task_counts"] = counts.get(ws_row["workstream_id"], {})
    capabilities: dict[str, list[str]] = {}
    for worker_id, cap in conn.execute(
            "SELECT worker_id, capability_id FROM worker_capability ORDER BY 1, 2"):
        capabilities.setdefault(worker_id, []).append(cap)
    current: dict[str, str] = {worker: tid for worker, tid in conn.execute(
        "SELECT worker_id, min(task_id) FROM task WHERE worker_id IS NOT NULL "
        "AND state IN ('running', 'validating') GROUP BY worker_id")}
    workers = _rows(conn, f"SELECT {', '.join(_WORKER_COLUMNS)} FROM worker ORDER BY worker_id",
                    _WORKER_COLUMNS)
    for worker in workers:
        worker["capabilities"] = capabilities.get(worker["worker_id"], [])
        worker["current_task"] = current.get(worker["worker_id"])
    leases = _rows(conn, f"SELECT {', '.join(_LEASE_COLUMNS)} FROM lease "
                         "WHERE released_at IS NULL ORDER BY lease_id", _LEASE_COLUMNS)
    last_seq = db.scalar(conn, "SELECT ifnull(max(seq), 0) FROM event")
    fingerprints = _definition_fingerprints(conn)
    return _Snapshot(now, int(last_seq), tasks, rows, workstreams, workers, leases, fingerprints)


# ------------------------------------------------------------------------------------------
# Writing files
# ------------------------------------------------------------------------------------------


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_dumps = _ENCODER.encode
# Lists of objects are written one object per line (grep finds a task with its whole row),
# except these, whose rows are tiny and many (300,000 edges): one line.
_ONE_LINE = frozenset({"edges"})


def render(doc: dict[str, Any]) -> str:
    """A document as text: one top-level key per line and one row per line inside lists of
    objects, so people can read it and ``grep`` finds a task with its whole row; written with
    the C JSON encoder (``indent`` would use the slow pure-Python one)."""
    parts = []
    for key in sorted(doc):
        value = doc[key]
        if isinstance(value, RawRows) and value:
            text = "[\n  " + ",\n  ".join(value) + "\n ]"
        elif isinstance(value, list) and value and isinstance(value[0], dict) \
                and key not in _ONE_LINE:
            body = ",\n  ".join(_dumps(item) for item in value)
            text = f"[\n  {body}\n ]"
        elif isinstance(value, dict) and value and all(
                isinstance(v, dict | list) for v in value.values()):
            body = ",\n  ".join(f"{_dumps(k)}:{_dumps(value[k])}" for k in sorted(value))
            text = f"{{\n  {body}\n }}"
        else:
            text = _dumps(value)
        parts.append(f" {_dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def last_exported_seq(path: Path) -> int:
    """The seq of the last complete line of a transitions file (0 when empty or missing). A torn
    last line (a process died while appending) is cut off, so it is appended again whole."""
    if not path.exists():
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        chunk = min(size, 1 << 16)
        while True:
            fh.seek(size - chunk)
            tail = fh.read(chunk)
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                if cut < 0 and chunk < size:
                    chunk = min(size, chunk * 4)
                    continue
                keep = size - chunk + cut + 1 if cut >= 0 else 0
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
                if keep == 0:
                    return 0
                size = keep
                chunk = min(size, 1 << 16)
                continue
            lines = tail[:-1].rsplit(b"\n", 1)
            if len(lines) == 1 and chunk < size:
                chunk = min(size, chunk * 4)
                continue
            return int(json.loads(lines[-1])["seq"])


def _append_events(conn: apsw.Connection, path: Path, up_to: int) -> int:
    """Append the events after the file's last seq, up to ``up_to``; returns how many. They
    come from the live table, and from ``.state/archive/events/`` when the file is rebuilt
    after `orch audit rotate` moved its beginning there."""
    after = last_exported_seq(path)
    if after >= up_to:
        return 0
    count = 0
    with open(path, "a", encoding="utf-8") as fh:
        batch: list[str] = []
        for event in eventlog.iter_events(conn, eventlog.archive_dir(path.parent),
                                          since_seq=after, with_source=False):
            if event["seq"] > up_to:
                break
            batch.append(_dumps(event) + "\n")
            if len(batch) >= 4096:
                fh.write("".join(batch))
                count += len(batch)
                batch = []
        fh.write("".join(batch))
        count += len(batch)
        fh.flush()
        os.fsync(fh.fileno())
    return count


def _indices(snap: _Snapshot, generated_at: str) -> dict[str, dict[str, Any]]:
    statuses: dict[str, list[str]] = {}
    per_ws: dict[str, dict[str, Any]] = {
        w["workstream_id"]: {"state": w["state"], "task_counts": w["task_counts"], "tasks": [],
                             "running": [], "failed": []}
        for w in snap.workstreams}
    per_worker: dict[str, dict[str, Any]] = {
        w["worker_id"]: {"state": w["state"], "current_task": w["current_task"],
                         "last_heartbeat_at": w["last_heartbeat_at"], "tasks": []}
        for w in snap.workers}
    for tid, wsid, state, worker in snap.tasks:
        statuses.setdefault(state, []).append(tid)
        entry = per_ws.get(wsid)
        if entry is not None:
            entry["tasks"].append(tid)
            if state in ("running", "validating"):
                entry["running"].append(tid)
            elif state == "failed":
                entry["failed"].append(tid)
        if worker in per_worker and state in ("running", "validating"):
            per_worker[worker]["tasks"].append(tid)
    common = {"generated_at": generated_at, "source_timestamp": snap.timestamp}
    return {
        "by_status.json": {**_header(StatusIndex), **common, "statuses": statuses},
        "by_workstream.json": {**_header(WorkstreamIndex), **common, "workstreams": per_ws},
        "by_worker.json": {**_header(WorkerIndex), **common, "workers": per_worker},
    }


def _checkpoint(snap: _Snapshot, ws: dict[str, Any]) -> dict[str, Any]:
    wsid = ws["workstream_id"]
    groups: dict[str, list[str]] = {
        "completed": [], "failed": [], "pending": [], "in_progress": [], "cancelled": []}
    group_of = {"completed": "completed", "failed": "failed", "cancelled": "cancelled",
                "pending": "pending", "queued": "pending", "retrying": "in_progress",
                "running": "in_progress", "validating": "in_progress"}
    mine = set()
    for tid, task_ws, state, _ in snap.tasks:
        if task_ws == wsid:
            groups[group_of.get(state, "in_progress")].append(tid)
            mine.add(tid)
    return {**_header(Checkpoint), "timestamp": snap.timestamp, "last_event_seq": snap.last_seq,
            "workstream_id": wsid, "state": ws["state"], **groups,
            "resources_held": [lease for lease in snap.leases if lease["task_id"] in mine]}


@dataclass
class ExportReport:
    timestamp: str
    last_event_seq: int
    tasks: int
    events_appended: int
    files_written: list[str] = field(default_factory=list)
    workstreams_skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    #: seconds per step: snapshot, current (current.json), events, indices, workstreams
    #: (DAG, plan and checkpoint files)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "last_event_seq": self.last_event_seq,
                "tasks": self.tasks, "events_appended": self.events_appended,
                "files_written": self.files_written,
                "workstreams_skipped": self.workstreams_skipped,
                "seconds": round(self.seconds, 3), "warnings": self.warnings,
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


def export(conn: apsw.Connection, state_dir: Path, *, full: bool = True,
           now: str | None = None, cache: dict[str, Any] | None = None) -> ExportReport:
    """Write every view from one read snapshot. ``cache`` (workstream -> fingerprint) is read and
    updated: with ``full=False``, a workstream whose fingerprint is unchanged keeps its DAG, plan
    and checkpoint files."""
    started = time.perf_counter()
    state_dir.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else {}
    with _views_lock(state_dir):
        report = _export_locked(conn, state_dir, full, now or clock.now_iso(), cache)
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _views_lock(state_dir: Path) -> Iterator[None]:
    """One exporter at a time per project (``orch run`` and a command run beside it would
    otherwise both append the same events)."""
    with open(state_dir / ".views.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _export_locked(conn: apsw.Connection, state_dir: Path, full: bool, stamp: str,
                   cache: dict[str, Any]) -> ExportReport:
    # The snapshot is read in one short read transaction; files are written after it, so a
    # slow disk never keeps the WAL from being checkpointed. Events up to the snapshot's seq
    # never change, and the DAG documents are read in a snapshot of their own.
    clock_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        nonlocal clock_start
        now = time.perf_counter()
        timings[step] = now - clock_start
        clock_start = now

    with db.read_tx(conn):
        snap = _read(conn, stamp)
    report = ExportReport(stamp, snap.last_seq, len(snap.tasks), 0, timings=timings)
    lap("snapshot")
    counts: dict[str, int] = {}
    for _, _, state, _ in snap.tasks:
        counts[state] = counts.get(state, 0) + 1
    current = {**_header(CurrentState), "timestamp": stamp, "last_event_seq": snap.last_seq,
               "counts": dict(sorted(counts.items())), "workstreams": snap.workstreams,
               "tasks": snap.task_rows, "workers": snap.workers, "resources": snap.leases}
    # STATE-OBS-003: current.json first (tmp, fsync, rename), then the events.
    write_atomic(state_dir / CURRENT, render(current))
    report.files_written.append(CURRENT)
    lap("current")
    transitions = state_dir / TRANSITIONS
    exported = last_exported_seq(transitions)
    if exported > snap.last_seq:
        report.warnings.append(
            f"{TRANSITIONS} holds events up to seq {exported} but the database ends at seq "
            f"{snap.last_seq} (was it restored from an older backup?); nothing was appended")
    report.events_appended = _append_events(conn, transitions, snap.last_seq)
    report.files_written.append(TRANSITIONS)
    lap("events")
    for name, doc in _indices(snap, clock.now_iso()).items():
        write_atomic(state_dir / name, render(doc))
        report.files_written.append(name)
    lap("indices")
    # Each workstream's plan is read in a snapshot of its own (kernel.planning.plan), and its files
    # are written after that snapshot ends: no read transaction is held across file writes.
    _export_workstreams(conn, state_dir, snap, full, cache, report)
    lap("workstreams")
    return report


@dataclass
class _Planned:
    fingerprint: str
    dag: dict[str, Any] | None
    plan: dict[str, Any] | None
    states: dict[str, str]
    checkpoint: str = ""


def _export_workstreams(conn: apsw.Connection, state_dir: Path, snap: _Snapshot, full: bool,
                        cache: dict[str, Any], report: ExportReport) -> None:
    from kernel.base.errors import OrchError
    from kernel.planning.plan import workstream_plan

    checkpoints = state_dir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    states_by_ws: dict[str, dict[str, str]] = {}
    for tid, wsid, state, _ in snap.tasks:
        states_by_ws.setdefault(wsid, {})[tid] = state
    for ws in snap.workstreams:
        wsid = ws["workstream_id"]
        fingerprint = snap.fingerprints.get(wsid, "0")
        states = states_by_ws.get(wsid, {})
        written = len(report.files_written)
        known: _Planned | None = None if full else cache.get(wsid)
        if known is None or known.fingerprint != fingerprint:
            try:
                dag_doc, plan_doc = workstream_plan(conn, wsid, snap.timestamp)
            except OrchError as exc:   # a cycle written behind the loader's back: say so
                report.warnings.append(f"workstream {wsid!r}: no DAG or plan view: {exc}")
                known = _Planned(fingerprint, None, None, states)
            else:
                known = _Planned(fingerprint, dag_doc, plan_doc, {})
                write_atomic(state_dir / f"execution_plan_{wsid}.json", render(plan_doc))
                report.files_written.append(f"execution_plan_{wsid}.json")
        # The plan holds no task state; the DAG does: refresh its statuses when they changed.
        if known.dag is not None and known.states != states:
            dag_doc = copy.copy(known.dag)
            dag_doc["generated_at"] = snap.timestamp
            dag_doc["nodes"] = [{**node, "status": states[node["task_id"]]}
                                for node in known.dag["nodes"]]
            write_atomic(state_dir / f"dag_{wsid}.json", render(dag_doc))
            report.files_written.append(f"dag_{wsid}.json")
            known.states = states
        checkpoint = _checkpoint(snap, ws)
        key = _dumps({k: v for k, v in checkpoint.items()
                      if k not in ("timestamp", "last_event_seq")})
        if key != known.checkpoint:
            write_atomic(checkpoints / f"{wsid}_latest.json", render(checkpoint))
            report.files_written.append(f"checkpoints/{wsid}_latest.json")
            known.checkpoint = key
        if len(report.files_written) == written:
            report.workstreams_skipped.append(wsid)
        cache[wsid] = known
    for wsid in set(cache) - {ws["workstream_id"] for ws in snap.workstreams}:
        del cache[wsid]


# ------------------------------------------------------------------------------------------
# Reading views back
# ------------------------------------------------------------------------------------------


def read_view(state_dir: Path, name: str) -> dict[str, Any]:
    """An index (``by_status.json``, ...) when it is fresh, else ``current.json`` itself, so a
    reader never acts on a stale index (STATE-OBS-006). The result names what was read in
    ``_read_from``."""
    current_path = state_dir / CURRENT
    current = json.loads(current_path.read_text(encoding="utf-8"))
    if name == CURRENT:
        return {**current, "_read_from": CURRENT}
    path = state_dir / name
    if path.exists():
        index = json.loads(path.read_text(encoding="utf-8"))
        lag = clock.epoch(current["timestamp"]) - clock.epoch(index["source_timestamp"])
        if lag <= STALE_AFTER_SECONDS:
            return {**index, "_read_from": name}
    return {**current, "_read_from": CURRENT}


# ------------------------------------------------------------------------------------------
# Exporting while a run goes on
# ------------------------------------------------------------------------------------------


class Exporter:
    """Exports in a background thread with its own read connection, after commits, coalesced:
    requests that arrive during an export are served by one export after it, at most one per
    ``min_interval`` seconds, and never more often than keeps exporting within ``budget`` (a
    fraction) of the wall time, so a run of 100,000 tasks spends at most about 10% on views
    whatever their size. ``close()`` does a last export, so the files end up exact."""

    def __init__(self, db_path: Path, state_dir: Path, *, min_interval: float = 0.25,
                 budget: float = 0.1) -> None:
        self.db_path = db_path
        self.state_dir = state_dir
        self.min_interval = min_interval
        self.budget = budget
        self.cache: dict[str, Any] = {}
        self.exports = 0
        self.seconds = 0.0
        self.errors: list[str] = []
        self._wanted = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="orch-exporter", daemon=True)
        self._conn: apsw.Connection | None = None

    def start(self) -> Exporter:
        self._conn = schema.connect(self.db_path, readonly=True)
        self._wanted.set()
        self._thread.start()
        return self

    def request(self) -> None:
        self._wanted.set()

    def _export_once(self) -> float:
        assert self._conn is not None
        report = export(self._conn, self.state_dir, full=False, cache=self.cache)
        self.exports += 1
        self.seconds += report.seconds
        return report.seconds

    def _loop(self) -> None:
        while not self._stop:
            if not self._wanted.wait(timeout=0.5):
                continue
            self._wanted.clear()
            try:
                took = self._export_once()
            except Exception as exc:   # a view is a convenience: never stop the run for it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                took = self.min_interval
            pause = max(self.min_interval, took * (1 - self.budget) / self.budget)
            deadline = time.monotonic() + pause
            while not self._stop and time.monotonic() < deadline:
                time.sleep(min(0.05, pause))

    def close(self) -> None:
        self._stop = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._conn is not None:
            try:
                self._export_once()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._conn.close()
            self._conn = None


def export_after_change(project: Any) -> ExportReport | None:
    """After a command changed state: export once, unless ``[views] export = false``. A failure
    is returned as a warning in the report, never raised: the change itself is committed."""
    if not project.config.views.export:
        return None
    conn = project.connect(readonly=True)
    try:
        return export(conn, project.state_dir)
    except (OSError, apsw.Error) as exc:
        return ExportReport(clock.now_iso(), 0, 0, 0, warnings=[f"views not updated: {exc}"])
    finally:
        conn.close()
