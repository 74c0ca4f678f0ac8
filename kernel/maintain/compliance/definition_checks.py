"""Compliance checks of the project's definitions and of the database's rules: TASK-DEF-001..002,
CAP-REG-001..002, CONC-REG-001..002, AIDER-INT-001..003, SM-DEF-001..002, AUDIT-001,
SCHEMA-VER-001, COMPLIANCE-001.

Public API:
    None beyond registering the checks.

Stability Guarantees:
    Each check reuses the rule's one home instead of restating it: task files go through
    ``orch validate`` (``kernel.definitions.check.validate``), registries through their models,
    leases through ``orch doctor``'s invariant queries, the triggers through ``orch doctor``'s
    schema comparison, the machines through ``kernel.store.machines.stored_matches_yaml``,
    the event log through ``orch replay``, attempt outputs through the ``AttemptOutput`` model.

Integration Points:
    ``kernel.maintain.compliance.core`` runs them; the schemas resolved by SCHEMA-VER-001 are
    ``kernel.base.data.schemas_dir()``.

Dependencies:
    pydantic; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.definitions.check``,
    ``kernel.definitions.executors``, ``kernel.definitions.models``,
    ``kernel.definitions.registries``, ``kernel.definitions.taskformats``,
    ``kernel.maintain.compliance.core``, ``kernel.maintain.compliance.state_checks``,
    ``kernel.maintain.doctor_checks``, ``kernel.maintain.invariants``,
    ``kernel.observe.replay``, ``kernel.observe.schemas``, ``kernel.runtime.executors``,
    ``kernel.store.db``, ``kernel.store.eventlog``, ``kernel.store.machines``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kernel.base import clock
from kernel.base.errors import OrchError
from kernel.maintain.compliance.core import (
    CHECKS,
    REQUIREMENTS,
    Context,
    Finding,
    NotApplicable,
    Result,
    check,
)
from kernel.maintain.compliance.state_checks import read_json
from kernel.store import db

VALIDATE = "run `orch validate`: it names each problem with its file, line and a hint"
_LOCATION = ("file_name_mismatch", "wrong_directory", "duplicate_task_id")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+].*)?$")


def _validation(ctx: Context) -> Any:
    if "validate" not in ctx.cache:
        from kernel.definitions.check import validate

        ctx.cache["validate"] = validate(ctx.project)
    return ctx.cache["validate"]


def _task_problems(ctx: Context, f: Finding, codes: set[str] | None) -> int:
    result = _validation(ctx)
    f.look(ctx.rel(ctx.project.tasks_dir))
    if not result.files:
        raise NotApplicable("tasks/ holds no task file yet")
    for p in result.problems:
        if p.severity == "error" and (codes is None or p.code in codes):
            f.fail(f"{p.path + ': ' if p.path else ''}{p.message} [{p.code}]", p.file, p.line)
    return int(result.files)


@check("TASK-DEF-001", fix=VALIDATE + "; a task file is tasks/{workstream_id}/{task_id}.json")
def _task_def_001(ctx: Context, f: Finding) -> Result:
    """Every task file sits at tasks/{workstream_id}/{task_id}.json, one per task."""
    n = _task_problems(ctx, f, set(_LOCATION))
    return f.result(f"{n} task files, each where its ids say")


@check("TASK-DEF-002", fix=VALIDATE)
def _task_def_002(ctx: Context, f: Finding) -> Result:
    """Every task file validates against the task schema (and its references resolve)."""
    n = _task_problems(ctx, f, None)
    return f.result(f"{n} task files validate")


def _registry(ctx: Context, f: Finding, name: str) -> Any:
    from kernel.definitions.registries import load_capability_registry, load_resource_registry

    path = ctx.project.capabilities_dir / name
    f.look(ctx.rel(path))
    if not path.is_file():
        f.fail(f"capabilities/{name} does not exist", ctx.rel(path))
        return None
    try:
        return (load_capability_registry if name == "registry.yaml"
                else load_resource_registry)(path)
    except (OrchError, ValidationError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc).splitlines()[0]
        f.fail(f"capabilities/{name} is invalid: {message}", ctx.rel(path),
               getattr(exc, "line", None))
        return None


@check("CAP-REG-001", fix="`orch init` writes capabilities/registry.yaml when it is missing; "
       "`orch validate capabilities/registry.yaml` explains a problem")
def _cap_reg_001(ctx: Context, f: Finding) -> Result:
    """capabilities/registry.yaml exists and every capability has its fields."""
    registry = _registry(ctx, f, "registry.yaml")
    if registry is None:
        return f.result("")
    return f.result(f"{len(registry.capabilities)} capabilities, each with its fields")


@check("CAP-REG-002", fix="replace the deprecated capability in the tasks that need it "
       "(`orch capabilities` shows what replaces it)")
def _cap_reg_002(ctx: Context, f: Finding) -> Result:
    """Versions are semver, stability is declared, and tasks needing a deprecated capability
    are warned about."""
    registry = _registry(ctx, f, "registry.yaml")
    if registry is None:
        return f.result("")
    for cap in registry.capabilities:
        if not _SEMVER.match(cap.version) or not _SEMVER.match(cap.since_version):
            f.fail(f"{cap.capability_id}: version {cap.version!r} / since_version "
                   f"{cap.since_version!r} is not semver")
    deprecated = {c.capability_id: c.deprecated_by for c in registry.capabilities
                  if c.stability == "deprecated"}
    if ctx.has_db and deprecated:
        f.look("the task_capability table")
        for task_id, cap in ctx.conn.execute(
                "SELECT tc.task_id, tc.capability_id FROM task_capability tc JOIN task t ON "
                "t.task_id = tc.task_id JOIN machine_state ms ON ms.machine = 'task' AND "
                "ms.state = t.state AND ms.terminal = 0 WHERE tc.capability_id IN "
                "(SELECT value FROM json_each(?)) ORDER BY 1", (json.dumps(list(deprecated)),)):
            f.warn(f"task {task_id} needs {cap}, which is deprecated"
                   + (f" (use {deprecated[cap]})" if deprecated[cap] else ""))
    return f.result(f"{len(registry.capabilities)} capabilities versioned; no task needs a "
                    "deprecated one")


_DEFAULT_RESOURCES = ("git_repo_write", "git_repo_read", "filesystem_write", "filesystem_read",
                      "api_quota_openai", "cpu_cores", "memory_mb", "disk_space_mb",
                      "network_bandwidth", "database_connections")


@check("CONC-REG-001", fix="`orch init` writes capabilities/resources.yaml when it is missing; "
       "`orch validate capabilities/resources.yaml` explains a problem")
def _conc_reg_001(ctx: Context, f: Finding) -> Result:
    """capabilities/resources.yaml declares the resources with their types and limits."""
    registry = _registry(ctx, f, "resources.yaml")
    if registry is None:
        return f.result("")
    have = {r.resource_id for r in registry.resources}
    for missing in (r for r in _DEFAULT_RESOURCES if r not in have):
        f.warn(f"the default resource {missing} is not declared",
               ctx.rel(ctx.project.capabilities_dir / "resources.yaml"))
    return f.result(f"{len(have)} resources declared")


@check("CONC-REG-002", fix="`orch doctor` names the leases that break a rule; `orch run` "
       "releases the leases of finished tasks")
def _conc_reg_002(ctx: Context, f: Finding) -> Result:
    """Leases: never oversubscribed, one exclusive holder, released on every terminal state."""
    from kernel.maintain.invariants import INVARIANT_QUERIES

    names = ("pool_within_capacity", "exclusive_single_holder", "max_holders_respected",
             "no_conflicting_holders", "generation_fences_attempts")
    for name in names:
        sql, meaning = INVARIANT_QUERIES[name]
        f.look(f"invariant {name}")
        rows = db.rows(ctx.conn, sql)
        if rows:
            f.fail(f"{name}: {meaning} ({len(rows)} offending rows, e.g. {rows[0]})")
    f.look("leases of finished tasks")
    sql, _ = INVARIANT_QUERIES["no_lease_on_finished_task"]
    for row in db.rows(ctx.conn, sql)[:20]:
        f.fail(f"lease {row['lease_id']} of task {row['task_id']} is still held, but the "
               f"task is {row['state']}")
    leases = db.scalar(ctx.conn, "SELECT COUNT(*) FROM lease")
    return f.result(f"{leases} leases, none oversubscribed or left behind")


def _agent_attempts(ctx: Context) -> list[dict[str, Any]]:
    from kernel.definitions.executors import AGENT_EXECUTORS, effective_executor

    rows = db.rows(ctx.conn, "SELECT a.attempt_id, a.task_id, a.output, t.type, t.definition "
                             "FROM attempt a JOIN task t ON t.task_id = a.task_id "
                             "WHERE a.finished_at IS NOT NULL ORDER BY a.attempt_id")
    out = []
    for row in rows:
        definition = json.loads(row["definition"] or "{}")
        executor = effective_executor((definition.get("execution") or {}).get("executor"),
                                      row["type"])
        if executor in AGENT_EXECUTORS:
            out.append({**row, "definition": definition, "executor": executor})
    return out


@check("AIDER-INT-001", fix="configure the agent in orch.toml ([agents.NAME]; "
       "docs/agents/README.md), `orch capabilities` shows what this machine lacks")
def _aider_int_001(ctx: Context, f: Finding) -> Result:
    """Aider and the other agent CLIs are executors behind the worker interface, configured
    in orch.toml, and every agent task names a configured agent."""
    from kernel.runtime.executors import EXECUTORS

    f.look("kernel.runtime.executors.EXECUTORS")
    for name in ("aider", "agent"):
        executor = EXECUTORS.get(name)
        if executor is None or not callable(getattr(executor, "run", None)):
            f.fail(f"no {name} executor behind the worker interface (Executor.run)")
    result = _validation(ctx)
    f.look("orch.toml [agents]")
    for p in result.problems:
        if p.code == "agent_unconfigured":
            f.fail(p.message, p.file, p.line)
    return f.result("aider and agent are executors like the others; every agent task's agent "
                    "is configured")


@check("AIDER-INT-002", fix="`orch show TASK` shows what the agent was given and changed; an "
       "edit outside required_files is reverted by orch")
def _aider_int_002(ctx: Context, f: Finding) -> Result:
    """Every finished agent attempt changed only its task's required files."""
    attempts = _agent_attempts(ctx)
    if not attempts:
        raise NotApplicable("no agent task has finished an attempt yet")
    f.look(f"{len(attempts)} agent attempts")
    for a in attempts:
        required = set((a["definition"].get("context_requirements") or {})
                       .get("required_files") or [])
        output = json.loads(a["output"] or "{}")
        outside = sorted(set(output.get("files_modified") or []) - required)
        if outside:
            f.fail(f"attempt {a['attempt_id']} of {a['task_id']} changed {', '.join(outside)}, "
                   "outside its required_files")
    return f.result(f"{len(attempts)} agent attempts changed only their required files")


@check("AIDER-INT-003", fix="outputs are written by orch's workers: an invalid one was written "
       "by hand or by another version (`orch show TASK` shows it)")
def _aider_int_003(ctx: Context, f: Finding) -> Result:
    """Every finished attempt stores the output contract; agent attempts always do."""
    from kernel.definitions.models import AttemptOutput

    rows = db.rows(ctx.conn, "SELECT attempt_id, task_id, output FROM attempt "
                             "WHERE output IS NOT NULL ORDER BY attempt_id")
    if not rows:
        raise NotApplicable("no attempt has stored an output yet")
    f.look(f"{len(rows)} attempt outputs")
    for row in rows:
        try:
            AttemptOutput.model_validate_json(row["output"])
        except ValidationError as exc:
            err = exc.errors()[0]
            f.fail(f"attempt {row['attempt_id']} of {row['task_id']}: "
                   f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    stored = {r["attempt_id"] for r in rows}
    for a in _agent_attempts(ctx):
        if a["attempt_id"] not in stored:
            f.fail(f"agent attempt {a['attempt_id']} of {a['task_id']} stored no output")
    return f.result(f"{len(rows)} outputs follow the contract")


@check("SM-DEF-001", fix="`orch doctor` compares the machines; the YAML in "
       "docs/state_machines/ is the source (restore it, then any command reloads it)")
def _sm_def_001(ctx: Context, f: Finding) -> Result:
    """The three lifecycle YAML files load, and the database's machine tables are them."""
    from kernel.store.machines import load_machines, stored_matches_yaml

    folder = ctx.docs / "state_machines"
    for name in ("task", "workstream", "worker"):
        f.look(ctx.rel(folder / f"{name}_lifecycle.yaml"))
    try:
        machines = load_machines(folder)
    except (OSError, ValueError, ValidationError) as exc:
        f.fail(f"the lifecycle YAML does not load: {str(exc).splitlines()[0]}", ctx.rel(folder))
        return f.result("")
    if ctx.has_db:
        f.look("the machine_transition table")
        for problem in stored_matches_yaml(ctx.conn, machines):
            f.fail(problem)
    return f.result("3 machines, the database holds exactly their transitions")


@check("SM-DEF-002", fix="`orch doctor --repair` recreates a dropped or altered trigger")
def _sm_def_002(ctx: Context, f: Finding) -> Result:
    """The triggers that enforce the machines and record their events are all there, as
    shipped."""
    from kernel.maintain.doctor_checks import schema_drift

    f.look("the triggers in sqlite_schema")
    count = db.scalar(ctx.conn, "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'trigger'")
    for drift in schema_drift(ctx.conn):
        if drift.type == "trigger" or drift.found_type == "trigger":
            f.fail(f"trigger {drift.name} is {drift.problem}")
    return f.result(f"{count} triggers, as shipped")


@check("AUDIT-001", fix="`orch replay --at TIMESTAMP` shows where the log and the tables part; "
       "`orch doctor` names the broken invariant")
def _audit_001(ctx: Context, f: Finding) -> Result:
    """Replaying the event log to now gives the state the tables hold."""
    from kernel.observe.replay import replay
    from kernel.store.eventlog import archive_dir

    if not db.scalar(ctx.conn, "SELECT COUNT(*) FROM event"):
        raise NotApplicable("the event log is empty")
    f.look("the event log (`orch replay`)")
    result = replay(ctx.conn, clock.now_iso(), archive_dir=archive_dir(ctx.state_dir))
    if not result["complete"]:
        f.fail("the log is not complete: archived events are missing "
               f"({result.get('partial_note') or 'see orch audit verify'})")
    for table, key in (("task", "task_id"), ("workstream", "workstream_id"),
                       ("worker", "worker_id")):
        have = {k: s for k, s in ctx.conn.execute(f"SELECT {key}, state FROM {table}")}
        replayed = {k: v.get("state") for k, v in result[f"{table}s"].items()}
        for entity in sorted(k for k in have.keys() | replayed.keys()
                             if have.get(k) != replayed.get(k))[:20]:
            f.fail(f"{table} {entity}: the log replays to {replayed.get(entity)!r}, the table "
                   f"says {have.get(entity)!r}")
    return f.result(f"{result['events_read']} events replay to the tables' state")


def _schema_ids(ctx: Context, f: Finding) -> dict[str, Path]:
    """Every published schema_url whose file is in schemas/ with that ``$id``."""
    from kernel.observe.schemas import schema_files_by_url

    f.look(str(ctx.schemas))
    ids = {}
    for url, name in schema_files_by_url().items():
        path = ctx.schemas / name
        try:
            found = json.loads(path.read_text(encoding="utf-8")).get("$id")
        except (OSError, ValueError):
            f.fail(f"the schema of {url} is missing or is not JSON", str(path))
            continue
        if found != url:
            f.fail(f"{name} has $id {found}, not {url}", str(path))
        ids[url] = path
    return ids


def _documents(ctx: Context) -> list[Path]:
    state = ctx.state_dir
    found = [p for p in sorted(state.glob("*.json"))]
    found += sorted((state / "checkpoints").glob("*.json"))
    found += sorted((state / "archive").glob("*/*.json"))
    return found


def _task_files(ctx: Context, f: Finding, ids: dict[str, Path]) -> int:
    """Task and workstream files: a schema_url must name a published schema; a file without
    the fields is valid (the current version is assumed) and warns, since `orch new` writes
    both."""
    from kernel.definitions.taskformats import parse_definition

    if not ctx.project.tasks_dir.is_dir():
        return 0
    files = sorted(p for p in ctx.project.tasks_dir.glob("*/*")
                   if p.suffix in (".json", ".yaml", ".yml"))
    for path in files:
        f.look(ctx.rel(path))
        try:
            doc, problems = parse_definition(path.read_bytes(), str(path), ctx.rel(path))
        except OSError:
            continue
        if problems or not isinstance(doc, dict):
            continue   # TASK-DEF-002 reports a file that does not parse
        url = doc.get("schema_url")
        if url is not None and url not in ids:
            f.fail(f"{path.name}: schema_url {url} names no published schema", ctx.rel(path))
        elif url is None or doc.get("schema_version") is None:
            f.warn(f"{path.name} has no schema_version and schema_url (`orch new` writes "
                   "both)", ctx.rel(path))
    return len(files)


@check("SCHEMA-VER-001", fix="`orch export` rewrites the views with their schema fields; "
       "`orch migrate-tasks` upgrades task files")
def _schema_ver_001(ctx: Context, f: Finding) -> Result:
    """Every document orch writes carries a semver schema_version and a schema_url that names
    a published schema; task files carry a schema_version."""
    ids = _schema_ids(ctx, f)
    docs = _documents(ctx)
    for path in docs:
        doc = read_json(path, f, ctx)
        if doc is None:
            continue
        version, url = doc.get("schema_version"), doc.get("schema_url")
        # Archives are history, never rewritten: one from an older orch only warns.
        report = f.warn if "archive" in path.relative_to(ctx.state_dir).parts else f.fail
        if not isinstance(version, str) or not _SEMVER.match(version):
            report(f"{path.name} has no semver schema_version", ctx.rel(path))
        if not isinstance(url, str):
            report(f"{path.name} has no schema_url", ctx.rel(path))
        elif url not in ids:
            f.fail(f"{path.name}: schema_url {url} names no schema in schemas/", ctx.rel(path))
    tasks = _task_files(ctx, f, ids)
    if not docs and not tasks:
        raise NotApplicable("no document has been written yet (`orch load` exports the views)")
    return f.result(f"{len(docs)} documents and {tasks} task files carry their schema fields")


@check("COMPLIANCE-001", fix="a bug in orch: report it (`orch bundle bug.tar.gz`)")
def _compliance_001(ctx: Context, f: Finding) -> Result:
    """This validator holds one documented check for each of the 38 requirement IDs."""
    f.look("the requirement IDs and the registered checks")
    ids = [r.req_id for r in REQUIREMENTS]
    if len(ids) != 38 or len(set(ids)) != 38:
        f.fail(f"{len(set(ids))} distinct requirement IDs, not 38")
    for rid in ids:
        registered = CHECKS.get(rid)
        if registered is None:
            f.fail(f"{rid} has no check")
        elif not (registered.fn.__doc__ or "").strip():
            f.fail(f"the check of {rid} does not say what it checks (no docstring)")
    return f.result("38 requirement IDs, one documented check each")
