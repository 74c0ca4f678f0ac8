"""The documents of the ``.state/`` views, built from one read snapshot of the database.

Public API:
    ``read_snapshot(conn, now) -> Snapshot`` (call inside a read transaction: every row the
    views show, read once); ``Snapshot`` (``timestamp``, ``last_seq``, ``tasks`` as
    ``(task_id, workstream_id, state, worker_id)`` tuples, ``task_rows`` as JSON text,
    ``workstreams``, ``workers``, ``leases``, ``fingerprints``); ``current_document(snap)``
    (current.json); ``index_documents(snap, generated_at) -> {file name: document}``
    (by_status.json, by_workstream.json, by_worker.json); ``checkpoint_document(snap, ws)``
    (checkpoints/{ws}_latest.json).

Stability Guarantees:
    The documents have exactly the keys of ``kernel.observe.view_models``; rows come in key
    order (task_id, workstream_id, worker_id, lease_id). Each task row of current.json is JSON
    text built by SQLite, equal to ``json.dumps(row, sort_keys=True)``. A workstream's
    fingerprint changes whenever its tasks, their definitions and dependencies, or its own row
    change: an unchanged one lets the exporter keep its DAG and plan documents.

Integration Points:
    ``kernel.observe.exports`` writes the documents (STATE-OBS-003 order); reads the ``task``,
    ``attempt``, ``task_dependency``, ``workstream``, ``worker``, ``worker_capability``,
    ``lease`` and ``event`` tables.

Dependencies:
    apsw; ``kernel.observe.documents``, ``kernel.observe.view_models``, ``kernel.store.db``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import apsw

from kernel.observe.documents import RawRows, dumps
from kernel.observe.view_models import (
    Checkpoint,
    CurrentState,
    StatusIndex,
    WorkerIndex,
    WorkstreamIndex,
    view_header,
)
from kernel.store import db

# Each task row of current.json is built as JSON by SQLite (json_object, keys listed in sorted
# order, so the text equals json.dumps(sort_keys=True)): for 100,000 tasks this is several times
# faster than Python dicts and the encoder. ``tests/test_views.py`` checks the rows against the
# TaskView schema and the tables. ``last_result`` is the output contract of the latest attempt
# (its ``->`` keeps each value's JSON text as the worker wrote it; null while it runs).
_TASK_JSON_FIELDS = {
    "assigned_worker": "t.worker_id",
    "attempts": "ifnull(a.n, 0)",
    "completed_at": "t.completed_at",
    "created_at": "t.created_at",
    "critical": "json(CASE WHEN t.critical THEN 'true' ELSE 'false' END)",
    "failure_mode": "t.failure_mode",
    "last_error": "t.last_error",
    "last_exit_code": "a.exit_code",
    "last_result": "CASE WHEN a.output IS NULL THEN NULL ELSE json_object("
                   + ", ".join(f"'{k}', a.output -> '{path}'" for k, path in (
                       ("commit_message", "$.commit_message"), ("cost", "$.metadata.cost"),
                       ("diff_summary", "$.diff_summary"), ("files_modified", "$.files_modified"),
                       ("model", "$.metadata.model"), ("status", "$.status"),
                       ("tokens_used", "$.metadata.tokens_used"),
                       ("validation_status", "$.validation_status"))) + ") END",
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
WITH a AS (SELECT task_id, count(*) AS n, max(attempt_no), worker_id, exit_code, output
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
TaskState = tuple[str, str, str, str | None]


@dataclass
class Snapshot:
    timestamp: str
    last_seq: int
    tasks: list[TaskState]
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
    return dumps(items)


def read_snapshot(conn: apsw.Connection, now: str) -> Snapshot:
    fetched: list[Any] = conn.execute(_TASKS_SQL).fetchall()
    tasks: list[TaskState] = [row[:4] for row in fetched]
    completed = {row[0] for row in fetched if row[2] == "completed"}
    waiting: dict[str, str] = {}
    for tid, deps in conn.execute(_PENDING_DEPS_SQL):
        open_deps = [d for d in deps.split("\x1f") if d not in completed]
        if open_deps:
            waiting[tid] = _json_strings(sorted(open_deps))
    ws_json = {row[1]: dumps(row[1]) for row in fetched}
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
    return Snapshot(now, int(last_seq), tasks, rows, workstreams, workers, leases, fingerprints)



# ------------------------------------------------------------------------------------------
# Building the documents
# ------------------------------------------------------------------------------------------


def current_document(snap: Snapshot) -> dict[str, Any]:
    """``current.json`` (STATE-OBS-001): the state after event ``last_event_seq``."""
    counts: dict[str, int] = {}
    for _, _, state, _ in snap.tasks:
        counts[state] = counts.get(state, 0) + 1
    return {**view_header(CurrentState), "timestamp": snap.timestamp,
            "last_event_seq": snap.last_seq, "counts": dict(sorted(counts.items())),
            "workstreams": snap.workstreams, "tasks": snap.task_rows, "workers": snap.workers,
            "resources": snap.leases}


def index_documents(snap: Snapshot, generated_at: str) -> dict[str, dict[str, Any]]:
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
        "by_status.json": {**view_header(StatusIndex), **common, "statuses": statuses},
        "by_workstream.json": {**view_header(WorkstreamIndex), **common, "workstreams": per_ws},
        "by_worker.json": {**view_header(WorkerIndex), **common, "workers": per_worker},
    }


def checkpoint_document(snap: Snapshot, ws: dict[str, Any]) -> dict[str, Any]:
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
    return {**view_header(Checkpoint), "timestamp": snap.timestamp, "last_event_seq": snap.last_seq,
            "workstream_id": wsid, "state": ws["state"], **groups,
            "resources_held": [lease for lease in snap.leases if lease["task_id"] in mine]}

