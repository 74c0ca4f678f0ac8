"""Definition models: task v1/v2, migration on load, workstreams, registries, attempt output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kernel.base.formats import parse_json
from kernel.definitions.fields import any_patch_of, major_minor
from kernel.definitions.models import (
    AttemptOutput,
    DefinitionError,
    TaskDefinition,
    TaskDefinitionV1,
    WorkstreamDefinition,
    schema_url,
)
from kernel.definitions.registries import (
    DEFAULT_CAPABILITY_REGISTRY,
    DEFAULT_RESOURCE_REGISTRY,
    CapabilityRegistry,
    Resource,
    ResourceRegistry,
    load_capability_registry,
    load_default_registries,
    load_resource_registry,
    load_yaml_registry,
)
from kernel.definitions.task_documents import load_task_file, migrate_v1_to_v2, parse_task

CONTEXT_DEFAULTS = {
    "max_context_tokens": 8000,
    "required_files": [],
    "optional_files": [],
    "exclude_patterns": ["**/__pycache__/**", "**/*.pyc", "**/node_modules/**"],
}
RULE_DEFAULTS = {
    "aider": {"pre_execution": ["git_clean"], "post_execution": ["no_lint_errors"]},
    "pytest": {"pre_execution": [], "post_execution": ["tests_passing"]},
    "lint": {"pre_execution": [], "post_execution": []},
    "custom": {"pre_execution": [], "post_execution": []},
}


def task_doc(version: str | None = "2.0.0", **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {} if version is None else {"schema_version": version}
    doc |= {
        "task_id": "t1",
        "workstream_id": "ws",
        "name": "Do a thing",
        "type": "custom",
        "execution": {"command": "make thing"},
    }
    return doc | fields


def problems(exc: pytest.ExceptionInfo[DefinitionError]) -> str:
    return "\n".join(str(p) for p in exc.value.problems)


# --- task definition v2 ---------------------------------------------------------------------


def test_minimal_task_gets_documented_defaults() -> None:
    task, migrated = parse_task(task_doc())
    assert not migrated
    assert task.schema_url == schema_url("task", "2.0.0")
    assert task.schema_url == "https://orch.dev/schemas/task/v2.0.0.json"
    assert (task.description, task.status, task.critical, task.priority) == ("", None, False, 0)
    assert task.dependencies == task.blocks == []
    assert task.worker_requirements.capabilities == []
    assert task.worker_requirements.min_version is None
    ex = task.execution
    assert (ex.working_directory, ex.timeout_seconds, ex.max_retries) == (".", 3600, 0)
    assert (ex.retry_delay_seconds, ex.estimated_duration_seconds) == (30, 60)
    assert (ex.shell, ex.prompt) == (False, None)
    assert task.resource_requirements == {}
    assert task.state is None
    assert task.context_requirements is None  # custom tasks have no context budget
    assert task.validation_rules.model_dump() == RULE_DEFAULTS["custom"]


def test_every_field_is_accepted_and_kept() -> None:
    doc = task_doc(
        **{
            "$schema": "../../schemas/task.schema.json",
            "$comment": "hand written",
            "schema_url": schema_url("task", "2.0.0"),
            "description": "long text",
            "type": "aider",
            "status": "pending",
            "critical": True,
            "priority": 5,
            "dependencies": ["t0"],
            "blocks": ["t2", "t3"],
            "worker_requirements": {"capabilities": ["cap-aider-001"], "min_version": "1.2.3"},
            "execution": {
                "command": "aider --yes --message {prompt}",
                "working_directory": "src/pkg",
                "timeout_seconds": 600,
                "max_retries": 2,
                "retry_delay_seconds": 5,
                "estimated_duration_seconds": 120,
                "shell": False,
                "prompt": "Add a docstring",
            },
            "context_requirements": {
                "max_context_tokens": 4000,
                "required_files": ["src/pkg/a.py"],
                "optional_files": ["README.md"],
                "exclude_patterns": ["*.lock"],
            },
            "validation_rules": {
                "pre_execution": ["git_clean"],
                "post_execution": ["tests_still_passing", "no_security_issues"],
            },
            "resource_requirements": {"git_repo_write": "exclusive", "cpu_cores": 2},
            "state": {
                "created_at": "2026-01-01T10:00:00Z",
                "started_at": "2026-01-01T10:01:00+00:00",
                "completed_at": None,
                "assigned_worker": "w1",
                "retry_count": 1,
                "last_error": "boom",
            },
        }
    )
    task, _ = parse_task(doc)
    assert task.dollar_schema == "../../schemas/task.schema.json"
    assert (task.critical, task.priority, task.blocks) == (True, 5, ["t2", "t3"])
    assert task.worker_requirements.min_version == "1.2.3"
    assert task.execution.prompt == "Add a docstring"
    assert task.execution.estimated_duration_seconds == 120
    assert task.context_requirements is not None
    assert task.context_requirements.required_files == ["src/pkg/a.py"]
    assert task.validation_rules.post_execution == ["tests_still_passing", "no_security_issues"]
    assert task.resource_requirements == {"git_repo_write": "exclusive", "cpu_cores": 2}
    assert task.state is not None and task.state.retry_count == 1
    dumped = task.model_dump(mode="json", by_alias=True)
    assert "$schema" not in dumped and "max_runtime_seconds" not in dumped


def test_models_are_frozen() -> None:
    task, _ = parse_task(task_doc())
    with pytest.raises(ValidationError):
        task.priority = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "where",
    [
        {"max_runtime_seconds": 90},
        {"execution": {"command": "x", "max_runtime_seconds": 90}},
        {"max_runtime_seconds": 90, "execution": {"command": "x", "timeout_seconds": 90}},
        {"max_runtime_seconds": 90, "execution": {"command": "x", "max_runtime_seconds": 90}},
    ],
)
def test_max_runtime_seconds_is_an_alias_of_timeout(where: dict[str, Any]) -> None:
    task, _ = parse_task(task_doc(**where))
    assert task.execution.timeout_seconds == 90


@pytest.mark.parametrize(
    "where",
    [
        {"max_runtime_seconds": 90, "execution": {"command": "x", "timeout_seconds": 60}},
        {"execution": {"command": "x", "timeout_seconds": 60, "max_runtime_seconds": 90}},
        {"max_runtime_seconds": 90, "execution": {"command": "x", "max_runtime_seconds": 60}},
    ],
)
def test_alias_and_timeout_that_disagree_are_an_error(where: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError) as exc:
        parse_task(task_doc(**where))
    assert "disagree" in problems(exc) and "timeout_seconds" in problems(exc)


@pytest.mark.parametrize(
    ("fields", "path", "hint"),
    [
        ({"dependecies": ["t0"]}, "dependecies", "did you mean 'dependencies'?"),
        ({"execution": {"command": "x", "timeout": 5}}, "execution.timeout", "timeout_seconds"),
        ({"state": {"retries": 1}}, "state.retries", "known:"),
        ({"validation_rules": {"pre": []}}, "validation_rules.pre", "pre_execution"),
    ],
)
def test_unknown_fields_are_rejected_naming_the_field(
    fields: dict[str, Any], path: str, hint: str
) -> None:
    with pytest.raises(DefinitionError) as exc:
        parse_task(task_doc(**fields), "tasks/ws/t1.json")
    text = str(exc.value)
    assert text.startswith("tasks/ws/t1.json: invalid task definition")
    assert f"{path}: unknown field" in text and hint in text


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(DefinitionError) as exc:
        parse_task(task_doc(type="shell", priority="high", extra=1))
    paths = {p.path for p in exc.value.problems}
    assert {"type", "priority", "extra"} <= paths


@pytest.mark.parametrize("good", ["a", "T-1", "ws_2.b-c", "9", "x" * 128])
def test_valid_ids(good: str) -> None:
    task, _ = parse_task(task_doc(task_id=good, workstream_id=good, dependencies=["other"]))
    assert task.task_id == good


@pytest.mark.parametrize("bad", ["", "-a", ".a", "_a", "a/b", "a b", "x" * 129, "ä", "../x"])
def test_invalid_ids(bad: str) -> None:
    for field in ("task_id", "workstream_id"):
        with pytest.raises(DefinitionError, match=field):
            parse_task(task_doc(**{field: bad}))
    with pytest.raises(DefinitionError, match=r"dependencies\[0\]"):
        parse_task(task_doc(dependencies=[bad]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dependencies": ["t1"]}, "depends on itself"),
        ({"blocks": ["t1"]}, "depends on itself"),
        ({"dependencies": ["t2"], "blocks": ["t2"]}, "both depends on and blocks t2"),
        ({"dependencies": ["t2", "t2"]}, "'t2' is listed twice"),
    ],
)
def test_impossible_edges_are_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_task(task_doc(**fields))


@pytest.mark.parametrize("status", ["queued", "running", "completed", "Pending", ""])
def test_status_other_than_pending_is_rejected(status: str) -> None:
    with pytest.raises(DefinitionError, match="status"):
        parse_task(task_doc(status=status))


@pytest.mark.parametrize("task_type", ["aider", "pytest", "lint", "custom"])
def test_task_types(task_type: str) -> None:
    assert parse_task(task_doc(type=task_type))[0].type == task_type


def test_unknown_task_type_is_rejected() -> None:
    with pytest.raises(DefinitionError, match="type"):
        parse_task(task_doc(type="shell"))


def test_resource_requirement_shapes() -> None:
    reqs = {"git_repo_write": "exclusive", "filesystem_read": "shared", "api_quota_openai": 10}
    task, _ = parse_task(task_doc(resource_requirements=reqs))
    assert task.resource_requirements == reqs


@pytest.mark.parametrize("bad", [True, 0, -1, "2", "lots", 1.5, None, ["shared"]])
def test_bad_resource_requirements(bad: Any) -> None:
    with pytest.raises(DefinitionError) as exc:
        parse_task(task_doc(resource_requirements={"cpu_cores": bad}))
    assert "resource_requirements.cpu_cores" in problems(exc)
    assert "not a resource request" in problems(exc)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            {"pre_execution": ["git_dirty"]},
            r"validation_rules\.pre_execution\[0\]: Input should be",
        ),
        ({"post_execution": ["tests_passing", "tests_passing"]}, "listed twice"),
    ],
)
def test_bad_validation_rules(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_task(task_doc(validation_rules=rules))


@pytest.mark.parametrize(
    ("execution", "message"),
    [
        ({"command": "aider --message {prompt}"}, "no prompt"),
        ({"command": "echo 'unbalanced"}, "cannot be split"),
        ({"command": "   "}, "execution.command: the task has no command"),
        ({}, "execution.command: the task has no command"),
        ({"executor": "agent"}, "needs execution.agent"),
        ({"command": "x", "agent": "claude"}, "read only with"),
        ({"executor": "agent", "agent": "Claude Code"}, "execution.agent"),
        ({"command": "x", "working_directory": "/etc"}, "relative path"),
        ({"command": "x", "working_directory": "../other"}, "relative path"),
        ({"command": "x", "timeout_seconds": 0}, "greater than 0"),
        ({"command": "x", "max_retries": -1}, "greater than or equal to 0"),
    ],
)
def test_bad_execution(execution: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_task(task_doc(execution=execution))


def test_agent_tasks_need_no_command() -> None:
    # The agent executors build their own command line; "type": "aider" runs Aider.
    for doc in (task_doc(execution={"executor": "aider", "prompt": "p"}),
                task_doc(type="aider", execution={"prompt": "p"}),
                task_doc(execution={"executor": "agent", "agent": "claude"})):
        assert parse_task(doc)[0].execution.command == ""


def test_shell_commands_need_not_split() -> None:
    task, _ = parse_task(task_doc(execution={"command": "echo 'a | b", "shell": True}))
    assert task.execution.shell


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"required_files": ["../secret"]}, "relative path"),
        ({"required_files": ["a.py"], "optional_files": ["a.py"]}, "both required and optional"),
        ({"max_context_tokens": 0}, "greater than 0"),
    ],
)
def test_bad_context_requirements(context: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_task(task_doc(type="aider", context_requirements=context))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"created_at": "2026-01-01T10:00:00"}, "timezone"),
        ({"created_at": "2026-01-02T00:00:00Z", "started_at": "2026-01-01T00:00:00Z"}, "<="),
        ({"retry_count": -1}, "retry_count"),
    ],
)
def test_bad_state_snapshot(state: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_task(task_doc(state=state))


def test_schema_url_must_match_the_version() -> None:
    with pytest.raises(DefinitionError, match="schema_version implies"):
        parse_task(task_doc(schema_url=schema_url("task", "1.0.0")))
    # A URL outside orch's own schemas is the user's business.
    assert parse_task(task_doc(schema_url="https://example.com/t.json"))[0]


# --- versions and migration on load ---------------------------------------------------------


@pytest.mark.parametrize("task_type", ["aider", "pytest", "lint", "custom"])
def test_v1_without_context_or_rules_gets_type_defaults(task_type: str) -> None:
    v1 = task_doc("1.0.0", type=task_type)
    v2 = migrate_v1_to_v2(v1)
    assert v2["schema_version"] == "2.0.0"
    assert v2["schema_url"] == schema_url("task", "2.0.0")
    if task_type == "aider":
        assert v2["context_requirements"] == CONTEXT_DEFAULTS
    else:
        assert "context_requirements" not in v2
    assert v2["validation_rules"] == RULE_DEFAULTS[task_type]
    task, migrated = parse_task(v1)
    assert migrated and task.validation_rules.model_dump() == RULE_DEFAULTS[task_type]


@pytest.mark.parametrize("task_type", ["aider", "pytest", "lint", "custom"])
def test_omitting_v2_fields_equals_migrating_v1(task_type: str) -> None:
    migrated, _ = parse_task(task_doc("1.0.0", type=task_type))
    direct, _ = parse_task(task_doc("2.0.0", type=task_type))
    assert migrated == direct


def test_migration_keeps_key_order_and_does_not_mutate() -> None:
    v1 = task_doc("1.0.0", type="aider", resource_requirements={}, priority=1)
    before = json.dumps(v1)
    v2 = migrate_v1_to_v2(v1)
    assert json.dumps(v1) == before
    assert list(v2) == [
        "schema_version", "schema_url", "task_id", "workstream_id", "name", "type", "execution",
        "context_requirements", "validation_rules", "resource_requirements", "priority",
    ]  # fmt: skip


def test_already_v2_is_unchanged() -> None:
    doc = task_doc(type="aider", validation_rules={"pre_execution": [], "post_execution": []})
    task, migrated = parse_task(doc)
    assert not migrated
    assert task.validation_rules.pre_execution == []  # explicit choice kept, no defaults added


def test_missing_schema_version_means_current_version() -> None:
    task, migrated = parse_task(task_doc(version=None, type="pytest"))
    assert (task.schema_version, migrated) == ("2.0.0", False)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"name": ""}, "name"),
        ({"context_requirements": {}}, "context_requirements"),  # a v2 field in a v1 file
        ({"validation_rules": {}}, "validation_rules"),
        ({"execution": {"timeout_seconds": 5}}, "execution.command"),
    ],
)
def test_invalid_v1_is_an_error_not_fixed(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as exc:
        migrate_v1_to_v2(task_doc("1.0.0", **fields), "tasks/ws/t1.json")
    assert exc.value.source == "tasks/ws/t1.json"
    assert path in {p.path for p in exc.value.problems}
    with pytest.raises(DefinitionError):
        parse_task(task_doc("1.0.0", **fields))


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            "3.0.0",
            "unsupported version '3.0.0'; this orch reads 1.0.x (migrated on load) and 2.0.x",
        ),
        ("1.1.0", "unsupported version '1.1.0'"),
        ("2", "not a semver string"),
        (2, "not a semver string"),
    ],
)
def test_unknown_versions_name_the_supported_ones(version: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_task(task_doc(version=version))


def test_patch_versions_are_compatible() -> None:
    assert parse_task(task_doc("2.0.7", schema_url=None))[0].schema_version == "2.0.7"
    assert parse_task(task_doc("1.0.3"))[1]


def test_v1_model_has_no_v2_fields() -> None:
    assert "context_requirements" not in TaskDefinitionV1.model_fields
    assert "validation_rules" not in TaskDefinitionV1.model_fields
    assert set(TaskDefinitionV1.model_fields) < set(TaskDefinition.model_fields)


@given(
    task_type=st.sampled_from(["aider", "pytest", "lint", "custom"]),
    priority=st.integers(-100, 100),
    deps=st.lists(st.from_regex(r"\Ad[0-9]{1,3}\Z"), unique=True, max_size=4),
    critical=st.booleans(),
)
def test_any_valid_v1_migrates_to_a_valid_v2(
    task_type: str, priority: int, deps: list[str], critical: bool
) -> None:
    v1 = task_doc("1.0.0", type=task_type, priority=priority, dependencies=deps, critical=critical)
    task = TaskDefinition.model_validate(migrate_v1_to_v2(v1))
    assert (task.priority, task.dependencies, task.critical) == (priority, deps, critical)


def test_load_task_file_checks_names(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    good = tmp_path / "ws" / "t1.json"
    good.write_text(json.dumps(task_doc()))
    assert load_task_file(good)[0].task_id == "t1"
    wrong = tmp_path / "ws" / "other.json"
    wrong.write_text(json.dumps(task_doc()))
    with pytest.raises(DefinitionError, match="differs from file name other.json"):
        load_task_file(wrong)


def test_load_task_file_reports_json_line(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    path = tmp_path / "ws" / "t1.json"
    path.write_text('{\n  "task_id": "t1",\n  "name": oops\n}\n')
    with pytest.raises(DefinitionError) as exc:
        load_task_file(path)
    assert exc.value.file == str(path) and exc.value.line == 3


# --- workstream -----------------------------------------------------------------------------


def test_workstream_definition_defaults() -> None:
    ws = WorkstreamDefinition.model_validate({"workstream_id": "ws-1"})
    assert ws.name == "ws-1"
    assert (ws.base_branch, ws.max_duration_seconds, ws.max_parallelism) == (None, None, None)
    assert ws.schema_url == schema_url("workstream", "1.0.0")


@pytest.mark.parametrize("bad", [{"max_parallelism": 0}, {"max_duration_seconds": 0}, {"x": 1}])
def test_workstream_definition_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WorkstreamDefinition.model_validate({"workstream_id": "ws-1", **bad})


# --- capability registry --------------------------------------------------------------------


def cap(cid: str = "cap-x-001", **fields: Any) -> dict[str, Any]:
    return {
        "capability_id": cid,
        "name": cid.upper(),
        "version": "1.0.0",
        "deprecated_by": None,
        "stability": "stable",
        "since_version": "0.1.0",
    } | fields


def test_default_capabilities() -> None:
    caps, _ = load_default_registries()
    by_id = {c.capability_id: c for c in caps.capabilities}
    assert {cid: c.name for cid, c in by_id.items()} == {
        "cap-orchestration-001": "WorkstreamOrchestration",
        "cap-aider-001": "AiderCodeEditing",
        "cap-pytest-001": "PytestExecution",
        "cap-ruff-001": "RuffLinting",
        "cap-git-001": "GitOperations",
        "cap-dag-001": "DAGScheduling",
        "cap-validation-001": "ValidationRules",
    }
    assert {c.version for c in caps.capabilities} == {"1.0.0"}
    assert by_id["cap-validation-001"].stability == "experimental"
    aider = by_id["cap-aider-001"].requirements
    assert {"aider-chat", "git"} <= set(aider.dependencies) and aider.network_required
    git_ops = [op.name for op in by_id["cap-git-001"].operations]
    assert git_ops == ["worktree_create", "worktree_delete", "merge"]
    assert [op.name for op in by_id["cap-dag-001"].operations] == [
        "build_dag", "plan", "critical_path"
    ]  # fmt: skip
    assert caps.get("AiderCodeEditing") is by_id["cap-aider-001"]


def test_duplicate_capability_ids_are_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate capability_id: 'cap-x-001'"):
        CapabilityRegistry.model_validate({"capabilities": [cap(), cap(name="other")]})


def test_unknown_deprecated_by_is_rejected() -> None:
    bad = cap(deprecated_by="cap-gone-001", stability="deprecated")
    with pytest.raises(ValidationError, match="unknown capability 'cap-gone-001'"):
        CapabilityRegistry.model_validate({"capabilities": [bad]})


def test_deprecation_must_be_consistent_and_warns() -> None:
    with pytest.raises(ValidationError, match="stability must be 'deprecated'"):
        CapabilityRegistry.model_validate({"capabilities": [cap("a"), cap("b", deprecated_by="a")]})
    registry = CapabilityRegistry.model_validate(
        {"capabilities": [cap("a"), cap("b", deprecated_by="a", stability="deprecated")]}
    )
    assert registry.check_capabilities(["a", "b", "zz"]) == (
        ["unknown capability 'zz'"],
        ["capability 'b' is deprecated; use 'a'"],
    )


@pytest.mark.parametrize("field", ["version", "deprecated_by", "stability", "since_version"])
def test_mandatory_capability_fields(field: str) -> None:
    doc = cap()
    del doc[field]
    with pytest.raises(ValidationError, match=f"capabilities.0.{field}"):
        CapabilityRegistry.model_validate({"capabilities": [doc]})


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0.0"])
def test_capability_version_must_be_semver(version: str) -> None:
    with pytest.raises(ValidationError):
        CapabilityRegistry.model_validate({"capabilities": [cap(version=version)]})


def test_yaml_errors_name_file_line_and_field(tmp_path: Path) -> None:
    text = DEFAULT_CAPABILITY_REGISTRY.read_text()
    text = text.replace("stability: experimental", "stabilty: experimental")
    text = text.replace(
        "  - capability_id: cap-ruff-001\n    name: RuffLinting\n    version: 1.0.0",
        "  - capability_id: cap-ruff-001\n    name: RuffLinting\n    version: 1.0",
    )
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    with pytest.raises(DefinitionError) as exc:
        load_capability_registry(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: invalid capability registry")
    line = text.splitlines().index("    stabilty: experimental") + 1
    assert f"line {line}, capabilities[6].stabilty: unknown field" in message
    assert "did you mean 'stability'?" in message
    assert 'capabilities[3].version: write the version as a quoted string, e.g. "1.0"' in message


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    path = tmp_path / "resources.yaml"
    path.write_text("resources:\n  - resource_id: a\n    type: [shared\n")
    with pytest.raises(DefinitionError) as exc:
        load_resource_registry(path)
    assert exc.value.file == str(path) and exc.value.line == 4
    assert "invalid YAML" in str(exc.value)


def test_load_yaml_registry_picks_the_model(tmp_path: Path) -> None:
    assert isinstance(load_yaml_registry(DEFAULT_CAPABILITY_REGISTRY), CapabilityRegistry)
    assert isinstance(load_yaml_registry(DEFAULT_RESOURCE_REGISTRY), ResourceRegistry)
    other = tmp_path / "other.yaml"
    other.write_text("things: []\n")
    with pytest.raises(DefinitionError, match="'capabilities' or 'resources'"):
        load_yaml_registry(other)


# --- resource registry ----------------------------------------------------------------------


def test_default_resources() -> None:
    _, resources = load_default_registries()
    r = {res.resource_id: res for res in resources.resources}
    assert len(r) == 11
    assert (r["git_repo_write"].type, r["git_repo_write"].max_holders) == ("exclusive", 1)
    assert r["git_repo_write"].conflicts_with == ["git_repo_write"]
    assert (r["git_repo_read"].type, r["git_repo_read"].max_holders) == ("shared", -1)
    assert r["filesystem_write"].conflicts_with == ["filesystem_write", "filesystem_read"]
    assert r["filesystem_read"].conflicts_with == ["filesystem_write"]
    assert resources.conflicts("filesystem_read", "filesystem_write")
    assert not resources.conflicts("git_repo_read", "git_repo_write")
    quota = r["api_quota_openai"]
    assert (quota.type, quota.refill_rate, quota.capacity) == ("rate_limited", "100/minute", 100)
    assert r["network_bandwidth"].refill_rate == "1000/minute"
    sized = {k: (v.capacity, v.min_per_task, v.max_per_task, v.reserved) for k, v in r.items()}
    assert sized["cpu_cores"] == (8, 1, 4, 0)
    assert sized["memory_mb"] == (8192, 256, 4096, 1024)
    assert sized["disk_space_mb"] == (10240, 1, 10240, 0)
    assert sized["database_connections"] == (20, 1, 5, 0)
    assert sized["worker_slots"] == (10, 1, 10, 0)


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [("100/minute", 100 / 60), ("10/second", 10.0), ("1000/hour", 1000 / 3600), ("1/second", 1)],
)
def test_refill_rate_parsing(rate: str, per_second: float) -> None:
    res = Resource.model_validate({"resource_id": "q", "type": "rate_limited", "refill_rate": rate})
    assert res.refill_per_second == pytest.approx(per_second)
    assert res.capacity == int(rate.split("/")[0])  # default bucket: one period's refill


@pytest.mark.parametrize("rate", ["100/min", "0/second", "1.5/second", "ten/minute", "100"])
def test_bad_refill_rates(rate: str) -> None:
    with pytest.raises(ValidationError, match="refill_rate"):
        Resource.model_validate({"resource_id": "q", "type": "rate_limited", "refill_rate": rate})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "rate_limited"}, "needs refill_rate"),
        ({"type": "pooled"}, "needs capacity"),
        ({"type": "pooled", "capacity": 4, "refill_rate": "1/second"}, "refill_rate do not apply"),
        ({"type": "shared", "capacity": 4}, "capacity do not apply to shared"),
        ({"type": "exclusive", "max_holders": 2}, "max_holders 1"),
        ({"type": "shared", "max_holders": 0}, "-1 \\(unlimited\\) or at least 1"),
        ({"type": "pooled", "capacity": 4, "reserved": 4}, "leaves nothing"),
        ({"type": "pooled", "capacity": 8, "min_per_task": 5, "max_per_task": 4}, "min_per_task"),
        ({"type": "pooled", "capacity": 8, "reserved": 2, "max_per_task": 7}, "<= 6"),
        ({"type": "bucket"}, "type"),
    ],
)
def test_bad_resources(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Resource.model_validate({"resource_id": "r", **doc})


def test_duplicate_and_unknown_resources_are_rejected() -> None:
    one = {"resource_id": "a", "type": "shared"}
    with pytest.raises(ValidationError, match="duplicate resource_id: 'a'"):
        ResourceRegistry.model_validate({"resources": [one, one]})
    with pytest.raises(ValidationError, match="unknown resource b"):
        ResourceRegistry.model_validate({"resources": [one | {"conflicts_with": ["b"]}]})


def test_check_requirements_against_the_registry() -> None:
    _, resources = load_default_registries()
    ok = {"git_repo_write": "exclusive", "filesystem_read": "shared", "api_quota_openai": 10}
    assert resources.check_requirements(ok | {"cpu_cores": 2}) == []
    found = resources.check_requirements(
        {"git_repo_write": "shared", "cpu_cores": 9, "memory_mb": "exclusive", "gpu": 1}
    )
    assert found[0] == "'git_repo_write' is exclusive: request it as \"exclusive\""
    assert found[1] == "'cpu_cores': asks for 9; a task may take 1-4"
    assert found[2] == "'memory_mb' is pooled: ask for a number of units, not 'exclusive'"
    assert found[3].startswith("unknown resource 'gpu' (known: git_repo_write,")


# --- attempt output -------------------------------------------------------------------------


def test_attempt_output_contract() -> None:
    out = AttemptOutput.model_validate(
        {
            "status": "success",
            "files_modified": ["a.py"],
            "diff_summary": "1 file changed",
            "validation_status": "passed",
            "commit_message": "Add a",
            "error": None,
            "metadata": {"tokens_used": 1200, "duration_seconds": 3.5, "model": "gpt",
                         "temperature": 0},
        }
    )
    assert out.metadata.tokens_used == 1200
    assert out.metadata.model == "gpt"
    assert out.metadata.model_extra == {"temperature": 0}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"status": "failure"}, "needs error"),
        ({"status": "success", "error": "x"}, "no error"),
        ({"status": "failure", "error": "x", "validation_status": "passed"}, "cannot pass"),
        ({"status": "done"}, "status"),
    ],
)
def test_attempt_output_rejects(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AttemptOutput.model_validate(doc)


@settings(max_examples=2000)
@given(st.text(alphabet=st.characters(blacklist_characters="'\"\\"), max_size=60))
def test_a_command_without_quotes_or_backslashes_always_splits(command: str) -> None:
    """Why ExecutionSpec may skip shlex.split for such commands: it can never fail on them."""
    import re
    import shlex

    from kernel.definitions.models import SHLEX_SPECIAL

    assert SHLEX_SPECIAL.isdisjoint(command)
    assert shlex.split(command) == [t for t in re.split("[ \t\r\n]+", command) if t]


@pytest.mark.parametrize("command", ["echo 'unclosed", 'say "hi', "trailing \\"])
def test_a_command_shlex_cannot_split_is_still_refused(command: str) -> None:
    from kernel.definitions.models import ExecutionSpec

    with pytest.raises(ValueError, match="cannot be split"):
        ExecutionSpec.model_validate({"command": command})


@pytest.mark.parametrize(("version", "line"), [
    ("2.0.0", (2, 0)), ("1.0.7", (1, 0)), ("10.3.0-rc.1+build.5", (10, 3)), ("2.0", None),
    ("v2.0.0", None), ("02.0.0", None), (2.0, None), (None, None)])
def test_major_minor_reads_the_schema_line_of_a_semver_string(version: Any,
                                                              line: tuple[int, int] | None
                                                              ) -> None:
    assert major_minor(version) == line


def test_a_refused_document_is_one_definition_error_with_every_problem() -> None:
    _, flaws = parse_json(b'{\n "a": NaN,\n "b": 1e999\n}', "x.json")
    err = DefinitionError.of_documents("x.json", "JSON", flaws)
    assert [(p.path, p.line) for p in err.problems] == [("a", 2), ("b", 3)]
    assert err.file == "x.json" and err.message.startswith("invalid JSON\n  - line 2, a: NaN")


@pytest.mark.parametrize(("version", "accepted"), [
    ("2.0.0", True), ("2.0.17", True), ("2.0.01", False), ("2.1.0", False), ("1.0.0", False)])
def test_a_task_accepts_every_patch_release_of_its_schema_line(version: str,
                                                               accepted: bool) -> None:
    assert any_patch_of("2.0.0") == r"^2\.0\.(0|[1-9][0-9]*)$"
    doc = {"task_id": "t", "workstream_id": "ws", "name": "T", "type": "custom",
           "execution": {"command": "echo"}, "schema_version": version}
    if accepted:
        assert TaskDefinition.model_validate(doc).schema_version == version
    else:
        with pytest.raises(ValidationError):
            TaskDefinition.model_validate(doc)


def test_any_patch_of_needs_a_semantic_version() -> None:
    assert any_patch_of("1.4.2") == r"^1\.4\.(0|[1-9][0-9]*)$"
    with pytest.raises(ValueError, match="not a semantic version"):
        any_patch_of("2.0")
