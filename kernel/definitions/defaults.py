"""What a task file may leave out: the ids its path gives, and the defaults its workstream file
sets for its tasks (``task_defaults``), merged into the task's document before validation.

Public API:
    ``TASK_SUFFIXES`` (the extensions of task files), ``WORKSTREAM_FILES`` (the names of a
    workstream file, in order of preference); ``task_place(path) -> (workstream_id | None,
    task_id)`` (what the path ``tasks/{workstream}/{task}.json`` says); ``with_path_ids(data,
    path)``; ``with_defaults(data, defaults) -> dict`` (the effective document);
    ``defaults_digest(defaults)``.

Stability Guarantees:
    A field the task gives wins over the workstream's default, field by field: the named fields
    of ``execution``, ``validation_rules``, ``worker_requirements`` and ``context_requirements``
    are merged one by one; a value that is a list or a map (``post_execution``,
    ``capabilities``, ``exclude_patterns``, ``resource_requirements``) is replaced whole, never
    concatenated. The precedence is: the task's value, then the workstream's, then the type's
    default (``kernel.definitions.models.default_validation_rules`` /
    ``default_context_requirements``), then the model's. A section the task sets to null, or to
    something that is not an object, is left as it is (the schema reports what is wrong).
    ``context_requirements`` defaults reach only tasks run by an agent executor. The timeout
    alias ``max_runtime_seconds`` counts as giving ``execution.timeout_seconds``; a default
    ``execution.agent`` reaches only tasks whose executor is ``agent``. Nothing here
    reads a file or mutates its input.

Integration Points:
    ``kernel.definitions.taskfiles.parse_task`` applies both before the model sees the
    document; the stored ``definition`` (``orch show``) is therefore the effective one, and its
    sha256 changes when a default it took changes. ``kernel.definitions.parsecache`` keys each
    file on ``defaults_digest`` of its workstream's defaults. docs/writing-tasks.md describes
    the rules to users.

Dependencies:
    ``kernel.definitions.executors``, ``kernel.definitions.models``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from kernel.definitions.executors import AGENT_EXECUTORS, effective_executor
from kernel.definitions.models import default_context_requirements, default_validation_rules

TASK_SUFFIXES = (".json", ".yaml", ".yml")
WORKSTREAM_FILES = tuple(f"workstream{suffix}" for suffix in TASK_SUFFIXES)


def task_place(path: str) -> tuple[str | None, str]:
    """``(workstream_id, task_id)`` as the path ``.../tasks/{workstream}/{task}.{ext}`` gives
    them; the workstream is None for a file that is not in a workstream directory."""
    grand, parent, name = ["", "", *path.rsplit(os.sep, 2)][-3:]
    stem = next((name[:-len(s)] for s in TASK_SUFFIXES if name.endswith(s)), name)
    in_workstream = grand.endswith(os.sep + "tasks") or grand == "tasks"
    return (parent if in_workstream and parent else None), stem


def with_path_ids(data: dict[str, Any], path: str) -> dict[str, Any]:
    """``data`` with ``task_id`` and ``workstream_id`` filled from the path where absent (a
    value that differs from the path stays, and ``task_checks`` reports it)."""
    workstream, task = task_place(path)
    if "task_id" in data and ("workstream_id" in data or workstream is None):
        return data
    out = dict(data)
    out.setdefault("task_id", task)
    if workstream is not None:
        out.setdefault("workstream_id", workstream)
    return out


def defaults_digest(defaults: dict[str, Any] | None) -> str:
    """A short fingerprint of a workstream's task defaults ("" for none)."""
    if not defaults:
        return ""
    text = json.dumps(defaults, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def with_defaults(data: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The task document with its workstream's ``defaults`` (``TaskDefaults.given()``) merged
    in, field by field; the task's own values win."""
    if not defaults:
        return data
    out = dict(data)
    task_type = data.get("type", "custom")
    if "execution" in defaults:
        out["execution"] = _merge_execution(data, defaults["execution"])
    if "worker_requirements" in defaults:
        out["worker_requirements"] = _overlay(data, "worker_requirements",
                                              defaults["worker_requirements"], {})
    if "validation_rules" in defaults:
        rules: dict[str, Any] = (default_validation_rules(task_type)
                                 if isinstance(task_type, str) else {})
        out["validation_rules"] = _overlay(data, "validation_rules",
                                           defaults["validation_rules"], rules)
    if "context_requirements" in defaults and _runs_agent(out, task_type):
        context = default_context_requirements(task_type) if isinstance(task_type, str) else None
        out["context_requirements"] = _overlay(data, "context_requirements",
                                               defaults["context_requirements"], context or {})
    if "resource_requirements" in defaults and "resource_requirements" not in data:
        out["resource_requirements"] = dict(defaults["resource_requirements"])
    return out


def _overlay(data: dict[str, Any], section: str, given: dict[str, Any],
             base: dict[str, Any]) -> Any:
    """The task's ``section`` over the workstream's ``given`` over ``base`` (the type default,
    used only when the task has no such section)."""
    if section not in data:
        return {**base, **given}
    own = data[section]
    if not isinstance(own, dict):
        return own  # null, or a wrong type the schema reports
    return {**given, **own}


def _merge_execution(data: dict[str, Any], given: dict[str, Any]) -> Any:
    own = data.get("execution")
    if not isinstance(own, dict):
        return own  # missing or of a wrong type: the schema reports it
    if own.get("max_runtime_seconds") is not None or data.get("max_runtime_seconds") is not None:
        given = {k: v for k, v in given.items() if k != "timeout_seconds"}  # the alias wins
    merged = {**given, **own}
    if "agent" not in own and merged.get("executor") != "agent":
        merged.pop("agent", None)  # a default agent names the CLI of agent tasks only
    return merged


def _runs_agent(data: dict[str, Any], task_type: Any) -> bool:
    execution = data.get("execution")
    executor = execution.get("executor") if isinstance(execution, dict) else None
    return effective_executor(executor if isinstance(executor, str) else None,
                              task_type if isinstance(task_type, str) else None
                              ) in AGENT_EXECUTORS
