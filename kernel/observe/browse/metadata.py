"""What ``orch browse`` tells Datasette: the descriptions of every table, view and column, the
facets and sort orders, and the canned queries; and the reference page generated from them.

Public API:
    ``catalog() -> dict`` (``tables.yaml``: ``common``, ``tables``, ``views``, ``archive``);
    ``canned_queries() -> dict[name, CannedQuery]`` (``queries.sql``, in file order);
    ``column_description(entry, column) -> str | None``;
    ``missing_descriptions(objects, section) -> list[str]`` (``objects``: name -> columns);
    ``datasette_metadata(*, title, kernel_name, archive_names, workstreams) -> dict``;
    ``reference_markdown() -> str`` (docs/operations/DATABASE.md); ``CannedQuery``.

Stability Guarantees:
    One source: ``tables.yaml`` describes every table, view and column of the kernel database
    and of the event archive files (a column in ``common`` is described wherever it appears
    unless its table says otherwise); ``queries.sql`` holds the canned queries. Datasette's
    metadata and the generated reference page are both made from them, so they cannot
    disagree. The metadata defines no write query and no plugin setting that writes.

Integration Points:
    ``kernel.cli.browse`` passes ``datasette_metadata`` to the Datasette process
    (``kernel.observe.browse.serve``); ``tools/docgen.py`` writes ``reference_markdown``;
    tests/test_browse_metadata.py checks completeness against a migrated database and runs
    every canned query with Python's ``sqlite3``.

Dependencies:
    yaml.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_HERE = Path(__file__).resolve().parent
_FIELD = re.compile(r"^--\s*(name|title|description):\s*(.*)$")
_TABLE_OPTIONS = ("facets", "sort", "sort_desc", "label_column")


@dataclass(frozen=True)
class CannedQuery:
    name: str
    title: str
    description: str
    sql: str


@functools.cache
def catalog() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((_HERE / "tables.yaml").read_text(encoding="utf-8"))
    return data


def _parse_block(block: str) -> CannedQuery:
    fields: dict[str, str] = {}
    sql: list[str] = []
    for line in block.splitlines():
        match = _FIELD.match(line)
        if match and not sql:
            fields[match.group(1)] = match.group(2).strip()
        elif line.strip() or sql:
            sql.append(line)
    body = "\n".join(sql).strip().rstrip(";").strip()
    return CannedQuery(fields["name"], fields["title"], fields["description"], body)


@functools.cache
def canned_queries() -> dict[str, CannedQuery]:
    text = (_HERE / "queries.sql").read_text(encoding="utf-8")
    blocks = re.split(r"(?m)^(?=--\s*name:)", text)[1:]
    queries = [_parse_block(block) for block in blocks]
    return {q.name: q for q in queries}


def column_description(entry: Mapping[str, Any], column: str) -> str | None:
    """A column's description: the table's own, else the common one."""
    own = (entry.get("columns") or {}).get(column)
    found = own if own is not None else catalog()["common"].get(column)
    return None if found is None else str(found)


def missing_descriptions(objects: Mapping[str, Iterable[str]], section: str) -> list[str]:
    """``table`` or ``table.column`` for each object of ``section`` (tables, views, archive)
    or column without a description, and ``table`` for a described one that does not exist."""
    described = catalog()[section]
    missing: list[str] = []
    for name, columns in sorted(objects.items()):
        entry = described.get(name)
        if not entry or not entry.get("description"):
            missing.append(name)
            continue
        missing += [f"{name}.{c}" for c in columns if not column_description(entry, c)]
    missing += [f"{name} (described, not in the database)"
                for name in sorted(set(described) - set(objects))]
    return missing


def _table_metadata(entry: Mapping[str, Any], columns: Iterable[str] | None) -> dict[str, Any]:
    found: dict[str, Any] = {"description": entry["description"]}
    found.update({key: entry[key] for key in _TABLE_OPTIONS if key in entry})
    names = list(columns) if columns is not None else sorted(
        set(entry.get("columns") or {}) | set(catalog()["common"]))
    found["columns"] = {c: d for c in names if (d := column_description(entry, c))}
    return found


def _tables(section: str, columns: Mapping[str, Iterable[str]] | None) -> dict[str, Any]:
    return {name: _table_metadata(entry, None if columns is None else columns.get(name, ()))
            for name, entry in catalog()[section].items()}


def _index_html(kernel_name: str, workstreams: Iterable[str]) -> str:
    from html import escape

    links = ", ".join(f'<a href="/-/dag/{escape(ws)}">{escape(ws)}</a>' for ws in workstreams)
    queries = "".join(f'<li><a href="/{escape(kernel_name)}/{q.name}">{escape(q.title)}</a>'
                      f"</li>" for q in canned_queries().values())
    return (
        "<p>The history of this orch project, read-only: every task, attempt, event, lease and "
        "worker of <code>.state/kernel.db</code>, with the archived events.</p>"
        '<p><strong><a href="/-/dag">The DAG pictures</a></strong>'
        + (f": {links}" if links else "") + "</p>"
        f'<p>Canned queries:</p><ul class="orch-queries">{queries}</ul>'
        "<p>Every table, view and column is described on its page; the tables offer facets "
        "(counts by state, workstream, failure mode, severity, model).</p>"
    )


def datasette_metadata(*, title: str, kernel_name: str, archive_names: Iterable[str],
                       workstreams: Iterable[str],
                       columns: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """Datasette's metadata document for the kernel database ``kernel_name`` and the archive
    databases ``archive_names``. ``columns`` (table -> its columns) limits the column
    descriptions to the columns that exist; without it every described column is listed."""
    kernel_tables = {**_tables("tables", columns), **_tables("views", columns)}
    queries = {q.name: {"title": q.title, "description": q.description, "sql": q.sql,
                        "hide_sql": True}
               for q in canned_queries().values()}
    databases: dict[str, Any] = {
        kernel_name: {
            "description": "The kernel database (.state/kernel.db): the tables hold the "
                           "definitions and what happened; the views derive state from them.",
            "tables": kernel_tables,
            "queries": queries,
        },
    }
    for name in archive_names:
        databases[name] = {
            "description": f"Event archive {name}.sqlite: events moved out of the live log.",
            "tables": _tables("archive", None),
        }
    return {"title": title, "description_html": _index_html(kernel_name, workstreams),
            "databases": databases}


def _markdown_table(rows: Iterable[tuple[str, str]]) -> list[str]:
    out = ["| column | meaning |", "|---|---|"]
    out += ["| `" + c + "` | " + d.replace("|", "\\|") + " |" for c, d in rows]
    return out


def _section(section: str, heading: str) -> list[str]:
    lines = [f"## {heading}", ""]
    for name, entry in sorted(catalog()[section].items()):
        lines += [f"### `{name}`", "", str(entry["description"]), ""]
        own = entry.get("columns") or {}
        rows = [(c, str(d)) for c, d in own.items()]
        if rows:
            lines += _markdown_table(rows) + [""]
        if entry.get("facets"):
            lines += ["Facets: " + ", ".join(f"`{f}`" for f in entry["facets"]) + ".", ""]
    return lines


def reference_markdown(notice: str = "") -> str:
    """docs/operations/DATABASE.md: every table, view, column and canned query, from the same
    files as Datasette's metadata."""
    lines = [notice.rstrip("\n"), "# The tables and views of kernel.db", "",
             "What each table, view and column of `.state/kernel.db` means, and the canned",
             "queries of `orch browse` ([BROWSE.md](BROWSE.md)). Datasette shows the same",
             "descriptions. A column without its own line below means what the common columns",
             "say.", "", "## Common columns", ""]
    lines += _markdown_table(sorted((c, str(d)) for c, d in catalog()["common"].items()))
    lines += [""]
    lines += _section("tables", "Tables") + _section("views", "Views")
    lines += _section("archive", "Event archive files (.state/archive/events/)")
    lines += ["## Canned queries", ""]
    for q in canned_queries().values():
        lines += [f"### {q.title} (`{q.name}`)", "", q.description, "", "```sql", q.sql,
                  "```", ""]
    return "\n".join(lines).lstrip("\n").rstrip() + "\n"
