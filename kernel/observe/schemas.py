"""JSON Schemas (draft 2020-12) for every document orch writes or reads, generated from the
models (kernel.definitions.models, the views, the metrics, kernel.observe.document_models).

Public API:
    SCHEMAS: file name -> (model, schema name, schema version)
    generate_schemas() -> dict[str, dict]      file name -> JSON Schema
    render(schema) -> str                      the exact text written to disk
    write_schemas(directory) -> list[str]      (re)writes every file; returns the names written
    stale_schemas(directory) -> list[str]      names that are missing, outdated or unknown
    schema_files_by_url() -> dict[str, str]    each schema_url ($id) -> its file name

Stability Guarantees:
    Output is deterministic (sorted keys, 2-space indent, trailing newline), so ``schemas/``
    can be committed and compared in a test. Each schema's ``$id`` is
    ``schema_url(name, version)``, the same URL documents carry in ``schema_url``; a schema's
    file name never changes within a major version.

Integration Points:
    tools/gen_schemas.py writes ``schemas/``; tests/test_schemas.py fails when it is stale;
    editors can point ``$schema`` in a task file at the ``$id`` URL or at the committed file.

Dependencies:
    pydantic; ``kernel.definitions.models``, ``kernel.definitions.registries``,
    ``kernel.observe.document_models``, ``kernel.observe.metrics_document``,
    ``kernel.observe.view_models``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kernel.definitions.models import (
    ATTEMPT_OUTPUT_SCHEMA_VERSION,
    REGISTRY_SCHEMA_VERSION,
    TASK_SCHEMA_VERSION,
    TASK_V1_SCHEMA_VERSION,
    WORKSTREAM_SCHEMA_VERSION,
    AttemptOutput,
    TaskDefinition,
    TaskDefinitionV1,
    WorkstreamDefinition,
    schema_url,
)
from kernel.definitions.registries import (
    CapabilityRegistry,
    ResourceRegistry,
)
from kernel.observe.document_models import DOCUMENTS
from kernel.observe.metrics_document import METRICS_SCHEMA_NAME, METRICS_SCHEMA_VERSION, Metrics
from kernel.observe.view_models import DOCUMENT_MODELS, VIEWS_SCHEMA_VERSION

DRAFT = "https://json-schema.org/draft/2020-12/schema"

SCHEMAS: dict[str, tuple[type[BaseModel], str, str]] = {
    "task.schema.json": (TaskDefinition, "task", TASK_SCHEMA_VERSION),
    "task-v1.schema.json": (TaskDefinitionV1, "task", TASK_V1_SCHEMA_VERSION),
    "workstream.schema.json": (WorkstreamDefinition, "workstream", WORKSTREAM_SCHEMA_VERSION),
    "capability-registry.schema.json": (
        CapabilityRegistry,
        "capability-registry",
        REGISTRY_SCHEMA_VERSION,
    ),
    "resource-registry.schema.json": (
        ResourceRegistry,
        "resource-registry",
        REGISTRY_SCHEMA_VERSION,
    ),
    "attempt-output.schema.json": (AttemptOutput, "attempt-output", ATTEMPT_OUTPUT_SCHEMA_VERSION),
    "metrics.schema.json": (Metrics, METRICS_SCHEMA_NAME, METRICS_SCHEMA_VERSION),
    **{f"{model.schema_name}.schema.json": (model, model.schema_name, VIEWS_SCHEMA_VERSION)
       for model in DOCUMENT_MODELS},
    **DOCUMENTS,
}


def schema_files_by_url() -> dict[str, str]:
    """Every published ``schema_url`` (a schema's ``$id``) -> its file name in ``schemas/``;
    a document whose ``schema_url`` is not a key here points at nothing."""
    return {schema_url(name, version): file_name
            for file_name, (_, name, version) in SCHEMAS.items()}


def generate_schemas() -> dict[str, dict[str, Any]]:
    result = {}
    for file_name, (model, name, version) in SCHEMAS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = DRAFT
        schema["$id"] = schema_url(name, version)
        schema["x-schema-version"] = version
        result[file_name] = schema
    return result


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, schema in generate_schemas().items():
        (directory / file_name).write_text(render(schema), encoding="utf-8")
    return sorted(SCHEMAS)


def stale_schemas(directory: Path) -> list[str]:
    """Files to (re)generate or delete so that ``directory`` matches the models."""
    stale = []
    for file_name, schema in generate_schemas().items():
        path = directory / file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            stale.append(file_name)
    # A schema whose model was removed or renamed is stale too: it would mislead editors.
    stale += [p.name for p in directory.glob("*.schema.json") if p.name not in SCHEMAS]
    return sorted(stale)
