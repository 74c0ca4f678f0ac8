"""Models of the documents that are not views of the tables: the DAG and execution-plan files
(DAG-VIEW-002/003), the workstream archive and the module index; they define the published JSON
Schemas (SCHEMA-VER-001) and let tests validate what the kernel wrote.

Public API:
    ``DagDocument`` (``.state/dag_{ws}.json``), ``ExecutionPlanDocument``
    (``.state/execution_plan_{ws}.json``), ``WorkstreamArchive``
    (``.state/archive/{ws}/*.json``), ``ModuleIndexDocument`` (``.state/module_index.json``)
    and their rows; ``DOCUMENTS`` (schema file name -> (model, schema name, version)).

Stability Guarantees:
    Frozen pydantic models, ``extra='forbid'``: a key the writer adds without adding it here
    fails the tests that validate real files. Fields are only added within a major version. The
    versions are the writers' own constants (``kernel.planning.dag``,
    ``kernel.observe.documents``, ``kernel.observe.module_index``): nothing restates them.

Integration Points:
    ``kernel.observe.schemas`` publishes their JSON Schemas in ``schemas/``; the writers build
    plain dicts (``kernel.planning.dag``, ``kernel.runtime.workstreams``,
    ``kernel.observe.module_index``); tests/test_schema_urls.py validates real documents.

Dependencies:
    pydantic; ``kernel.observe.documents``, ``kernel.observe.module_index``,
    ``kernel.planning.dag``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kernel.observe.documents import WORKSTREAM_ARCHIVE_SCHEMA
from kernel.observe.module_index import MODULE_INDEX_SCHEMA
from kernel.planning.dag import DAG_SCHEMA_VERSION, PLAN_SCHEMA_VERSION


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Header(_Doc):
    schema_version: str = Field(description="Semver of this document's schema.")
    schema_url: str = Field(description="URL of this document's JSON Schema ($id).")


class ExternalDependency(_Doc):
    task_id: str
    depends_on: str
    workstream_id: str


class DagNode(_Doc):
    task_id: str
    name: str
    type: str
    status: str


class DagEdge(_Doc):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", description="The prerequisite.")
    to: str = Field(description="The task that depends on it.")
    type: str


class DagDocument(_Header):
    """``.state/dag_{workstream}.json`` (DAG-VIEW-002)."""

    workstream_id: str
    generated_at: str
    nodes: list[DagNode]
    edges: list[DagEdge]
    topological_order: list[str]
    external_dependencies: list[ExternalDependency] = []


class PlanStage(_Doc):
    stage: int
    parallel_tasks: list[str]
    max_parallelism: int
    estimated_duration_seconds: float
    critical_path: bool
    resource_requirements: dict[str, str | int | float]


class ExecutionPlanDocument(_Header):
    """``.state/execution_plan_{workstream}.json`` (DAG-VIEW-003)."""

    workstream_id: str
    generated_at: str
    stages: list[PlanStage]
    total_estimated_duration: float
    critical_path_duration: float
    critical_path_tasks: list[str]
    external_dependencies: list[ExternalDependency] = []


class ArchivedWorkstream(_Doc):
    workstream_id: str
    state: str
    base_branch: str | None
    branch: str | None
    worktree_path: str | None
    started_at: str | None
    completed_at: str | None


class ArchivedTask(_Doc):
    task_id: str
    state: str
    retry_count: int
    failure_mode: str | None
    last_error: str | None
    started_at: str | None
    completed_at: str | None


class WorkstreamArchive(_Header):
    """``.state/archive/{workstream}/{timestamp}.json`` and ``latest.json``: the final state of
    an ended workstream."""

    workstream: ArchivedWorkstream
    tasks: list[ArchivedTask]
    archived_at: str


class ModuleEntry(_Doc):
    module: str = Field(description="Dotted module name, e.g. kernel.store.db.")
    path: str = Field(description="Source file, relative to the package's parent directory.")
    summary: str = Field(description="The docstring's first paragraph.")
    sections: dict[str, str] = Field(
        description="Public API, Stability Guarantees, Integration Points, Dependencies: the "
                    "text of each MOD-IDX-001 section of the docstring.")
    missing_sections: list[str] = Field(description="The MOD-IDX-001 sections it lacks.")


class ModuleIndexDocument(_Header):
    """``.state/module_index.json`` (MOD-IDX-001), written by ``orch index``."""

    generated_at: str
    kernel_version: str
    modules: list[ModuleEntry]


DOCUMENTS: dict[str, tuple[type[BaseModel], str, str]] = {
    "dag.schema.json": (DagDocument, "dag", DAG_SCHEMA_VERSION),
    "execution-plan.schema.json": (ExecutionPlanDocument, "execution-plan", PLAN_SCHEMA_VERSION),
    f"{WORKSTREAM_ARCHIVE_SCHEMA[0]}.schema.json": (WorkstreamArchive, *WORKSTREAM_ARCHIVE_SCHEMA),
    f"{MODULE_INDEX_SCHEMA[0]}.schema.json": (ModuleIndexDocument, *MODULE_INDEX_SCHEMA),
}
