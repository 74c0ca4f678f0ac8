"""Task dependency graphs and execution plans (DAG-VIEW-001..003), pure Python plus networkx.

Public API:
    PlanTask                      frozen input record, one per task (plain data, no database)
    DagError(ValueError)          base of the errors below
    UnknownDependency             a dependency names a task outside the given set; ``.missing``
    DependencyCycle               the graph has a cycle; ``.cycle`` lists its tasks in edge order
    DuplicateTask                 two input records share a task_id; ``.task_ids``
    build_graph(tasks) -> nx.DiGraph               edges run prerequisite -> dependent
    find_cycle(graph) -> list[str] | None          one cycle, in order, or None for a DAG
    stages(graph) -> list[list[str]]               topological generations, each sorted
    topological_order(graph) -> list[str]          the stages concatenated
    critical_path(graph, durations) -> (list[str], float)
    bottom_levels(graph, durations) -> dict[str, float]    duration + longest chain after it
    stage_duration(durations, max_parallelism) -> float    LPT estimate for one stage
    exclusive_turns(tasks, durations) -> float     the least time its exclusive leases allow
    execution_plan(tasks, workstream_id, max_parallelism, generated_at) -> dict   DAG-VIEW-003
    dag_document(tasks, workstream_id, generated_at) -> dict                      DAG-VIEW-002
    dag_and_plan(tasks, workstream_id, max_parallelism, generated_at) -> (dag, plan)  one graph
    gc_paused() (a context manager pausing the cyclic garbage collector during bulk work)
    DAG_SCHEMA_VERSION, PLAN_SCHEMA_VERSION

Stability Guarantees:
    Every function is deterministic: the same input gives byte-identical
    ``json.dumps(doc, sort_keys=True)``, whatever the order of the input records.
    Tie-breaks (all by task id, plain ``str`` ordering): tasks inside a stage are sorted; the
    topological order is the stages concatenated (so it is NOT
    ``nx.lexicographical_topological_sort``, which interleaves generations); the critical path
    prefers, among equally long chains, the one ending at the smallest id and then, walking back,
    the smallest predecessor; a reported cycle starts at its smallest id.
    Stages are numbered from 1 (``stage`` = generation index + 1). The documents carry
    ``schema_version`` 1.0.0; fields are only added in minor versions.
    All algorithms are O(V + E) (stage estimates add O(n log p)); 100k tasks and 300k edges
    plan in well under two seconds (see tools/bench_plan.py).

Integration Points:
    The database layer and the task-file loader both turn rows/files into ``PlanTask`` and call
    ``execution_plan`` / ``dag_document``; the exporter writes the results to
    ``.state/execution_plan_{workstream_id}.json`` and ``.state/dag_{workstream_id}.json``.
    Dependencies that point outside the given set (cross-workstream) raise UnknownDependency
    listing all of them: deciding whether such an edge is legal, and reporting it, is the
    caller's job (it may drop satisfied external dependencies before calling). A
    DependencyCycle is what the loader reports as ``dependency_cycle_detected``.
    kernel/planning/render.py draws the documents; kernel/planning/generate.py makes seeded test
    graphs. The scheduler ranks queued tasks by ``bottom_levels``.

Dependencies:
    networkx; ``kernel.base.data``.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

from kernel.base.data import schema_url

DAG_SCHEMA_VERSION = "1.0.0"
PLAN_SCHEMA_VERSION = "1.0.0"
DEFAULT_DURATION_SECONDS = 60.0
EDGE_TYPE = "depends_on"
# Strength order of the mode-valued resources when a stage is summarised: a stage that holds a
# resource exclusively anywhere needs it exclusively as a whole.
_MODE_RANK = {"shared": 1, "exclusive": 2}

ResourceValue = str | int


class DagError(ValueError):
    """Base class: the task set cannot be turned into a DAG."""


class UnknownDependency(DagError):
    """Dependencies name tasks that are not in the given set."""

    def __init__(self, missing: Iterable[tuple[str, str]]) -> None:
        self.missing: tuple[tuple[str, str], ...] = tuple(sorted(set(missing)))
        listed = ", ".join(f"{task} -> {dep}" for task, dep in self.missing)
        super().__init__(f"unknown dependencies (task -> missing prerequisite): {listed}")


class DependencyCycle(DagError):
    """The dependencies contain a cycle; ``cycle`` is [a, b, c] for a -> b -> c -> a."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle: list[str] = list(cycle)
        ring = " -> ".join([*self.cycle, self.cycle[0]]) if self.cycle else "?"
        super().__init__(f"dependency cycle: {ring}")


class DuplicateTask(DagError):
    """Several input records carry the same task_id."""

    def __init__(self, task_ids: Iterable[str]) -> None:
        self.task_ids: tuple[str, ...] = tuple(sorted(set(task_ids)))
        super().__init__(f"duplicate task ids: {', '.join(self.task_ids)}")


def _frozen_resources(value: Mapping[str, ResourceValue]) -> Mapping[str, ResourceValue]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class PlanTask:
    """What the planner needs to know about a task; lists and dicts are frozen on creation."""

    task_id: str
    name: str
    type: str
    status: str = "pending"
    dependencies: tuple[str, ...] = ()
    estimated_duration_seconds: float = DEFAULT_DURATION_SECONDS
    priority: int = 0
    critical: bool = False
    # hash=False: a mapping proxy is unhashable, and identity is the task id anyway.
    resource_requirements: Mapping[str, ResourceValue] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dependencies, tuple):
            object.__setattr__(self, "dependencies", tuple(self.dependencies))
        if not isinstance(self.resource_requirements, MappingProxyType):
            object.__setattr__(
                self, "resource_requirements", _frozen_resources(self.resource_requirements)
            )
        duration = self.estimated_duration_seconds
        # NaN or infinity would make every comparison in the critical path meaningless.
        if not (duration >= 0 and math.isfinite(duration)):
            raise ValueError(f"{self.task_id}: estimated_duration_seconds must be >= 0 and finite")


# --------------------------------------------------------------------------- graph building


@contextmanager
def gc_paused() -> Iterator[None]:
    # Building 100k nodes allocates ~1M small dicts and tuples; the cyclic collector keeps
    # rescanning all of them (and all the caller's objects) while nothing here can form a
    # garbage cycle. Pausing it halves the build time. Restored exactly as found.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_graph(tasks: Iterable[PlanTask]) -> nx.DiGraph:
    """One node per task id, one edge prerequisite -> dependent; no node attributes (speed)."""
    tasks = list(tasks)
    ids = [t.task_id for t in tasks]
    known = set(ids)
    if len(known) != len(ids):
        raise DuplicateTask(i for i, n in Counter(ids).items() if n > 1)
    edges = [(dep, t.task_id) for t in tasks for dep in t.dependencies]
    missing = [(dependent, dep) for dep, dependent in edges if dep not in known]
    if missing:
        raise UnknownDependency(missing)
    graph = nx.DiGraph()
    with gc_paused():
        graph.add_nodes_from(ids)
        graph.add_edges_from(edges)
    return graph


# --------------------------------------------------------------------------- ordering


def _generations(graph: nx.DiGraph) -> tuple[list[list[str]], dict[str, int]]:
    """Kahn's algorithm by generations; on a cycle returns the in-degrees left over.

    The adjacency dicts are read directly because the public views cost a wrapper per access,
    which is most of the time on 100k nodes. ``remaining`` holds the unprocessed in-degree of
    every node not yet placed; it is empty exactly when the graph is acyclic.
    """
    succ, pred = graph._succ, graph._pred
    remaining = {v: len(p) for v, p in pred.items()}
    current = [v for v, d in remaining.items() if d == 0]
    gens: list[list[str]] = []
    while current:
        for v in current:
            del remaining[v]
        nxt = []
        for u in current:
            for v in succ[u]:
                d = remaining[v] - 1
                remaining[v] = d
                if d == 0:
                    nxt.append(v)
        current.sort()
        gens.append(current)
        current = nxt
    return gens, remaining


def _cycle_in(graph: nx.DiGraph, remaining: Mapping[str, int]) -> list[str]:
    # Every node Kahn could not place still has an unplaced predecessor, so walking backwards
    # through unplaced nodes must revisit one: a cycle, found in linear time. (nx.find_cycle is
    # avoided because it is quadratic on large graphs.)
    pred = graph._pred
    node = min(remaining)
    walk: list[str] = []
    index: dict[str, int] = {}
    while node not in index:
        index[node] = len(walk)
        walk.append(node)
        node = min(p for p in pred[node] if p in remaining)
    cycle = walk[index[node] :][::-1]
    start = cycle.index(min(cycle))
    return cycle[start:] + cycle[:start]


def find_cycle(graph: nx.DiGraph) -> list[str] | None:
    """The tasks of one cycle in edge order ([a, b, c] for a -> b -> c -> a), or None."""
    _, remaining = _generations(graph)
    return _cycle_in(graph, remaining) if remaining else None


def stages(graph: nx.DiGraph) -> list[list[str]]:
    """Topological generations, each sorted by id; raises DependencyCycle."""
    gens, remaining = _generations(graph)
    if remaining:
        raise DependencyCycle(_cycle_in(graph, remaining))
    return gens


def topological_order(graph: nx.DiGraph) -> list[str]:
    """The stages concatenated: deterministic, and consistent with the execution plan."""
    return [v for gen in stages(graph) for v in gen]


# --------------------------------------------------------------------------- critical path


def _longest_chains(
    pred: Mapping[str, Iterable[str]], order: Sequence[str], durations: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, str | None]]:
    """The one longest-path computation: for each node of ``order`` (a topological order of
    the graph whose predecessors ``pred`` gives), the longest chain ending at it, its own
    duration included, and the predecessor on that chain (ties: the smallest id).
    A dynamic programme, O(V + E)."""
    best: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for v in order:
        top = 0.0
        came: str | None = None
        for u in pred[v]:
            b = best[u]
            if came is None or b > top or (b == top and u < came):
                top, came = b, u
        best[v] = durations[v] + top
        via[v] = came
    return best, via


def _critical_path(
    graph: nx.DiGraph, order: Sequence[str], durations: Mapping[str, float]
) -> tuple[list[str], float]:
    best, via = _longest_chains(graph._pred, order, durations)
    if not best:
        return [], 0.0
    longest = max(best.values())
    end = min(v for v, b in best.items() if b == longest)
    path = [end]
    while (prev := via[path[-1]]) is not None:
        path.append(prev)
    path.reverse()
    return path, best[end]


def critical_path(graph: nx.DiGraph, durations: Mapping[str, float]) -> tuple[list[str], float]:
    """Longest chain weighted by each task's own duration (node weights), and its length.

    A dynamic programme over the topological order, O(V + E). Raises DependencyCycle.
    """
    return _critical_path(graph, topological_order(graph), durations)


def bottom_levels(graph: nx.DiGraph, durations: Mapping[str, float]) -> dict[str, float]:
    """Each task's bottom level: its own duration plus the longest chain of tasks after it
    (the critical-path rank by which the scheduler orders queued tasks). The longest chains of
    the reversed graph, O(V + E). Raises DependencyCycle."""
    best, _ = _longest_chains(graph._succ, topological_order(graph)[::-1], durations)
    return best


# --------------------------------------------------------------------------- the plan


def stage_duration(durations: Sequence[float], max_parallelism: int | None) -> float:
    """Estimated wall time of one stage run on ``max_parallelism`` lanes.

    Longest-processing-time-first: each task, longest first, goes to the least loaded lane; the
    answer is the busiest lane (within 4/3 of the optimum). Without a limit, or with at least as
    many lanes as tasks, it is simply the longest task.
    """
    if not durations:
        return 0.0
    if max_parallelism is None or max_parallelism >= len(durations):
        return max(durations)
    lanes = [0.0] * max_parallelism
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(lanes, lanes[0] + d)
    return max(lanes)


def exclusive_turns(tasks: Iterable[PlanTask], durations: Mapping[str, float]) -> float:
    """The shortest time a stage's tasks can take given their exclusive leases: the holders of
    one resource in ``exclusive`` mode take turns (one at a time), and its ``shared`` holders
    may run together but never beside an exclusive one. The largest such sum over the
    resources; 0 when no task of the stage holds anything exclusively."""
    turns: dict[str, float] = {}
    shared: dict[str, float] = {}
    for task in tasks:
        for name, value in task.resource_requirements.items():
            if value == "exclusive":
                turns[name] = turns.get(name, 0.0) + durations[task.task_id]
            elif value == "shared":
                shared[name] = max(shared.get(name, 0.0), durations[task.task_id])
    return max((total + shared.get(name, 0.0) for name, total in turns.items()), default=0.0)


def _stage_resources(tasks: Iterable[PlanTask]) -> dict[str, ResourceValue]:
    # Amounts (pooled, rate-limited) are added: the demand if the whole stage ran at once, an
    # upper bound on what it holds concurrently. Modes keep the strongest: exclusive > shared.
    total: dict[str, ResourceValue] = {}
    for task in tasks:
        for name, value in task.resource_requirements.items():
            old = total.get(name)
            if isinstance(value, str):
                if value not in _MODE_RANK:
                    raise DagError(f"{task.task_id}: unknown resource mode {name}={value!r}")
                if old is None or (isinstance(old, str) and _MODE_RANK[value] > _MODE_RANK[old]):
                    total[name] = value
                elif not isinstance(old, str):
                    raise DagError(f"resource {name} is used both as an amount and as a mode")
            else:
                if isinstance(old, str):
                    raise DagError(f"resource {name} is used both as an amount and as a mode")
                total[name] = (old or 0) + value
    return dict(sorted(total.items()))


def _check_parallelism(max_parallelism: int | None) -> None:
    if max_parallelism is not None and max_parallelism < 1:
        raise ValueError(f"max_parallelism must be >= 1 or None, not {max_parallelism}")


def execution_plan(
    tasks: Iterable[PlanTask],
    workstream_id: str,
    max_parallelism: int | None,
    generated_at: str,
) -> dict[str, Any]:
    """The DAG-VIEW-003 document.

    Per stage: ``max_parallelism`` is the lanes actually usable (min of the limit and the stage
    size), ``estimated_duration_seconds`` the LPT estimate (see stage_duration), or longer when
    tasks that lease one resource exclusively must take turns (see exclusive_turns), and
    ``critical_path`` whether a critical-path task runs in it. ``total_estimated_duration`` is
    the sum of the stage estimates (stages run one after another), which is never below
    ``critical_path_duration``. Raises UnknownDependency, DuplicateTask, DependencyCycle.
    """
    _check_parallelism(max_parallelism)
    with gc_paused():
        ordered = sorted(tasks, key=lambda t: t.task_id)
        return _execution_plan(ordered, workstream_id, max_parallelism, generated_at,
                               build_graph(ordered))


def dag_and_plan(
    tasks: Iterable[PlanTask],
    workstream_id: str,
    max_parallelism: int | None,
    generated_at: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(dag_document(...), execution_plan(...))`` from one graph: the same documents for
    half the work. Raises like execution_plan."""
    _check_parallelism(max_parallelism)
    with gc_paused():
        ordered = sorted(tasks, key=lambda t: t.task_id)
        graph = build_graph(ordered)
        gens = stages(graph)
        return (_dag_document(ordered, workstream_id, generated_at, graph, gens),
                _execution_plan(ordered, workstream_id, max_parallelism, generated_at, graph,
                                gens))


def _execution_plan(
    tasks: list[PlanTask], workstream_id: str, max_parallelism: int | None, generated_at: str,
    graph: nx.DiGraph, gens: list[list[str]] | None = None,
) -> dict[str, Any]:
    """``tasks`` sorted by id and ``graph`` built from them (so ties on the critical path are
    broken the same way whoever calls); ``gens``: ``stages(graph)`` when known."""
    by_id = {t.task_id: t for t in tasks}
    gens = stages(graph) if gens is None else gens
    durations = {t.task_id: float(t.estimated_duration_seconds) for t in tasks}
    path, path_duration = _critical_path(graph, [v for gen in gens for v in gen], durations)
    on_path = set(path)
    stage_docs = []
    total = 0.0
    for number, gen in enumerate(gens, start=1):
        estimate = max(stage_duration([durations[v] for v in gen], max_parallelism),
                       exclusive_turns((by_id[v] for v in gen), durations))
        total += estimate
        lanes = len(gen) if max_parallelism is None else min(max_parallelism, len(gen))
        stage_docs.append(
            {
                "stage": number,
                "parallel_tasks": gen,
                "max_parallelism": lanes,
                "estimated_duration_seconds": estimate,
                "critical_path": not on_path.isdisjoint(gen),
                "resource_requirements": _stage_resources(by_id[v] for v in gen),
            }
        )
    return {
        "schema_version": PLAN_SCHEMA_VERSION,
        "schema_url": schema_url("execution-plan", PLAN_SCHEMA_VERSION),
        "workstream_id": workstream_id,
        "generated_at": generated_at,
        "stages": stage_docs,
        "total_estimated_duration": total,
        "critical_path_duration": path_duration,
        "critical_path_tasks": path,
    }


def dag_document(
    tasks: Iterable[PlanTask], workstream_id: str, generated_at: str
) -> dict[str, Any]:
    """The DAG-VIEW-002 document: nodes and edges sorted by id. Raises like execution_plan."""
    with gc_paused():
        ordered = sorted(tasks, key=lambda t: t.task_id)
        return _dag_document(ordered, workstream_id, generated_at, build_graph(ordered))


def _dag_document(tasks: list[PlanTask], workstream_id: str, generated_at: str,
                  graph: nx.DiGraph, gens: list[list[str]] | None = None) -> dict[str, Any]:
    order = topological_order(graph) if gens is None else [v for gen in gens for v in gen]
    return {
        "schema_version": DAG_SCHEMA_VERSION,
        "schema_url": schema_url("dag", DAG_SCHEMA_VERSION),
        "workstream_id": workstream_id,
        "generated_at": generated_at,
        "nodes": [
            {"task_id": t.task_id, "name": t.name, "type": t.type, "status": t.status}
            for t in tasks
        ],
        "edges": [
            {"from": u, "to": v, "type": EDGE_TYPE}
            for u, v in sorted((u, v) for u, vs in graph._succ.items() for v in vs)
        ],
        "topological_order": order,
    }
