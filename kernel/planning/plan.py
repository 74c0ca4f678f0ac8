"""Execution plans read from the database: a workstream's tasks as ``PlanTask`` records.

Public API:
    ``plan_tasks(conn, workstream_id) -> list[PlanTask]``      the workstream's graph
    ``read_workstream(conn, workstream_id) -> WorkstreamTasks`` tasks, cross-workstream
                                                                dependencies, max_parallelism
    ``workstream_plan(conn, workstream_id, now) -> (dag_doc, plan_doc)``  DAG-VIEW-002/003
    ``plan_document(conn, workstream_id, now) -> plan_doc``     DAG-VIEW-003 only (faster)
    ``all_workstreams(conn) -> list[str]``                      sorted workstream ids
    ``unfinished_graph(conn) -> (nx.DiGraph, durations)``       every unfinished task and the
                                                                edges between them (what the
                                                                scheduler and ``orch ready`` rank)
    ``timestamp(now) -> str``                                   ISO-8601 UTC, milliseconds, "Z"
    ``WorkstreamTasks``, ``ExternalDependency`` (frozen records)

Stability Guarantees:
    The graph of a workstream is its own tasks only: a dependency on a task of ANOTHER
    workstream is dropped from the graph (so it never raises UnknownDependency) and reported in
    both documents as ``external_dependencies: [{task_id, depends_on, workstream_id}]``, sorted,
    always present (empty when there are none); every other field is exactly what
    ``kernel.planning.dag.execution_plan`` / ``dag_document`` produce for the same ``PlanTask``
    records,
    and consumers ignore unknown fields. ``status`` is ``task.state``; a pooled or rate-limited
    request (``task_resource.mode = 'units'``) becomes its amount, ``exclusive``/``shared`` stay
    strings. The plan honours ``workstream.max_parallelism`` (NULL: no cap). An unknown
    workstream raises ``OrchError`` ``unknown_workstream`` (the hint lists the known ones); a
    cycle that reached the tables behind the loader's back raises ``dependency_cycle_detected``.
    Reads are set-based (one query per table, tuples, no per-task queries): 100,000 tasks and
    300,000 edges in one workstream are read in about 0.6 s, and read plus
    ``execution_plan`` stay under two seconds (see tools/bench_plan.py for the plan alone).

Integration Points:
    ``orch plan`` prints these documents (``kernel.cli.plan``); ``orch demo`` shows one; the
    ``.state/`` exporters write ``dag_{ws}.json`` and ``execution_plan_{ws}.json`` from
    ``workstream_plan``. Everything runs in one read snapshot (a read transaction is opened
    when the caller holds none).

Dependencies:
    apsw, networkx; ``kernel.base.errors``, ``kernel.planning.dag``, ``kernel.store.db``.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from types import MappingProxyType
from typing import Any, cast

import apsw

from kernel.base.errors import OrchError
from kernel.planning.dag import (
    DependencyCycle,
    PlanTask,
    ResourceValue,
    dag_and_plan,
    execution_plan,
)
from kernel.store import db

# Separator for group_concat: a control character, which task ids (ID_PATTERN) never contain.
_SEP = "\x1f"

_TASKS_SQL = """
SELECT task_id, name, type, state, estimated_duration_seconds, priority, critical
  FROM task WHERE workstream_id = ?
"""

# Two ways to read the rows of task_dependency and task_resource that belong to a workstream:
# a workstream holding at least half of all tasks (the usual case: one or a few workstreams)
# reads the whole table in one sequential pass, because probing an index once per task costs
# more than reading the few rows of other workstreams too (those are simply never looked up); a
# smaller workstream probes the primary keys for its own tasks only.
#
# Prerequisites come one row per dependent task, joined into one string: 300k edges cost ~100k
# rows and a C-level split instead of 300k Python tuples. The primary key of task_dependency is
# (task_id, depends_on), so GROUP BY task_id walks it in order and needs no sort.
_DEPS_SQL = {
    "all": f"""
SELECT task_id, group_concat(depends_on, '{_SEP}') FROM task_dependency GROUP BY task_id
""",
    "own": f"""
SELECT task_id, group_concat(depends_on, '{_SEP}') FROM task_dependency
 WHERE task_id IN (SELECT task_id FROM task WHERE workstream_id = ?1)
 GROUP BY task_id
""",
}

_RESOURCES_SQL = {
    "all": "SELECT task_id, resource_id, mode, amount FROM task_resource",
    "own": """
SELECT task_id, resource_id, mode, amount FROM task_resource
 WHERE task_id IN (SELECT task_id FROM task WHERE workstream_id = ?1)
""",
}

# Only for the prerequisites that are not in the workstream: usually none, a handful at most.
_OWNERS_SQL = """
SELECT t.task_id, t.workstream_id FROM task t
 WHERE t.task_id IN (SELECT value FROM json_each(?))
"""


@dataclass(frozen=True, slots=True)
class ExternalDependency:
    """``task_id`` (in this workstream) depends on ``depends_on`` of ``workstream_id``."""

    task_id: str
    depends_on: str
    workstream_id: str

    def as_dict(self) -> dict[str, str]:
        return {
            "task_id": self.task_id,
            "depends_on": self.depends_on,
            "workstream_id": self.workstream_id,
        }


@dataclass(frozen=True, slots=True)
class WorkstreamTasks:
    workstream_id: str
    max_parallelism: int | None
    tasks: list[PlanTask]
    external_dependencies: list[ExternalDependency]


def timestamp(now: datetime | str) -> str:
    """``2025-01-31T12:00:00.000Z``; a string is taken as already formatted; naive is UTC."""
    if isinstance(now, str):
        return now
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    now = now.astimezone(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def all_workstreams(conn: apsw.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT workstream_id FROM workstream ORDER BY 1")]


def _unknown(conn: apsw.Connection, workstream_id: str) -> OrchError:
    known = all_workstreams(conn)
    if known:
        shown = ", ".join(known[:20]) + (f" (+{len(known) - 20} more)" if len(known) > 20 else "")
        hint = f"known workstreams: {shown}"
    else:
        hint = (
            "no workstreams are loaded yet: write tasks/<workstream>/<task>.json, then "
            "`orch load`"
        )
    return OrchError("unknown_workstream", f"no workstream {workstream_id!r}", hint=hint)


def _scope(conn: apsw.Connection, n_tasks: int) -> str:
    total = int(db.scalar(conn, "SELECT COUNT(*) FROM task"))
    return "all" if 2 * n_tasks >= total else "own"


def _params(scope: str, workstream_id: str) -> tuple[str, ...]:
    return () if scope == "all" else (workstream_id,)


def _dependencies(conn: apsw.Connection, workstream_id: str, scope: str) -> dict[str, str]:
    """task_id -> its prerequisites joined by _SEP (tasks without any are absent)."""
    found = conn.execute(_DEPS_SQL[scope], _params(scope, workstream_id)).fetchall()
    return dict(cast(list[tuple[str, str]], found))


def _resources(
    conn: apsw.Connection, workstream_id: str, scope: str
) -> dict[str, Mapping[str, ResourceValue]]:
    found: dict[str, dict[str, ResourceValue]] = {}
    sql = _RESOURCES_SQL[scope]
    for task_id, resource_id, mode, amount in conn.execute(sql, _params(scope, workstream_id)):
        value: ResourceValue = mode
        if mode == "units":
            # Whole numbers (what task files hold) stay ints, so JSON shows 2 and not 2.0.
            value = int(amount) if float(amount).is_integer() else amount
        found.setdefault(task_id, {})[resource_id] = value
    # Frozen here, once, so that PlanTask does not copy them again.
    return {task_id: MappingProxyType(dict(sorted(r.items()))) for task_id, r in found.items()}


def read_workstream(conn: apsw.Connection, workstream_id: str) -> WorkstreamTasks:
    """The workstream's tasks (graph edges inside it only) and its cross-workstream edges."""
    with db.snapshot(conn):
        found = conn.execute(
            "SELECT max_parallelism FROM workstream WHERE workstream_id = ?", (workstream_id,)
        ).fetchone()
        if found is None:
            raise _unknown(conn, workstream_id)
        max_parallelism = found[0]
        # No garbage cycles can form here; the collector would rescan every new tuple.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            rows = conn.execute(_TASKS_SQL, (workstream_id,)).fetchall()
            scope = _scope(conn, len(rows))
            deps = _dependencies(conn, workstream_id, scope) if rows else {}
            resources = _resources(conn, workstream_id, scope) if rows else {}
            tasks, outside = _build(rows, deps, resources)
            external = _external(conn, outside)
        finally:
            if was_enabled:
                gc.enable()
    return WorkstreamTasks(workstream_id, max_parallelism, tasks, external)


_NO_RESOURCES: Mapping[str, ResourceValue] = MappingProxyType({})


def _build(
    rows: list[Any],
    dependencies: dict[str, str],
    resources: dict[str, Mapping[str, ResourceValue]],
) -> tuple[list[PlanTask], list[tuple[str, str]]]:
    get = dependencies.get
    deps: list[tuple[str, ...]] = [
        tuple(joined.split(_SEP)) if (joined := get(r[0])) else () for r in rows
    ]
    known = {r[0] for r in rows}
    outside: list[tuple[str, str]] = []
    # One C-level pass answers the usual case (no edge leaves the workstream).
    if not known.issuperset(chain.from_iterable(deps)):
        for index, (row, prerequisites) in enumerate(zip(rows, deps, strict=True)):
            if not known.issuperset(prerequisites):
                outside += [(row[0], d) for d in prerequisites if d not in known]
                deps[index] = tuple(d for d in prerequisites if d in known)
    res = resources.get
    tasks = [
        PlanTask(task_id, name, type_, state, prerequisites, duration, priority, critical == 1,
                 res(task_id, _NO_RESOURCES))
        for (task_id, name, type_, state, duration, priority, critical), prerequisites
        in zip(rows, deps, strict=True)
    ]
    return tasks, outside


def _external(
    conn: apsw.Connection, outside: list[tuple[str, str]]
) -> list[ExternalDependency]:
    if not outside:
        return []
    wanted = sorted({dep for _, dep in outside})
    found = conn.execute(_OWNERS_SQL, (json.dumps(wanted),)).fetchall()
    owner = dict(cast(list[tuple[str, str]], found))
    return sorted(
        (ExternalDependency(task_id, dep, owner[dep]) for task_id, dep in outside),
        key=lambda e: (e.task_id, e.depends_on),
    )


def plan_tasks(conn: apsw.Connection, workstream_id: str) -> list[PlanTask]:
    """The workstream's tasks as planner input; cross-workstream dependencies are dropped."""
    return read_workstream(conn, workstream_id).tasks


@contextlib.contextmanager
def _cycle_as_error(workstream_id: str) -> Iterator[None]:
    try:
        yield
    except DependencyCycle as exc:
        raise OrchError(
            "dependency_cycle_detected",
            f"workstream {workstream_id!r}: {exc}",
            hint="orch load rejects cycles, so this one was written to task_dependency "
            "directly; delete one of its edges (e.g. in the sqlite3 shell)",
        ) from exc


def _external_field(ws: WorkstreamTasks) -> list[dict[str, str]]:
    return [e.as_dict() for e in ws.external_dependencies]


def plan_document(
    conn: apsw.Connection, workstream_id: str, now: datetime | str
) -> dict[str, Any]:
    """The DAG-VIEW-003 document alone (half the work of ``workstream_plan``)."""
    ws = read_workstream(conn, workstream_id)
    with _cycle_as_error(workstream_id):
        plan_doc = execution_plan(ws.tasks, workstream_id, ws.max_parallelism, timestamp(now))
    plan_doc["external_dependencies"] = _external_field(ws)
    return plan_doc


def workstream_plan(
    conn: apsw.Connection, workstream_id: str, now: datetime | str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DAG-VIEW-002 document, DAG-VIEW-003 document), both with ``external_dependencies``."""
    ws = read_workstream(conn, workstream_id)
    generated_at = timestamp(now)
    with _cycle_as_error(workstream_id):
        dag_doc, plan_doc = dag_and_plan(ws.tasks, workstream_id, ws.max_parallelism,
                                         generated_at)
    dag_doc["external_dependencies"] = _external_field(ws)
    plan_doc["external_dependencies"] = _external_field(ws)
    return dag_doc, plan_doc


# The terminal task states, from the machine tables (never a list restated here).
TERMINAL_TASK_STATES_SQL = ("(SELECT ms.state FROM machine_state ms "
                            "WHERE ms.machine = 'task' AND ms.terminal = 1)")


def unfinished_graph(conn: apsw.Connection) -> tuple[Any, dict[str, float]]:
    """Every unfinished task (with its estimated duration) and the dependency edges between
    them, prerequisite -> dependent, across workstreams: the graph whose bottom levels rank
    ready work (``kernel.runtime.scheduler.compute_bottom_levels``, ``orch ready``)."""
    import networkx as nx

    durations = {str(t): float(d) for t, d in conn.execute(
        "SELECT task_id, estimated_duration_seconds FROM task "
        f"WHERE state NOT IN {TERMINAL_TASK_STATES_SQL}")}
    graph = nx.DiGraph()
    graph.add_nodes_from(durations)
    graph.add_edges_from((p, c) for c, p in conn.execute(
        "SELECT task_id, depends_on FROM task_dependency") if p in durations and c in durations)
    return graph, durations
