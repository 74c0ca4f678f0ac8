"""Parsing definition files: one task file or workstream file in, a record and its problems out.

Public API:
    ``ParseContext(root, real_root, capabilities, resources, definitions=True,
    max_file_bytes=1 MiB)`` (what parsing a task file needs to know about the project);
    ``parse_task(path, display, ctx) ->
    (TaskRecord | None, list[ValidationProblem])``; ``parse_task_files(files, ctx, workers)
    -> (records, problems)`` (many files, in worker processes for large projects; results in
    the order of ``files``); ``parse_workstream(ws_id, path, display) -> (WorkstreamRecord |
    None, problems)``; ``read_bytes(path, max_bytes)``. Records ``ValidationProblem``
    (``as_dict()``),
    ``TaskRecord``, ``WorkstreamRecord``; ``CODES`` (problem code -> severity), ``ERROR``,
    ``WARNING``; helpers ``display_path(path, root)``, ``inside_root(path, real_root)``,
    ``node_line(text, loc)`` (the line of a JSON/YAML value), ``field_hint(model, loc)``;
    tuning constants ``PARALLEL_MIN_FILES``, ``CHUNK_FILES``; the argument limits
    ``MAX_ARG_STRLEN`` (Linux; None elsewhere) and ``ARG_MAX``.

Stability Guarantees:
    Every problem of a file is reported, with ``file`` relative to the project root, ``path``
    a JSON path (``execution.timeout_seconds``, ``dependencies[2]``), ``line`` 1-based (and
    ``column`` for JSON syntax errors) or None. A schema error is reported once per field:
    the per-file checks skip paths that already have one. Results do not depend on
    ``workers`` (same records, same problems, same order). Problem codes are only added,
    never renamed. Nothing here writes. Every file goes through ``kernel.base.documents`` first
    (regular file, size limit, UTF-8 without BOM, no NaN/infinity, 64-bit integers, nesting,
    duplicate keys, NUL characters), then the strict models. A command must be startable:
    with its placeholders filled as a worker fills them, no argument over ``MAX_ARG_STRLEN``
    and argv plus this environment within ``ARG_MAX`` (``argument_too_long``). Warnings for
    a task no worker offering the catalog can run: ``unknown_capability``,
    ``min_version_unmet`` (min_version above a listed capability's registry version, semver
    precedence), ``min_version_unused`` (min_version without capabilities). A request above
    ``kernel.definitions.registries.lease_ceiling`` is an error (``impossible_resource_amount``).

Integration Points:
    ``kernel.definitions.check.collect`` discovers the files and calls ``parse_task_files`` and
    ``parse_workstream``; ``kernel.definitions.check`` re-exports the records and ``CODES``. For
    many files the work runs in worker processes (fork, ``CHUNK_FILES`` files per task);
    this process works through chunks from the back while the workers take them from the
    front.

Dependencies:
    pydantic, yaml; ``kernel.base.documents``, ``kernel.base.formats``,
    ``kernel.definitions.commands``, ``kernel.definitions.errors``,
    ``kernel.definitions.fields``, ``kernel.definitions.models``,
    ``kernel.definitions.task_documents``, ``kernel.planning.dag``.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError

from kernel.base.documents import (
    DEFAULT_MAX_FILE_BYTES,
    DOCUMENT_CODES,
    DocumentError,
    read_file,
)
from kernel.base.formats import parse_json
from kernel.definitions.commands import substitute
from kernel.definitions.errors import DefinitionError, problems_from
from kernel.definitions.fields import TASK_SCHEMA_VERSION, major_minor, semver_key
from kernel.definitions.models import TaskDefinition, TaskDefinitionV1, WorkstreamDefinition
from kernel.definitions.task_documents import migrate_v1_to_v2
from kernel.planning.dag import gc_paused

ERROR, WARNING = "error", "warning"
CODES: dict[str, str] = {
    **dict.fromkeys(DOCUMENT_CODES, ERROR),  # the strict parse layer (kernel.base.documents)
    "json_syntax": ERROR, "file_unreadable": ERROR, "schema": ERROR,
    "unsupported_schema_version": ERROR, "status_not_pending": ERROR,
    "file_name_mismatch": ERROR, "wrong_directory": ERROR, "duplicate_task_id": ERROR,
    "unknown_dependency": ERROR, "dependency_cycle": ERROR,
    # A task no worker offering the catalog can run: loaded, but said out loud.
    "unknown_capability": WARNING, "min_version_unmet": WARNING, "min_version_unused": WARNING,
    "deprecated_capability": WARNING, "unknown_resource": ERROR,
    "impossible_resource_amount": ERROR, "resource_mode_mismatch": ERROR,
    "required_file_missing": ERROR, "path_escapes_root": ERROR, "registry_invalid": ERROR,
    "registry_default": WARNING, "workstream_file_invalid": ERROR,
    "symlink_loop": ERROR, "argument_too_long": ERROR, "config_invalid": ERROR,
    # Checks against the database (orch load, and orch validate when a database exists).
    "task_already_started": ERROR, "workstream_terminal": ERROR, "workstream_started": ERROR,
    "task_file_missing": WARNING,
}
PARALLEL_MIN_FILES = 2000  # below this, worker processes cost more than they save
CHUNK_FILES = 2000
# Linux refuses (E2BIG) to start a program with one argument longer than MAX_ARG_STRLEN
# (32 pages: 131072 bytes, the terminating NUL included), or with argv and the environment
# together over sysconf(SC_ARG_MAX).
MAX_ARG_STRLEN = 131072 if sys.platform.startswith("linux") else None
try:
    ARG_MAX = int(os.sysconf("SC_ARG_MAX"))
except (ValueError, OSError, AttributeError):  # pragma: no cover - POSIX always has it
    ARG_MAX = 262144
if ARG_MAX <= 0:  # pragma: no cover - "no limit"
    ARG_MAX = 2**31
_ARG_BOUND = min(MAX_ARG_STRLEN or ARG_MAX, ARG_MAX // 2)


@dataclass(frozen=True, slots=True)
class ValidationProblem:
    code: str
    file: str | None
    path: str
    message: str
    hint: str | None = None
    line: int | None = None
    column: int | None = None
    severity: str = ""

    def __post_init__(self) -> None:
        if not self.severity:
            object.__setattr__(self, "severity", CODES[self.code])

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "file": self.file,
                "line": self.line, "column": self.column, "path": self.path,
                "message": self.message, "hint": self.hint}


class TaskRecord(NamedTuple):
    """One valid task file, reduced to what the checks and the loader need (cheap to pickle)."""

    task_id: str
    workstream_id: str
    file: str
    migrated: bool
    dependencies: tuple[str, ...]
    blocks: tuple[str, ...]
    capabilities: tuple[tuple[str, str | None], ...]  # (capability_id, min_version)
    resources: tuple[tuple[str, str, float], ...]  # (resource_id, mode, amount)
    # name, description, type, critical, priority, max_retries, timeout_seconds,
    # retry_delay_seconds, estimated_duration_seconds, command: the task table's columns.
    columns: tuple[Any, ...]
    definition: str  # the v2 model as JSON (field order fixed by the model)
    sha256: str


@dataclass(frozen=True)
class WorkstreamRecord:
    workstream_id: str
    file: str | None  # None: no workstream.json, defaults apply
    definition: WorkstreamDefinition
    definition_json: str
    sha256: str


# --------------------------------------------------------------------------- paths, lines


def display_path(path: str, root: str) -> str:
    """``path`` relative to the project root when it is inside it, else unchanged."""
    return path[len(root) + 1:] if path.startswith(root + os.sep) else path


def inside_root(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


def node_line(text: str, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the value at ``loc`` in a JSON (or YAML) text; only called on errors.
    JSON is YAML's flow style, so PyYAML's composer gives positions without a parser of ours."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    if node is None:
        return None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
            if match is None:  # a missing field: the line of the object that lacks it
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


def _loc(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]


def field_hint(model: type[BaseModel], loc: Sequence[Any]) -> str | None:
    """The description of the field at ``loc``: what it is for, as the JSON Schema says."""
    current: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        current = next((a for a in (info.annotation, *getattr(info.annotation, "__args__", ()))
                        if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return info.description if info is not None else None


# --------------------------------------------------------------------------- one task file


@dataclass
class ParseContext:
    """What parsing a task file needs; inherited by worker processes (fork)."""

    root: str
    real_root: str
    # ref (id or name) -> (capability_id, stability, deprecated_by, version)
    capabilities: dict[str, tuple[str, str, str | None, str]] | None
    # resource_id -> (type, min_per_task, max_per_task, lease ceiling: registries.lease_ceiling)
    resources: dict[str, tuple[str, int | None, int | None, float | None]] | None
    definitions: bool = True  # compute the canonical JSON and its sha256
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # [definitions] max_task_file_bytes


_CONTEXT: ParseContext | None = None


def _set_context(context: ParseContext) -> None:
    global _CONTEXT
    _CONTEXT = context


class _TaskFile:
    """Per-file state while checking one task file (the text is kept for line numbers)."""

    __slots__ = ("path", "display", "raw", "problems", "invalid")

    def __init__(self, path: str, display: str) -> None:
        self.path, self.display = path, display
        self.raw = b""
        self.problems: list[ValidationProblem] = []
        self.invalid: list[str] = []  # paths with a schema error: no second problem there

    def add(self, code: str, path: str, message: str, hint: str | None = None) -> None:
        if any(path == bad or path.startswith((bad + ".", bad + "[")) for bad in self.invalid):
            return
        self.problems.append(ValidationProblem(
            code, self.display, path, message, hint, node_line(self.text, _loc(path))))

    @property
    def text(self) -> str:  # decoded only when a problem needs a line number
        return self.raw.decode("utf-8", errors="replace")

    def pydantic(self, exc: ValidationError, model: type[BaseModel]) -> None:
        for problem in problems_from(exc, model):
            if problem.path:
                self.invalid.append(problem.path)
            code = "status_not_pending" if problem.path == "status" else "schema"
            loc = _loc(problem.path)
            hint = ("the kernel owns task state after load: write \"pending\" or leave status "
                    "out" if code == "status_not_pending" else field_hint(model, loc))
            self.problems.append(ValidationProblem(
                code, self.display, problem.path, problem.message, hint,
                node_line(self.text, loc)))


def read_bytes(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a definition file (``kernel.base.documents.read_file``: a regular file, never
    waited on, at most ``max_bytes``); raises ``DocumentError``."""
    return read_file(path, max_bytes=max_bytes)


def _document_problem(exc: DocumentError, display: str | None) -> ValidationProblem:
    return ValidationProblem(exc.code, display, exc.path, exc.message, exc.hint, exc.line,
                             exc.column)


def parse_task(path: str, display: str, ctx: ParseContext) -> tuple[
    TaskRecord | None, list[ValidationProblem]
]:
    """Read, validate and check one task file: its record (None when it has an error that
    makes it unusable) and every problem found in it."""
    f = _TaskFile(path, display)
    try:
        f.raw = read_file(path, max_bytes=ctx.max_file_bytes, display=display)
    except DocumentError as exc:
        return None, [_document_problem(exc, display)]
    data, found = parse_json(f.raw, display)
    if found:
        return None, [_document_problem(p, display) for p in found]
    if not isinstance(data, dict):
        return None, [ValidationProblem("schema", display, "", "expected a JSON object, got "
                                        f"{type(data).__name__}", "a task file holds one object")]
    task, migrated = _validate(f, data)
    if task is None:  # still check what can be checked on the raw document
        _check_task(f, _raw_view(data), ctx)
        return None, f.problems
    execution = task.execution
    context = task.context_requirements
    _check_task(f, _View(task.task_id, task.workstream_id,
                         task.worker_requirements.capabilities, task.resource_requirements,
                         execution.working_directory,
                         context.required_files if context else [],
                         context.optional_files if context else []), ctx)
    _check_min_version(f, task, ctx)
    _check_argv(f, task, ctx)
    definition = task.model_dump_json() if ctx.definitions else ""
    record = TaskRecord(
        task.task_id, task.workstream_id, display, migrated, tuple(task.dependencies),
        tuple(task.blocks), _capabilities(task, ctx), _resources(task),
        (task.name, task.description, task.type, int(task.critical), task.priority,
         execution.max_retries, execution.timeout_seconds, execution.retry_delay_seconds,
         execution.estimated_duration_seconds, execution.command),
        definition, hashlib.sha256(definition.encode()).hexdigest() if definition else "",
    )
    return record, f.problems


def _validate(f: _TaskFile, data: dict[str, Any]) -> tuple[TaskDefinition | None, bool]:
    version = data.get("schema_version", TASK_SCHEMA_VERSION)
    line = major_minor(version)
    try:
        if line == (2, 0):
            return TaskDefinition.model_validate(data), False
        if line == (1, 0):
            try:
                TaskDefinitionV1.model_validate(data)
            except ValidationError as exc:
                f.pydantic(exc, TaskDefinitionV1)
                return None, True
            return TaskDefinition.model_validate(migrate_v1_to_v2(data, f.display)), True
    except ValidationError as exc:
        f.pydantic(exc, TaskDefinition)
        return None, False
    except DefinitionError as exc:  # cannot happen after the v1 check, kept for safety
        for p in exc.problems:
            f.add("schema", p.path, p.message)
        return None, True
    f.add("unsupported_schema_version", "schema_version",
          f"schema_version {version!r} is not supported: this orch reads 2.0.x, and 1.0.x "
          "(migrated on load)" if isinstance(version, str) else
          f"schema_version must be a semver string such as \"2.0.0\", not {version!r}",
          "use \"2.0.0\"; a newer version needs a newer orch" if line is not None else
          "write a semver string such as \"2.0.0\"")
    return None, False


class _View(NamedTuple):
    """The fields the per-file checks read, from a valid model or (best effort) a raw dict."""

    task_id: str | None
    workstream_id: str | None
    capabilities: list[str]
    resources: dict[str, Any]
    working_directory: str
    required_files: list[str]
    optional_files: list[str]


def _raw_view(task: dict[str, Any]) -> _View:
    def part(key: str, inner: str, default: Any) -> Any:
        outer = task.get(key)
        value = outer.get(inner, default) if isinstance(outer, dict) else default
        return value if isinstance(value, type(default)) else default

    def strings(values: list[Any]) -> list[str]:
        return [v if isinstance(v, str) else "" for v in values]

    resources = task.get("resource_requirements")
    return _View(
        task.get("task_id") if isinstance(task.get("task_id"), str) else None,
        task.get("workstream_id") if isinstance(task.get("workstream_id"), str) else None,
        strings(part("worker_requirements", "capabilities", [])),
        resources if isinstance(resources, dict) else {},
        part("execution", "working_directory", "."),
        strings(part("context_requirements", "required_files", [])),
        strings(part("context_requirements", "optional_files", [])))


def _check_task(f: _TaskFile, task: _View, ctx: ParseContext) -> None:
    grand, parent, name = ["", "", *f.path.rsplit(os.sep, 2)][-3:]
    if task.task_id is not None and name != f"{task.task_id}.json":
        f.add("file_name_mismatch", "task_id",
              f"task_id '{task.task_id}' differs from the file name {name}",
              f"rename the file to {task.task_id}.json, or change task_id")
    if task.workstream_id is not None and (
            parent != task.workstream_id or not grand.endswith(os.sep + "tasks")):
        f.add("wrong_directory", "workstream_id",
              f"a task of workstream '{task.workstream_id}' must be in tasks/"
              f"{task.workstream_id}/, not {display_path(os.path.dirname(f.path), ctx.root)}/",
              f"move the file to tasks/{task.workstream_id}/{name}, or change workstream_id")
    if task.working_directory != "." or task.required_files or task.optional_files:
        _check_paths(f, task, ctx)
    if ctx.capabilities is not None:
        for i, ref in enumerate(task.capabilities):
            path = f"worker_requirements.capabilities[{i}]"
            cap = ctx.capabilities.get(ref)
            if cap is None:
                f.add("unknown_capability", path, f"unknown capability '{ref}': no worker "
                      "offers it unless started with `orch worker --capability "
                      f"{ref}@VERSION`, so the task may wait forever",
                      "known: " + ", ".join(sorted({c[0] for c in ctx.capabilities.values()})))
            elif cap[1] == "deprecated":
                f.add("deprecated_capability", path, f"capability '{ref}' is deprecated",
                      f"use '{cap[2]}' instead" if cap[2] else "plan to stop using it")
    if ctx.resources is not None:
        for rid, want in task.resources.items():
            _check_resource(f, rid, want, ctx.resources)


def _check_paths(f: _TaskFile, task: _View, ctx: ParseContext) -> None:
    named: list[tuple[str, str, bool]] = []
    if task.working_directory != ".":
        named.append(("execution.working_directory", task.working_directory, False))
    named += [(f"context_requirements.required_files[{i}]", p, True)
              for i, p in enumerate(task.required_files)]
    named += [(f"context_requirements.optional_files[{i}]", p, False)
              for i, p in enumerate(task.optional_files)]
    for path, rel, required in named:
        if not rel or os.path.isabs(rel) or ".." in rel.split("/"):
            continue  # the schema reports these
        full = os.path.join(ctx.root, rel)
        if not inside_root(full, ctx.real_root):
            f.add("path_escapes_root", path,
                  f"'{rel}' resolves to {os.path.realpath(full)}, outside the project root",
                  "name files inside the project; check the symlinks on the way")
        elif required and not os.path.exists(full):
            f.add("required_file_missing", path, f"required file '{rel}' does not exist",
                  "fix the path (relative to the project root); if an earlier task creates "
                  "the file, list it in optional_files instead")


def _check_resource(f: _TaskFile, rid: str, want: Any,
                    resources: dict[str, tuple[str, int | None, int | None, float | None]]
                    ) -> None:
    path = f"resource_requirements.{rid}"
    if rid not in resources:
        f.add("unknown_resource", path, f"unknown resource '{rid}'",
              "known: " + ", ".join(sorted(resources)))
        return
    kind, low, high, ceiling = resources[rid]
    if kind in ("pooled", "rate_limited"):
        if not isinstance(want, int) or isinstance(want, bool):
            f.add("resource_mode_mismatch", path,
                  f"'{rid}' is {kind}: ask for a number of units, not {want!r}",
                  f'e.g. "{rid}": {low or 1}')
        elif ceiling is not None and want > ceiling:
            what = "capacity - reserved" if kind == "pooled" else "the bucket size"
            f.add("impossible_resource_amount", path,
                  f"asks for {want} units of '{rid}', more than it can ever lease to one task "
                  f"({ceiling:g}: {what}); a task may take {low or 1} to {high}",
                  "the task would wait forever: lower the amount, or raise capacity in "
                  "capabilities/resources.yaml")
        elif not (low or 1) <= want <= (high or want):
            f.add("impossible_resource_amount", path,
                  f"asks for {want} units of '{rid}'; a task may take {low or 1} to {high}",
                  "the pool can never grant this: lower the amount, or raise capacity / "
                  "max_per_task in capabilities/resources.yaml")
    elif want != kind:
        f.add("resource_mode_mismatch", path,
              f"'{rid}' is {kind}: request it as \"{kind}\", not {want!r}", f'"{rid}": "{kind}"')


def _check_min_version(f: _TaskFile, task: TaskDefinition, ctx: ParseContext) -> None:
    """min_version is the lowest version every listed capability must have on the worker."""
    wanted = task.worker_requirements.min_version
    if wanted is None:
        return
    path = "worker_requirements.min_version"
    if not task.worker_requirements.capabilities:
        f.add("min_version_unused", path,
              f"min_version {wanted} constrains nothing: worker_requirements.capabilities is "
              "empty", "list the capabilities it applies to, or remove min_version")
        return
    if ctx.capabilities is None:
        return
    key = semver_key(wanted)
    for ref in task.worker_requirements.capabilities:
        cap = ctx.capabilities.get(ref)
        if cap is not None and semver_key(cap[3]) < key:
            f.add("min_version_unmet", path,
                  f"min_version {wanted} is above version {cap[3]} of capability '{ref}' in "
                  "the registry: no worker offering the catalog can take this task",
                  f"lower min_version to {cap[3]}, or raise the capability's version in "
                  f"capabilities/registry.yaml (or start a worker with --capability "
                  f"{cap[0]}@{wanted})")


def _check_argv(f: _TaskFile, task: TaskDefinition, ctx: ParseContext) -> None:
    """The command must be startable: no argument over MAX_ARG_STRLEN, argv within ARG_MAX,
    with the placeholders filled in as a worker fills them (kernel.definitions.commands)."""
    execution = task.execution
    command, prompt = execution.command, execution.prompt or ""
    # Cheap bound first: a filled-in value is at most ~5x longer once shell-quoted, and a
    # character is at most 4 bytes of UTF-8. Almost every command is far below the limits.
    longest = max(len(prompt), len(ctx.real_root) + len(task.workstream_id) + 32, 128)
    bound = 20 * len(command) + command.count("{") * (20 * longest + 8) + 64
    if bound < _ARG_BOUND:
        return
    values = {"prompt": prompt, "task_id": task.task_id, "workstream_id": task.workstream_id,
              "attempt": str(execution.max_retries + 1), "root": ctx.real_root,
              "worktree": os.path.join(ctx.real_root, ".state", "worktrees",
                                       task.workstream_id)}
    values["prompt_file"] = os.path.join(ctx.real_root, ".state", "prompts",
                                         f"{task.task_id}-1.txt")
    try:
        argv, env = substitute(command, values, shell=execution.shell)
    except ValueError:  # an unclosed quote: the schema check reports it
        return
    # Values filled into a shell script travel as environment variables: the same limits.
    argv_list = ["/bin/sh", "-c", argv] if isinstance(argv, str) else argv
    env_items = [f"{k}={v}" for k, v in env.items()]
    args = argv_list + env_items
    sizes = [len(a.encode("utf-8", "surrogatepass")) + 1 for a in args]  # + the NUL
    blame = ("execution.prompt" if prompt and "{prompt}" in command
             and len(prompt) >= len(command) else "execution.command")
    filled = " once {prompt} is filled in" if blame == "execution.prompt" else ""
    hint = ("pass long text through a file the command reads (write it into the repository), "
            "or shorten it")
    for i, size in enumerate(sizes):
        if MAX_ARG_STRLEN is not None and size > MAX_ARG_STRLEN:
            if i >= len(argv_list):
                var = env_items[i - len(argv_list)].split("=", 1)[0]
                which = f"the value the shell reads from ${var}"
            else:
                which = "the shell command" if execution.shell else f"argument {i + 1}"
            f.add("argument_too_long", blame,
                  f"{which} is {size - 1} bytes{filled}; Linux refuses to start a program "
                  f"with an argument over {MAX_ARG_STRLEN - 1} bytes (MAX_ARG_STRLEN)", hint)
            return
    environment = sum(len(k) + len(v) + 2 + 8 for k, v in os.environ.items())
    total = sum(sizes) + 8 * (len(sizes) + 1)
    if total + environment > ARG_MAX:
        f.add("argument_too_long", blame,
              f"the command's {len(sizes)} arguments take {total} bytes{filled}; with this "
              f"environment ({environment} bytes) that is over the system's limit of "
              f"{ARG_MAX} bytes for arguments and environment (sysconf SC_ARG_MAX)", hint)


def _capabilities(task: TaskDefinition, ctx: ParseContext) -> tuple[tuple[str, str | None], ...]:
    refs = task.worker_requirements.capabilities
    if not refs:
        return ()
    caps = ctx.capabilities or {}
    ids = dict.fromkeys(caps[r][0] if r in caps else r for r in refs)
    return tuple((cid, task.worker_requirements.min_version) for cid in ids)


def _resources(task: TaskDefinition) -> tuple[tuple[str, str, float], ...]:
    if not task.resource_requirements:
        return ()
    return tuple((rid, want, 1.0) if isinstance(want, str) else (rid, "units", float(want))
                 for rid, want in task.resource_requirements.items())


# --------------------------------------------------------------------------- many task files


_Chunk = tuple[list[TaskRecord], list[ValidationProblem]]


def _parse_chunk(files: list[tuple[str, str]]) -> _Chunk:
    ctx = _CONTEXT
    assert ctx is not None, "_set_context first"
    records, problems = [], []
    with gc_paused():
        for path, display in files:
            record, found = parse_task(path, display, ctx)
            if record is not None:
                records.append(record)
            problems += found
    return records, problems


def parse_task_files(files: list[tuple[str, str]], ctx: ParseContext,
                     workers: int | None = None) -> _Chunk:
    """Parse ``files`` ((absolute path, display path) pairs): the valid records and every
    problem, both in the order of ``files``. ``workers``: processes (None: one per CPU when
    there are at least ``PARALLEL_MIN_FILES`` files; 1: in this process)."""
    _set_context(ctx)
    if workers is None:
        workers = (os.cpu_count() or 1) if len(files) >= PARALLEL_MIN_FILES else 1
    chunks = [files[i:i + CHUNK_FILES] for i in range(0, len(files), CHUNK_FILES)]
    if workers <= 1 or len(chunks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        results = [_parse_chunk(c) for c in chunks]
    else:
        results = _parse_parallel(chunks, ctx, workers)
    records = [r for chunk_records, _ in results for r in chunk_records]
    problems = [p for _, chunk_problems in results for p in chunk_problems]
    return records, problems


def _parse_parallel(chunks: list[list[tuple[str, str]]], ctx: ParseContext,
                    workers: int) -> list[_Chunk]:
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
    """The workstream of directory ``ws_id`` from its ``workstream.json`` (``path``), or with
    the defaults when ``path`` is None."""
    data: Any = {"workstream_id": ws_id}
    text = ""
    if path is not None:
        try:
            raw = read_file(path, max_bytes=max_bytes, display=display)
        except DocumentError as exc:
            return None, [_document_problem(exc, display)]
        data, found = parse_json(raw, display)
        if found:
            return None, [_document_problem(p, display) for p in found]
        text = raw.decode("utf-8")
    try:
        model = WorkstreamDefinition.model_validate(data)
    except ValidationError as exc:
        return None, [
            ValidationProblem("workstream_file_invalid", display, p.path, p.message,
                              field_hint(WorkstreamDefinition, _loc(p.path)),
                              node_line(text, _loc(p.path)))
            for p in problems_from(exc, WorkstreamDefinition)]
    if model.workstream_id != ws_id:
        return None, [ValidationProblem(
            "workstream_file_invalid", display, "workstream_id",
            f"workstream_id '{model.workstream_id}' differs from its directory {ws_id}/",
            "a workstream.json describes the directory it is in",
            node_line(text, ["workstream_id"]))]
    body = model.model_dump_json()
    return WorkstreamRecord(ws_id, display, model, body,
                            hashlib.sha256(body.encode()).hexdigest()), []
