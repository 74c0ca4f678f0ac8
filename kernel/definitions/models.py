"""Definition models: task files, workstream files, attempt outputs (the shared field types
live in kernel.definitions.fields, the registries in kernel.definitions.registries, reading a
task document of any version in kernel.definitions.task_documents).

Public API:
    Models (pydantic v2, frozen, strict, unknown fields rejected): TaskDefinition (v2.0.0),
    TaskDefinitionV1, ExecutionSpec, WorkerRequirements, ContextRequirements, ValidationRules,
    TaskStateSnapshot, WorkstreamDefinition, AttemptOutput, AttemptMetadata, TokenCounts.
    Type defaults: default_context_requirements(type) -> dict | None;
    default_validation_rules(type). Re-exports effective_executor and AGENT_EXECUTORS
    (``kernel.definitions.executors``). SHLEX_SPECIAL (the characters that can make shlex
    fail).
    Re-exported for the callers that import them from here: the versions, ID_PATTERN,
    SEMVER_PATTERN, semver_key, SCHEMA_URL_BASE, schema_url (kernel.definitions.fields,
    kernel.base.data) and Problem, DefinitionError, problems_from (kernel.definitions.errors).

Stability Guarantees:
    Field names, defaults and the JSON Schemas generated from these models (schemas/*.json)
    follow SCHEMA-VER-001: patch = compatible, minor = new optional fields, major = breaking
    (see docs/schema_migrations/VERSIONING.md). A task file without ``schema_version`` is read
    as the current version (2.0.0). Omitted ``context_requirements`` / ``validation_rules`` get
    the same type defaults that the v1 -> v2 migration writes, so both routes agree. Types are
    strict (kernel.definitions.fields); durations stop at MAX_SECONDS.

Integration Points:
    kernel.definitions.taskfiles validates task and workstream files with these models and
    turns them into rows; kernel.definitions.task_documents reads one task document into them;
    kernel.observe.schemas renders the JSON Schemas.

Dependencies:
    pydantic; ``kernel.base.data``, ``kernel.base.documents``, ``kernel.definitions.errors``,
    ``kernel.definitions.executors``, ``kernel.definitions.fields``.
"""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    create_model,
    model_validator,
)

from kernel.base.data import SCHEMA_URL_BASE, schema_url
from kernel.base.documents import MAX_SECONDS
from kernel.definitions.errors import DefinitionError, Problem, problems_from
from kernel.definitions.executors import AGENT_EXECUTORS, effective_executor
from kernel.definitions.fields import (
    ATTEMPT_OUTPUT_SCHEMA_VERSION,
    ID_PATTERN,
    REGISTRY_SCHEMA_VERSION,
    SEMVER_PATTERN,
    SUPPORTED_TASK_SCHEMA_VERSIONS,
    TASK_SCHEMA_VERSION,
    TASK_V1_SCHEMA_VERSION,
    WORKSTREAM_SCHEMA_VERSION,
    Id,
    IdList,
    RelPath,
    SemVer,
    StrictDocument,
    StrictModel,
    Timestamp,
    any_patch_of,
    semver_key,
    unique,
)

__all__ = [
    "AGENT_EXECUTORS", "ATTEMPT_OUTPUT_SCHEMA_VERSION", "ID_PATTERN", "REGISTRY_SCHEMA_VERSION",
    "SCHEMA_URL_BASE",
    "SEMVER_PATTERN", "SHLEX_SPECIAL", "SUPPORTED_TASK_SCHEMA_VERSIONS", "TASK_SCHEMA_VERSION",
    "TASK_V1_SCHEMA_VERSION", "WORKSTREAM_SCHEMA_VERSION", "AttemptMetadata", "AttemptOutput",
    "CONTEXT_DEFAULT_FIELDS", "EXECUTION_DEFAULT_FIELDS", "ContextDefaults",
    "ContextRequirements", "DefinitionError", "ExecutionDefaults", "ExecutionSpec", "Problem",
    "TaskDefinition",
    "TaskDefaults", "TaskDefinitionV1", "TaskStateSnapshot", "TokenCounts", "ValidationRules",
    "WorkerRequirements",
    "WorkstreamDefinition", "default_context_requirements", "default_validation_rules",
    "effective_executor", "problems_from", "schema_url", "semver_key",
]


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


def default_context_requirements(task_type: str) -> dict[str, Any] | None:
    """The context_requirements a task of this type gets when it gives none (None: no budget)."""
    return json.loads(json.dumps(_CONTEXT_DEFAULTS)) if task_type == "aider" else None


def default_validation_rules(task_type: str) -> dict[str, list[str]]:
    pre, post = _RULE_DEFAULTS.get(task_type, ([], []))
    return {"pre_execution": list(pre), "post_execution": list(post)}


def _no_default(schema: dict[str, Any]) -> None:
    """A field whose default is computed (from the file's path, or another field): the JSON
    Schema shows it optional, without the placeholder default."""
    schema.pop("default", None)


RuleList = Annotated[
    list[RuleName], AfterValidator(unique), Field(json_schema_extra={"uniqueItems": True})
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


# --- task definitions -----------------------------------------------------------------------


class WorkerRequirements(StrictModel):
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


class ExecutionSpec(StrictModel):
    """How the task is run."""

    command: str = Field(
        default="",
        description="Command line. Placeholders such as {prompt} are substituted before the run. "
        "Split like a POSIX shell would (shlex) and run without a shell unless shell is true. "
        "Required, except for the agent executors (aider, agent), which build their own.",
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
    executor: Literal["subprocess", "noop", "pytest", "ruff", "aider", "agent"] | None = Field(
        default=None,
        description="How the task runs. Default by type: aider -> aider, pytest -> pytest, "
        "lint -> ruff, otherwise subprocess. noop does nothing and succeeds (for tests and "
        "benchmarks). aider runs the Aider CLI on the task's files with execution.prompt "
        "([agents.aider] in orch.toml); agent runs the agent CLI named by execution.agent "
        "([agents.NAME] in orch.toml). Neither runs execution.command.",
    )
    agent: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_-]{0,63}$",
        description="With executor agent: the [agents.NAME] section of orch.toml to run.",
    )
    allow_no_change: bool = Field(
        default=False,
        description="Agent executors: an attempt that changes no file succeeds (default false: "
        "an agent that changed nothing failed, whatever its exit code).",
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
        if self.executor == "agent" and not self.agent:
            raise ValueError("agent: the agent executor needs execution.agent, the name of an "
                             "[agents.NAME] section of orch.toml")
        if self.agent and self.executor != "agent":
            raise ValueError("agent: execution.agent is read only with \"executor\": \"agent\"")
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


class ContextRequirements(StrictModel):
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


class ValidationRules(StrictModel):
    """Named checks around a run; what each rule executes is configured per project."""

    pre_execution: RuleList = Field(default_factory=list, description="Must pass before start.")
    post_execution: RuleList = Field(
        default_factory=list, description="Must pass before the task counts as completed."
    )



class TaskStateSnapshot(StrictModel):
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


class _TaskBase(StrictDocument):
    _schema_name: ClassVar[str] = "task"

    task_id: Id = Field(
        default="", json_schema_extra=_no_default,
        description="Unique id across all workstreams. Default: the file name without its "
        "extension (tasks/{workstream_id}/{task_id}.json, .yaml or .yml); a different value "
        "is an error.")
    workstream_id: Id = Field(
        default="", json_schema_extra=_no_default,
        description="The workstream this task belongs to. Default: the name of the directory "
        "the file is in; a different value is an error.")
    name: str = Field(default="", min_length=1, json_schema_extra=_no_default,
                      description="Short human-readable title. Default: the task_id.")
    description: str = Field(default="", description="What the task should achieve.")
    type: TaskType = Field(default="custom",
                           description="aider (agent edit), pytest, lint or custom. Default: "
                           "custom.")
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
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("task_id"), str):
            data = {**data, "name": data["task_id"]}
        return data

    @model_validator(mode="after")
    def _check_ids_given(self) -> _TaskBase:
        for field in ("task_id", "workstream_id"):
            if not getattr(self, field):
                raise ValueError(f"{field}: missing; it defaults from the path only for a file "
                                 "tasks/{workstream}/{task}.json (or .yaml/.yml)")
        return self

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
    def _check_command_given(self) -> _TaskBase:
        if not self.execution.command.strip() and \
                effective_executor(self.execution.executor, self.type) not in AGENT_EXECUTORS:
            raise ValueError("execution.command: the task has no command; give one, or run an "
                             "agent (\"executor\": \"aider\" or \"agent\")")
        return self

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
        default=TASK_V1_SCHEMA_VERSION, pattern=any_patch_of(TASK_V1_SCHEMA_VERSION),
        description="1.0.x."
    )


class TaskDefinition(_TaskBase):
    """A task definition, schema 2.0.0: tasks/{workstream_id}/{task_id}.json (TASK-DEF-002)."""

    _default_version: ClassVar[str] = TASK_SCHEMA_VERSION
    schema_version: str = Field(
        default=TASK_SCHEMA_VERSION,
        pattern=any_patch_of(TASK_SCHEMA_VERSION),
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
        if isinstance(data, dict) and isinstance(data.get("type", "custom"), str):
            data = dict(data)
            task_type = data.get("type", "custom")
            if "context_requirements" not in data:
                data["context_requirements"] = default_context_requirements(task_type)
            if "validation_rules" not in data:
                data["validation_rules"] = default_validation_rules(task_type)
        return data


# --- workstream defaults for its tasks --------------------------------------------------------

# The task fields a workstream file may set for its tasks (kernel.definitions.defaults merges
# them). Each defaults model reuses the task model's own fields (types, limits, descriptions):
# the rules have one home, and what a workstream gave is what ``model_fields_set`` holds.
EXECUTION_DEFAULT_FIELDS = ("timeout_seconds", "max_retries", "retry_delay_seconds",
                            "estimated_duration_seconds", "executor", "agent", "allow_no_change")
CONTEXT_DEFAULT_FIELDS = ("max_context_tokens", "exclude_patterns")


def _defaults_model(model: type[BaseModel], names: tuple[str, ...], doc: str) -> Any:
    fields: dict[str, Any] = {n: (model.model_fields[n].annotation, model.model_fields[n])
                              for n in names}
    return create_model(f"{model.__name__}Defaults", __base__=StrictModel, __doc__=doc,
                        **fields)


ExecutionDefaults = _defaults_model(
    ExecutionSpec, EXECUTION_DEFAULT_FIELDS,
    "Defaults for the execution section of the workstream's tasks (the task's own value wins).")
ContextDefaults = _defaults_model(
    ContextRequirements, CONTEXT_DEFAULT_FIELDS,
    "Defaults for the context_requirements of the workstream's agent tasks.")


class TaskDefaults(StrictModel):
    """Defaults for every task of the workstream: a field the task gives itself wins; lists and
    the resource map are replaced whole, never concatenated (docs/writing-tasks.md)."""

    execution: ExecutionDefaults | None = Field(  # type: ignore[valid-type]
        default=None, description="timeout_seconds, max_retries, retry_delay_seconds, "
        "estimated_duration_seconds, executor, agent, allow_no_change.")
    validation_rules: ValidationRules | None = Field(
        default=None, description="pre_execution and/or post_execution, each a whole list.")
    worker_requirements: WorkerRequirements | None = Field(
        default=None, description="capabilities (a whole list) and/or min_version.")
    context_requirements: ContextDefaults | None = Field(  # type: ignore[valid-type]
        default=None, description="Agent tasks only: max_context_tokens, exclude_patterns.")
    resource_requirements: dict[Id, ResourceRequest] | None = Field(
        default=None, description="The whole map, used when the task gives none.")

    def given(self) -> dict[str, Any]:
        """What the workstream file gave, as task-file JSON (unset fields left out)."""
        return self.model_dump(mode="json", exclude_unset=True, exclude_none=True)


class WorkstreamDefinition(StrictDocument):
    """Optional tasks/{workstream_id}/workstream.json: settings for the whole workstream."""

    _schema_name: ClassVar[str] = "workstream"
    _default_version: ClassVar[str] = WORKSTREAM_SCHEMA_VERSION
    schema_version: str = Field(
        default=WORKSTREAM_SCHEMA_VERSION, pattern=any_patch_of(WORKSTREAM_SCHEMA_VERSION)
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

    task_defaults: TaskDefaults | None = Field(
        default=None,
        description="Defaults for the tasks of this workstream: execution settings, "
        "validation_rules, worker_requirements, context_requirements (agent tasks), "
        "resource_requirements. A task's own value wins, field by field.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if (isinstance(data, dict) and not data.get("name")
                and isinstance(data.get("workstream_id"), str)):
            data = {**data, "name": data["workstream_id"]}
        return data


# --- attempt output (AIDER-INT-003) ---------------------------------------------------------


class TokenCounts(StrictModel):
    """Tokens an agent sent to its model and received from it (as the agent reported them)."""

    sent: int = Field(ge=0)
    received: int = Field(ge=0)


class AttemptMetadata(BaseModel):
    """Measurements of one attempt; workers may add further keys. ``None``: not reported (an
    attempt without usage data is unknown, never zero)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    tokens_used: int | None = Field(default=None, ge=0)
    duration_seconds: float = Field(default=0, ge=0)
    tokens: TokenCounts | None = Field(
        default=None, description="Since 1.1.0: tokens sent and received, when reported.")
    cost: float | None = Field(
        default=None, ge=0, description="Since 1.1.0: cost in US dollars, as the agent "
        "reported it (Aider knows the prices of the models it knows).")
    model: str | None = Field(default=None, description="Since 1.1.0: the model used.")
    agent: str | None = Field(default=None, description="Since 1.1.0: the agent, e.g. aider.")
    commit: str | None = Field(
        default=None, description="Since 1.1.0: the commit that recorded the change.")


class AttemptOutput(StrictModel):
    """What a worker reports for one attempt of a task (stored per attempt, AIDER-INT-003)."""

    schema_version: str | None = Field(
        default=None, pattern=r"^1\.[01]\.(0|[1-9][0-9]*)$",
        description="1.1.x (written since 1.1.0); a document without it is 1.0.0.")
    status: Literal["success", "failure"]
    files_modified: list[str] = Field(
        default_factory=list, description="Paths relative to the worktree, sorted, unique.")
    diff_summary: str = ""
    validation_status: Literal["pending", "passed", "failed"] = "pending"
    commit_message: str | None = None
    error: str | None = None
    error_type: str | None = Field(
        default=None, description="Machine-readable failure kind, e.g. insufficient_context."
    )
    metadata: AttemptMetadata = Field(default_factory=AttemptMetadata)
    details: dict[str, Any] | None = Field(
        default=None, description="Since 1.1.0 (written before without a schema): the "
        "executor's report as it came, contract keys included; read the fields above.")

    @model_validator(mode="after")
    def _consistent(self) -> AttemptOutput:
        if self.status == "failure" and not self.error:
            raise ValueError("a failed attempt needs error")
        if self.status == "success" and (self.error or self.error_type):
            raise ValueError("a successful attempt has no error")
        if self.validation_status == "passed" and self.status != "success":
            raise ValueError("validation cannot pass for a failed attempt")
        return self
