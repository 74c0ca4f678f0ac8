"""The one renderer and writer of the ``.state/`` JSON documents: sorted keys, the
``schema_version`` / ``schema_url`` header, written atomically.

Public API:
    ``header(schema_name, version) -> dict`` (``schema_version`` and ``schema_url``);
    ``render(doc) -> str`` (one top-level key per line and one row per line inside lists of
    objects); ``render_indented(doc) -> str`` (two-space indent, the layout of
    ``metrics.json``); ``write_document(path, doc, *, indented=False)``; ``dumps(value) ->
    str`` (compact, sorted keys, UTF-8 as it is); ``RawRows`` (rows that already are JSON
    text); ``WORKSTREAM_ARCHIVE_SCHEMA`` (the archive documents' schema name and version).

Stability Guarantees:
    Keys are sorted at every level and the text ends with a newline. ``render`` writes one row
    per line inside lists of objects, except the lists named ``edges`` (tiny rows, many of
    them: one line), so ``grep`` finds a task with its whole row. ``write_document`` writes
    ``path.tmp``, fsyncs it and renames it over ``path`` (``kernel.base.files.write_atomic``):
    a reader never sees a torn file.

Integration Points:
    ``kernel.observe.exports`` (current.json, the indices, DAG, plan and checkpoint files) and
    ``kernel.observe.metrics_history`` (metrics.json) write through ``write_document``;
    ``kernel.observe.view_models`` and ``kernel.observe.metrics_document`` build their headers
    with ``header``.

Dependencies:
    ``kernel.base.data``, ``kernel.base.files``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kernel.base.data import schema_url
from kernel.base.files import write_atomic

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
dumps = _ENCODER.encode
# Lists of objects are written one object per line (grep finds a task with its whole row),
# except these, whose rows are tiny and many (300,000 edges): one line.
_ONE_LINE = frozenset({"edges"})


#: (schema name, version) of the workstream archive documents (``.state/archive/{ws}/``).
WORKSTREAM_ARCHIVE_SCHEMA = ("workstream-archive", "1.0.0")


class RawRows(list[str]):
    """Rows that already are JSON text (rendered as they are, one per line)."""


def header(schema_name: str, version: str) -> dict[str, str]:
    """The ``schema_version`` and ``schema_url`` every document carries."""
    return {"schema_version": version, "schema_url": schema_url(schema_name, version)}


def render(doc: dict[str, Any]) -> str:
    """A document as text: one top-level key per line and one row per line inside lists of
    objects, so people can read it and ``grep`` finds a task with its whole row; written with
    the C JSON encoder (``indent`` would use the slow pure-Python one)."""
    parts = []
    for key in sorted(doc):
        value = doc[key]
        if isinstance(value, RawRows) and value:
            text = "[\n  " + ",\n  ".join(value) + "\n ]"
        elif isinstance(value, list) and value and isinstance(value[0], dict) \
                and key not in _ONE_LINE:
            body = ",\n  ".join(dumps(item) for item in value)
            text = f"[\n  {body}\n ]"
        elif isinstance(value, dict) and value and all(
                isinstance(v, dict | list) for v in value.values()):
            body = ",\n  ".join(f"{dumps(k)}:{dumps(value[k])}" for k in sorted(value))
            text = f"{{\n  {body}\n }}"
        else:
            text = dumps(value)
        parts.append(f" {dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def render_indented(doc: dict[str, Any]) -> str:
    """A small document as text: sorted keys, two-space indent, trailing newline (the text
    ``orch ... --json`` prints for it)."""
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_document(path: Path, doc: dict[str, Any], *, indented: bool = False) -> None:
    """Write ``doc`` to ``path`` atomically (tmp, fsync, rename), as ``render`` lays it out or,
    with ``indented``, as ``render_indented`` does."""
    write_atomic(path, render_indented(doc) if indented else render(doc))
