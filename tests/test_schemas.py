"""schemas/*.json are generated from kernel.definitions.models and must be current; defaults must
conform."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.definitions.models import (
    TaskDefinition,
    schema_url,
)
from kernel.definitions.registries import (
    DEFAULT_CAPABILITY_REGISTRY,
    DEFAULT_RESOURCE_REGISTRY,
    CapabilityRegistry,
    ResourceRegistry,
)
from kernel.observe.schemas import SCHEMAS, generate_schemas, render, stale_schemas, write_schemas

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
HAVE_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None


def conforms(document: Any, file_name: str) -> None:
    """Validate with the JSON Schema itself when jsonschema is installed, else with the model."""
    if HAVE_JSONSCHEMA:
        import jsonschema

        schema = json.loads((SCHEMA_DIR / file_name).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(document)
    else:
        SCHEMAS[file_name][0].model_validate(document)


def test_committed_schemas_are_current() -> None:
    stale = stale_schemas(SCHEMA_DIR)
    assert not stale, (
        f"schemas/ is out of date ({', '.join(stale)}): run `python tools/gen_schemas.py` "
        "and commit the result"
    )


def test_every_schema_is_identified_and_versioned() -> None:
    for file_name, schema in generate_schemas().items():
        _, name, version = SCHEMAS[file_name]
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == schema_url(name, version)
        assert schema["x-schema-version"] == version
        assert schema["additionalProperties"] is False, file_name


def test_task_schema_documents_fields_for_users() -> None:
    schema = generate_schemas()["task.schema.json"]
    props = schema["properties"]
    assert {"$schema", "$comment", "max_runtime_seconds"} <= set(props)
    assert "context_requirements" in props and "validation_rules" in props
    assert "context_requirements" not in generate_schemas()["task-v1.schema.json"]["properties"]
    execution = schema["$defs"]["ExecutionSpec"]["properties"]
    assert execution["timeout_seconds"]["default"] == 3600
    assert all(p.get("description") for p in execution.values())
    assert schema["required"] == ["execution"]  # the ids from the path, name from the id


@pytest.mark.parametrize(
    ("path", "file_name", "model"),
    [
        (DEFAULT_CAPABILITY_REGISTRY, "capability-registry.schema.json", CapabilityRegistry),
        (DEFAULT_RESOURCE_REGISTRY, "resource-registry.schema.json", ResourceRegistry),
    ],
)
def test_default_yaml_conforms_to_its_schema(path: Path, file_name: str, model: Any) -> None:
    document = yaml.safe_load(path.read_text())
    conforms(document, file_name)
    model.model_validate(document)


def test_a_task_example_conforms() -> None:
    example = {
        "$schema": "https://orch.dev/schemas/task/v2.0.0.json",
        "schema_version": "2.0.0",
        "task_id": "add-docstrings",
        "workstream_id": "docs",
        "name": "Add docstrings",
        "type": "aider",
        "execution": {"command": "aider --yes --message {prompt}", "prompt": "Add docstrings"},
        "max_runtime_seconds": 600,
        "resource_requirements": {"git_repo_read": "shared", "api_quota_openai": 5},
    }
    conforms(example, "task.schema.json")
    TaskDefinition.model_validate(example)


def test_stale_schemas_finds_missing_changed_and_unknown_files(tmp_path: Path) -> None:
    assert write_schemas(tmp_path) == sorted(SCHEMAS)
    assert stale_schemas(tmp_path) == []
    (tmp_path / "task.schema.json").write_text("{}\n")
    (tmp_path / "workstream.schema.json").unlink()
    (tmp_path / "old.schema.json").write_text("{}\n")
    assert stale_schemas(tmp_path) == [
        "old.schema.json",
        "task.schema.json",
        "workstream.schema.json",
    ]


def test_rendering_is_deterministic() -> None:
    first, second = generate_schemas(), generate_schemas()
    for name in first:
        text = render(first[name])
        assert text == render(second[name]) and text.endswith("}\n")
        assert json.loads(text) == first[name]
