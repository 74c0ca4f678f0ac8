"""Compliance checks of the ``.state/`` views against the database: STATE-OBS-001..006,
DAG-VIEW-001..003, OBS-001..002.

Public API:
    None beyond registering the checks in ``kernel.maintain.compliance.core.CHECKS``; the
    helpers ``read_json(path, finding, ctx)`` and ``run_active(conn)`` are shared with the
    other check modules.

Stability Guarantees:
    Each check reads the files and the database (read-only) and compares them: a view is
    judged against what the database says, not only against its own shape. Views lag the
    database while a run writes: a view that is behind the database is a WARN ("run
    `orch export`"), a view that contradicts the database at the same event is a FAIL. With no
    task loaded, the views are N/A ("no task is loaded yet"), never a silent PASS.

Integration Points:
    The documents' shapes are the models of ``kernel.observe.view_models`` and
    ``kernel.observe.metrics_document`` (the same ones the published schemas come from); the
    file names are ``kernel.observe.exports``'s; cycles are found by
    ``kernel.planning.dag.find_cycle``.

Dependencies:
    apsw, networkx, pydantic; ``kernel.base.clock``, ``kernel.base.words``,
    ``kernel.maintain.compliance.core``, ``kernel.observe.metrics_document``,
    ``kernel.observe.metrics_history``, ``kernel.observe.prometheus``,
    ``kernel.observe.view_models``, ``kernel.planning.dag``, ``kernel.runtime.lock``,
    ``kernel.store.db``, ``kernel.store.events``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import apsw
import networkx as nx
from pydantic import BaseModel, ValidationError

from kernel.base import clock
from kernel.base.words import plural
from kernel.maintain.compliance.core import Context, Finding, NotApplicable, Result, check
from kernel.observe.view_models import CurrentState, StatusIndex, WorkerIndex, WorkstreamIndex
from kernel.planning.dag import find_cycle
from kernel.store import db
from kernel.store.events import EVENT_FIELDS

__all__ = ["read_json", "run_active"]

EXPORT = "run `orch export` (it rewrites every view from the database)"
STALE_SECONDS = 60.0
_MAX_SHOWN = 20


def read_json(path: Path, finding: Finding, ctx: Context) -> dict[str, Any] | None:
    """The JSON object in ``path`` (looked at), or None after recording why it is unusable."""
    finding.look(ctx.rel(path))
    if not path.exists():
        finding.fail("the file does not exist", ctx.rel(path))
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        finding.fail(f"{path.name} is not JSON: {exc.msg}", ctx.rel(path), exc.lineno)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        finding.fail(f"{path.name} cannot be read: {exc}", ctx.rel(path))
        return None
    if not isinstance(data, dict):
        finding.fail(f"{path.name} is not a JSON object", ctx.rel(path), 1)
        return None
    return data


def _validate(model: type[BaseModel], data: dict[str, Any], finding: Finding, file: str) -> bool:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors()[:_MAX_SHOWN]:
            where = ".".join(str(p) for p in err["loc"]) or "(document)"
            finding.fail(f"{where}: {err['msg']}", file)
        return False
    return True


def run_active(conn: apsw.Connection) -> bool:
    """Whether an ``orch run`` holds the scheduler lock now (``kernel.runtime.lock``)."""
    from kernel.runtime.lock import live_holder

    return live_holder(conn, time.time()) is not None


def _loaded(ctx: Context) -> tuple[int, int]:
    """(tasks, last event seq); NotApplicable when no task is loaded."""
    tasks = int(db.scalar(ctx.conn, "SELECT COUNT(*) FROM task") or 0)
    if not tasks:
        raise NotApplicable("no task is loaded yet (`orch load` imports tasks/ and exports the "
                            "views)")
    return tasks, int(db.scalar(ctx.conn, "SELECT COALESCE(MAX(seq), 0) FROM event") or 0)


def _current(ctx: Context, finding: Finding) -> dict[str, Any] | None:
    path = ctx.state_dir / "current.json"
    data = read_json(path, finding, ctx)
    if data is not None and not _validate(CurrentState, data, finding, ctx.rel(path)):
        return None
    return data


@check("STATE-OBS-001", fix=EXPORT)
def _state_obs_001(ctx: Context, f: Finding) -> Result:
    """current.json exists, has the schema's keys, and says what the database says."""
    _, last_seq = _loaded(ctx)
    current = _current(ctx, f)
    if current is None:
        return f.result("")
    f.look("the task, workstream and worker tables")
    exported = int(current["last_event_seq"])
    db_tasks = {t: s for t, s in ctx.conn.execute("SELECT task_id, state FROM task")}
    view_tasks = {t["task_id"]: t["state"] for t in current["tasks"]}
    differ = sorted(t for t in db_tasks.keys() | view_tasks.keys()
                    if db_tasks.get(t) != view_tasks.get(t))
    if exported < last_seq:
        f.warn(f"current.json is {last_seq - exported} events behind the database (event "
               f"{exported} of {last_seq}): a run is writing, or the views were not exported",
               ctx.rel(ctx.state_dir / "current.json"))
    elif differ:
        for task_id in differ[:_MAX_SHOWN]:
            f.fail(f"task {task_id}: current.json says {view_tasks.get(task_id)!r}, the "
                   f"database {db_tasks.get(task_id)!r} (both at event {last_seq})",
                   ctx.rel(ctx.state_dir / "current.json"))
    return f.result(f"{plural(len(view_tasks), 'task')}, "
                    f"{plural(len(current['workstreams']), 'workstream')} and "
                    f"{plural(len(current['workers']), 'worker')}, as the database has them at "
                    f"event {exported}")


def _event_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "metadata": json.loads(row["metadata"] or "{}")}


def _transitions(ctx: Context, f: Finding) -> list[tuple[int, dict[str, Any]]] | None:
    """(line number, event) of every line of transitions.jsonl, or None when unreadable."""
    path = ctx.state_dir / "transitions.jsonl"
    f.look(ctx.rel(path))
    if not path.exists():
        f.fail("transitions.jsonl does not exist", ctx.rel(path))
        return None
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                f.fail(f"line {number} is not JSON: {exc.msg}", ctx.rel(path), number)
                continue
            if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
                f.fail(f"line {number} is not an event (no integer seq)", ctx.rel(path), number)
                continue
            out.append((number, event))
    return out


def _compare_lines(ctx: Context, f: Finding, lines: list[tuple[int, dict[str, Any]]]) -> None:
    path = ctx.rel(ctx.state_dir / "transitions.jsonl")
    previous = None
    shown = 0
    columns = ", ".join(EVENT_FIELDS)
    for number, event in lines:
        seq = event["seq"]
        if previous is not None and seq != previous + 1:
            f.fail(f"line {number}: seq {seq} follows {previous} (the file is append-only and "
                   "gapless)", path, number)
        previous = seq
        row = db.row(ctx.conn, f"SELECT {columns} FROM event WHERE seq = ?", (seq,))
        if row is None:
            continue   # archived by `orch audit rotate`: the line is the only copy left here
        want = _event_row(row)
        wrong = [k for k in EVENT_FIELDS if event.get(k) != want[k]]
        if wrong and shown < _MAX_SHOWN:
            shown += 1
            f.fail(f"line {number} (seq {seq}) differs from the event table in "
                   f"{', '.join(wrong)}", path, number)


@check("STATE-OBS-002", fix=EXPORT + "; a file that contradicts the event table was edited by "
       "hand: move it aside and export again")
def _state_obs_002(ctx: Context, f: Finding) -> Result:
    """transitions.jsonl is a gapless, line-for-line copy of the event table's prefix."""
    _, last_seq = _loaded(ctx)
    lines = _transitions(ctx, f)
    if lines is None:
        return f.result("")
    f.look("the event table")
    _compare_lines(ctx, f, lines)
    exported = lines[-1][1]["seq"] if lines else 0
    if exported > last_seq:
        f.fail(f"the file holds event {exported}, the database only {last_seq}",
               ctx.rel(ctx.state_dir / "transitions.jsonl"), len(lines))
    elif exported < last_seq:
        f.warn(f"the file is {last_seq - exported} events behind the database",
               ctx.rel(ctx.state_dir / "transitions.jsonl"))
    return f.result(f"{len(lines)} lines, each equal to its event row, up to event {exported}")


def _leftover_tmp(state_dir: Path) -> list[Path]:
    found = []
    for folder in (state_dir, state_dir / "checkpoints"):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))
    return found


@check("STATE-OBS-003", fix=EXPORT + "; remove a leftover *.tmp only when no orch command runs")
def _state_obs_003(ctx: Context, f: Finding) -> Result:
    """No *.tmp is left behind, and the events were never appended before current.json."""
    _loaded(ctx)
    f.look(ctx.rel(ctx.state_dir) + "/*.tmp")
    leftovers = _leftover_tmp(ctx.state_dir)
    if leftovers:
        time.sleep(0.5)   # an export in progress renames its file within milliseconds
        leftovers = [p for p in _leftover_tmp(ctx.state_dir) if p in leftovers]
    for path in leftovers:
        f.fail(f"{path.name} was left behind by an interrupted view update", ctx.rel(path))
    current, lines = _current(ctx, f), _transitions(ctx, f)
    if current is not None and lines:
        appended, written = lines[-1][1]["seq"], int(current["last_event_seq"])
        if appended > written:
            f.fail(f"transitions.jsonl holds event {appended}, current.json only event "
                   f"{written}: events were appended before the state that includes them "
                   "was renamed into place", ctx.rel(ctx.state_dir / "transitions.jsonl"),
                   len(lines))
    return f.result("no *.tmp left; transitions.jsonl never runs ahead of current.json")


def _known_events(conn: apsw.Connection) -> set[str]:
    from kernel.store.events import CATALOG, LIFECYCLE

    machine = {str(r[0]) for r in conn.execute("SELECT DISTINCT event FROM machine_transition")}
    return machine | set(CATALOG) | set(LIFECYCLE)


@check("STATE-OBS-004", fix="events are written by orch's triggers and kernel.store.events "
       "only: an unknown one was inserted by hand or by a newer orch (`orch doctor`)")
def _state_obs_004(ctx: Context, f: Finding) -> Result:
    """Every event has the required fields and a name the machines or the catalog declare."""
    total = int(db.scalar(ctx.conn, "SELECT COUNT(*) FROM event") or 0)
    if not total:
        raise NotApplicable("the event log is empty")
    f.look("the event table")
    known = _known_events(ctx.conn)
    for name, count in ctx.conn.execute("SELECT event, COUNT(*) FROM event GROUP BY event"):
        if name not in known:
            first = db.scalar(ctx.conn, "SELECT MIN(seq) FROM event WHERE event = ?", (name,))
            f.fail(f"{count} events named {name!r} (the first: seq {first}), which no state "
                   "machine or event catalog declares", ctx.rel(ctx.project.db_path))
    missing = db.scalar(ctx.conn, "SELECT COUNT(*) FROM event WHERE event_type = '' OR "
                                  "entity_type = '' OR timestamp = ''")
    if missing:
        f.fail(f"{missing} events lack event_type, entity_type or timestamp",
               ctx.rel(ctx.project.db_path))
    lines = _transitions(ctx, f) or []
    required = ("timestamp", "event", "severity")
    for number, event in lines:
        absent = [k for k in required if not event.get(k)]
        if absent:
            f.fail(f"line {number} lacks {', '.join(absent)}",
                   ctx.rel(ctx.state_dir / "transitions.jsonl"), number)
            break
    return f.result(f"{total} events, every name declared, every required field present")


_INDEXES: dict[str, type[BaseModel]] = {
    "by_status.json": StatusIndex, "by_workstream.json": WorkstreamIndex,
    "by_worker.json": WorkerIndex}


def _derived(current: dict[str, Any]) -> dict[str, Any]:
    """What each index must say, derived from current.json alone."""
    statuses: dict[str, set[str]] = {}
    per_ws: dict[str, set[str]] = {w["workstream_id"]: set() for w in current["workstreams"]}
    for t in current["tasks"]:
        statuses.setdefault(t["state"], set()).add(t["task_id"])
        per_ws.setdefault(t["workstream_id"], set()).add(t["task_id"])
    return {"by_status.json": statuses, "by_workstream.json": per_ws,
            "by_worker.json": {w["worker_id"]: w["state"] for w in current["workers"]}}


def _index_says(name: str, index: dict[str, Any]) -> Any:
    if name == "by_status.json":
        return {k: set(v) for k, v in index["statuses"].items() if v}
    if name == "by_workstream.json":
        return {k: set(v["tasks"]) for k, v in index["workstreams"].items()}
    return {k: v["state"] for k, v in index["workers"].items()}


@check("STATE-OBS-005", fix=EXPORT)
def _state_obs_005(ctx: Context, f: Finding) -> Result:
    """The three indices exist and say what current.json says."""
    _loaded(ctx)
    current = _current(ctx, f)
    if current is None:
        return f.result("")
    want = _derived(current)
    for name, model in _INDEXES.items():
        path = ctx.state_dir / name
        index = read_json(path, f, ctx)
        if index is None or not _validate(model, index, f, ctx.rel(path)):
            continue
        if index["source_timestamp"] != current["timestamp"]:
            continue   # another export's: STATE-OBS-006 judges its age
        if _index_says(name, index) != want[name]:
            f.fail(f"{name} does not say what current.json says (same source_timestamp)",
                   ctx.rel(path))
    return f.result("by_status, by_workstream and by_worker derive from current.json")


@check("STATE-OBS-006", fix=EXPORT)
def _state_obs_006(ctx: Context, f: Finding) -> Result:
    """No index is older than current.json by more than 60 s."""
    _loaded(ctx)
    current = _current(ctx, f)
    if current is None:
        return f.result("")
    now = clock.epoch(current["timestamp"])
    for name in _INDEXES:
        path = ctx.state_dir / name
        index = read_json(path, f, ctx)
        if index is None or "source_timestamp" not in index:
            continue
        lag = now - clock.epoch(index["source_timestamp"])
        if lag > STALE_SECONDS:
            f.fail(f"{name} is {lag:.0f} s older than current.json (stale after "
                   f"{STALE_SECONDS:.0f} s; readers fall back to current.json)", ctx.rel(path))
    return f.result(f"every index is within {STALE_SECONDS:.0f} s of current.json")


def _workstreams(ctx: Context) -> list[str]:
    _loaded(ctx)
    return [str(r[0]) for r in ctx.conn.execute(
        "SELECT workstream_id FROM workstream WHERE EXISTS (SELECT 1 FROM task t WHERE "
        "t.workstream_id = workstream.workstream_id) ORDER BY workstream_id")]


def _edges(conn: apsw.Connection, ws: str) -> set[tuple[str, str]]:
    return {(str(a), str(b)) for a, b in conn.execute(
        "SELECT d.depends_on, d.task_id FROM task_dependency d JOIN task t ON t.task_id = "
        "d.task_id JOIN task p ON p.task_id = d.depends_on WHERE t.workstream_id = ? AND "
        "p.workstream_id = ?", (ws, ws))}


def _tasks_of(conn: apsw.Connection, ws: str) -> dict[str, float]:
    return {str(t): float(d) for t, d in conn.execute(
        "SELECT task_id, estimated_duration_seconds FROM task WHERE workstream_id = ?", (ws,))}


@check("DAG-VIEW-001", fix=EXPORT)
def _dag_view_001(ctx: Context, f: Finding) -> Result:
    """Every workstream with tasks has its dag_{workstream_id}.json."""
    names = _workstreams(ctx)
    for ws in names:
        doc = read_json(ctx.state_dir / f"dag_{ws}.json", f, ctx)
        if doc is not None and doc.get("workstream_id") != ws:
            f.fail(f"dag_{ws}.json is about workstream {doc.get('workstream_id')!r}",
                   ctx.rel(ctx.state_dir / f"dag_{ws}.json"))
    return f.result(f"{plural(len(names), 'DAG file')}, one per workstream")


_DAG_KEYS = ("schema_version", "schema_url", "workstream_id", "generated_at", "nodes", "edges",
             "topological_order")


def _judge_dag(ctx: Context, f: Finding, ws: str, doc: dict[str, Any]) -> None:
    file = ctx.rel(ctx.state_dir / f"dag_{ws}.json")
    absent = [k for k in _DAG_KEYS if k not in doc]
    if absent:
        f.fail(f"lacks {', '.join(absent)}", file)
        return
    nodes = {n.get("task_id") for n in doc["nodes"]}
    edges = {(e.get("from"), e.get("to")) for e in doc["edges"]}
    if nodes != set(_tasks_of(ctx.conn, ws)):
        f.fail("its nodes are not the workstream's tasks in the database", file)
    if edges != _edges(ctx.conn, ws) or any(e.get("type") != "depends_on" for e in doc["edges"]):
        f.fail("its edges are not the workstream's dependencies (from = the prerequisite)",
               file)
    graph = nx.DiGraph()
    graph.add_nodes_from(n for n in nodes if n)
    graph.add_edges_from(e for e in edges if all(e))
    cycle = find_cycle(graph)
    if cycle:
        f.fail(f"its edges form a cycle: {' -> '.join(cycle + cycle[:1])}", file)
    order = {t: i for i, t in enumerate(doc["topological_order"])}
    if set(order) != nodes or len(order) != len(doc["topological_order"]):
        f.fail("topological_order does not list every node exactly once", file)
    elif any(order[a] > order[b] for a, b in edges if a in order and b in order):
        f.fail("topological_order puts a task before one of its prerequisites", file)


@check("DAG-VIEW-002", fix=EXPORT + "; a cycle is refused by `orch validate` and `orch load`")
def _dag_view_002(ctx: Context, f: Finding) -> Result:
    """Each DAG document has its keys, the database's nodes and edges, a valid topological
    order and no cycle."""
    names = _workstreams(ctx)
    f.look("the task_dependency table")
    for ws in names:
        doc = read_json(ctx.state_dir / f"dag_{ws}.json", f, ctx)
        if doc is not None:
            _judge_dag(ctx, f, ws, doc)
    return f.result(f"{plural(len(names), 'DAG')} as the database has them: acyclic, "
                    "topologically ordered")


_PLAN_KEYS = ("workstream_id", "generated_at", "stages", "total_estimated_duration",
              "critical_path_duration", "critical_path_tasks")


def _judge_plan(ctx: Context, f: Finding, ws: str, plan: dict[str, Any]) -> None:
    file = ctx.rel(ctx.state_dir / f"execution_plan_{ws}.json")
    absent = [k for k in _PLAN_KEYS if k not in plan]
    if absent:
        f.fail(f"lacks {', '.join(absent)}", file)
        return
    durations, edges = _tasks_of(ctx.conn, ws), _edges(ctx.conn, ws)
    stage_of = {t: s.get("stage") for s in plan["stages"] for t in s.get("parallel_tasks", [])}
    if set(stage_of) != set(durations):
        f.fail("its stages do not hold exactly the workstream's tasks", file)
        return
    if [s.get("stage") for s in plan["stages"]] != list(range(1, len(plan["stages"]) + 1)):
        f.fail("its stages are not numbered 1, 2, ...", file)
    late = sorted(b for a, b in edges if stage_of[a] >= stage_of[b])
    if late:
        f.fail(f"{late[0]} is in a stage no later than one of its prerequisites", file)
    path = plan["critical_path_tasks"]
    if any((a, b) not in edges for a, b in zip(path, path[1:], strict=False)):
        f.fail("critical_path_tasks is not a chain of dependencies", file)
    length = sum(durations.get(t, 0.0) for t in path)
    if not math.isclose(length, float(plan["critical_path_duration"]), abs_tol=1e-6):
        f.fail(f"critical_path_duration {plan['critical_path_duration']} is not the sum of its "
               f"tasks' estimates ({length:g})", file)
    if float(plan["total_estimated_duration"]) + 1e-6 < float(plan["critical_path_duration"]):
        f.fail("total_estimated_duration is shorter than the critical path", file)


@check("DAG-VIEW-003", fix=EXPORT)
def _dag_view_003(ctx: Context, f: Finding) -> Result:
    """Each execution plan covers the workstream in dependency order, and its critical path
    is a real chain whose length is its duration."""
    names = _workstreams(ctx)
    for ws in names:
        plan = read_json(ctx.state_dir / f"execution_plan_{ws}.json", f, ctx)
        if plan is not None:
            _judge_plan(ctx, f, ws, plan)
    return f.result(f"{plural(len(names), 'execution plan')} as the database has them")


@check("OBS-001", fix="`orch metrics` writes .state/metrics.json now; `orch run` refreshes it")
def _obs_001(ctx: Context, f: Finding) -> Result:
    """metrics.json has the metrics' shape and, while a run is active, is fresh."""
    from kernel.observe.metrics_document import Metrics
    from kernel.observe.metrics_history import METRICS_FILE

    ran = db.scalar(ctx.conn, "SELECT COUNT(*) FROM attempt")
    path = ctx.state_dir / METRICS_FILE
    if not path.exists() and not ran:
        raise NotApplicable("no task has run yet (`orch run` and `orch metrics` write "
                            "metrics.json)")
    doc = read_json(path, f, ctx)
    if doc is None or not _validate(Metrics, doc, f, ctx.rel(path)):
        return f.result("")
    interval = ctx.project.config.views.metrics_interval_seconds
    age = time.time() - clock.epoch(doc["timestamp"])
    if run_active(ctx.conn) and age > 2 * interval + 5:
        f.fail(f"a run is active, but metrics.json is {age:.0f} s old (refreshed every "
               f"{interval:g} s)", ctx.rel(path))
    return f.result(f"metrics.json has every metric; {age:.0f} s old"
                    + ("" if run_active(ctx.conn) else " (no run is active)"))


@check("OBS-002", fix="`orch metrics --openmetrics FILE` writes the text form; `orch metrics "
       "--serve 127.0.0.1:9464` serves it")
def _obs_002(ctx: Context, f: Finding) -> Result:
    """The OpenMetrics text renders from the database, and samples are kept 30 days."""
    from kernel.observe.metrics_history import MIN_RETENTION_DAYS, RETENTION_DAYS
    from kernel.observe.prometheus import render_openmetrics

    text = render_openmetrics(ctx.conn).decode()
    f.look("the OpenMetrics text rendered from the database")
    if not text.rstrip().endswith("# EOF") or "orch_" not in text:
        f.fail("the OpenMetrics text has no orch_ metrics or no # EOF")
    f.look("the metric_sample retention")
    if RETENTION_DAYS < MIN_RETENTION_DAYS or MIN_RETENTION_DAYS < 30:
        f.fail(f"metric samples are kept {RETENTION_DAYS} days (at least 30 are required)")
    samples = db.scalar(ctx.conn, "SELECT COUNT(*) FROM metric_history")
    return f.result(f"{text.count(chr(10))} lines of OpenMetrics; {samples} samples kept "
                    f"{RETENTION_DAYS} days")
