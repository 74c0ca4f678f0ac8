"""The documents of the ``.state/`` views as models: they define the published JSON Schemas
and let tests validate what the exporter wrote.

Public API:
    ``CurrentState`` (current.json), ``StatusIndex`` (by_status.json), ``WorkstreamIndex``
    (by_workstream.json), ``WorkerIndex`` (by_worker.json), ``Checkpoint``
    (checkpoints/{ws}_latest.json) and their rows (``TaskView``, ``WorkstreamView``,
    ``WorkerView``, ``ResourceHolder``, ``WorkstreamEntry``, ``WorkerEntry``): frozen pydantic
    models, ``extra='forbid'``; ``DOCUMENT_MODELS``; ``VIEWS_SCHEMA_VERSION``;
    ``view_header(model) -> dict`` (the document's ``schema_version`` and ``schema_url``).

Stability Guarantees:
    Fields are only added (``VIEWS_SCHEMA_VERSION``, semver). Each model's ``schema_name``
    names its schema file (``schemas/{schema_name}.schema.json``).

Integration Points:
    ``kernel.observe.schemas`` publishes their JSON Schemas; ``kernel.observe.view_documents``
    builds documents with exactly these keys (plain dicts: validating 100,000 rows through
    pydantic on every export would cost more than the export itself); tests validate the files
    against them.

Dependencies:
    pydantic; ``kernel.observe.documents``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from kernel.observe.documents import header

VIEWS_SCHEMA_VERSION = "1.1.0"


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_name: ClassVar[str] = ""


class LastResult(_Doc):
    """The output contract (AIDER-INT-003) of a task's latest attempt, in short: the whole
    document is in the ``attempt`` table (``orch show TASK --json``). Since 1.1.0."""

    status: str | None
    validation_status: str | None
    files_modified: list[str] | None
    diff_summary: str | None
    commit_message: str | None
    tokens_used: int | None
    """None: not reported (unknown, not zero)."""
    cost: float | None
    model: str | None


class TaskView(_Doc):
    task_id: str
    workstream_id: str
    name: str
    type: str
    state: str
    critical: bool
    priority: int
    attempts: int
    last_worker: str | None
    """The worker of the latest attempt (``assigned_worker`` is cleared when a task stops)."""
    last_exit_code: int | None
    last_result: LastResult | None = None
    """Since 1.1.0: the latest attempt's result; None before the first attempt ends."""
    retry_count: int
    max_retries: int
    assigned_worker: str | None
    created_at: str
    queued_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str
    next_attempt_at: str | None
    last_error: str | None
    failure_mode: str | None
    waiting_for: list[str]
    """Prerequisites not completed yet (only for tasks that are still pending)."""


class WorkstreamView(_Doc):
    workstream_id: str
    name: str
    state: str
    base_branch: str | None
    branch: str | None
    worktree_path: str | None
    max_parallelism: int | None
    max_duration_seconds: float | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    updated_at: str
    task_counts: dict[str, int]


class WorkerView(_Doc):
    worker_id: str
    name: str
    state: str
    executor: str
    pid: int | None
    hostname: str | None
    version: str | None
    capabilities: list[str]
    current_task: str | None
    last_heartbeat_at: str | None
    registered_at: str
    stopped_at: str | None
    exit_code: int | None


class ResourceHolder(_Doc):
    lease_id: int
    resource_id: str
    task_id: str
    owner: str
    mode: str
    amount: float
    acquired_at: str
    expires_at: str


class CurrentState(_Doc):
    """``.state/current.json`` (STATE-OBS-001)."""

    schema_name: ClassVar[str] = "current-state"
    schema_version: str
    schema_url: str
    timestamp: str
    last_event_seq: int
    counts: dict[str, int]
    workstreams: list[WorkstreamView]
    tasks: list[TaskView]
    workers: list[WorkerView]
    resources: list[ResourceHolder]


class StatusIndex(_Doc):
    """``.state/by_status.json``: task ids per task state (STATE-OBS-005)."""

    schema_name: ClassVar[str] = "by-status"
    schema_version: str
    schema_url: str
    generated_at: str
    source_timestamp: str
    statuses: dict[str, list[str]]


class WorkstreamEntry(_Doc):
    state: str
    task_counts: dict[str, int]
    tasks: list[str]
    running: list[str]
    failed: list[str]


class WorkstreamIndex(_Doc):
    """``.state/by_workstream.json``: each workstream's state, counts and tasks."""

    schema_name: ClassVar[str] = "by-workstream"
    schema_version: str
    schema_url: str
    generated_at: str
    source_timestamp: str
    workstreams: dict[str, WorkstreamEntry]


class WorkerEntry(_Doc):
    state: str
    current_task: str | None
    last_heartbeat_at: str | None
    tasks: list[str]


class WorkerIndex(_Doc):
    """``.state/by_worker.json``: each worker's state and the tasks assigned to it now."""

    schema_name: ClassVar[str] = "by-worker"
    schema_version: str
    schema_url: str
    generated_at: str
    source_timestamp: str
    workers: dict[str, WorkerEntry]


class Checkpoint(_Doc):
    """``.state/checkpoints/{ws}_latest.json``: where a workstream stands, to resume from."""

    schema_name: ClassVar[str] = "checkpoint"
    schema_version: str
    schema_url: str
    timestamp: str
    last_event_seq: int
    workstream_id: str
    state: str
    completed: list[str]
    failed: list[str]
    pending: list[str]
    in_progress: list[str]
    cancelled: list[str]
    resources_held: list[ResourceHolder]


DOCUMENT_MODELS: tuple[type[_Doc], ...] = (
    CurrentState, StatusIndex, WorkstreamIndex, WorkerIndex, Checkpoint)


def view_header(model: type[_Doc]) -> dict[str, str]:
    """The ``schema_version`` and ``schema_url`` of a view document."""
    return header(model.schema_name, VIEWS_SCHEMA_VERSION)
