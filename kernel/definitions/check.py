"""Definitions on disk: discover task, workstream and registry files, and check all of them.

Public API:
    ``collect(project, paths=None, *, workers=None, definitions=True) -> Definitions`` reads
    the task files (``tasks/{ws}/{task}.json``), each ``tasks/{ws}/workstream.json`` and the
    registries (``capabilities/registry.yaml``, ``capabilities/resources.yaml``; the shipped
    defaults when the project has none, with a ``registry_default`` warning), finding every
    per-file problem. PATHs may be task files, directories, registry YAML files, the project
    root or ``capabilities/``.
    ``check(defs, existing=None) -> list[ValidationProblem]`` adds the cross-file checks
    (duplicate ids, unknown dependencies, cycles) and, given ``existing``, the checks against
    the database (started tasks, terminal workstreams, task files gone).
    ``validate(project, paths=None) -> ValidationResult`` runs both and writes nothing.
    ``read_existing(conn, defs) -> Existing``; ``dependency_graph(defs, existing)`` (task ->
    prerequisites once loaded); ``gc_paused()`` (context manager); records
    ``Definitions``, ``Existing``, ``ExistingTask``, ``ValidationResult``; re-exported from
    ``kernel.definitions.taskfiles`` (where parsing one file lives): ``ValidationProblem``
    (``as_dict()``), ``TaskRecord``, ``WorkstreamRecord``, ``CODES`` (code -> severity),
    ``ERROR``, ``WARNING``, ``PARALLEL_MIN_FILES``, ``CHUNK_FILES``.

Stability Guarantees:
    Problem codes are only added, never renamed. Every problem is reported, never just the
    first. ``file`` is relative to the project root (absolute outside it); ``path`` is a JSON
    path (``execution.timeout_seconds``, ``dependencies[2]``); ``line`` is 1-based or None.
    Nothing here writes: without a database ``.state/`` is not even created. Everything under
    ``tasks/`` (but dot-entries) must be a directory or a regular file; a FIFO, socket, device,
    dangling or looping symlink, or a directory named like a task file (``x.json`` inside a
    workstream) is an error, never opened. Symlinks are followed when they stay inside the
    project (``path_escapes_root`` otherwise); a directory reached twice is a
    ``symlink_loop``. The problems of ``orch.toml`` are listed as problems of that file (and
    the defaults are used to check the rest). Dependencies may
    cross workstreams (task ids are global). Paths in ``context_requirements`` and
    ``execution.working_directory`` are relative to the project root (the worktree's root).

Integration Points:
    ``kernel.definitions.load`` runs ``collect``, then ``read_existing`` and ``check`` inside its
    write
    transaction; ``orch validate`` prints ``validate``'s result. Reading and checking one
    file is ``kernel.definitions.taskfiles`` (for large projects in worker processes: pydantic
    validation
    of 100k task files does not fit the load budget on one core).

Dependencies:
    apsw, networkx; ``kernel.base.config``, ``kernel.base.documents``,
    ``kernel.definitions.errors``, ``kernel.definitions.registries``,
    ``kernel.definitions.taskfiles``, ``kernel.planning.dag``, ``kernel.store.db``,
    ``kernel.store.project``, ``kernel.store.schema``.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import apsw
import networkx as nx

from kernel.base.config import Config, ConfigError
from kernel.base.documents import DEFAULT_MAX_FILE_BYTES, DocumentError, kind_of
from kernel.definitions.errors import DefinitionError
from kernel.definitions.registries import (
    DEFAULT_CAPABILITY_REGISTRY,
    DEFAULT_RESOURCE_REGISTRY,
    CapabilityRegistry,
    ResourceRegistry,
    lease_ceiling,
    load_yaml_registry,
)
from kernel.definitions.taskfiles import (
    CHUNK_FILES,
    CODES,
    ERROR,
    PARALLEL_MIN_FILES,
    WARNING,
    ParseContext,
    TaskRecord,
    ValidationProblem,
    WorkstreamRecord,
    display_path,
    inside_root,
    parse_task_files,
    parse_workstream,
)
from kernel.planning.dag import find_cycle, gc_paused
from kernel.store import db, schema
from kernel.store.project import Project

__all__ = [
    "CHUNK_FILES", "CODES", "ERROR", "PARALLEL_MIN_FILES", "WARNING", "Definitions", "Existing",
    "ExistingTask", "TaskRecord", "ValidationProblem", "ValidationResult", "WorkstreamRecord",
    "check", "collect", "dependency_graph", "gc_paused", "read_existing", "validate",
]


@dataclass
class Definitions:
    root: Path
    tasks: list[TaskRecord] = field(default_factory=list)
    workstreams: dict[str, WorkstreamRecord] = field(default_factory=dict)
    capabilities: CapabilityRegistry | None = None
    resources: ResourceRegistry | None = None
    registry_files: dict[str, str] = field(default_factory=dict)  # kind -> file used
    problems: list[ValidationProblem] = field(default_factory=list)
    scope: tuple[str, ...] | None = None  # rel paths given; None = the whole project
    files: int = 0
    config_invalid: bool = False  # orch.toml has errors (listed in problems); defaults used

    @property
    def migrated(self) -> int:
        return sum(1 for t in self.tasks if t.migrated)


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


# --------------------------------------------------------------------------- discovery


class _Found(NamedTuple):
    tasks: list[tuple[str, str]]  # (absolute path, display path)
    workstreams: dict[str, tuple[str, str]]  # directory -> (absolute path, display path)
    registries: list[tuple[str, str]]
    problems: list[ValidationProblem]


def _walk(directory: str, root: str, real_root: str, found: _Found, top: bool,
          seen: set[str] | None = None) -> None:
    """Find the definition files under ``directory``. Everything there (but dot-entries) must
    be a directory or a regular file, directly or through a symlink that stays inside the
    project; a directory is read once (a symlink loop is reported, not followed)."""
    if not inside_root(directory, real_root) and top:
        found.problems.append(_escape(display_path(directory, root), "", directory))
        return
    seen = set() if seen is None else seen
    real = os.path.realpath(directory)
    if real in seen:
        found.problems.append(ValidationProblem(
            "symlink_loop", display_path(directory, root), "",
            f"leads to {display_path(real, os.path.realpath(root))}/, a directory already read "
            "(a symlink loop, or a second link to it)", "remove the symlink"))
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        found.problems.append(ValidationProblem("file_unreadable", display_path(directory, root),
                                                "", f"cannot list the directory: {exc}"))
        return
    workstream_level = real == os.path.realpath(os.path.join(root, "tasks"))
    for entry in entries:
        if entry.name.startswith("."):
            continue  # .backups/ of orch migrate-tasks, editors' files
        if entry.is_symlink() and not inside_root(entry.path, real_root):
            found.problems.append(_escape(display_path(entry.path, root), "", entry.path))
            continue
        try:  # from the directory listing; a stat only for symlinks
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError:
            is_dir = is_file = False
        shown = display_path(entry.path, root)
        if is_dir and entry.name.endswith(".json") and not workstream_level:
            found.problems.append(ValidationProblem(
                "not_a_regular_file", shown, "", "a directory where a task file is expected",
                "a task file is a regular file tasks/{workstream}/{task_id}.json: rename or "
                "remove the directory"))
        elif is_dir:
            _walk(entry.path, root, real_root, found, False, seen)
        elif not is_file:
            found.problems.append(ValidationProblem(
                "not_a_regular_file", shown, "", f"{_describe(entry.path)}, not a regular file "
                "or a directory", "nothing under tasks/ may be a FIFO, socket, device or "
                "dangling symlink: remove it"))
        elif entry.name == "workstream.json":
            found.workstreams[directory] = (entry.path, shown)
        elif entry.name.endswith(".json"):
            found.tasks.append((entry.path, shown))


def _describe(path: str) -> str:
    try:
        return kind_of(os.stat(path).st_mode)
    except FileNotFoundError:
        return f"a dangling symlink (to {os.readlink(path)!r}, which does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return f"unreadable ({exc.strerror or exc})"


def _escape(display: str, path: str, target: str) -> ValidationProblem:
    return ValidationProblem(
        "path_escapes_root", display, path,
        f"'{target}' resolves to {os.path.realpath(target)}, outside the project root",
        "keep definitions and the files tasks name inside the project (check symlinks)")


def _discover(project: Project, paths: Sequence[str | os.PathLike[str]] | None) -> _Found:
    root = str(project.root)
    real_root = os.path.realpath(root)
    found = _Found([], {}, [], [])
    if not paths:
        if project.tasks_dir.is_dir():
            _walk(str(project.tasks_dir), root, real_root, found, top=True)
        return found
    for given in paths:
        path = os.path.abspath(given)
        if path == root:
            if project.tasks_dir.is_dir():
                _walk(str(project.tasks_dir), root, real_root, found, top=True)
        elif path == str(project.capabilities_dir):
            found.registries.extend(
                (str(f), display_path(str(f), root))
                for f in sorted(project.capabilities_dir.glob("*.y*ml")))
        elif os.path.isdir(path):
            _walk(path, root, real_root, found, top=True)
        elif os.path.islink(path) and not os.path.exists(path):
            found.problems.append(ValidationProblem(
                "not_a_regular_file", display_path(path, root), "", _describe(path),
                "point the symlink at an existing file, or remove it"))
        elif not os.path.exists(path):
            found.problems.append(ValidationProblem(
                "file_unreadable", display_path(path, root), "", "no such file or directory"))
        elif not inside_root(path, real_root):
            found.problems.append(_escape(display_path(path, root), "", path))
        elif path.endswith((".yaml", ".yml")):
            found.registries.append((path, display_path(path, root)))
        elif os.path.basename(path) == "workstream.json":
            found.workstreams[os.path.dirname(path)] = (path, display_path(path, root))
        else:
            found.tasks.append((path, display_path(path, root)))
    for task_path, _ in found.tasks:  # a task file's workstream.json comes with it
        directory = os.path.dirname(task_path)
        ws_file = os.path.join(directory, "workstream.json")
        if directory not in found.workstreams and os.path.lexists(ws_file):
            found.workstreams[directory] = (ws_file, display_path(ws_file, root))
    return found


# --------------------------------------------------------------------------- collect


def _load_registry(path: str, display: str, defs: Definitions, max_bytes: int) -> None:
    try:
        registry = load_yaml_registry(Path(path), max_bytes)
    except DocumentError as exc:  # not a regular file, too large, ...
        defs.problems.append(ValidationProblem(exc.code, display, exc.path, exc.message,
                                               exc.hint, exc.line, exc.column))
        return
    except DefinitionError as exc:
        for p in exc.problems:
            defs.problems.append(ValidationProblem(
                "registry_invalid", display, p.path, p.message,
                "see the comments at the top of the shipped file "
                "(orch init copies it into capabilities/)", p.line))
        return
    except OSError as exc:
        defs.problems.append(ValidationProblem("file_unreadable", display, "", str(exc)))
        return
    kind = "capabilities" if isinstance(registry, CapabilityRegistry) else "resources"
    if kind in defs.registry_files:
        defs.problems.append(ValidationProblem(
            "registry_invalid", display, "", f"a second {kind} registry (the first is "
            f"{defs.registry_files[kind]})", "give one registry of each kind"))
        return
    defs.registry_files[kind] = display
    if isinstance(registry, CapabilityRegistry):
        defs.capabilities = registry
    else:
        defs.resources = registry


def _registries(project: Project, given: list[tuple[str, str]], defs: Definitions,
                max_bytes: int) -> None:
    for path, display in given:
        _load_registry(path, display, defs, max_bytes)
    for kind, name, default in (("capabilities", "registry.yaml", DEFAULT_CAPABILITY_REGISTRY),
                                ("resources", "resources.yaml", DEFAULT_RESOURCE_REGISTRY)):
        if kind in defs.registry_files or any(d.endswith(name) for _, d in given):
            continue
        own = project.capabilities_dir / name
        if os.path.lexists(own):  # a FIFO or a dangling symlink is an error, not "missing"
            _load_registry(str(own), display_path(str(own), str(project.root)), defs, max_bytes)
        else:
            defs.problems.append(ValidationProblem(
                "registry_default", f"capabilities/{name}", "",
                f"the project has no capabilities/{name}: using the {kind} registry shipped "
                "with orch", "run `orch init` to copy it into the project and adapt it"))
            _load_registry(str(default), f"<orch>/{name}", defs, max_bytes)


def _workstream(ws_id: str, path: str | None, display: str | None, defs: Definitions,
                max_bytes: int) -> None:
    record, problems = parse_workstream(ws_id, path, display, max_bytes)
    defs.problems += problems
    if record is not None:
        defs.workstreams[ws_id] = record


def collect(project: Project, paths: Sequence[str | os.PathLike[str]] | None = None, *,
            workers: int | None = None, definitions: bool = True) -> Definitions:
    """Read and check every definition file; per-file problems land in ``defs.problems``.

    ``workers``: processes for parsing (None: one per CPU for large projects, 1: in-process).
    ``definitions=False`` leaves ``TaskRecord.definition``/``sha256`` empty (they are only
    needed to compare with the database).
    """
    with gc_paused():
        return _collect(project, paths, workers, definitions)


def _collect(project: Project, paths: Sequence[str | os.PathLike[str]] | None,
             workers: int | None, definitions: bool) -> Definitions:
    root = str(project.root)
    found = _discover(project, paths)
    defs = Definitions(project.root, problems=list(found.problems), files=len(found.tasks))
    if paths and root not in {os.path.abspath(p) for p in paths}:
        defs.scope = tuple(display_path(os.path.abspath(p), root) for p in paths)
    max_bytes = _config(project, defs).definitions.max_task_file_bytes
    # The registries are not task files: a lower limit does not apply to them, a higher does.
    _registries(project, found.registries, defs, max(max_bytes, DEFAULT_MAX_FILE_BYTES))
    ctx = ParseContext(
        root, os.path.realpath(root),
        None if defs.capabilities is None else {
            ref: (c.capability_id, c.stability, c.deprecated_by, c.version)
            for c in defs.capabilities.capabilities for ref in (c.capability_id, c.name)},
        None if defs.resources is None else {
            r.resource_id: (r.type, r.min_per_task, r.max_per_task,
                            lease_ceiling(r.type, r.capacity, r.reserved))
            for r in defs.resources.resources},
        definitions, max_bytes,
    )
    defs.tasks, problems = parse_task_files(sorted(found.tasks), ctx, workers)
    defs.problems += problems
    for path, display in found.workstreams.values():
        _workstream(os.path.basename(os.path.dirname(path)), path, display, defs, max_bytes)
    for ws_id in sorted({t.workstream_id for t in defs.tasks} - set(defs.workstreams)):
        _workstream(ws_id, None, None, defs, max_bytes)
    return defs


def _config(project: Project, defs: Definitions) -> Config:
    """The project's configuration; its problems become problems of ``orch.toml`` (and the
    defaults are used to check the rest)."""
    try:
        return project.config
    except ConfigError as exc:
        shown = display_path(str(project.config_path), str(project.root))
        defs.config_invalid = True
        defs.problems += [ValidationProblem(p.code, shown, p.path, p.message, p.hint, p.line,
                                            p.column) for p in exc.problems]
        return Config()


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
    changed = {t for t, r in records.items() if t in found.tasks
               and found.tasks[t].sha256 != r.sha256}
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


def _read_existing_for_validate(project: Project, defs: Definitions) -> Existing:
    # With a broken orch.toml (reported as problems) the database settings are the defaults.
    conn = (schema.connect(project.db_path, readonly=True) if defs.config_invalid
            else project.connect(readonly=True))
    try:
        with db.read_tx(conn):
            return read_existing(conn, defs)
    finally:
        conn.close()


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
    fresh = defs.tasks if existing is None else [  # new or changed definitions
        r for r in defs.tasks
        if (old := existing.tasks.get(r.task_id)) is None or old.sha256 != r.sha256]
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


def _against_database(defs: Definitions, existing: Existing, graph: dict[str, set[str]],
                      fresh: list[TaskRecord]) -> list[ValidationProblem]:
    problems = []
    stored = existing.tasks
    by_id = {t.task_id: t for t in defs.tasks}
    for rec in fresh:
        old = stored.get(rec.task_id)
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
    for task_id, prereqs in existing.deps.items():
        old = existing.tasks.get(task_id)
        own = by_id.get(task_id)
        if (old is not None and old.started and prereqs != graph.get(task_id, prereqs)
                and (own is None or own.sha256 == old.sha256)):  # else reported above
            blocker = next((r for r in defs.tasks if task_id in r.blocks), None)
            problems.append(ValidationProblem(
                "task_already_started", blocker.file if blocker else None, "blocks",
                f"task '{task_id}' is {old.state}: its dependencies can no longer change",
                "leave it out of blocks"))
    for ws_id, ws in defs.workstreams.items():
        state, sha = existing.workstreams.get(ws_id, ("planned", ws.sha256))
        if sha != ws.sha256 and ws.file and state not in ("planned", "ready"):
            problems.append(ValidationProblem(
                "workstream_started", ws.file, "",
                f"workstream '{ws_id}' is {state}: workstream.json can no longer change",
                "restore the file as loaded"))
    for task_id in sorted(stored.keys() - by_id.keys()):
        old = stored[task_id]
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
    problems.sort(key=lambda p: (p.file or "", p.line or 0, p.path, p.code))
    return ValidationResult(problems, len(defs.tasks), len(defs.workstreams), defs.migrated,
                            defs.files)
