"""What checking definition files produces and shares: the problem record and its codes, the
records of valid task and workstream files, what parsing a task file needs to know about the
project, and how paths are shown.

Public API:
    ``ValidationProblem`` (``as_dict()``; ``severity`` from ``CODES`` unless given);
    ``CODES`` (problem code -> severity), ``ERROR``, ``WARNING``;
    ``document_problem(document_error, display)`` (a problem of the strict parse layer as a
    ``ValidationProblem``); ``problem_order(problem)`` (the sort key: file, line, path, code);
    ``TaskRecord``, ``WorkstreamRecord``; ``ParseContext(root, real_root, capabilities,
    resources, definitions=True, max_file_bytes=1 MiB, agents=None, defaults=None)`` (with
    ``defaults_of(task_path)``: the task defaults of the file's workstream);
    ``display_path(path, root)``, ``inside_root(path, real_root)``.

Stability Guarantees:
    Problem codes are only added, never renamed; a code's severity does not change. ``file``
    is relative to the project root (absolute outside it); ``path`` is a JSON path
    (``execution.timeout_seconds``, ``dependencies[2]``); ``line`` is 1-based or None.
    Records are immutable and cheap to pickle (they cross process boundaries).

Integration Points:
    ``kernel.definitions.taskfiles`` and ``kernel.definitions.task_checks`` (one file),
    ``kernel.definitions.discover`` and ``kernel.definitions.collect`` (a tree),
    ``kernel.definitions.check`` (cross-file and database checks), ``kernel.definitions.load``
    and ``orch validate`` / ``orch load`` (kernel.cli.definitions) all speak these records.

Dependencies:
    ``kernel.base.documents``, ``kernel.definitions.models``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

from kernel.base.documents import DEFAULT_MAX_FILE_BYTES, DOCUMENT_CODES, DocumentError
from kernel.definitions.models import WorkstreamDefinition

ERROR, WARNING = "error", "warning"
CODES: dict[str, str] = {
    **dict.fromkeys(DOCUMENT_CODES, ERROR),  # the strict parse layer (kernel.base.documents)
    "schema": ERROR,
    "unsupported_schema_version": ERROR, "status_not_pending": ERROR,
    "file_name_mismatch": ERROR, "wrong_directory": ERROR, "duplicate_task_id": ERROR,
    "unknown_dependency": ERROR, "dependency_cycle": ERROR,
    # A task no worker offering the catalog can run: loaded, but said out loud.
    "unknown_capability": WARNING, "min_version_unmet": WARNING, "min_version_unused": WARNING,
    "deprecated_capability": WARNING, "unknown_resource": ERROR,
    # What a run would trip over on this machine (orch validate only: .preflight).
    "capability_unoffered": WARNING, "program_not_found": WARNING,
    "uncommitted_changes": WARNING, "base_branch_missing": WARNING, "dask_missing": WARNING,
    "impossible_resource_amount": ERROR, "resource_mode_mismatch": ERROR,
    "required_file_missing": ERROR, "required_file_new": WARNING, "path_escapes_root": ERROR,
    "registry_invalid": ERROR, "agent_unconfigured": WARNING,
    "registry_default": WARNING, "workstream_file_invalid": ERROR,
    "symlink_loop": ERROR, "argument_too_long": ERROR, "config_invalid": ERROR,
    # Checks against the database (orch load, and orch validate when a database exists).
    "task_already_started": ERROR, "workstream_terminal": ERROR, "workstream_started": ERROR,
    "task_file_missing": WARNING,
    # YAML task and workstream files: a plain value YAML reads as another type than it looks.
    "yaml_ambiguous": ERROR,
    # A file under tasks/ that is neither a task file nor a workstream file: never silence.
    "not_a_task_file": WARNING,
}


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




def document_problem(exc: DocumentError, display: str | None) -> ValidationProblem:
    """A problem the strict parse layer (``kernel.base.documents``/``formats``) found, as the
    ``ValidationProblem`` of the file shown as ``display``."""
    return ValidationProblem(exc.code, display, exc.path, exc.message, exc.hint, exc.line,
                             exc.column)


def problem_order(problem: ValidationProblem) -> tuple[str, int, str, str]:
    """The order problems are listed in: by file, line, path, then code."""
    return (problem.file or "", problem.line or 0, problem.path, problem.code)


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


def display_path(path: str, root: str) -> str:
    """``path`` relative to the project root when it is inside it, else unchanged."""
    return path[len(root) + 1:] if path.startswith(root + os.sep) else path


def inside_root(path: str, real_root: str) -> bool:
    """Whether ``path``, its symlinks resolved, is the project root or inside it."""
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


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
    agents: frozenset[str] | None = None  # the [agents.NAME] sections of orch.toml
    # absolute directory of a workstream -> (digest, its task_defaults as given): merged into
    # each task file of that directory (kernel.definitions.defaults)
    defaults: dict[str, tuple[str, dict[str, Any]]] | None = None

    def defaults_of(self, task_path: str) -> tuple[str, dict[str, Any] | None]:
        """The digest and defaults of the workstream of the task file at ``task_path``."""
        found = self.defaults.get(os.path.dirname(task_path)) if self.defaults else None
        return found if found is not None else ("", None)
