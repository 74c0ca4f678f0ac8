"""Definition models: task files, workstream files, attempt outputs (the registries live in
kernel.definitions.registries).

Public API:
    Versions: TASK_SCHEMA_VERSION ("2.0.0"), TASK_V1_SCHEMA_VERSION, WORKSTREAM_SCHEMA_VERSION,
    REGISTRY_SCHEMA_VERSION, ATTEMPT_OUTPUT_SCHEMA_VERSION, SUPPORTED_TASK_SCHEMA_VERSIONS,
    SCHEMA_URL_BASE, schema_url(name, version) -> str.
    Models (pydantic v2, frozen, strict, unknown fields rejected): TaskDefinition (v2.0.0),
    TaskDefinitionV1, ExecutionSpec, WorkerRequirements, ContextRequirements, ValidationRules,
    TaskStateSnapshot, WorkstreamDefinition, AttemptOutput.
    Errors: DefinitionError(OrchError, ValueError) with ``.source``, ``.problems`` (Problem:
    path, message, line); problems_from(validation_error, model, line_of=None).
    Tasks: parse_task(data, source=None) -> (TaskDefinition, migrated);
    load_task_file(path) -> (TaskDefinition, migrated); migrate_v1_to_v2(data, source=None)
    -> dict; default_context_requirements(type) -> dict | None; default_validation_rules(type).
    Shared field types and base models (Id, IdList, SemVer, Timestamp, _Model, _Document) that
    kernel.definitions.registries builds on; SEMVER_PATTERN, semver_key(version) (semver
    precedence, for
    comparing versions: parsed, never compared as strings).

Stability Guarantees:
    Field names, defaults and the JSON Schemas generated from these models (schemas/*.json)
    follow SCHEMA-VER-001: patch = compatible, minor = new optional fields, major = breaking
    (see docs/schema_migrations/VERSIONING.md). A task file without ``schema_version`` is read
    as the current version (2.0.0). Omitted ``context_requirements`` / ``validation_rules`` get
    the same type defaults that the v1 -> v2 migration writes, so both routes agree. Types are
    strict: a value of the wrong JSON type is an error, never converted ("60" for a number,
    true for a count, "yes" for a boolean, 1 for a string); an integer is accepted where a
    float is expected; NaN and infinity are refused; durations stop at MAX_SECONDS.

Integration Points:
    The task-file loader calls load_task_file/parse_task and turns models into rows and into
    kernel.planning.dag.PlanTask; kernel.definitions.registries builds the registry models on the
    shared types
    here; kernel.observe.schemas renders the JSON Schemas;
    kernel.definitions.migrate_tasks rewrites task files on disk with migrate_v1_to_v2.

Dependencies:
    pydantic; ``kernel.base.data``, ``kernel.base.documents``, ``kernel.base.errors``.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    model_validator,
)

from kernel.base.data import SCHEMA_URL_BASE, schema_url
from kernel.base.documents import (
    DEFAULT_MAX_FILE_BYTES,
    MAX_SECONDS,
    DocumentError,
    parse_json,
    read_file,
)
from kernel.base.errors import OrchError

TASK_SCHEMA_VERSION = "2.0.0"
TASK_V1_SCHEMA_VERSION = "1.0.0"
SUPPORTED_TASK_SCHEMA_VERSIONS = (TASK_V1_SCHEMA_VERSION, TASK_SCHEMA_VERSION)
WORKSTREAM_SCHEMA_VERSION = "1.0.0"
REGISTRY_SCHEMA_VERSION = "1.0.0"
ATTEMPT_OUTPUT_SCHEMA_VERSION = "1.0.0"


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# Semantic Versioning 2.0.0 (semver.org): groups 1-3 are major, minor, patch; group 4 the
# pre-release identifiers, group 5 the build metadata (ignored in comparisons).
_SEMVER_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    rf"(?:-({_SEMVER_IDENT}(?:\.{_SEMVER_IDENT})*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_SEMVER = re.compile(SEMVER_PATTERN)

SHLEX_SPECIAL = frozenset("'\"\\")
TaskType = Literal["aider", "pytest", "lint", "custom"]
RuleName = Literal[
    "git_clean", "tests_passing", "no_lint_errors", "tests_still_passing", "no_security_issues"
]
# Migration defaults (SCHEMA-VER-002). Only agent tasks have a context to budget.
_CONTEXT_DEFAULTS: dict[str, Any] = {
    "max_context_tokens": 8000,
    "required_files": [],
    "optional_files": [],
    "exclude_patterns": ["**/__pycache__/**", "**/*.pyc", "**/node_modules/**"],
}
_RULE_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "aider": (["git_clean"], ["no_lint_errors"]),
    "pytest": ([], ["tests_passing"]),
    "lint": ([], []),
    "custom": ([], []),
}


def semver_key(version: str) -> tuple[Any, ...]:
    """A sort key for a semver string, with semver's precedence: numeric parts as numbers
    (1.10.0 > 1.9.2), a pre-release below its release (1.0.0-rc.1 < 1.0.0), pre-release
    identifiers compared one by one (numeric < alphanumeric), build metadata ignored.
    Raises ValueError for anything that is not semver."""
    match = _SEMVER.match(version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version such as 1.2.0")
    core = (int(match[1]), int(match[2]), int(match[3]))
    if match[4] is None:
        return (*core, 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in match[4].split("."))
    return (*core, 0, parts)


def default_context_requirements(task_type: str) -> dict[str, Any] | None:
    """The context_requirements a task of this type gets when it gives none (None: no budget)."""
    return json.loads(json.dumps(_CONTEXT_DEFAULTS)) if task_type == "aider" else None


def default_validation_rules(task_type: str) -> dict[str, list[str]]:
    pre, post = _RULE_DEFAULTS.get(task_type, ([], []))
    return {"pre_execution": list(pre), "post_execution": list(post)}


# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str  # "execution.timeout_seconds", "capabilities[2].version", "" for the document
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = ", ".join(p for p in (f"line {self.line}" if self.line else "", self.path) if p)
        return f"{where}: {self.message}" if where else self.message


class DefinitionError(OrchError, ValueError):
    """A definition file or document is invalid; lists every problem found, not just the first."""

    def __init__(self, source: str | None, what: str, problems: list[Problem]) -> None:
        self.source, self.what, self.problems = source, what, problems
        lines = [p.line for p in problems if p.line]
        super().__init__(
            "invalid_definition",
            f"invalid {what}" + "".join(f"\n  - {p}" for p in problems),
            file=source,
            line=lines[0] if len(lines) == 1 else None,
        )


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        current = _model_in(fields[part].annotation) if part in fields else None
    return [] if current is None else [f.alias or n for n, f in current.model_fields.items()]


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _pattern_message(value: Any, pattern: str | None, default: str) -> str:
    if pattern == SEMVER_PATTERN:
        return (f"{value!r} is not a semantic version: write MAJOR.MINOR.PATCH such as "
                "\"1.2.0\" (semver.org)")
    if pattern == ID_PATTERN:
        return (f"{value!r} is not a valid id: 1-128 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit")
    return f"{value!r} does not have the required form ({default.lower()})"


_FIELD_PREFIX = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])*(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])*)*): "
    r"(.+)$", re.S)


def problems_from(
    exc: ValidationError, model: type[BaseModel], line_of: Any = None
) -> list[Problem]:
    """Readable problems from a pydantic error; unknown fields get a did-you-mean hint."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        # A model-level check names the field it is about as "field.path: message".
        at = _FIELD_PREFIX.match(message) if err["type"] == "value_error" else None
        if at:
            loc += tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", at[1]))
            message = at[2]
        if err["type"] == "string_pattern_mismatch":
            message = _pattern_message(err["input"], err.get("ctx", {}).get("pattern"), message)
        if err["type"] == "extra_forbidden":
            known = _known_fields(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(known)
            message = f"unknown field '{loc[-1]}' ({hint})"
        problems.append(Problem(_loc_text(loc), message, line_of(loc) if line_of else None))
    return problems


# --- shared field types ---------------------------------------------------------------------


def _unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ValueError(f"'{item}' is listed twice")
        seen.add(item)
    return items


def _not_a_number(value: Any) -> Any:
    # YAML reads 1.0 as a float and 3.10 as 3.1: refuse rather than guess what was meant.
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ValueError(f'write the version as a quoted string, e.g. "{value}"')
    return value


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"'{value}' must be a relative path inside the worktree (no '..')")
    return value


Id = Annotated[str, Field(pattern=ID_PATTERN)]
IdList = Annotated[
    list[Id], AfterValidator(_unique), Field(json_schema_extra={"uniqueItems": True})
]
SemVer = Annotated[str, BeforeValidator(_not_a_number), Field(pattern=SEMVER_PATTERN)]
RelPath = Annotated[str, AfterValidator(_relative_path)]
RuleList = Annotated[
    list[RuleName], AfterValidator(_unique), Field(json_schema_extra={"uniqueItems": True})
]


def _amount(value: Any, handler: Any) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            f'{value!r} is not a resource request: use "exclusive", "shared" or a whole number of '
            "units > 0"
        ) from None


ResourceRequest = Annotated[
    Literal["exclusive", "shared"] | Annotated[int, Field(gt=0, strict=True)],
    WrapValidator(_amount),
]


class _Model(BaseModel):
    # Strict: a value of the wrong JSON type is an error, never converted ("60" is not a
    # number, true is not a count, "yes" is not a boolean, 1 is not a string). As in JSON
    # mode, an integer is accepted where a float is expected. NaN and infinity are refused.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class _Document(_Model):
    """Top-level document: carries schema_version/schema_url and may carry $schema/$comment."""

    _schema_name: ClassVar[str]
    _default_version: ClassVar[str]

    schema_version: str
    # Filled from schema_version when absent (see _fill_schema_url), so never empty after load.
    schema_url: str = Field(default_factory=str, description="URL of this file's JSON Schema.")
    dollar_schema: str | None = Field(
        default=None, alias="$schema", exclude=True, description="Editor hint; ignored by orch."
    )
    dollar_comment: str | None = Field(
        default=None, alias="$comment", exclude=True, description="Free text; ignored by orch."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_schema_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_url") is None:
            version = data.get("schema_version", cls._default_version)
            data = {**data, "schema_url": schema_url(cls._schema_name, str(version))}
        return data

    @model_validator(mode="after")
    def _check_schema_url(self) -> _Document:
        expected = schema_url(self._schema_name, self.schema_version)
        if self.schema_url.startswith(SCHEMA_URL_BASE) and self.schema_url != expected:
            raise ValueError(
                f"schema_url is {self.schema_url} but schema_version implies {expected}"
            )
        return self


# --- task definitions -----------------------------------------------------------------------


class WorkerRequirements(_Model):
    """What a worker must offer to be given this task."""

    capabilities: IdList = Field(
        default_factory=list,
        description="Capability ids (or names) from capabilities/registry.yaml, all required.",
    )
    min_version: SemVer | None = Field(
        default=None,
        description="The lowest version (semver) that every capability listed in capabilities "
        "must have on the worker. Capability versions come from capabilities/registry.yaml "
        "(1.0.0 by default). Without capabilities it constrains nothing (a warning); above a "
        "listed capability's registry version, no worker offering the catalog can take the "
        "task (a warning).",
    )


class ExecutionSpec(_Model):
    """How the task is run."""

    command: str = Field(
        description="Command line. Placeholders such as {prompt} are substituted before the run. "
        "Split like a POSIX shell would (shlex) and run without a shell unless shell is true."
    )
    working_directory: RelPath = Field(
        default=".",
        description="Directory relative to the workstream's worktree. Default: its root.",
    )
    timeout_seconds: int = Field(
        default=3600,
        gt=0,
        le=MAX_SECONDS,
        description="Wall-clock limit per attempt; the process group is then killed "
        "(Task-Timeout). Alias: max_runtime_seconds. Default 3600 (one hour).",
    )
    max_runtime_seconds: int | None = Field(
        default=None, gt=0, le=MAX_SECONDS, exclude=True, description="Alias of timeout_seconds."
    )
    max_retries: int = Field(
        default=0,
        ge=0,
        description="Extra attempts after a failure or timeout. Default 0: fail at once.",
    )
    retry_delay_seconds: float = Field(
        default=30, ge=0, le=MAX_SECONDS, description="Seconds to wait before retrying. Default 30."
    )
    estimated_duration_seconds: float = Field(
        default=60,
        ge=0,
        le=MAX_SECONDS,
        description="Expected run time, used only for execution plans and the "
        "critical path. Default 60.",
    )
    executor: Literal["subprocess", "noop", "pytest", "ruff", "aider"] | None = Field(
        default=None,
        description="How the task runs. Default by type: pytest -> pytest, lint -> ruff, "
        "otherwise subprocess. noop does nothing and succeeds (for tests and benchmarks). "
        "aider runs the Aider CLI on the task's files with execution.prompt ([agents.aider] "
        "in orch.toml; the command is not run).",
    )
    shell: bool = Field(
        default=False,
        description="Run command through /bin/sh (pipes, globs, &&). Default false: "
        "only tasks that opt in get a shell.",
    )
    prompt: str | None = Field(
        default=None,
        description="Agent prompt, substituted for {prompt} in command (shell-quoted).",
    )

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_runtime_seconds") is not None:
            data = _merge_timeout(data, data["max_runtime_seconds"], "max_runtime_seconds")
        return data

    @model_validator(mode="after")
    def _check_command(self) -> ExecutionSpec:
        if not self.command.strip():
            raise ValueError("command: command is empty")
        # shlex fails only on an unclosed quote or a trailing backslash: a command without
        # quotes and backslashes cannot fail (tests/test_models.py), and skipping the split
        # saves about a sixth of parsing a task file.
        if not self.shell and not SHLEX_SPECIAL.isdisjoint(self.command):
            try:
                shlex.split(self.command)
            except ValueError as exc:
                raise ValueError(f"command: cannot be split into arguments: {exc}") from None
        if "{prompt}" in self.command and self.prompt is None:
            raise ValueError("prompt: the command uses {prompt} but the task has no prompt")
        return self


def _merge_timeout(execution: dict[str, Any], value: Any, label: str) -> dict[str, Any]:
    # Both spellings name one setting; two different values is a mistake to report, not pick.
    current = execution.get("timeout_seconds")
    if current is not None and current != value:
        raise ValueError(
            f"{label} ({value}) and execution.timeout_seconds ({current}) disagree; "
            "they are one setting, give one of them"
        )
    return {**execution, "timeout_seconds": value}


class ContextRequirements(_Model):
    """What goes into an agent's context (AIDER-INT-002)."""

    max_context_tokens: int = Field(
        default=8000, gt=0, description="Token budget; above it the task fails as Context-Overflow."
    )
    required_files: list[RelPath] = Field(
        default_factory=list, description="Always in context, editable by the agent."
    )
    optional_files: list[RelPath] = Field(
        default_factory=list, description="Added read-only while the budget allows."
    )
    exclude_patterns: list[str] = Field(
        default_factory=lambda: list(_CONTEXT_DEFAULTS["exclude_patterns"]),
        description="Glob patterns never included. Default: __pycache__, *.pyc, node_modules.",
    )

    @model_validator(mode="after")
    def _no_overlap(self) -> ContextRequirements:
        both = sorted(set(self.required_files) & set(self.optional_files))
        if both:
            raise ValueError(f"files both required and optional: {', '.join(both)}")
        return self


class ValidationRules(_Model):
    """Named checks around a run; what each rule executes is configured per project."""

    pre_execution: RuleList = Field(default_factory=list, description="Must pass before start.")
    post_execution: RuleList = Field(
        default_factory=list, description="Must pass before the task counts as completed."
    )


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("write the time as an ISO-8601 string, e.g. \"2026-01-31T12:00:00Z\"")
    return value


# JSON has no date type: a timestamp is an ISO-8601 string with a time zone (parsed, so not
# strict), and nothing else (a number is not read as seconds since 1970).
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text), Field(strict=False)]


class TaskStateSnapshot(_Model):
    """Input-only snapshot from another tool; validated, then ignored (the kernel owns state)."""

    created_at: Timestamp | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    assigned_worker: str | None = None
    retry_count: int = Field(default=0, ge=0)
    last_error: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> TaskStateSnapshot:
        times = [t for t in (self.created_at, self.started_at, self.completed_at) if t]
        if times != sorted(times):
            raise ValueError("need created_at <= started_at <= completed_at")
        return self


class _TaskBase(_Document):
    _schema_name: ClassVar[str] = "task"

    task_id: Id = Field(description="Unique id; the file is tasks/{workstream_id}/{task_id}.json.")
    workstream_id: Id = Field(description="The workstream (directory) this task belongs to.")
    name: str = Field(min_length=1, description="Short human-readable title.")
    description: str = Field(default="", description="What the task should achieve.")
    type: TaskType = Field(description="aider (agent edit), pytest, lint or custom.")
    status: Literal["pending"] | None = Field(
        default=None,
        description="Only 'pending' (or absent): after load the kernel owns the state.",
    )
    critical: bool = Field(default=False, description="If it fails, its workstream fails at once.")
    priority: int = Field(default=0, description="Higher runs first among ready tasks. Default 0.")
    dependencies: IdList = Field(
        default_factory=list, description="Tasks that must complete before this one starts."
    )
    blocks: IdList = Field(
        default_factory=list, description="Tasks that wait for this one (inverse of dependencies)."
    )
    worker_requirements: WorkerRequirements = Field(default_factory=WorkerRequirements)
    execution: ExecutionSpec
    resource_requirements: dict[Id, ResourceRequest] = Field(
        default_factory=dict,
        description='Resource id -> "exclusive", "shared" or a number of units, leased '
        "all-or-nothing before the run (see capabilities/resources.yaml).",
    )
    state: TaskStateSnapshot | None = Field(
        default=None, description="Accepted for import; ignored."
    )
    max_runtime_seconds: int | None = Field(
        default=None, gt=0, le=MAX_SECONDS, exclude=True,
        description="Alias of execution.timeout_seconds.",
    )

    @model_validator(mode="before")
    @classmethod
    def _top_level_alias(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("max_runtime_seconds") is None:
            return data
        execution = data.get("execution")
        if not isinstance(execution, dict):
            return data
        if execution.get("max_runtime_seconds") is not None:
            execution = _merge_timeout(
                execution, execution["max_runtime_seconds"], "execution.max_runtime_seconds"
            )
        return {
            **data,
            "execution": _merge_timeout(
                execution, data["max_runtime_seconds"], "max_runtime_seconds"
            ),
        }

    @model_validator(mode="after")
    def _check_edges(self) -> _TaskBase:
        if self.task_id in self.dependencies or self.task_id in self.blocks:
            field = "dependencies" if self.task_id in self.dependencies else "blocks"
            raise ValueError(f"{field}: task '{self.task_id}' depends on itself")
        both = sorted(set(self.dependencies) & set(self.blocks))
        if both:
            raise ValueError(f"blocks: both depends on and blocks {', '.join(both)} (a cycle)")
        return self


class TaskDefinitionV1(_TaskBase):
    """A task definition, schema 1.0.0 (read and migrated to 2.0.0 on load)."""

    _default_version: ClassVar[str] = TASK_V1_SCHEMA_VERSION
    schema_version: str = Field(
        default=TASK_V1_SCHEMA_VERSION, pattern=r"^1\.0\.(0|[1-9][0-9]*)$", description="1.0.x."
    )


class TaskDefinition(_TaskBase):
    """A task definition, schema 2.0.0: tasks/{workstream_id}/{task_id}.json (TASK-DEF-002)."""

    _default_version: ClassVar[str] = TASK_SCHEMA_VERSION
    schema_version: str = Field(
        default=TASK_SCHEMA_VERSION,
        pattern=r"^2\.0\.(0|[1-9][0-9]*)$",
        description="2.0.x. A file without it is read as 2.0.0.",
    )
    context_requirements: ContextRequirements | None = Field(
        default=None,
        description="Agent context budget. Omitted: aider tasks get 8000 tokens and the "
        "default exclude patterns; other types have none.",
    )
    validation_rules: ValidationRules = Field(
        default_factory=ValidationRules,
        description="Omitted: aider {pre: [git_clean], post: [no_lint_errors]}, pytest "
        "{pre: [], post: [tests_passing]}, lint and custom none.",
    )

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("type"), str):
            data = dict(data)
            if "context_requirements" not in data:
                data["context_requirements"] = default_context_requirements(data["type"])
            if "validation_rules" not in data:
                data["validation_rules"] = default_validation_rules(data["type"])
        return data


def _version_tuple(version: Any, source: str | None) -> tuple[int, int]:
    match = re.match(SEMVER_PATTERN, version) if isinstance(version, str) else None
    if match is None:
        problem = Problem("schema_version", f"{version!r} is not a semver string like '2.0.0'")
        raise DefinitionError(source, "task definition", [problem])
    return int(match[1]), int(match[2])


def _validate_task(model: type[_TaskBase], data: Any, source: str | None) -> Any:
    if not isinstance(data, dict):
        problem = Problem("", f"expected a JSON object, got {type(data).__name__}")
        raise DefinitionError(source, "task definition", [problem])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError(source, "task definition", problems_from(exc, model)) from None


def migrate_v1_to_v2(data: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Return a v2.0.0 copy of a v1.0.0 task dict; keeps key order; raises if v1 is invalid."""
    _validate_task(TaskDefinitionV1, data, source)
    out: dict[str, Any] = {}
    for key, value in data.items():
        out[key] = value
        if key == "schema_version":
            out[key] = TASK_SCHEMA_VERSION
            out["schema_url"] = schema_url("task", TASK_SCHEMA_VERSION)
        elif key == "schema_url":
            out[key] = schema_url("task", TASK_SCHEMA_VERSION)
        elif key == "execution":
            context = default_context_requirements(data["type"])
            if context is not None:
                out["context_requirements"] = context
            out["validation_rules"] = default_validation_rules(data["type"])
    return out


def parse_task(data: Any, source: str | None = None) -> tuple[TaskDefinition, bool]:
    """Validate a task document of any supported version; returns (v2 model, was_migrated)."""
    version = data.get("schema_version", TASK_SCHEMA_VERSION) if isinstance(data, dict) else None
    major_minor = _version_tuple(version, source) if isinstance(data, dict) else (2, 0)
    if major_minor == (1, 0):
        return _validate_task(TaskDefinition, migrate_v1_to_v2(data, source), source), True
    if major_minor == (2, 0):
        return _validate_task(TaskDefinition, data, source), False
    problem = Problem(
        "schema_version",
        f"unsupported version {version!r}; this orch reads 1.0.x (migrated on load) and 2.0.x",
    )
    raise DefinitionError(source, "task definition", [problem])


def load_task_file(path: Path) -> tuple[TaskDefinition, bool]:
    """Read tasks/{ws}/{task}.json; also checks the file and directory names (TASK-DEF-001)."""
    try:
        raw = read_file(str(path), max_bytes=DEFAULT_MAX_FILE_BYTES)
    except DocumentError as exc:
        raise DefinitionError(str(path), "task file", [Problem("", exc.message)]) from None
    data, flaws = parse_json(raw)
    if flaws:
        raise DefinitionError(str(path), "JSON", [Problem(p.path, p.message, p.line)
                                                  for p in flaws])
    task, migrated = parse_task(data, str(path))
    problems = []
    if path.stem != task.task_id:
        problems.append(Problem("task_id", f"'{task.task_id}' differs from file name {path.name}"))
    if path.parent.name != task.workstream_id:
        problems.append(
            Problem(
                "workstream_id",
                f"'{task.workstream_id}' differs from directory {path.parent.name}/",
            )
        )
    if problems:
        raise DefinitionError(str(path), "task definition", problems)
    return task, migrated


class WorkstreamDefinition(_Document):
    """Optional tasks/{workstream_id}/workstream.json: settings for the whole workstream."""

    _schema_name: ClassVar[str] = "workstream"
    _default_version: ClassVar[str] = WORKSTREAM_SCHEMA_VERSION
    schema_version: str = Field(
        default=WORKSTREAM_SCHEMA_VERSION, pattern=r"^1\.0\.(0|[1-9][0-9]*)$"
    )
    workstream_id: Id = Field(description="Must equal the directory name.")
    name: str = Field(default="", description="Display name. Default: the workstream_id.")
    description: str = ""
    base_branch: str | None = Field(
        default=None,
        description="Branch the worktree starts from and merges into. Default: the "
        "repository's current branch.",
    )
    max_duration_seconds: int | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        description="Workstream-Timeout after this long executing. Default: none.",
    )
    max_parallelism: int | None = Field(
        default=None,
        ge=1,
        description="Most tasks of this workstream running at once. Default: no cap.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if (isinstance(data, dict) and not data.get("name")
                and isinstance(data.get("workstream_id"), str)):
            data = {**data, "name": data["workstream_id"]}
        return data


# --- attempt output (AIDER-INT-003) ---------------------------------------------------------


class AttemptMetadata(BaseModel):
    """Measurements of one attempt; workers may add further keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    tokens_used: int | None = Field(default=None, ge=0)
    duration_seconds: float = Field(default=0, ge=0)


class AttemptOutput(_Model):
    """What a worker reports for one attempt of a task (stored per attempt)."""

    status: Literal["success", "failure"]
    files_modified: list[str] = Field(default_factory=list)
    diff_summary: str = ""
    validation_status: Literal["pending", "passed", "failed"] = "pending"
    commit_message: str | None = None
    error: str | None = None
    error_type: str | None = Field(
        default=None, description="Machine-readable failure kind, e.g. insufficient_context."
    )
    metadata: AttemptMetadata = Field(default_factory=AttemptMetadata)

    @model_validator(mode="after")
    def _consistent(self) -> AttemptOutput:
        if self.status == "failure" and not self.error:
            raise ValueError("a failed attempt needs error")
        if self.status == "success" and (self.error or self.error_type):
            raise ValueError("a successful attempt has no error")
        if self.validation_status == "passed" and self.status != "success":
            raise ValueError("validation cannot pass for a failed attempt")
        return self
