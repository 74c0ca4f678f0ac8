"""What a task file must satisfy beyond its schema: its place (file and directory names), the
paths it names, the registries (capabilities, resources) and the argument limits of the system;
and the warnings for a task that no worker offering the catalog can ever run.

Public API:
    ``TaskFileProblems(path, display)`` (the problems of one file while it is checked:
    ``add(code, path, message, hint)``, ``pydantic(validation_error, model)``; a path with a
    schema error gets no second problem); ``check_document(problems, data, ctx)`` (what can be
    checked on a document that failed its schema), ``check_model(problems, task, ctx)`` (every
    check on a valid task); the argument limits ``MAX_ARG_STRLEN`` (Linux; None elsewhere)
    and ``ARG_MAX``.

Stability Guarantees:
    Problems come in a fixed order: file name, directory, paths, capabilities, resources,
    ``min_version``, the argument limits. ``line`` is the line of the field's value in the
    file (or of the object that lacks it). Errors: ``file_name_mismatch``,
    ``wrong_directory``, ``path_escapes_root``, ``required_file_missing`` (an agent task's
    missing required file is the warning ``required_file_new``: the agent may create it),
    ``unknown_resource``, ``resource_mode_mismatch``, ``impossible_resource_amount`` (a request
    above ``kernel.definitions.registries.lease_ceiling``), ``argument_too_long`` (with its
    placeholders filled as a worker fills them, no argument over ``MAX_ARG_STRLEN`` and argv
    plus this environment within ``ARG_MAX``). Warnings for a task no worker offering the
    catalog can run: ``unknown_capability``, ``min_version_unmet`` (min_version above a listed
    capability's registry version, semver precedence), ``min_version_unused`` (min_version
    without capabilities); ``deprecated_capability``; ``agent_unconfigured`` (an agent task
    naming no ``[agents.NAME]`` of orch.toml).

Integration Points:
    ``kernel.definitions.taskfiles.parse_task`` runs these on every task file (``orch
    validate``, ``orch load``); placeholders are filled by ``kernel.definitions.commands``, the
    one definition a worker uses too.

Dependencies:
    pydantic; ``kernel.base.documents``, ``kernel.base.formats``,
    ``kernel.definitions.commands``, ``kernel.definitions.defaults``,
    ``kernel.definitions.errors``, ``kernel.definitions.fields``, ``kernel.definitions.models``,
    ``kernel.definitions.records``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from kernel.base.documents import path_loc
from kernel.base.formats import json_line
from kernel.definitions.commands import substitute
from kernel.definitions.defaults import task_place
from kernel.definitions.errors import field_hint, problems_from
from kernel.definitions.fields import semver_key
from kernel.definitions.models import AGENT_EXECUTORS, TaskDefinition, effective_executor
from kernel.definitions.records import ParseContext, ValidationProblem, display_path, inside_root

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


class TaskFileProblems:
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
            code, self.display, path, message, hint, json_line(self.text, path_loc(path))))

    @property
    def text(self) -> str:  # decoded only when a problem needs a line number
        return self.raw.decode("utf-8", errors="replace")

    def pydantic(self, exc: ValidationError, model: type[BaseModel]) -> None:
        for problem in problems_from(exc, model):
            if problem.path:
                self.invalid.append(problem.path)
            code = "status_not_pending" if problem.path == "status" else "schema"
            loc = path_loc(problem.path)
            hint = ("the kernel owns task state after load: write \"pending\" or leave status "
                    "out" if code == "status_not_pending" else field_hint(model, loc))
            self.problems.append(ValidationProblem(
                code, self.display, problem.path, problem.message, hint,
                json_line(self.text, loc)))


class _View(NamedTuple):
    """The fields the per-file checks read, from a valid model or (best effort) a raw dict."""

    task_id: str | None
    workstream_id: str | None
    capabilities: list[str]
    resources: dict[str, Any]
    working_directory: str
    required_files: list[str]
    optional_files: list[str]
    agent: bool = False             # run by an agent executor (aider, agent)


def check_document(f: TaskFileProblems, data: dict[str, Any], ctx: ParseContext) -> None:
    """What can still be checked on a task document that failed its schema (best effort)."""
    _check_task(f, _raw_view(data), ctx)


def check_model(f: TaskFileProblems, task: TaskDefinition, ctx: ParseContext) -> None:
    """Every check beyond the schema on a valid task."""
    execution = task.execution
    context = task.context_requirements
    _check_task(f, _View(task.task_id, task.workstream_id,
                         task.worker_requirements.capabilities, task.resource_requirements,
                         execution.working_directory,
                         context.required_files if context else [],
                         context.optional_files if context else [],
                         effective_executor(execution.executor, task.type) in AGENT_EXECUTORS),
                ctx)
    _check_min_version(f, task, ctx)
    _check_argv(f, task, ctx)
    agent = execution.agent
    if agent and ctx.agents is not None and agent not in ctx.agents:
        f.add("agent_unconfigured", "execution.agent",
              f"no [agents.{agent}] section in orch.toml: the task would fail at once",
              f"add [agents.{agent}] with its command to orch.toml (recipes: "
              "docs/agents/README.md)" + (f"; configured: {', '.join(sorted(ctx.agents))}"
                                          if ctx.agents else ""))


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
        strings(part("context_requirements", "optional_files", [])),
        effective_executor(part("execution", "executor", ""), task.get("type"))
        in AGENT_EXECUTORS)


def _check_task(f: TaskFileProblems, task: _View, ctx: ParseContext) -> None:
    _check_place(f, task, ctx)
    if task.working_directory != "." or task.required_files or task.optional_files:
        _check_paths(f, task, ctx)
    if ctx.capabilities is not None:
        _check_capabilities(f, task, ctx.capabilities)
    if ctx.resources is not None:
        for rid, want in task.resources.items():
            _check_resource(f, rid, want, ctx.resources)


def _check_place(f: TaskFileProblems, task: _View, ctx: ParseContext) -> None:
    """tasks/{workstream_id}/{task_id}.json (TASK-DEF-001; or .yaml, .yml)."""
    grand, parent, name = ["", "", *f.path.rsplit(os.sep, 2)][-3:]
    stem = task_place(f.path)[1]
    if task.task_id is not None and stem != task.task_id:
        suffix = name[len(stem):]
        f.add("file_name_mismatch", "task_id",
              f"task_id '{task.task_id}' differs from the file name {name}",
              f"rename the file to {task.task_id}{suffix}, or change task_id (or leave it "
              "out: it defaults to the file name)")
    if task.workstream_id is not None and (
            parent != task.workstream_id or not grand.endswith(os.sep + "tasks")):
        f.add("wrong_directory", "workstream_id",
              f"a task of workstream '{task.workstream_id}' must be in tasks/"
              f"{task.workstream_id}/, not {display_path(os.path.dirname(f.path), ctx.root)}/",
              f"move the file to tasks/{task.workstream_id}/{name}, or change workstream_id "
              "(or leave it out: it defaults to the directory)")


def _check_capabilities(f: TaskFileProblems, task: _View,
                        capabilities: dict[str, tuple[str, str, str | None, str]]) -> None:
    for i, ref in enumerate(task.capabilities):
        path = f"worker_requirements.capabilities[{i}]"
        cap = capabilities.get(ref)
        if cap is None:
            f.add("unknown_capability", path, f"unknown capability '{ref}': no worker "
                  "offers it unless started with `orch worker --capability "
                  f"{ref}@VERSION`, so the task may wait forever",
                  "known: " + ", ".join(sorted({c[0] for c in capabilities.values()})))
        elif cap[1] == "deprecated":
            f.add("deprecated_capability", path, f"capability '{ref}' is deprecated",
                  f"use '{cap[2]}' instead" if cap[2] else "plan to stop using it")


def _check_paths(f: TaskFileProblems, task: _View, ctx: ParseContext) -> None:
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
        elif required and not os.path.exists(full) and task.agent:
            f.add("required_file_new", path, f"required file '{rel}' does not exist yet: the "
                  "agent may create it",
                  "nothing to do if the agent is to create it; else fix the path (relative to "
                  "the project root)")
        elif required and not os.path.exists(full):
            f.add("required_file_missing", path, f"required file '{rel}' does not exist",
                  "fix the path (relative to the project root); if an earlier task creates "
                  "the file, list it in optional_files instead")


def _check_resource(f: TaskFileProblems, rid: str, want: Any,
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


def _check_min_version(f: TaskFileProblems, task: TaskDefinition, ctx: ParseContext) -> None:
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


def far_below_arg_limits(command: str, longest: int) -> bool:
    """Whether ``command``, each placeholder filled with a value of at most ``longest``
    characters, is certainly within the argument limits whatever the environment: then the
    argument-length check finds nothing and does not depend on this process's environment."""
    longest = max(longest, 128)
    return 20 * len(command) + command.count("{") * (20 * longest + 8) + 64 < _ARG_BOUND


def _check_argv(f: TaskFileProblems, task: TaskDefinition, ctx: ParseContext) -> None:
    """The command must be startable: no argument over MAX_ARG_STRLEN, argv within ARG_MAX,
    with the placeholders filled in as a worker fills them (kernel.definitions.commands)."""
    execution = task.execution
    command, prompt = execution.command, execution.prompt or ""
    # Cheap bound first: a filled-in value is at most ~5x longer once shell-quoted, and a
    # character is at most 4 bytes of UTF-8. Almost every command is far below the limits.
    if far_below_arg_limits(command, max(len(prompt), len(ctx.real_root)
                                         + len(task.workstream_id) + 32)):
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
