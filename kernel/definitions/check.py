"""Checking the definitions as a whole: across files (duplicate ids, unknown dependencies,
cycles) and against the database (started tasks, terminal workstreams, task files gone);
``orch validate``.

Public API:
    ``check(defs, existing=None, *, graph=None) -> list[ValidationProblem]``: the per-file
    problems ``collect`` found plus the cross-file checks and, given ``existing``, the checks
    against the database. ``validate(project, paths=None) -> ValidationResult`` runs
    ``collect`` and ``check`` and writes nothing. ``read_existing(conn, defs) -> Existing``;
    ``dependency_graph(defs, existing)`` (task -> prerequisites once loaded);
    ``cycle_of(problem)`` (the tasks of a ``dependency_cycle`` problem, in order); records
    ``Existing``, ``ExistingTask``, ``ValidationResult``. Re-exported for the callers that
    import them from here: ``collect``, ``Definitions`` (kernel.definitions.collect),
    ``gc_paused`` (kernel.planning.dag), ``ValidationProblem``, ``TaskRecord``,
    ``WorkstreamRecord``, ``CODES``, ``ERROR``, ``WARNING`` (kernel.definitions.records),
    ``PARALLEL_MIN_FILES``, ``CHUNK_FILES`` (kernel.definitions.taskfiles).

Stability Guarantees:
    Problem codes are only added, never renamed. Every problem is reported, never just the
    first, sorted by ``kernel.definitions.records.problem_order``. Nothing here writes but the
    parse cache (``kernel.definitions.parsecache``): without a database ``.state/`` is not
    even created. Dependencies may cross workstreams
    (task ids are global). A cycle is reported once per strongly connected component, at the
    edge that closes it. Paths in ``context_requirements`` and ``execution.working_directory``
    are relative to the project root (the worktree's root).

Integration Points:
    ``kernel.definitions.load`` runs ``collect``, then ``read_existing`` and ``check`` inside
    its write transaction; ``orch validate`` prints ``validate``'s result. Reading and checking
    one file is ``kernel.definitions.taskfiles``, a whole tree ``kernel.definitions.collect``.

Dependencies:
    apsw, networkx; ``kernel.base.errors``, ``kernel.definitions.collect``,
    ``kernel.definitions.executors``, ``kernel.definitions.offers``,
    ``kernel.definitions.preflight``, ``kernel.definitions.records``,
    ``kernel.definitions.taskfiles``, ``kernel.planning.dag``, ``kernel.store.db``,
    ``kernel.store.project``, ``kernel.store.schema``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

import apsw
import networkx as nx

from kernel.base.errors import OrchError
from kernel.definitions import offers
from kernel.definitions.collect import Definitions, collect
from kernel.definitions.executors import EXECUTOR_CAPABILITIES
from kernel.definitions.preflight import preflight
from kernel.definitions.records import (
    CODES,
    ERROR,
    WARNING,
    TaskRecord,
    ValidationProblem,
    WorkstreamRecord,
    problem_order,
)
from kernel.definitions.taskfiles import CHUNK_FILES, PARALLEL_MIN_FILES
from kernel.planning.dag import find_cycle, gc_paused
from kernel.store import db, schema
from kernel.store.project import Project

__all__ = [
    "CHUNK_FILES", "CODES", "ERROR", "PARALLEL_MIN_FILES", "WARNING", "Definitions", "Existing",
    "ExistingTask", "TaskRecord", "ValidationProblem", "ValidationResult", "WorkstreamRecord",
    "check", "collect", "dependency_graph", "gc_paused", "read_existing", "validate",
]


class ExistingTask(NamedTuple):
    workstream_id: str
    state: str
    sha256: str | None
    started: bool  # not pending, or has attempts: its definition is frozen
    source_file: str | None


@dataclass
class Existing:
    """What the database holds that a load must respect (read in the load's transaction)."""

    tasks: dict[str, ExistingTask] = field(default_factory=dict)
    workstreams: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    terminal_states: frozenset[str] = frozenset()
    # For the tasks not in the files, and for changed ones: the database's view of them.
    deps: dict[str, set[str]] = field(default_factory=dict)  # stored edges, task -> prereqs
    def_deps: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    def_blocks: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def differs(self, rec: TaskRecord) -> bool:
        """The task has no row yet, or its file's definition differs from the row's: a load
        writes it (and it must still be allowed to change)."""
        old = self.tasks.get(rec.task_id)
        return old is None or old.sha256 != rec.sha256


@dataclass
class ValidationResult:
    problems: list[ValidationProblem]
    tasks: int
    workstreams: int
    migrated: int
    files: int

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)

    def counts(self) -> dict[str, int]:
        errors = sum(1 for p in self.problems if p.severity == ERROR)
        return {"errors": errors, "warnings": len(self.problems) - errors, "files": self.files,
                "tasks": self.tasks, "workstreams": self.workstreams, "migrated": self.migrated}

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.as_dict() for p in self.problems],
                "counts": self.counts()}


# --------------------------------------------------------------------------- the database


def _ids_param(ids: Iterable[str]) -> str:
    return json.dumps(sorted(ids))


def read_existing(conn: apsw.Connection, defs: Definitions) -> Existing:
    """The rows a load must respect. Cheap when nothing changed: one pass over ``task``."""
    found = Existing()
    found.terminal_states = frozenset(r[0] for r in conn.execute(
        "SELECT state FROM machine_state WHERE machine = 'workstream' AND terminal = 1"))
    found.workstreams = {w: (s, h) for w, s, h in conn.execute(
        "SELECT workstream_id, state, definition_sha256 FROM workstream")}
    with_attempts = {r[0] for r in conn.execute("SELECT DISTINCT task_id FROM attempt")}
    for task_id, ws, state, sha, source in conn.execute(
            "SELECT task_id, workstream_id, state, definition_sha256, source_file FROM task"):
        found.tasks[task_id] = ExistingTask(
            ws, state, sha, state != "pending" or task_id in with_attempts, source)
    if not found.tasks:
        return found
    records = {t.task_id: t for t in defs.tasks}
    changed = {t for t, r in records.items() if t in found.tasks and found.differs(r)}
    outside = found.tasks.keys() - records.keys()
    blocking = [r for r in defs.tasks if r.blocks and (r.task_id in changed
                                                         or r.task_id not in found.tasks)]
    if not changed and not outside and not blocking:
        return found
    for task_id, managed, deps, blocks in conn.execute(
            "SELECT task_id, definition_sha256 IS NOT NULL, definition -> '$.dependencies', "
            "definition -> '$.blocks' FROM task WHERE task_id IN (SELECT value FROM json_each(?))",
            (_ids_param(changed | outside),)):
        found.def_deps[task_id] = tuple(json.loads(deps)) if managed and deps else None
        if blocks and blocks != "[]":
            found.def_blocks[task_id] = tuple(json.loads(blocks))
    # Stored edges of every task whose prerequisites this load may change or must keep.
    touched = set(outside) | changed
    for rec in blocking:
        touched.update(rec.blocks)
    for task_id in changed:
        touched.update(found.def_blocks.get(task_id, ()))
    for task_id, prereq in conn.execute(
            "SELECT task_id, depends_on FROM task_dependency "
            "WHERE task_id IN (SELECT value FROM json_each(?))", (_ids_param(touched),)):
        found.deps.setdefault(task_id, set()).add(prereq)
    for task_id in touched & found.tasks.keys():
        found.deps.setdefault(task_id, set())
    return found


def _unoffered(project: Project, defs: Definitions) -> list[ValidationProblem]:
    """``capability_unoffered``: a task needs a capability that a worker started on this
    machine would not offer (kernel.definitions.offers), with what is missing."""
    if defs.capabilities is None or not any(rec.capabilities for rec in defs.tasks):
        return []
    try:
        config = None if defs.config_invalid else project.config
    except OrchError:
        config = None
    here = {a.capability_id: a for a in offers.assess(offers.registry_rows(defs.capabilities),
                                                      config, project.root)}
    implied = {cap: executor for executor, cap in EXECUTOR_CAPABILITIES.items()}
    out = []
    for rec in defs.tasks:
        for cid, _ in rec.capabilities:
            found = here.get(cid)
            if found is not None and found.met or found is None and cid not in implied:
                continue  # met, or unknown_capability says it already
            why = "; ".join(found.missing) if found else "it is not in the capability catalog"
            if cid in implied:
                why += f" (a task of the {implied[cid]} executor needs it, listed or not)"
            out.append(ValidationProblem(
                "capability_unoffered", rec.file, "worker_requirements.capabilities",
                f"needs capability '{cid}', which a worker started on this machine would not "
                f"offer: {why}",
                "install what is missing (`orch capabilities` shows what this machine meets), "
                f"or run it on a worker that has it (`orch worker --capability {cid}`)"))
    return out


def _read_existing_for_validate(project: Project, defs: Definitions) -> Existing:
    # With a broken orch.toml (reported as problems) the database settings are the defaults.
    with (contextlib.closing(schema.connect(project.db_path, readonly=True))
          if defs.config_invalid else project.open(readonly=True)) as conn, db.read_tx(conn):
        return read_existing(conn, defs)


# --------------------------------------------------------------------------- cross-file checks


def dependency_graph(defs: Definitions, existing: Existing | None) -> dict[str, set[str]]:
    """Every task's prerequisites as they will be after loading ``defs``: the files'
    ``dependencies`` and inverted ``blocks``, and for tasks without a file what the database
    holds (minus edges that only a changed task's old ``blocks`` had put there)."""
    with gc_paused():
        return _dependency_graph(defs, existing)


def _dependency_graph(defs: Definitions, existing: Existing | None) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {t.task_id: set(t.dependencies) for t in defs.tasks}
    if existing is not None:
        new_blocks = {t.task_id: set(t.blocks) for t in defs.tasks}
        for task_id, prereqs in existing.deps.items():
            if task_id in graph:
                continue
            keep = set()
            own = existing.def_deps.get(task_id)
            for prereq in prereqs:
                old = existing.def_blocks.get(prereq, ())
                dropped = (prereq in new_blocks and task_id in old
                           and task_id not in new_blocks[prereq])
                if not dropped or own is None or prereq in own:
                    keep.add(prereq)
            graph[task_id] = keep
        for blocker, blocked in existing.def_blocks.items():
            if blocker not in new_blocks:  # a task without a file still blocks its targets
                for task_id in blocked:
                    if task_id in new_blocks:
                        graph[task_id].add(blocker)
    for rec in defs.tasks:
        for task_id in rec.blocks:
            graph.setdefault(task_id, set()).add(rec.task_id)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component, each in edge order (prerequisite first)."""
    # Kahn's algorithm backwards (peel tasks nothing depends on), on integer indexes with
    # the counting done by Counter in C: ~0.25 s for 100k tasks and 300k edges. Only the
    # tasks it cannot peel go to networkx, to name the cycles.
    ids = list(graph)
    index = {v: i for i, v in enumerate(ids)}
    prereqs = [[index[p] for p in graph[v]] for v in ids]
    dependents = [0] * len(ids)
    for i, count in Counter(chain.from_iterable(prereqs)).items():
        dependents[i] = count
    peeled = [i for i, count in enumerate(dependents) if count == 0]
    for i in peeled:  # the list grows while it is walked
        for p in prereqs[i]:
            dependents[p] -= 1
            if dependents[p] == 0:
                peeled.append(p)
    if len(peeled) == len(ids):
        return []
    done = set(peeled)
    remaining = {ids[i] for i in range(len(ids)) if i not in done}
    stuck = nx.DiGraph((p, v) for v in remaining for p in graph[v] if p in remaining)
    cycles = []
    for component in nx.strongly_connected_components(stuck):
        if len(component) > 1:
            cycle = find_cycle(stuck.subgraph(component))
            if cycle:
                cycles.append(cycle)
    return sorted(cycles)


def check(defs: Definitions, existing: Existing | None = None, *,
          graph: dict[str, set[str]] | None = None) -> list[ValidationProblem]:
    """All problems: the per-file ones from ``collect`` plus the cross-file and database ones.
    ``graph``: ``dependency_graph(defs, existing)`` if the caller has it already."""
    with gc_paused():
        return _check(defs, existing, graph)


def _check(defs: Definitions, existing: Existing | None,
           graph: dict[str, set[str]] | None) -> list[ValidationProblem]:
    problems = list(defs.problems)
    by_id = {rec.task_id: rec for rec in defs.tasks}
    if len(by_id) < len(defs.tasks):  # duplicates: the slow path, keeping the first file
        by_id = {}
        for rec in defs.tasks:
            first = by_id.setdefault(rec.task_id, rec)
            if first is rec:
                continue
            problems.append(ValidationProblem(
                "duplicate_task_id", rec.file, "task_id",
                f"task '{rec.task_id}' is defined twice: in {first.file} and in {rec.file}",
                "task ids are global across workstreams: rename one of them"))
    known = by_id.keys() | (existing.tasks.keys() if existing else set())
    unknown = len(problems)
    for rec in defs.tasks:
        if known.issuperset(rec.dependencies) and known.issuperset(rec.blocks):
            continue
        for kind in ("dependencies", "blocks"):
            for i, other in enumerate(getattr(rec, kind)):
                if other not in known:
                    problems.append(_unknown(rec, kind, i, other, by_id))
    if graph is None:
        graph = dependency_graph(defs, existing)
    if len(problems) > unknown:  # leave the unknown tasks out of the cycle search
        graph = {v: {p for p in prereqs if p in known} for v, prereqs in graph.items()
                 if v in known}
    fresh = defs.tasks if existing is None else [r for r in defs.tasks if existing.differs(r)]
    if fresh or existing is None or existing.deps:  # else the last load checked this graph
        for cycle in _cycles(graph):
            problems.append(_cycle_problem(cycle, by_id))
    if existing is not None:
        problems += _against_database(defs, existing, graph, fresh)
    return problems


def _unknown(rec: TaskRecord, kind: str, i: int, other: str,
             by_id: dict[str, TaskRecord]) -> ValidationProblem:
    same_ws = [t for t, r in by_id.items() if r.workstream_id == rec.workstream_id]
    close = difflib.get_close_matches(other, same_ws[:2000], n=1)
    verb = "depends on" if kind == "dependencies" else "blocks"
    return ValidationProblem(
        "unknown_dependency", rec.file, f"{kind}[{i}]",
        f"task '{rec.task_id}' {verb} '{other}', which is neither in the files checked nor in "
        "the database", f"did you mean '{close[0]}'?" if close else
        "task ids are global: check the spelling, or include the file that defines it")


def _cycle_problem(cycle: list[str], by_id: dict[str, TaskRecord]) -> ValidationProblem:
    first, before = cycle[0], cycle[-1]  # the edge before -> first closes the cycle
    text = " -> ".join([*cycle, first])
    rec, path = by_id.get(first), "dependencies"
    if rec is not None and before in rec.dependencies:
        path = f"dependencies[{rec.dependencies.index(before)}]"
    elif before in by_id and first in by_id[before].blocks:
        rec = by_id[before]
        path = f"blocks[{rec.blocks.index(first)}]"
    else:
        rec = rec or next((by_id[t] for t in cycle if t in by_id), None)
    return ValidationProblem(
        "dependency_cycle", rec.file if rec else None, path,
        f"dependency cycle: {text} (each must finish before the next can start)",
        "remove one of these dependencies (or blocks entries)")


def cycle_of(problem: ValidationProblem) -> list[str] | None:
    """The tasks of a ``dependency_cycle`` problem in edge order, as ``_cycle_problem`` wrote
    them (None for any other problem); task ids never contain ``" -> "``."""
    if problem.code != "dependency_cycle":
        return None
    text = problem.message.removeprefix("dependency cycle: ").partition(" (each must")[0]
    return text.split(" -> ")[:-1]


def _against_database(defs: Definitions, existing: Existing, graph: dict[str, set[str]],
                      fresh: list[TaskRecord]) -> list[ValidationProblem]:
    by_id = {t.task_id: t for t in defs.tasks}
    return [*_frozen_tasks(existing, fresh), *_frozen_edges(defs, existing, graph, by_id),
            *_started_workstreams(defs, existing), *_missing_files(defs, existing, by_id)]


def _frozen_tasks(existing: Existing, fresh: list[TaskRecord]) -> list[ValidationProblem]:
    """A new or changed definition: its task must not have started, its workstream must not
    have ended."""
    problems = []
    for rec in fresh:
        old = existing.tasks.get(rec.task_id)
        if old is not None and old.started:
            problems.append(ValidationProblem(
                "task_already_started", rec.file, "",
                f"task '{rec.task_id}' is {old.state}"
                f"{' and has attempts' if old.state == 'pending' else ''}: its definition can "
                "no longer change", "restore the file as loaded, or define a new task with "
                "another task_id"))
        ws_state = existing.workstreams.get(rec.workstream_id, ("", None))[0]
        if ws_state in existing.terminal_states:
            problems.append(ValidationProblem(
                "workstream_terminal", rec.file, "workstream_id",
                f"workstream '{rec.workstream_id}' is {ws_state}: tasks cannot be "
                f"{'added to' if old is None else 'changed in'} it",
                "put the work in a new workstream"))
    return problems


def _frozen_edges(defs: Definitions, existing: Existing, graph: dict[str, set[str]],
                  by_id: dict[str, TaskRecord]) -> list[ValidationProblem]:
    """A started task whose own file is unchanged: another file's ``blocks`` must not change
    its prerequisites."""
    problems = []
    for task_id, prereqs in existing.deps.items():
        old = existing.tasks.get(task_id)
        own = by_id.get(task_id)
        if (old is not None and old.started and prereqs != graph.get(task_id, prereqs)
                and (own is None or own.sha256 == old.sha256)):  # else _frozen_tasks reports it
            blocker = next((r for r in defs.tasks if task_id in r.blocks), None)
            problems.append(ValidationProblem(
                "task_already_started", blocker.file if blocker else None, "blocks",
                f"task '{task_id}' is {old.state}: its dependencies can no longer change",
                "leave it out of blocks"))
    return problems


def _started_workstreams(defs: Definitions, existing: Existing) -> list[ValidationProblem]:
    problems = []
    for ws_id, ws in defs.workstreams.items():
        state, sha = existing.workstreams.get(ws_id, ("planned", ws.sha256))
        if sha != ws.sha256 and ws.file and state not in ("planned", "ready"):
            problems.append(ValidationProblem(
                "workstream_started", ws.file, "",
                f"workstream '{ws_id}' is {state}: workstream.json can no longer change",
                "restore the file as loaded"))
    return problems


def _missing_files(defs: Definitions, existing: Existing,
                   by_id: dict[str, TaskRecord]) -> list[ValidationProblem]:
    """Loaded tasks whose file is gone (within the paths checked): kept, and said."""
    problems = []
    for task_id in sorted(existing.tasks.keys() - by_id.keys()):
        old = existing.tasks[task_id]
        if not old.source_file:
            continue
        if defs.scope is None or any(old.source_file == s or old.source_file.startswith(
                s.rstrip("/") + "/") for s in defs.scope):
            problems.append(ValidationProblem(
                "task_file_missing", old.source_file, "",
                f"task '{task_id}' ({old.state}) is in the database but its file is gone; "
                "it is kept", "restore the file, or cancel the task with orch"))
    return problems


def validate(project: Project, paths: Sequence[str | os.PathLike[str]] | None = None, *,
             workers: int | None = None) -> ValidationResult:
    """``orch validate``: every problem of the definitions; reads the database if there is one
    (to resolve dependencies on loaded tasks), never writes."""
    with_db = project.db_path.exists()
    defs = collect(project, paths, workers=workers, definitions=with_db)
    problems = check(defs, _read_existing_for_validate(project, defs) if with_db else None)
    problems += _unoffered(project, defs)
    problems += preflight(project, defs)
    problems.sort(key=problem_order)
    return ValidationResult(problems, len(defs.tasks), len(defs.workstreams), defs.migrated,
                            defs.files)
