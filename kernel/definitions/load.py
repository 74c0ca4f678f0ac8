"""Import the definitions into the database: ``orch load``.

Public API:
    ``load(project, paths=None, *, now=None, workers=None) -> LoadReport`` checks everything
    (``kernel.definitions.check``) and imports it in one write transaction;
    ``load_definitions(conn, defs, *, now=None) -> LoadReport`` does the transaction part for
    definitions already collected (once the checks pass it empties ``defs.tasks``, releasing
    each record as it is written); ``LoadReport`` (``as_dict()``, ``summary()``);
    ``LoadError(OrchError)`` with ``.problems`` (every problem, errors and warnings);
    ``insert_rows_in_tx(conn, insert, rows)`` (a multi-row INSERT, ``BATCH_PARAMETERS`` values
    per statement, inside the caller's write transaction); ``record_cycles(conn, problems,
    defs)`` (the ``dependency_cycle_detected`` event of a load refused for cycles).

Stability Guarantees:
    All or nothing: any error (in the files, or against the database) raises ``LoadError`` and
    the database is logically unchanged. Reloading unchanged files writes nothing (no UPDATE, no
    event). A task whose file changed is updated only while it is ``pending`` with no attempts,
    with one ``task_definition_updated`` event (metadata: old and new sha256, the changed
    fields); a started task's definition is frozen. Tasks are never deleted: one without a file
    is kept and reported (``task_file_missing``). Tasks cannot be added to, or changed in, a
    terminal workstream. New tasks get one ``task_created`` event each, written set-based when
    their inserts end (sql/0007_bulk_task_events.sql: the same rows as the per-row trigger);
    loaded workstreams that are ``planned`` move to ``ready`` (trigger ``all_tasks_created``).
    v1 task files are migrated in memory (counted in the report). New and changed tasks are
    written a batch of rows per statement; the rows and the events (content and order: task_id
    order, gapless seq) are the same as with one statement per task, and the triggers still fire
    for every row. A missing, empty, damaged or foreign database is refused
    (``DatabaseUnavailable``, exit 3) before anything is written: the file is checked before the
    definitions are parsed, and ``PRAGMA quick_check`` runs before the write transaction.
    Memory: each file is parsed once, into a compact ``TaskRecord`` (the pydantic models are not
    kept; with ``orch validate`` before, not at all: the parse cache), and the records are
    released as they are written; a large load enlarges the page cache to ``BIG_CACHE_KIB``
    only, and hands the records' memory back to the system when it is done.

Integration Points:
    ``orch load`` (kernel.cli.definitions). Writes ``capability``, ``resource``,
    ``resource_conflict`` (upserts, only rows that differ), ``workstream``, ``task``,
    ``task_dependency`` (dependencies plus inverted ``blocks``), ``task_capability``,
    ``task_resource`` and ``event``. The scheduler reads these; ``definition`` holds the v2
    model as JSON and ``definition_sha256`` its hash.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.definitions.check``,
    ``kernel.definitions.collect``, ``kernel.definitions.records``, ``kernel.planning.dag``,
    ``kernel.store.db``, ``kernel.store.events``, ``kernel.store.machines``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import OrchError
from kernel.definitions.check import (
    Existing,
    check,
    cycle_of,
    dependency_graph,
    read_existing,
)
from kernel.definitions.collect import Definitions, collect
from kernel.definitions.records import ERROR, TaskRecord, ValidationProblem, problem_order
from kernel.planning.dag import gc_paused
from kernel.store import db, events
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project

BATCH_PARAMETERS = 2000  # bound values per INSERT statement (see db.insert_rows_in_tx)
BIG_LOAD_ROWS = 10_000  # above this the page cache is enlarged for the transaction
# 32 MiB: as fast as 256 MiB for 100k tasks (SQLite spills dirty pages to the WAL beyond it),
# and 170 MB less peak RSS (docs/PERFORMANCE.md, "Load once").
BIG_CACHE_KIB = 32 * 1024
# False: the per-row trigger writes each task_created event (tests compare both routes).
_SET_BASED_EVENTS = True
_DB_CODES = {"task_already_started", "workstream_terminal", "workstream_started"}
_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_TASK_COLUMNS = ("name", "description", "type", "critical", "priority", "max_retries",
                 "timeout_seconds", "retry_delay_seconds", "estimated_duration_seconds", "command")

_CAPABILITY_COLUMNS = (
    "capability_id", "version", "name", "description", "provider", "deprecated_by",
    "stability", "since_version", "requirements", "operations",
)
_RESOURCE_COLUMNS = (
    "resource_id", "type", "description", "max_holders", "capacity", "refill_per_second",
    "min_per_task", "max_per_task", "reserved", "priority", "settings",
)



class LoadError(OrchError):
    """The definitions have errors, or conflict with the database; nothing was written."""

    def __init__(self, problems: list[ValidationProblem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == ERROR]
        refused = all(p.code in _DB_CODES for p in errors)
        listed = "".join(
            f"\n  {p.file or '-'}{f':{p.line}' if p.line else ''}: "
            f"{f'{p.path}: ' if p.path else ''}{p.message} [{p.code}]" for p in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        super().__init__(
            "load_refused" if refused else "invalid_definitions",
            f"{len(errors)} error(s); nothing was loaded:{listed}{more}",
            file=errors[0].file if len(errors) == 1 else None,
            line=errors[0].line if len(errors) == 1 else None,
            hint="`orch validate` lists every problem with its hint",
        )


@dataclass
class LoadReport:
    workstreams_created: list[str] = field(default_factory=list)
    workstreams_updated: list[str] = field(default_factory=list)
    workstreams_ready: list[str] = field(default_factory=list)
    tasks_created: int = 0
    tasks_updated: list[str] = field(default_factory=list)
    tasks_unchanged: int = 0
    migrated: int = 0
    dependencies: int = 0  # edges among the loaded tasks (dependencies and blocks)
    dependency_rows_written: int = 0
    capabilities_written: int = 0
    resources_written: int = 0
    warnings: list[ValidationProblem] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.workstreams_created or self.workstreams_updated or self.tasks_created
                    or self.tasks_updated or self.dependency_rows_written
                    or self.capabilities_written or self.resources_written)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "workstreams": {"created": self.workstreams_created,
                            "updated": self.workstreams_updated,
                            "ready": self.workstreams_ready},
            "tasks": {"created": self.tasks_created, "updated": self.tasks_updated,
                      "unchanged": self.tasks_unchanged, "migrated_from_v1": self.migrated},
            "dependencies": self.dependencies,
            "dependency_rows_written": self.dependency_rows_written,
            "registries": {"capabilities_written": self.capabilities_written,
                           "resources_written": self.resources_written},
            "problems": [p.as_dict() for p in self.warnings],
        }

    def summary(self) -> str:
        lines = [
            f"workstreams: {len(self.workstreams_created)} created, "
            f"{len(self.workstreams_updated)} updated, {len(self.workstreams_ready)} now ready",
            f"tasks: {self.tasks_created} created, {len(self.tasks_updated)} updated, "
            f"{self.tasks_unchanged} unchanged, {self.migrated} migrated from v1",
            f"dependencies: {self.dependencies} ({self.dependency_rows_written} rows written)",
        ]
        if self.capabilities_written or self.resources_written:
            lines.append(f"registries: {self.capabilities_written} capabilities, "
                         f"{self.resources_written} resources written")
        if not self.changed:
            lines.append("nothing changed")
        return "\n".join(lines)


def _timestamp(now: datetime | str | None) -> str | None:
    return now if now is None or isinstance(now, str) else clock.iso(now)


def load(project: Project, paths: Sequence[str | os.PathLike[str]] | None = None, *,
         now: datetime | str | None = None, workers: int | None = None) -> LoadReport:
    """Check the definitions and import them; raises LoadError (nothing written) on any error.

    The files are parsed before the write lock is taken; the checks against the database and
    the writes share one ``BEGIN IMMEDIATE`` transaction.
    """
    project.require_db()
    db.check_file(project.db_path)  # an empty or damaged file: refused before the slow parse
    defs = collect(project, paths, workers=workers)
    if defs.config_invalid:  # orch.toml must be fixed first; nothing is opened for writing
        raise LoadError(sorted(defs.problems, key=problem_order))
    tasks = len(defs.tasks)
    with project.open(verify=True) as conn:  # a damaged file is refused before the write
        try:
            report = load_definitions(conn, defs, now=now)
        except LoadError as exc:
            record_cycles(conn, exc.problems, defs)
            raise
    if tasks > BIG_LOAD_ROWS:
        del defs
        _release_memory()
    return report


def record_cycles(conn: apsw.Connection, problems: Sequence[ValidationProblem],
                  defs: Definitions) -> int | None:
    """Dependency-Cycle: one ``dependency_cycle_detected`` event (critical) for a load refused
    for cycles, in its own transaction once the load's has rolled back (nothing else is
    written); the event's seq, or None (no cycle, or the database cannot be written now: the
    refusal itself still stands)."""
    found = [(p, cycle) for p in problems if (cycle := cycle_of(p))]
    if not found:
        return None
    first, cycle = found[0]
    workstreams = {t.task_id: t.workstream_id for t in defs.tasks}
    ws = workstreams.get(cycle[0])
    try:
        with db.write_tx(conn):
            return events.emit_event_in_tx(
                conn, "dependency_cycle_detected", entity_id=ws, workstream_id=ws,
                task_id=cycle[0], trigger="load_refused",
                metadata={"failure_mode": "Dependency-Cycle", "cycle": cycle,
                          "cycles": [c for _, c in found], "file": first.file,
                          "path": first.path})
    except apsw.Error:
        return None


def _release_memory() -> None:
    """Hand the memory of the parsed definitions back to the system: the views export that
    follows ``orch load`` would otherwise grow the process past the load's own peak (glibc
    keeps freed blocks in a fragmented heap; 100k tasks: 444 MB peak instead of 389 MB)."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc: nothing to do
        return
    trim(0)


def load_definitions(conn: apsw.Connection, defs: Definitions, *,
                     now: datetime | str | None = None) -> LoadReport:
    stamp = _timestamp(now)
    with gc_paused(), db.write_tx(conn):
        existing = read_existing(conn, defs)
        graph = dependency_graph(defs, existing)
        problems = sorted(check(defs, existing, graph=graph), key=problem_order)
        if any(p.severity == ERROR for p in problems):
            raise LoadError(problems)
        report = LoadReport(warnings=problems, migrated=defs.migrated)
        big = len(defs.tasks) > BIG_LOAD_ROWS and len(existing.tasks) < len(defs.tasks)
        cache = conn.pragma("cache_size")
        if big:
            conn.pragma("cache_size", -BIG_CACHE_KIB)
        loaded = {t.task_id for t in defs.tasks}
        workstreams = sorted({t.workstream_id for t in defs.tasks})
        try:
            _write_registries_in_tx(conn, defs, report)
            _write_workstreams_in_tx(conn, defs, existing, stamp, report)
            new, changed = _write_tasks_in_tx(conn, defs, existing, stamp, report)
            _write_dependencies_in_tx(conn, loaded, existing, graph, new | changed, report)
            _make_ready_in_tx(conn, workstreams, existing, stamp, report)
        finally:
            if big:
                conn.pragma("cache_size", cache)
    return report


# --------------------------------------------------------------------------- registries


def _write_registries_in_tx(conn: apsw.Connection, defs: Definitions,
                            report: LoadReport) -> None:
    if defs.capabilities is not None:
        have = {r[0]: tuple(r) for r in conn.execute(
            f"SELECT {', '.join(_CAPABILITY_COLUMNS)} FROM capability")}
        want = [(c.capability_id, c.version, c.name, c.description, c.provider,
                 c.deprecated_by, c.stability, c.since_version,
                 json.dumps(c.requirements.model_dump(mode="json"), sort_keys=True),
                 json.dumps([o.model_dump(mode="json") for o in c.operations], sort_keys=True))
                for c in defs.capabilities.capabilities]
        rows = [r for r in want if have.get(r[0]) != r]
        conn.executemany(db.upsert_sql("capability", "capability_id", _CAPABILITY_COLUMNS), rows)
        report.capabilities_written = len(rows)
    if defs.resources is None:
        return
    have = {r[0]: tuple(r) for r in conn.execute(
        f"SELECT {', '.join(_RESOURCE_COLUMNS)} FROM resource")}
    conflicts: dict[str, set[str]] = {}
    for rid, other in conn.execute("SELECT resource_id, conflicts_with FROM resource_conflict"):
        conflicts.setdefault(rid, set()).add(other)

    def real(value: int | None) -> float | None:
        return None if value is None else float(value)

    want_res: list[tuple[Any, ...]] = [
        (r.resource_id, r.type, r.description, r.max_holders, real(r.capacity),
         r.refill_per_second, real(r.min_per_task), real(r.max_per_task),
         float(r.reserved or 0), r.priority,
         json.dumps({"refill_rate": r.refill_rate} if r.refill_rate else {}))
        for r in defs.resources.resources]
    res_rows = [r for r in want_res if have.get(r[0]) != r]
    conn.executemany(db.upsert_sql("resource", "resource_id", _RESOURCE_COLUMNS), res_rows)
    written = {r[0] for r in res_rows}
    for res in defs.resources.resources:
        if conflicts.get(res.resource_id, set()) != set(res.conflicts_with):
            written.add(res.resource_id)
            conn.execute("DELETE FROM resource_conflict WHERE resource_id = ?",
                         (res.resource_id,))
            conn.executemany("INSERT INTO resource_conflict VALUES (?, ?)",
                             [(res.resource_id, other) for other in res.conflicts_with])
    report.resources_written = len(written)


# --------------------------------------------------------------------------- workstreams


def _write_workstreams_in_tx(conn: apsw.Connection, defs: Definitions, existing: Existing,
                             stamp: str | None, report: LoadReport) -> None:
    meta = json.dumps({"at": stamp}) if stamp else None
    for ws_id, rec in sorted(defs.workstreams.items()):
        d = rec.definition
        values = (d.name, d.description, d.base_branch, d.max_duration_seconds,
                  d.max_parallelism, rec.definition_json, rec.sha256)
        if ws_id not in existing.workstreams:
            conn.execute(
                "INSERT INTO workstream (workstream_id, name, description, base_branch, "
                "max_duration_seconds, max_parallelism, definition, definition_sha256, "
                "created_at, updated_at, transition_metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                f"COALESCE(?, {_NOW_SQL}), COALESCE(?, {_NOW_SQL}), ?)",
                (ws_id, *values, stamp, stamp, meta))
            report.workstreams_created.append(ws_id)
            continue
        state, sha = existing.workstreams[ws_id]
        if sha == rec.sha256 or state not in ("planned", "ready") or (
                rec.file is None and sha is None):
            continue  # unchanged; or a started workstream (refused by check when it has a file)
        conn.execute(
            "UPDATE workstream SET name = ?, description = ?, base_branch = ?, "
            "max_duration_seconds = ?, max_parallelism = ?, definition = ?, "
            f"definition_sha256 = ?, updated_at = COALESCE(?, {_NOW_SQL}) "
            "WHERE workstream_id = ?", (*values, stamp, ws_id))
        events.emit_event_in_tx(
            conn, "workstream_definition_updated", entity_id=ws_id, workstream_id=ws_id,
            trigger="definition_loaded", at=stamp,
            metadata={"old_sha256": sha, "new_sha256": rec.sha256, "source_file": rec.file})
        report.workstreams_updated.append(ws_id)


def _write_tasks_in_tx(conn: apsw.Connection, defs: Definitions, existing: Existing,
                       stamp: str | None, report: LoadReport) -> tuple[set[str], set[str]]:
    fresh = sorted((r for r in defs.tasks if existing.differs(r)), key=lambda r: r.task_id)
    new = [r for r in fresh if r.task_id not in existing.tasks]
    changed = [r for r in fresh if r.task_id in existing.tasks]
    report.tasks_unchanged = len(defs.tasks) - len(new) - len(changed)
    new_ids, changed_ids = {r.task_id for r in new}, {r.task_id for r in changed}
    capabilities = [(r.task_id, cid, version) for r in fresh for cid, version in r.capabilities]
    resources = [(r.task_id, *res) for r in fresh for res in r.resources]
    # Memory: the records of unchanged tasks go now, those of new ones as they are written.
    del fresh
    defs.tasks.clear()
    # One clock reading for the whole load: every new task has the same created_at.
    created = stamp or db.scalar(conn, f"SELECT {_NOW_SQL}")
    report.tasks_created = len(new)
    _insert_new_tasks_in_tx(conn, new, created, stamp)
    _update_changed_in_tx(conn, changed, existing, created, report)
    _write_requirements_in_tx(conn, sorted(changed_ids), capabilities, resources)
    return new_ids, changed_ids


_INSERT_TASK = (
    "INSERT INTO task (task_id, workstream_id, name, description, type, critical, priority, "
    "max_retries, timeout_seconds, retry_delay_seconds, estimated_duration_seconds, command, "
    "definition, definition_sha256, source_file, created_at, updated_at, transition_metadata)")


def _insert_new_tasks_in_tx(conn: apsw.Connection, new: list[TaskRecord], created: str,
                            stamp: str | None) -> None:
    """INSERT the new tasks (in the order given) with their ``task_created`` events written
    set-based: while the ``task_bulk_insert`` marker row exists the per-row trigger stands
    aside; deleting the marker writes one event per task inserted since, in insertion order,
    with the row trigger's columns and metadata (sql/0007_bulk_task_events.sql). The rows are
    made ten statements' worth at a time, and ``new`` is emptied as they are (memory)."""
    if not new:
        return
    if _SET_BASED_EVENTS:
        after = db.scalar(conn, "SELECT COALESCE(max(rowid), 0) FROM task")
        conn.execute("INSERT INTO task_bulk_insert (marker_id, after_rowid) VALUES (1, ?)",
                     (after,))
    step = 10 * max(1, BATCH_PARAMETERS // (len(_TASK_COLUMNS) + 8))
    new.reverse()  # taken from the end, a batch at a time
    while new:
        batch = new[-step:]
        del new[-step:]
        insert_rows_in_tx(conn, _INSERT_TASK, [
            (r.task_id, r.workstream_id, *r.columns, r.definition, r.sha256, r.file, created,
             created, _created_metadata(r, stamp)) for r in reversed(batch)])
    if _SET_BASED_EVENTS:
        conn.execute("DELETE FROM task_bulk_insert")


def _update_changed_in_tx(conn: apsw.Connection, changed: list[TaskRecord], existing: Existing,
                          created: str, report: LoadReport) -> None:
    """Pending tasks whose file changed: the new definition, one task_definition_updated event
    each (with the fields that changed)."""
    old_defs = {t: json.loads(d) for t, d in conn.execute(
        "SELECT task_id, definition FROM task WHERE task_id IN (SELECT value FROM json_each(?))",
        (json.dumps([r.task_id for r in changed]),))} if changed else {}
    _update_tasks_in_tx(conn, [(r.task_id, r.workstream_id, *r.columns, r.definition, r.sha256,
                                r.file, created) for r in changed])
    updated = []
    for rec in changed:
        old = old_defs.get(rec.task_id, {})
        new_def = json.loads(rec.definition)
        meta = {"old_sha256": existing.tasks[rec.task_id].sha256, "new_sha256": rec.sha256,
                "source_file": rec.file,
                "changed_fields": sorted(k for k in new_def.keys() | old.keys()
                                         if new_def.get(k) != old.get(k))}
        updated.append({"entity_id": rec.task_id, "workstream_id": rec.workstream_id,
                        "task_id": rec.task_id, "metadata": meta})
        report.tasks_updated.append(rec.task_id)
    events.emit_events_in_tx(conn, "task_definition_updated", updated,
                             trigger="definition_loaded", at=created,
                             batch_parameters=BATCH_PARAMETERS)


def _write_requirements_in_tx(conn: apsw.Connection, changed: list[str],
                              capabilities: list[tuple[Any, ...]],
                              resources: list[tuple[Any, ...]]) -> None:
    """The capability and resource rows of new tasks, and those of changed ones replaced."""
    if changed:
        ids = json.dumps(changed)
        for table in ("task_capability", "task_resource"):
            conn.execute(f"DELETE FROM {table} WHERE task_id IN (SELECT value FROM json_each(?))",
                         (ids,))
    # No triggers on these tables (nor on task_dependency): a one-row INSERT there needs no
    # statement journal (see db.insert_rows_in_tx), and executemany is as fast as batches.
    conn.executemany("INSERT INTO task_capability (task_id, capability_id, min_version) "
                     "VALUES (?, ?, ?)", capabilities)
    conn.executemany("INSERT INTO task_resource (task_id, resource_id, mode, amount) "
                     "VALUES (?, ?, ?, ?)", resources)


_UPDATED_COLUMNS = ("workstream_id", *_TASK_COLUMNS, "definition", "definition_sha256",
                    "source_file", "updated_at")


def _update_tasks_in_tx(conn: apsw.Connection, rows: list[tuple[Any, ...]]) -> None:
    """UPDATE the pending tasks ``rows`` (task_id, then the values of ``_UPDATED_COLUMNS``),
    a batch per statement (see db.insert_rows_in_tx)."""
    width = len(_UPDATED_COLUMNS) + 1
    per = max(1, BATCH_PARAMETERS // width)
    values = "(" + ", ".join("?" * width) + ")"
    sets = ", ".join(f"{c} = v.column{i}" for i, c in enumerate(_UPDATED_COLUMNS, 2))
    for start in range(0, len(rows), per):
        batch = rows[start:start + per]
        updated = {r[0] for r in conn.execute(
            f"UPDATE task SET {sets} FROM (VALUES {', '.join([values] * len(batch))}) AS v "
            "WHERE task.task_id = v.column1 AND task.state = 'pending' RETURNING task.task_id",
            list(chain.from_iterable(batch)))}
        for row in batch:
            if row[0] not in updated:  # check() refused started tasks under this write lock
                raise RuntimeError(f"task {row[0]} left pending during the load")


def insert_rows_in_tx(conn: apsw.Connection, insert: str,
                      rows: Sequence[tuple[Any, ...]]) -> None:
    """``db.insert_rows_in_tx`` with the loader's batch size (``BATCH_PARAMETERS``)."""
    db.insert_rows_in_tx(conn, insert, rows, batch_parameters=BATCH_PARAMETERS)


def _created_metadata(rec: TaskRecord, stamp: str | None) -> str | None:
    # Left NULL in the common case: a non-NULL value costs the trigger an UPDATE per row.
    meta: dict[str, Any] = {}
    if stamp:
        meta["at"] = stamp
    if rec.migrated:
        meta["migrated_from"] = "1.0.0"
    return json.dumps(meta) if meta else None


def _write_dependencies_in_tx(conn: apsw.Connection, loaded: set[str], existing: Existing,
                              graph: dict[str, set[str]], written: set[str],
                              report: LoadReport) -> None:
    report.dependencies = sum(len(graph[t]) for t in loaded)
    affected = set(written)
    affected.update(t for t, stored in existing.deps.items() if graph.get(t, stored) != stored)
    replace = sorted(affected & existing.tasks.keys())
    deleted = 0
    if replace:
        conn.execute("DELETE FROM task_dependency WHERE task_id IN "
                     "(SELECT value FROM json_each(?))", (json.dumps(replace),))
        deleted = conn.changes()
    rows = [(t, p) for t in sorted(affected) for p in sorted(graph.get(t, ()))]
    conn.executemany("INSERT INTO task_dependency (task_id, depends_on) VALUES (?, ?)", rows)
    report.dependency_rows_written = deleted + len(rows)  # deleted and inserted


def _make_ready_in_tx(conn: apsw.Connection, workstreams: list[str], existing: Existing,
                      stamp: str | None, report: LoadReport) -> None:
    for ws_id in workstreams:
        state = existing.workstreams.get(ws_id, ("planned", None))[0]
        if state == "planned":
            transition_in_tx(conn, "workstream", ws_id, "ready", "all_tasks_created",
                             {"at": stamp} if stamp else None)
            report.workstreams_ready.append(ws_id)
