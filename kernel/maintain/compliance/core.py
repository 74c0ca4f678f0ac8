"""The frame of ``orch compliance``: requirement IDs, what a check reports, and running them.

Public API:
    ``REQUIREMENTS`` (the 38 requirement IDs of the specification, in its order: ``Requirement``
    with ``req_id``, ``level`` MUST/SHOULD, ``title``, ``area``); ``Status`` (PASS, WARN, FAIL,
    N/A); ``Violation(message, file=None, line=None)``; ``Result`` (``as_dict()``);
    ``Finding`` (what a check builds: ``look``, ``fail``, ``warn``, ``result``);
    ``NotApplicable(reason)`` (raised by a check with nothing to judge); ``Context`` (the
    project, the documentation, the kernel's source, a read-only connection);
    ``check(req_id, fix=...)`` (the decorator that registers a check); ``CHECKS``;
    ``run_checks(ctx, only=None) -> list[Result]``.

Stability Guarantees:
    Every requirement ID has exactly one check (a test holds ``CHECKS`` and ``REQUIREMENTS``
    equal). **A check never passes without looking**: a ``Finding`` that looked at nothing is a
    FAIL ("nothing was examined"), and an artifact that is missing is a FAIL with its fix, or
    N/A with the reason when there is nothing yet to judge ("no workstream has run yet"). A
    check that raises is a FAIL naming the error, never a traceback. Each FAIL and WARN carries
    a fix that names a real ``orch`` command where one helps.

Integration Points:
    The checks live in ``kernel.maintain.compliance.state_checks`` (the ``.state/`` views and
    the database), ``.doc_checks`` (the documentation set) and ``.definition_checks`` (task
    files, registries, agents, audit); ``kernel.maintain.compliance.run_compliance`` runs them
    for ``orch compliance`` (kernel.cli.compliance); docs/compliance.md is generated from
    ``REQUIREMENTS`` and the checks' docstrings.

Dependencies:
    apsw; ``kernel.base.data``, ``kernel.store.project``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import apsw

from kernel.store.project import Project

__all__ = ["CHECKS", "REQUIREMENTS", "Context", "Finding", "NotApplicable", "Requirement",
           "Result", "Status", "Violation", "check", "run_checks"]

Status = Literal["PASS", "WARN", "FAIL", "N/A"]


@dataclass(frozen=True)
class Requirement:
    req_id: str
    level: Literal["MUST", "SHOULD"]
    area: str
    title: str


def _reqs(area: str, level: Literal["MUST", "SHOULD"],
          items: Iterable[tuple[str, str]]) -> list[Requirement]:
    return [Requirement(rid, level, area, title) for rid, title in items]


#: The 38 requirement IDs, in the specification's order (../SPEC.md in the design notes).
REQUIREMENTS: tuple[Requirement, ...] = tuple(
    _reqs("State observability", "MUST", [
        ("STATE-OBS-001", ".state/current.json holds the whole current state, atomically"),
        ("STATE-OBS-002", ".state/transitions.jsonl: the events, append-only"),
        ("STATE-OBS-003", "write order: current.json.tmp, fsync, rename, then the events"),
        ("STATE-OBS-004", "the event schema")])
    + _reqs("State observability", "SHOULD", [
        ("STATE-OBS-005", "derived indices by_workstream, by_status, by_worker")])
    + _reqs("State observability", "MUST", [
        ("STATE-OBS-006", "indices regenerated with current.json; staleness detected")])
    + _reqs("Execution-model documentation", "MUST", [
        ("EXEC-DOC-001", "docs/execution_model/ holds the five documents"),
        ("EXEC-DOC-002", "OVERVIEW.md: architecture, components, data flow, dependencies, "
                         "measured performance"),
        ("EXEC-DOC-003", "STATE_MACHINE.md: every state, transition, trigger and invariant"),
        ("EXEC-DOC-004", "SCHEDULING.md: DAG, priority, fairness, resources, parallelism, "
                         "critical path"),
        ("EXEC-DOC-005", "WORKERS.md: registration, capabilities, assignment, health"),
        ("EXEC-DOC-006", "RECOVERY.md: checkpoints, rollback, partial failure, manual "
                         "intervention, decision trees")])
    + _reqs("Task definitions", "MUST", [
        ("TASK-DEF-001", "one file per task at tasks/{workstream_id}/{task_id}.json"),
        ("TASK-DEF-002", "task files validate against the task schema")])
    + _reqs("DAG and plans", "MUST", [
        ("DAG-VIEW-001", ".state/dag_{workstream_id}.json for every workstream"),
        ("DAG-VIEW-002", "the DAG document: nodes, edges, topological order, no cycle"),
        ("DAG-VIEW-003", ".state/execution_plan_{workstream_id}.json: stages and critical "
                         "path")])
    + _reqs("Capability catalog", "MUST", [
        ("CAP-REG-001", "capabilities/registry.yaml with every capability's fields"),
        ("CAP-REG-002", "versions, stability, deprecation; a deprecated capability warns")])
    + _reqs("Failure modes", "MUST", [
        ("ERR-FM-001", "docs/failure_modes/{Mode}.md for each mode, with its fields"),
        ("ERR-FM-002", "docs/failure_modes/CATALOG.md lists every mode by section")])
    + _reqs("Failure modes", "SHOULD", [
        ("ERR-FM-003", "a decision tree per failure mode")])
    + _reqs("Aider integration", "MUST", [
        ("AIDER-INT-001", "agents are executors behind the worker interface"),
        ("AIDER-INT-002", "an agent edits exactly its required files, within its budget"),
        ("AIDER-INT-003", "the output contract is stored per attempt")])
    + _reqs("State machines", "MUST", [
        ("SM-DEF-001", "the lifecycle YAML files are the machines the database holds"),
        ("SM-DEF-002", "SQL triggers enforce the machines")])
    + _reqs("State machines", "SHOULD", [
        ("SM-DEF-003", "STATE_MACHINE.md is generated from the YAML")])
    + _reqs("Module index", "MUST", [
        ("MOD-IDX-001", "every kernel module documents its API, guarantees, integration and "
                        "dependencies")])
    + _reqs("Concurrency and resources", "MUST", [
        ("CONC-REG-001", "capabilities/resources.yaml declares the resources"),
        ("CONC-REG-002", "leases are all-or-nothing, tracked, released, never "
                         "oversubscribed")])
    + _reqs("Audit", "MUST", [
        ("AUDIT-001", "the event log reconstructs the state at any time"),
        ("AUDIT-002", "events kept 90 days; rotation documented; archives queryable")])
    + _reqs("Schema versioning", "MUST", [
        ("SCHEMA-VER-001", "every document carries schema_version and schema_url"),
        ("SCHEMA-VER-002", "docs/schema_migrations/ documents each migration")])
    + _reqs("Observability", "MUST", [
        ("OBS-001", ".state/metrics.json, refreshed while the kernel runs"),
        ("OBS-002", "Prometheus/OpenMetrics form, 30 days of history")])
    + _reqs("Compliance", "MUST", [
        ("COMPLIANCE-001", "this validator checks every requirement ID")]))

_BY_ID = {r.req_id: r for r in REQUIREMENTS}


@dataclass(frozen=True)
class Violation:
    message: str
    file: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "file": self.file, "line": self.line}


@dataclass
class Result:
    req_id: str
    status: Status
    reason: str
    violations: list[Violation] = field(default_factory=list)
    fix: str | None = None
    looked_at: list[str] = field(default_factory=list)

    @property
    def requirement(self) -> Requirement:
        return _BY_ID[self.req_id]

    def as_dict(self) -> dict[str, Any]:
        r = self.requirement
        return {"id": self.req_id, "level": r.level, "area": r.area, "title": r.title,
                "status": self.status, "reason": self.reason,
                "violations": [v.as_dict() for v in self.violations], "fix": self.fix,
                "looked_at": self.looked_at}


class NotApplicable(Exception):
    """Raised by a check when there is nothing yet to judge; the message says why."""


class Finding:
    """What one check found: what it looked at, its violations and warnings."""

    def __init__(self, req_id: str, fix: str) -> None:
        self.req_id = req_id
        self.fix = fix
        self.looked: list[str] = []
        self.failures: list[Violation] = []
        self.warnings: list[Violation] = []

    def look(self, what: str | Path) -> None:
        text = str(what)
        if text not in self.looked:
            self.looked.append(text)

    def fail(self, message: str, file: str | Path | None = None, line: int | None = None) -> None:
        self.failures.append(Violation(message, None if file is None else str(file), line))

    def warn(self, message: str, file: str | Path | None = None, line: int | None = None) -> None:
        self.warnings.append(Violation(message, None if file is None else str(file), line))

    def result(self, passed: str, fix: str | None = None) -> Result:
        """FAIL on any failure, WARN on warnings alone, PASS with ``passed`` only when
        something was examined."""
        if self.failures:
            n = len(self.failures)
            return Result(self.req_id, "FAIL", f"{n} violation{'s' if n != 1 else ''}: "
                          f"{self.failures[0].message}", self.failures + self.warnings,
                          fix or self.fix, self.looked)
        if not self.looked:
            return Result(self.req_id, "FAIL", "nothing was examined (a check that looks at "
                          "nothing cannot pass)", [], fix or self.fix, self.looked)
        if self.warnings:
            n = len(self.warnings)
            return Result(self.req_id, "WARN", f"{n} warning{'s' if n != 1 else ''}: "
                          f"{self.warnings[0].message}", self.warnings, fix or self.fix,
                          self.looked)
        return Result(self.req_id, "PASS", passed, [], None, self.looked)


class Context:
    """What the checks read: the project, orch's documentation, the kernel's source."""

    def __init__(self, project: Project, *, docs: Path | None = None,
                 source: Path | None = None, schemas: Path | None = None) -> None:
        from kernel.base.data import docs_dir, schemas_dir

        self.project = project
        self.docs = docs if docs is not None else docs_dir()
        self.schemas = schemas if schemas is not None else schemas_dir()
        self.source = source if source is not None else Path(__file__).resolve().parents[2]
        self._conn: apsw.Connection | None = None
        self.cache: dict[str, Any] = {}

    @property
    def state_dir(self) -> Path:
        return self.project.state_dir

    @cached_property
    def has_db(self) -> bool:
        return self.project.db_path.exists()

    @property
    def conn(self) -> apsw.Connection:
        """A read-only connection; NotApplicable when the project has no database."""
        if not self.has_db:
            raise NotApplicable("there is no .state/kernel.db yet (`orch init` creates it)")
        if self._conn is None:
            self._conn = self.project.connect(readonly=True)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def rel(self, path: Path) -> str:
        """A path as the report shows it: relative to the project, or to orch's docs."""
        for base, prefix in ((self.project.root, ""), (self.docs.parent, "")):
            try:
                return prefix + str(path.resolve().relative_to(base.resolve()))
            except ValueError:
                continue
        return str(path)


CheckFn = Callable[[Context, Finding], Result]


@dataclass(frozen=True)
class _Registered:
    req_id: str
    fix: str
    fn: CheckFn


CHECKS: dict[str, _Registered] = {}


def check(req_id: str, *, fix: str) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check of ``req_id``; ``fix`` is its default suggested fix."""
    if req_id not in _BY_ID:
        raise KeyError(f"{req_id} is not a requirement ID")

    def register(fn: CheckFn) -> CheckFn:
        if req_id in CHECKS:
            raise KeyError(f"{req_id} has two checks")
        CHECKS[req_id] = _Registered(req_id, fix, fn)
        return fn

    return register


def _run_one(ctx: Context, req: Requirement) -> Result:
    registered = CHECKS.get(req.req_id)
    if registered is None:
        return Result(req.req_id, "FAIL", "no check is registered for this ID", [],
                      "a bug in orch: report it (orch bundle bug.tar.gz)")
    finding = Finding(req.req_id, registered.fix)
    try:
        return registered.fn(ctx, finding)
    except NotApplicable as exc:
        return Result(req.req_id, "N/A", str(exc), [], None, finding.looked)
    except apsw.BusyError:
        raise
    except Exception as exc:  # a check that breaks is a failure to report, not a traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return Result(req.req_id, "FAIL", f"the check could not run: {type(exc).__name__}: "
                      f"{exc} (at {Path(where.filename).name}:{where.lineno})",
                      [], registered.fix, finding.looked)


def run_checks(ctx: Context, only: str | None = None) -> list[Result]:
    """One result per requirement ID (those starting with ``only``), in the spec's order."""
    chosen = [r for r in REQUIREMENTS if only is None or r.req_id.startswith(only.upper())]
    return [_run_one(ctx, r) for r in chosen]
