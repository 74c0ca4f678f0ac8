"""The invariants ``orch doctor`` checks: SQL that returns the rows breaking a rule.

Public API:
    ``INVARIANT_QUERIES`` (name -> (SQL returning the offending rows, what the rule means); the
    lease and fencing ones come from ``kernel.maintain.doctor_checks.ENFORCEMENT_QUERIES``);
    ``INVARIANT_HINTS`` (name -> what to do, when it is not ``STATE_CORRUPTION_HINT``);
    ``invariant_checks(conn) -> list[Check]`` (one ``invariant:<name>`` check each);
    ``CYCLE_CHECK_MAX_EDGES``.

Stability Guarantees:
    Invariant names are stable (``orch doctor --json`` and scripts use them); invariants are
    only added. Each query only reads. An empty result is a pass; a failing check lists at most
    20 offending rows.

Integration Points:
    ``kernel.maintain.doctor.diagnose`` runs ``invariant_checks`` inside its read
    transaction; ``tools/docgen.py`` renders the list into docs/operations/DOCTOR.md; the kill
    campaign (tools/kill_campaign.py) ends with ``orch doctor``, so with these queries.

Dependencies:
    apsw; ``kernel.maintain.doctor_checks``, ``kernel.store.db``.
"""

from __future__ import annotations

import functools

import apsw

from kernel.maintain.doctor_checks import (
    ENFORCEMENT_HINTS,
    ENFORCEMENT_QUERIES,
    Check,
    guarded,
)
from kernel.store import db

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
        "SELECT 'task' AS machine, t.task_id AS id, t.state, e.to_state AS last_logged_state, "
        "e.seq AS last_transition_seq FROM task t "
        "JOIN event e ON e.seq = (SELECT MAX(x.seq) FROM event x WHERE x.task_id = t.task_id "
        "AND x.entity_type = 'task' AND x.to_state IS NOT NULL) "
        "WHERE e.to_state IS NOT t.state "
        "UNION ALL SELECT l.entity_type, l.entity_id, COALESCE(ws.state, wk.state), l.to_state, "
        "l.seq FROM (SELECT entity_type, entity_id, to_state, MAX(seq) AS seq FROM event "
        "WHERE entity_type IN ('workstream', 'worker') AND to_state IS NOT NULL "
        "GROUP BY entity_type, entity_id) l "
        "LEFT JOIN workstream ws ON l.entity_type = 'workstream' "
        "AND ws.workstream_id = l.entity_id "
        "LEFT JOIN worker wk ON l.entity_type = 'worker' AND wk.worker_id = l.entity_id "
        "WHERE COALESCE(ws.state, wk.state) IS NOT NULL "
        "AND l.to_state IS NOT COALESCE(ws.state, wk.state)",
        "each task's, workstream's and worker's last transition event leads to its current "
        "state (the log can rebuild the state; events that change no state, such as "
        "stale_result_rejected after a cancel, have no to_state and do not count)",
    ),
    "no_dependency_cycle": (
        "WITH RECURSIVE reach (origin, task_id, depth) AS ("
        " SELECT task_id, depends_on, 1 FROM task_dependency"
        " UNION SELECT r.origin, d.depends_on, r.depth + 1 FROM reach r"
        " JOIN task_dependency d ON d.task_id = r.task_id WHERE r.depth < 10000)"
        " SELECT DISTINCT origin AS task_id FROM reach WHERE origin = task_id LIMIT 20",
        "the dependency graph has no cycle",
    ),
    "no_lease_on_finished_task": (
        "SELECT l.lease_id, l.task_id, t.state FROM lease l JOIN task t ON t.task_id = "
        "l.task_id JOIN machine_state ms ON ms.machine = 'task' AND ms.state = t.state "
        "WHERE l.released_at IS NULL AND ms.terminal = 1 ORDER BY l.lease_id",
        "a task in a terminal state holds no lease (its leases are released with it)",
    ),
    **ENFORCEMENT_QUERIES,
}

STATE_CORRUPTION_HINT = "State-Corruption: see docs/operations/DOCTOR.md"
# What to do when an invariant fails (the check's hint; docs/operations/DOCTOR.md).
INVARIANT_HINTS: dict[str, str] = {
    "log_agrees_with_tables": (
        "State-Corruption: a state changed without its transition event (event triggers "
        "dropped? see schema_matches_shipped) or the log was cut; restore a backup "
        "(`orch doctor --repair` names one), see docs/operations/DOCTOR.md"),
    **ENFORCEMENT_HINTS,
}

# The cycle query walks every path; past this many edges doctor leaves cycles to `orch validate`.
CYCLE_CHECK_MAX_EDGES = 20000


def invariant_checks(conn: apsw.Connection) -> list[Check]:
    """One check per invariant (``invariant:<name>``), each guarded: one that cannot run fails
    with the reason and the others still run."""
    checks = []
    for name, (sql, meaning) in INVARIANT_QUERIES.items():
        checks += guarded([f"invariant:{name}"],
                          functools.partial(_invariant, conn, name, sql, meaning))
    return checks


def _invariant(conn: apsw.Connection, name: str, sql: str, meaning: str) -> list[Check]:
    if name == "no_dependency_cycle":
        edges = int(db.scalar(conn, "SELECT COUNT(*) FROM task_dependency"))
        if edges > CYCLE_CHECK_MAX_EDGES:
            return [Check(f"invariant:{name}", "warn",
                          f"skipped for {edges} dependencies; run `orch validate`")]
    found = db.rows(conn, sql)
    return [Check(
        f"invariant:{name}",
        "ok" if not found else "fail",
        meaning if not found else f"violated by {len(found)} row(s): {meaning}",
        None if not found else INVARIANT_HINTS.get(name, STATE_CORRUPTION_HINT),
        rows=tuple(found[:20]),
    )]
