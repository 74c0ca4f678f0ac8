"""Parsing definition files: one task file or workstream file in, a record and its problems out.

Public API:
    ``parse_task(path, display, ctx) -> (TaskRecord | None, list[ValidationProblem])``;
    ``parse_task_files(files, ctx, workers) -> (records, problems)`` (many files, in worker
    processes for large projects; results in the order of ``files``);
    ``parse_task_results(files, ctx, workers)`` (the same, one ``Parsed`` = (record or None,
    problems) per file), ``split_results(results)``; ``parse_workstream(ws_id,
    path, display) -> (WorkstreamRecord | None, problems)``; tuning constants
    ``PARALLEL_MIN_FILES``, ``CHUNK_FILES``. The records, ``ParseContext`` and the problem
    codes are ``kernel.definitions.records``; the checks beyond the schema are
    ``kernel.definitions.task_checks``.

Stability Guarantees:
    Every problem of a file is reported, with ``file`` relative to the project root, ``path``
    a JSON path (``execution.timeout_seconds``, ``dependencies[2]``), ``line`` 1-based (and
    ``column`` for JSON syntax errors) or None. A schema error is reported once per field:
    the per-file checks skip paths that already have one. Results do not depend on
    ``workers`` (same records, same problems, same order). Nothing here writes. Every file
    goes through ``kernel.base.documents`` first (regular file, size limit, UTF-8 without BOM,
    no NaN/infinity, 64-bit integers, nesting, duplicate keys, NUL characters), then the
    strict models, then ``kernel.definitions.task_checks``. A v1 task file is migrated in
    memory (``kernel.definitions.task_documents.migrate_v1_to_v2``).

Integration Points:
    ``kernel.definitions.collect`` calls ``parse_task_files`` and ``parse_workstream`` on the
    files ``kernel.definitions.discover`` finds. For many files the work runs in worker
    processes (fork, ``CHUNK_FILES`` files per task); this process works through chunks from
    the back while the workers take them from the front.

Dependencies:
    pydantic; ``kernel.base.documents``, ``kernel.base.formats``,
    ``kernel.definitions.defaults``, ``kernel.definitions.errors``,
    ``kernel.definitions.executors``, ``kernel.definitions.fields``,
    ``kernel.definitions.models``, ``kernel.definitions.records``,
    ``kernel.definitions.task_checks``, ``kernel.definitions.task_documents``,
    ``kernel.definitions.taskformats``, ``kernel.planning.dag``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from pydantic import ValidationError

from kernel.base.documents import DEFAULT_MAX_FILE_BYTES, DocumentError, path_loc, read_file
from kernel.base.formats import json_line
from kernel.definitions.defaults import with_defaults, with_path_ids
from kernel.definitions.errors import DefinitionError, field_hint, problems_from
from kernel.definitions.executors import EXECUTOR_CAPABILITIES, effective_executor
from kernel.definitions.fields import TASK_SCHEMA_VERSION, major_minor
from kernel.definitions.models import (
    TaskDefinition,
    TaskDefinitionV1,
    WorkstreamDefinition,
)
from kernel.definitions.records import (
    ParseContext,
    TaskRecord,
    ValidationProblem,
    WorkstreamRecord,
    document_problem,
)
from kernel.definitions.task_checks import TaskFileProblems, check_document, check_model
from kernel.definitions.task_documents import migrate_v1_to_v2
from kernel.definitions.taskformats import is_yaml, parse_definition
from kernel.planning.dag import gc_paused

PARALLEL_MIN_FILES = 2000  # below this, worker processes cost more than they save
CHUNK_FILES = 2000


# --------------------------------------------------------------------------- one task file


_CONTEXT: ParseContext | None = None


def _set_context(context: ParseContext) -> None:
    global _CONTEXT
    _CONTEXT = context


def parse_task(path: str, display: str, ctx: ParseContext) -> tuple[
    TaskRecord | None, list[ValidationProblem]
]:
    """Read, validate and check one task file: its record (None when it has an error that
    makes it unusable) and every problem found in it."""
    f = TaskFileProblems(path, display)
    try:
        f.raw = read_file(path, max_bytes=ctx.max_file_bytes, display=display)
    except DocumentError as exc:
        return None, [document_problem(exc, display)]
    data, found = parse_definition(f.raw, path, display)
    if found:
        return None, found
    if not isinstance(data, dict):
        return None, [ValidationProblem(
            "schema", display, "", f"expected {'a mapping' if is_yaml(path) else 'a JSON object'}"
            f", got {type(data).__name__}", "a task file holds one object")]
    data = with_path_ids(data, path)
    task, migrated, data = _validate(f, data, ctx.defaults_of(path)[1])
    if task is None:  # still check what can be checked on the raw document
        check_document(f, data, ctx)
        return None, f.problems
    check_model(f, task, ctx)
    return _record(task, display, migrated, ctx), f.problems


def _validate(f: TaskFileProblems, data: dict[str, Any], defaults: dict[str, Any] | None
              ) -> tuple[TaskDefinition | None, bool, dict[str, Any]]:
    """The v2 model of the document with its workstream's ``defaults`` merged in (a v1
    document is migrated first), whether it was migrated, and the document checked."""
    version = data.get("schema_version", TASK_SCHEMA_VERSION)
    line = major_minor(version)
    try:
        if line == (2, 0):
            data = with_defaults(data, defaults)
            return TaskDefinition.model_validate(data), False, data
        if line == (1, 0):
            try:
                TaskDefinitionV1.model_validate(data)
            except ValidationError as exc:
                f.pydantic(exc, TaskDefinitionV1)
                return None, True, data
            data = with_defaults(migrate_v1_to_v2(data, f.display), defaults)
            return TaskDefinition.model_validate(data), True, data
    except ValidationError as exc:
        f.pydantic(exc, TaskDefinition)
        return None, False, data
    except DefinitionError as exc:  # cannot happen after the v1 check, kept for safety
        for p in exc.problems:
            f.add("schema", p.path, p.message)
        return None, True, data
    f.add("unsupported_schema_version", "schema_version",
          f"schema_version {version!r} is not supported: this orch reads 2.0.x, and 1.0.x "
          "(migrated on load)" if isinstance(version, str) else
          f"schema_version must be a semver string such as \"2.0.0\", not {version!r}",
          "use \"2.0.0\"; a newer version needs a newer orch" if line is not None else
          "write a semver string such as \"2.0.0\"")
    return None, False, data


def _record(task: TaskDefinition, display: str, migrated: bool, ctx: ParseContext) -> TaskRecord:
    execution = task.execution
    definition = task.model_dump_json() if ctx.definitions else ""
    return TaskRecord(
        task.task_id, task.workstream_id, display, migrated, tuple(task.dependencies),
        tuple(task.blocks), _capabilities(task, ctx), _resources(task),
        (task.name, task.description, task.type, int(task.critical), task.priority,
         execution.max_retries, execution.timeout_seconds, execution.retry_delay_seconds,
         execution.estimated_duration_seconds, execution.command),
        definition, hashlib.sha256(definition.encode()).hexdigest() if definition else "",
    )


# An executor that needs a program on the worker -> the capability a task run by it needs,
# whether or not its worker_requirements list it (a worker offers it only where the program is:
# kernel.definitions.offers).
def implicit_capability(task: TaskDefinition) -> str | None:
    """The capability the task's executor needs (``models.effective_executor``: a task of type
    ``aider`` runs the aider executor), or None."""
    return EXECUTOR_CAPABILITIES.get(effective_executor(task.execution.executor, task.type))


def _capabilities(task: TaskDefinition, ctx: ParseContext) -> tuple[tuple[str, str | None], ...]:
    """The task's ``task_capability`` rows: its listed capabilities (names resolved to ids)
    with ``min_version``, and the one its executor needs (no minimum version)."""
    refs = task.worker_requirements.capabilities
    implicit = implicit_capability(task)
    if not refs and implicit is None:
        return ()
    caps = ctx.capabilities or {}
    ids = dict.fromkeys(caps[r][0] if r in caps else r for r in refs)
    listed = tuple((cid, task.worker_requirements.min_version) for cid in ids)
    return listed if implicit is None or implicit in ids else (*listed, (implicit, None))


def _resources(task: TaskDefinition) -> tuple[tuple[str, str, float], ...]:
    if not task.resource_requirements:
        return ()
    return tuple((rid, want, 1.0) if isinstance(want, str) else (rid, "units", float(want))
                 for rid, want in task.resource_requirements.items())


# --------------------------------------------------------------------------- many task files


_Chunk = tuple[list[TaskRecord], list[ValidationProblem]]
Parsed = tuple[TaskRecord | None, list[ValidationProblem]]  # one file's result


def _parse_chunk(files: list[tuple[str, str]]) -> list[Parsed]:
    ctx = _CONTEXT
    assert ctx is not None, "_set_context first"
    with gc_paused():
        return [parse_task(path, display, ctx) for path, display in files]


def parse_task_results(files: list[tuple[str, str]], ctx: ParseContext,
                       workers: int | None = None) -> list[Parsed]:
    """Each file's ``parse_task`` result, in the order of ``files``. ``workers``: processes
    (None: one per CPU when there are at least ``PARALLEL_MIN_FILES`` files; 1: in this
    process)."""
    _set_context(ctx)
    if workers is None:
        workers = (os.cpu_count() or 1) if len(files) >= PARALLEL_MIN_FILES else 1
    chunks = [files[i:i + CHUNK_FILES] for i in range(0, len(files), CHUNK_FILES)]
    if workers <= 1 or len(chunks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        results = [_parse_chunk(c) for c in chunks]
    else:
        results = _parse_parallel(chunks, ctx, workers)
    return [one for chunk in results for one in chunk]


def parse_task_files(files: list[tuple[str, str]], ctx: ParseContext,
                     workers: int | None = None) -> _Chunk:
    """Parse ``files`` ((absolute path, display path) pairs): the valid records and every
    problem, both in the order of ``files`` (see ``parse_task_results``)."""
    return split_results(parse_task_results(files, ctx, workers))


def split_results(results: list[Parsed]) -> _Chunk:
    """The records and the problems of per-file results, each in the files' order."""
    records = [r for r, _ in results if r is not None]
    problems = [p for _, found in results for p in found]
    return records, problems


def _parse_parallel(chunks: list[list[tuple[str, str]]], ctx: ParseContext,
                    workers: int) -> list[list[Parsed]]:
    # workers - 1 processes take chunks from the front; this process steals from the back
    # (a chunk whose future can still be cancelled has not been sent to a worker).
    results: list[Any] = [None] * len(chunks)
    with ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("fork"),
                             initializer=_set_context, initargs=(ctx,)) as pool:
        futures: list[Future[Any]] = [pool.submit(_parse_chunk, c) for c in chunks]
        for i in range(len(chunks) - 1, -1, -1):
            if not futures[i].cancel():
                break
            results[i] = _parse_chunk(chunks[i])
        for i, future in enumerate(futures):
            if results[i] is None:
                results[i] = future.result()
    return results


# --------------------------------------------------------------------------- workstream files


def parse_workstream(ws_id: str, path: str | None, display: str | None,
                     max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[
    WorkstreamRecord | None, list[ValidationProblem]
]:
    """The workstream of directory ``ws_id`` from its workstream file (``path``:
    ``workstream.json``, ``.yaml`` or ``.yml``), or with the defaults when ``path`` is None."""
    data: Any = {"workstream_id": ws_id}
    text = ""
    if path is not None:
        try:
            raw = read_file(path, max_bytes=max_bytes, display=display)
        except DocumentError as exc:
            return None, [document_problem(exc, display)]
        data, found = parse_definition(raw, path, display or path)
        if found:
            return None, found
        text = raw.decode("utf-8")
        if isinstance(data, dict):
            data = {"workstream_id": ws_id, **data}  # the directory names it by default
    try:
        model = WorkstreamDefinition.model_validate(data)
    except ValidationError as exc:
        return None, [
            ValidationProblem("workstream_file_invalid", display, p.path, p.message,
                              field_hint(WorkstreamDefinition, path_loc(p.path)),
                              json_line(text, path_loc(p.path)))
            for p in problems_from(exc, WorkstreamDefinition)]
    if model.workstream_id != ws_id:
        return None, [ValidationProblem(
            "workstream_file_invalid", display, "workstream_id",
            f"workstream_id '{model.workstream_id}' differs from its directory {ws_id}/",
            "a workstream file describes the directory it is in",
            json_line(text, ["workstream_id"]))]
    body = workstream_json(model)
    return WorkstreamRecord(ws_id, display, model, body,
                            hashlib.sha256(body.encode()).hexdigest()), []


def workstream_json(model: WorkstreamDefinition) -> str:
    """The stored definition of a workstream: its fields, and its ``task_defaults`` as given
    (absent when it has none, so a workstream file without defaults keeps its old sha256)."""
    if model.task_defaults is None:
        return model.model_dump_json(exclude={"task_defaults"})
    body = model.model_dump(mode="json", exclude={"task_defaults"})
    body["task_defaults"] = model.task_defaults.given()
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
