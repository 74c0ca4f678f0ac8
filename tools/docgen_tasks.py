"""The generated part of docs/writing-tasks.md: the tables of every task-file and workstream-file
field, with its type, default and description, read from the pydantic models.

Public API:
    ``WRITING_TASKS`` (the page's path in the repository); ``field_tables() -> str`` (the
    Markdown of the tables); ``writing_tasks(text) -> str`` (the page with its generated
    region, between ``BEGIN`` and ``END``, replaced by ``field_tables()``).

Stability Guarantees:
    Deterministic: the same models give the same bytes. Only the region between the markers
    is generated; the rest of the page is written by hand and kept as it is.

Integration Points:
    ``tools.docgen.generated_files`` lists the page, so ``tools/gen_docs.py`` rewrites it and
    ``--check`` (tests/test_generated.py) fails when the tables are stale.

Dependencies:
    pydantic; ``kernel.definitions.models``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

WRITING_TASKS = "docs/writing-tasks.md"
BEGIN = "<!-- BEGIN generated field tables (python tools/gen_docs.py) -->"
END = "<!-- END generated field tables -->"


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return "object"
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " \\| ".join(dict.fromkeys(_type(s, defs) for s in schema[key]))
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}), defs)}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type(schema['additionalProperties'], defs)}"
    return str(kind)


def _default(info: FieldInfo) -> str:
    if callable(info.json_schema_extra):  # computed from the path or another field
        return "(see description)"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        value = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    return f"`{json.dumps(value)}`"


def _rows(model: type[BaseModel], prefix: str = "", unset: bool = False) -> list[str]:
    """One row per field, nested models' fields after their own (``unset``: inside
    ``task_defaults``, where a field left out sets nothing)."""
    schema = model.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    rows = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key.startswith("$"):
            continue  # editor hints, ignored by orch
        prop = schema["properties"].get(key, {})
        nested = _nested(info)
        text = info.description or (nested.__doc__ or "" if nested else "").split("\n")[0]
        description = text.replace("|", "\\|").replace("\n", " ")
        default = "not set" if unset and prefix else _default(info)
        rows.append(f"| `{prefix}{key}` | {_type(prop, defs)} | {default} | {description} |")
        if nested is not None:
            rows += _rows(nested, f"{prefix}{key}.", unset or key == "task_defaults")
    return rows


def _nested(info: FieldInfo) -> type[BaseModel] | None:
    candidates = (info.annotation, *getattr(info.annotation, "__args__", ()))
    return next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)),
                None)


_HEAD = ["| field | type | default | meaning |", "|---|---|---|---|"]


def field_tables() -> str:
    from kernel.definitions.models import TaskDefinition, WorkstreamDefinition

    return "\n".join([
        BEGIN, "",
        "### Task file fields", "",
        *_HEAD, *_rows(TaskDefinition), "",
        "### Workstream file fields", "",
        *_HEAD, *_rows(WorkstreamDefinition), "",
        END,
    ])


def writing_tasks(text: str) -> str:
    """The page with its generated region brought up to date."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{WRITING_TASKS} lacks the markers {BEGIN!r} ... {END!r}")
    return text[:start] + field_tables() + text[end + len(END):]
