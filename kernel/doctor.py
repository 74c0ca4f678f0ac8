"""``orch doctor``: is the database sound, current, and true to its invariants?

Public API:
    ``diagnose(project) -> list[Check]``; ``Check(name, status, detail, hint)`` with status
    ``ok`` | ``warn`` | ``fail``; ``INVARIANT_QUERIES`` (name -> (SQL returning offending rows,
    what it means)).

Stability Guarantees:
    Check names are stable (scripts may grep them); checks are only added. Doctor never writes
    to the database except to apply pending migrations, as every command does.

Integration Points:
    ``orch doctor [--json]`` exits 1 when any check fails. The invariant queries are plain SQL,
    so any SQLite client can run them (they are also listed in docs/operations/DOCTOR.md).

Dependencies:
    apsw; ``kernel.db``, ``kernel.machines``, ``kernel.project``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import apsw

from kernel import db
from kernel.machines import load_machines, stored_matches_yaml
from kernel.project import Project

Status = Literal["ok", "warn", "fail"]
WAL_WARN_BYTES = 2 * db.JOURNAL_SIZE_LIMIT

# Each query returns the rows that violate the invariant; an empty result is a pass.
INVARIANT_QUERIES: dict[str, tuple[str, str]] = {
    "running_iff_worker": (
        "SELECT task_id, state, worker_id FROM task "
        "WHERE (state = 'running') <> (worker_id IS NOT NULL)",
        "a task is running if and only if it has an assigned worker",
    ),
    "one_running_task_per_worker": (
        "SELECT worker_id, COUNT(*) AS running FROM task WHERE worker_id IS NOT NULL "
        "GROUP BY worker_id HAVING COUNT(*) > 1",
        "a worker runs at most one task",
    ),
    "running_task_on_live_worker": (
        "SELECT t.task_id, t.worker_id, w.state AS worker_state FROM task t "
        "LEFT JOIN worker w ON w.worker_id = t.worker_id "
        "WHERE t.state = 'running' "
        "AND (w.state IS NULL OR w.state NOT IN ('busy', 'unresponsive'))",
        "a running task's worker is busy (or unresponsive, until its task is handed on)",
    ),
    "busy_worker_has_task": (
        "SELECT w.worker_id FROM worker w WHERE w.state = 'busy' "
        "AND NOT EXISTS (SELECT 1 FROM task t WHERE t.worker_id = w.worker_id) "
        "AND NOT EXISTS (SELECT 1 FROM task t JOIN attempt a ON a.task_id = t.task_id "
        "AND a.generation = t.generation WHERE t.state = 'validating' "
        "AND a.worker_id = w.worker_id AND a.finished_at IS NULL)",
        "a busy worker has a running task (or one it is validating)",
    ),
    "retry_count_within_max": (
        "SELECT task_id, retry_count, max_retries FROM task "
        "WHERE retry_count < 0 OR retry_count > max_retries",
        "0 <= retry_count <= max_retries",
    ),
    "task_timestamps_ordered": (
        "SELECT task_id, created_at, started_at, completed_at FROM task "
        "WHERE started_at < created_at OR completed_at < COALESCE(started_at, created_at)",
        "created_at <= started_at <= completed_at",
    ),
    "queued_dependencies_completed": (
        "SELECT t.task_id, d.depends_on, p.state FROM task t "
        "JOIN task_dependency d ON d.task_id = t.task_id JOIN task p ON p.task_id = d.depends_on "
        "WHERE t.state IN ('queued', 'running', 'validating') AND p.state <> 'completed'",
        "a queued (or later) task has all its dependencies completed",
    ),
    "known_states": (
        "SELECT 'task' AS machine, task_id AS id, state FROM task WHERE state NOT IN "
        "(SELECT state FROM machine_state WHERE machine = 'task') "
        "UNION ALL SELECT 'workstream', workstream_id, state FROM workstream WHERE state NOT IN "
        "(SELECT state FROM machine_state WHERE machine = 'workstream') "
        "UNION ALL SELECT 'worker', worker_id, state FROM worker WHERE state NOT IN "
        "(SELECT state FROM machine_state WHERE machine = 'worker')",
        "every entity is in a state of its machine",
    ),
    "no_pending_transition_request": (
        "SELECT 'task' AS machine, task_id AS id FROM task WHERE transition_trigger IS NOT NULL "
        "UNION ALL SELECT 'workstream', workstream_id FROM workstream "
        "WHERE transition_trigger IS NOT NULL "
        "UNION ALL SELECT 'worker', worker_id FROM worker WHERE transition_trigger IS NOT NULL",
        "transition_trigger is NULL at rest (the event trigger clears it)",
    ),
    "event_seq_gapless": (
        "SELECT MIN(seq) AS first, MAX(seq) AS last, COUNT(*) AS events FROM event "
        "HAVING COUNT(*) > 0 AND MAX(seq) - MIN(seq) + 1 <> COUNT(*)",
        "event seq numbers have no gaps",
    ),
    "log_agrees_with_tables": (
        "SELECT t.task_id, t.state, e.to_state AS last_logged_state FROM task t "
        "JOIN event e ON e.seq = (SELECT MAX(seq) FROM event x "
        "WHERE x.task_id = t.task_id AND x.entity_type = 'task') "
        "WHERE e.to_state IS NOT t.state",
        "each task's last event leads to its current state (the log can rebuild the state)",
    ),
    "no_dependency_cycle": (
        "WITH RECURSIVE reach (origin, task_id, depth) AS ("
        " SELECT task_id, depends_on, 1 FROM task_dependency"
        " UNION SELECT r.origin, d.depends_on, r.depth + 1 FROM reach r"
        " JOIN task_dependency d ON d.task_id = r.task_id WHERE r.depth < 10000)"
        " SELECT DISTINCT origin AS task_id FROM reach WHERE origin = task_id LIMIT 20",
        "the dependency graph has no cycle",
    ),
}

# The cycle query walks every path; past this many edges doctor leaves cycles to `orch validate`.
CYCLE_CHECK_MAX_EDGES = 20000


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str | None = None
    rows: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = list(self.rows)
        return data


def _versions(conn: apsw.Connection) -> list[Check]:
    from kernel import __version__

    lib = ".".join(map(str, db.sqlite_version()))
    minimum = ".".join(map(str, db.MIN_SQLITE_VERSION))
    version, latest = db.schema_version(conn), db.latest_schema_version()
    app_id = int(conn.pragma("application_id"))
    return [
        Check("sqlite_library", "ok", f"SQLite {lib} (apsw), at least {minimum} required"),
        Check(
            "schema_version",
            "ok" if version == latest else "fail",
            f"schema version {version}; orch {__version__} knows up to {latest}",
            None if version == latest else "run any orch command to migrate, or upgrade orch",
        ),
        Check(
            "application_id",
            "ok" if app_id == db.APPLICATION_ID else "fail",
            f"application_id {app_id:#x}",
        ),
    ]


def _integrity(conn: apsw.Connection) -> list[Check]:
    result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    return [
        Check(
            "integrity_check",
            "ok" if result == ["ok"] else "fail",
            "ok" if result == ["ok"] else "; ".join(result[:10]),
            None if result == ["ok"]
            else "the file is damaged: restore a backup (see docs/operations/DOCTOR.md)",
        ),
        Check(
            "foreign_key_check",
            "ok" if not fk else "fail",
            f"{len(fk)} rows reference missing rows" if fk else "ok",
            rows=tuple({"table": r[0], "rowid": r[1], "parent": r[2]} for r in fk[:20]),
        ),
    ]


def _machines(conn: apsw.Connection) -> Check:
    problems = stored_matches_yaml(conn, load_machines())
    return Check(
        "transition_table_matches_yaml",
        "ok" if not problems else "fail",
        "ok" if not problems else "; ".join(problems[:10]),
        None if not problems else "someone edited machine_transition by hand; "
        "DELETE FROM machine to make orch reload the YAML on next open",
    )


def _invariants(conn: apsw.Connection) -> list[Check]:
    checks = []
    edges = int(db.scalar(conn, "SELECT COUNT(*) FROM task_dependency"))
    for name, (sql, meaning) in INVARIANT_QUERIES.items():
        if name == "no_dependency_cycle" and edges > CYCLE_CHECK_MAX_EDGES:
            checks.append(Check(f"invariant:{name}", "warn",
                                f"skipped for {edges} dependencies; run `orch validate`"))
            continue
        found = db.rows(conn, sql)
        checks.append(
            Check(
                f"invariant:{name}",
                "ok" if not found else "fail",
                meaning if not found else f"violated by {len(found)} row(s): {meaning}",
                None if not found
                else "State-Corruption: see docs/operations/DOCTOR.md",
                rows=tuple(found[:20]),
            )
        )
    return checks


def _wal(project: Project) -> Check:
    size = db.wal_size(project.db_path)
    status: Status = "ok" if size <= WAL_WARN_BYTES else "warn"
    return Check(
        "wal_size",
        status,
        f"{size / 1048576:.1f} MiB write-ahead log",
        None if status == "ok" else "a long-lived reader may be holding the WAL open; "
        "stop idle readers so the next checkpoint can reset it",
    )


def diagnose(project: Project) -> list[Check]:
    project.require_db()
    conn = project.connect()
    try:
        with db.read_tx(conn):
            return [
                *_versions(conn),
                *_integrity(conn),
                _machines(conn),
                *_invariants(conn),
                _wal(project),
            ]
    finally:
        conn.close()
