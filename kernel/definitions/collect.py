"""Reading the definitions of a project: every task file, workstream file and registry, each
checked on its own (the cross-file checks are kernel.definitions.check).

Public API:
    ``collect(project, paths=None, *, workers=None, definitions=True) -> Definitions`` reads
    the task files (``tasks/{ws}/{task}.json``, ``.yaml``, ``.yml``), each workstream file
    (``tasks/{ws}/workstream.json``, ``.yaml``, ``.yml``) and the
    registries (``capabilities/registry.yaml``, ``capabilities/resources.yaml``; the shipped
    defaults when the project has none, with a ``registry_default`` warning), finding every
    per-file problem. PATHs may be task files, directories, registry YAML files, the project
    root or ``capabilities/``. ``Definitions`` (the records, the registries, the problems, the
    scope of the paths given; ``migrated``).

Stability Guarantees:
    Every problem is reported, never just the first. Nothing here writes but the parse cache
    (``kernel.definitions.parsecache``, ``.state/definitions.cache``, only when ``.state/``
    exists): without a database ``.state/`` is not even created. A result from the cache is the
    result parsing the file would give (``Definitions.cached`` counts them). The problems of
    ``orch.toml`` are listed as problems of that file (``config_invalid``, and the defaults are
    used to check the rest). A workstream without a workstream file gets the defaults. The
    workstream files are read first: a valid one's ``task_defaults`` are merged into each task
    file of its directory (``kernel.definitions.defaults``); an invalid one gives none. The
    registries are read with the larger of the shipped limit and ``[definitions]
    max_task_file_bytes``; task files with the latter.

Integration Points:
    ``kernel.definitions.check.validate`` (``orch validate``) and ``kernel.definitions.load``
    (``orch load``) call ``collect``; files are found by ``kernel.definitions.discover`` and
    parsed by ``kernel.definitions.taskfiles`` (for large projects in worker processes:
    pydantic validation of 100k task files does not fit the load budget on one core).

Dependencies:
    ``kernel.base.config``, ``kernel.base.documents``, ``kernel.definitions.defaults``,
    ``kernel.definitions.discover``, ``kernel.definitions.errors``,
    ``kernel.definitions.parsecache``, ``kernel.definitions.records``,
    ``kernel.definitions.registries``, ``kernel.definitions.taskfiles``,
    ``kernel.planning.dag``, ``kernel.store.project``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.base.config import Config, ConfigError
from kernel.base.documents import DEFAULT_MAX_FILE_BYTES, DocumentError
from kernel.definitions.defaults import defaults_digest
from kernel.definitions.discover import discover
from kernel.definitions.errors import DefinitionError
from kernel.definitions.parsecache import cached_parse
from kernel.definitions.records import (
    ParseContext,
    TaskRecord,
    ValidationProblem,
    WorkstreamRecord,
    display_path,
    document_problem,
)
from kernel.definitions.registries import (
    DEFAULT_CAPABILITY_REGISTRY,
    DEFAULT_RESOURCE_REGISTRY,
    CapabilityRegistry,
    ResourceRegistry,
    lease_ceiling,
    load_yaml_registry,
)
from kernel.definitions.taskfiles import parse_task_results, parse_workstream, split_results
from kernel.planning.dag import gc_paused
from kernel.store.project import Project


@dataclass
class Definitions:
    """Everything read from the definition files, with the problems of each file."""

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
    cached: int = 0  # task files whose result came from the parse cache (parsecache)

    @property
    def migrated(self) -> int:
        return sum(1 for t in self.tasks if t.migrated)


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
    found = discover(project, paths)
    defs = Definitions(project.root, problems=list(found.problems), files=len(found.tasks))
    if paths and root not in {os.path.abspath(p) for p in paths}:
        defs.scope = tuple(display_path(os.path.abspath(p), root) for p in paths)
    config = _config(project, defs)
    max_bytes = config.definitions.max_task_file_bytes
    # The registries are not task files: a lower limit does not apply to them, a higher does.
    _registries(project, found.registries, defs, max(max_bytes, DEFAULT_MAX_FILE_BYTES))
    # The workstream files first: their task_defaults are merged into their tasks.
    defaults: dict[str, tuple[str, dict[str, Any]]] = {}
    for path, display in found.workstreams.values():
        record = _workstream(os.path.basename(os.path.dirname(path)), path, display, defs,
                             max_bytes)
        if record is not None and record.definition.task_defaults is not None:
            given = record.definition.task_defaults.given()
            defaults[os.path.dirname(path)] = (defaults_digest(given), given)
    ctx = _parse_context(defs, definitions, max_bytes,
                         frozenset(config.agents.command_agents()))
    ctx.defaults = defaults
    results, defs.cached = cached_parse(
        project.state_dir, sorted(found.tasks), ctx,
        lambda files: parse_task_results(files, ctx, workers), whole=not paths)
    defs.tasks, problems = split_results(results)
    del results
    defs.problems += problems
    for ws_id in sorted({t.workstream_id for t in defs.tasks} - set(defs.workstreams)):
        _workstream(ws_id, None, None, defs, max_bytes)
    return defs


def _parse_context(defs: Definitions, definitions: bool, max_bytes: int,
                   agents: frozenset[str] | None = None) -> ParseContext:
    """What parsing a task file needs to know: the registries, reduced to plain tuples."""
    root = str(defs.root)
    return ParseContext(
        root, os.path.realpath(root),
        None if defs.capabilities is None else {
            ref: (c.capability_id, c.stability, c.deprecated_by, c.version)
            for c in defs.capabilities.capabilities for ref in (c.capability_id, c.name)},
        None if defs.resources is None else {
            r.resource_id: (r.type, r.min_per_task, r.max_per_task,
                            lease_ceiling(r.type, r.capacity, r.reserved))
            for r in defs.resources.resources},
        definitions, max_bytes, agents,
    )


def _config(project: Project, defs: Definitions) -> Config:
    """The project's configuration; its problems become problems of ``orch.toml`` (and the
    defaults are used to check the rest)."""
    try:
        return project.config
    except ConfigError as exc:
        shown = display_path(str(project.config_path), str(project.root))
        defs.config_invalid = True
        defs.problems += [document_problem(p, shown) for p in exc.problems]
        return Config()


def _load_registry(path: str, display: str, defs: Definitions, max_bytes: int) -> None:
    try:
        registry = load_yaml_registry(Path(path), max_bytes)
    except DocumentError as exc:  # not a regular file, too large, ...
        defs.problems.append(document_problem(exc, display))
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
                max_bytes: int) -> WorkstreamRecord | None:
    record, problems = parse_workstream(ws_id, path, display, max_bytes)
    defs.problems += problems
    if record is not None:
        defs.workstreams[ws_id] = record
    return record
