"""One task document to a v2 model: any supported schema version, v1 migrated on the way;
every problem raised as a ``DefinitionError`` (the API for tools and tests; ``orch validate``
and ``orch load`` collect problems through ``kernel.definitions.taskfiles`` instead).

Public API:
    ``parse_task(data, source=None) -> (TaskDefinition, migrated)``;
    ``migrate_v1_to_v2(data, source=None) -> dict``; ``read_task_json(path)`` (the strict JSON
    of a task file); ``load_task_file(path) -> (TaskDefinition, migrated)`` (also checks the
    file and directory names, TASK-DEF-001).

Stability Guarantees:
    A document without ``schema_version`` is read as the current version (2.0.0); 1.0.x is
    validated as v1, migrated, then validated as v2; any other version is refused. The
    migration keeps the key order and adds the type defaults of
    ``kernel.definitions.models.default_context_requirements`` / ``default_validation_rules``,
    the same defaults an omitted field gets, so both routes agree (SCHEMA-VER-002). A file is
    read through ``kernel.base.documents`` (a FIFO is refused, never waited on).

Integration Points:
    ``kernel.definitions.migrate_tasks`` rewrites task files on disk with ``migrate_v1_to_v2``
    and checks a downgrade with ``parse_task``; ``kernel.definitions.taskfiles`` migrates v1
    documents with ``migrate_v1_to_v2`` too, so disk and load migrations cannot drift apart.

Dependencies:
    pydantic; ``kernel.base.data``, ``kernel.base.documents``, ``kernel.base.formats``,
    ``kernel.definitions.defaults``, ``kernel.definitions.errors``,
    ``kernel.definitions.fields``, ``kernel.definitions.models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kernel.base.data import schema_url
from kernel.base.documents import DEFAULT_MAX_FILE_BYTES, DocumentError, read_file
from kernel.base.formats import parse_json
from kernel.definitions.defaults import with_path_ids
from kernel.definitions.errors import DefinitionError, Problem, problems_from
from kernel.definitions.fields import TASK_SCHEMA_VERSION, major_minor
from kernel.definitions.models import (
    TaskDefinition,
    TaskDefinitionV1,
    default_context_requirements,
    default_validation_rules,
)


def _version_tuple(version: Any, source: str | None) -> tuple[int, int]:
    line = major_minor(version)
    if line is None:
        problem = Problem("schema_version", f"{version!r} is not a semver string like '2.0.0'")
        raise DefinitionError(source, "task definition", [problem])
    return line


def _validate_task(model: type[TaskDefinition | TaskDefinitionV1], data: Any,
                   source: str | None) -> Any:
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
    line = _version_tuple(version, source) if isinstance(data, dict) else (2, 0)
    if line == (1, 0):
        return _validate_task(TaskDefinition, migrate_v1_to_v2(data, source), source), True
    if line == (2, 0):
        return _validate_task(TaskDefinition, data, source), False
    problem = Problem(
        "schema_version",
        f"unsupported version {version!r}; this orch reads 1.0.x (migrated on load) and 2.0.x",
    )
    raise DefinitionError(source, "task definition", [problem])


def read_task_json(path: Path) -> Any:
    """The decoded JSON of a task file, read through the strict parse layer (a FIFO is refused,
    not waited on); raises DefinitionError naming the file."""
    try:
        raw = read_file(str(path), max_bytes=DEFAULT_MAX_FILE_BYTES)
    except DocumentError as exc:
        raise DefinitionError(str(path), "task file", [Problem("", exc.message)]) from None
    data, flaws = parse_json(raw)
    if flaws:
        raise DefinitionError.of_documents(str(path), "JSON", flaws)
    return data


def load_task_file(path: Path) -> tuple[TaskDefinition, bool]:
    """Read tasks/{ws}/{task}.json; also checks the file and directory names (TASK-DEF-001).
    The ids default from the path (``kernel.definitions.defaults.with_path_ids``)."""
    data = read_task_json(path)
    if isinstance(data, dict):
        data = with_path_ids(data, str(path))
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
