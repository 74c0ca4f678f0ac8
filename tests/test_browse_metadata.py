"""The metadata of `orch browse`: every table, view and column described from one source, and
every view and canned query running on the system's SQLite through Python's `sqlite3` (the
library Datasette uses), against a project that has run."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from kernel.observe.browse.metadata import (
    canned_queries,
    catalog,
    datasette_metadata,
    missing_descriptions,
)
from kernel.store import schema
from kernel.store.eventlog import open_archive_for_write
from tests.browse_project import ran_project


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project that has run (tests/browse_project.py)."""
    return ran_project(tmp_path_factory.mktemp("browse") / "proj")


def objects(path: Path, kind: str) -> dict[str, list[str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = ? AND name NOT LIKE 'sqlite_%'",
            (kind,))]
        return {n: [r[1] for r in conn.execute(f'PRAGMA table_info("{n}")')] for n in names}
    finally:
        conn.close()


def test_every_table_view_and_column_is_described(tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    schema.connect(path, create=True).close()
    tables, views = objects(path, "table"), objects(path, "view")
    assert len(tables) > 20 and len(views) > 10
    assert missing_descriptions(tables, "tables") == []
    assert missing_descriptions(views, "views") == []


def test_the_archive_tables_are_described(tmp_path: Path) -> None:
    path = tmp_path / "events-2025-01.sqlite"
    with open_archive_for_write(path, "2025-01", 7):
        pass
    assert missing_descriptions(objects(path, "table"), "archive") == []


def test_the_metadata_describes_what_exists_and_writes_nothing() -> None:
    meta = datasette_metadata(title="orch: p", kernel_name="kernel",
                              archive_names=["events-2025-01"], workstreams=["ws", "a b"],
                              columns={"task": ["task_id", "state", "nope"]})
    kernel = meta["databases"]["kernel"]
    task = kernel["tables"]["task"]
    assert set(task["columns"]) == {"task_id", "state"}  # an unknown column is not described
    assert task["facets"] == ["state", "workstream_id", "type", "failure_mode"]
    assert task["sort_desc"] == "updated_at"
    assert kernel["tables"]["ready_task"]["description"].startswith("Ready work")
    assert sorted(kernel["queries"]) == sorted(canned_queries())
    assert not any(q.get("write") for q in kernel["queries"].values())
    assert meta["databases"]["events-2025-01"]["tables"]["event"]["description"]
    assert 'href="/-/dag/ws"' in meta["description_html"]
    assert 'href="/-/dag"' in meta["description_html"]
    # The facets the issue names are offered somewhere.
    facets = {f for entry in [*catalog()["tables"].values(), *catalog()["views"].values()]
              for f in entry.get("facets", [])}
    assert {"state", "workstream_id", "failure_mode", "mode_id", "severity", "model"} <= facets


def test_the_queries_use_nothing_newer_than_sqlite_3_40() -> None:
    """No concat(), no JSONB (jsonb_*, ->> is 3.38 and allowed), no unixepoch('subsec')."""
    newer = re.compile(r"\bconcat(_ws)?\s*\(|\bjsonb|\bsubsec\b|\boctet_length\s*\(", re.I)
    for query in canned_queries().values():
        assert not newer.search(query.sql), query.name
    sql_views = Path(__file__).resolve().parent.parent / "sql" / "schema.sql"
    views = sql_views.read_text().split("CREATE VIEW", 1)[1].split("CREATE TRIGGER", 1)[0]
    assert not newer.search(views)


def test_every_view_runs_on_python_sqlite3(ran: Path) -> None:
    assert sqlite3.sqlite_version_info >= (3, 37)
    conn = sqlite3.connect(f"file:{ran / '.state' / 'kernel.db'}?mode=ro", uri=True)
    try:
        for view in objects(ran / ".state" / "kernel.db", "view"):
            conn.execute(f'SELECT * FROM "{view}"').fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("name", list(canned_queries()))
def test_every_canned_query_runs_on_python_sqlite3(ran: Path, name: str) -> None:
    conn = sqlite3.connect(f"file:{ran / '.state' / 'kernel.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute(canned_queries()[name].sql,
                                              {"task_id": "flaky-smoke"})]
    finally:
        conn.close()
    expected = {
        "blocked_work": lambda: any(r["task_id"] == "publish-docs" and r["needs_operator"] == 1
                                    and r["root_cause"] == "check-links (failed)"
                                    for r in rows),
        "critical_path": lambda: [r["task_id"] for r in rows if r["workstream_id"] == "ws"][:2]
        == ["setup", "edit-greeting"],
        "failures_by_mode": lambda: any(r["mode_id"] == "Task-Failed" and r["occurrences"] >= 2
                                        for r in rows),
        "task_timeline": lambda: [r["what"] for r in rows if r["kind"] == "attempt"] == [
            "attempt 1 started", "attempt 1 failed", "attempt 2 started",
            "attempt 2 succeeded"],
        "slowest_tasks": lambda: {r["task_id"] for r in rows} >= {"flaky-smoke", "setup"}
        and all(r["estimated_seconds"] == 1.0 for r in rows),
        "agent_usage": lambda: {(r["level"], r["model"], r["tokens_used"], r["cost"])
                                for r in rows if r["level"] in ("model", "all")}
        == {("model", "scripted-1", 1200, 0.0125), ("all", None, 1200, 0.0125)},
        # Nothing is ready or held once the run is over: the queries run and find nothing.
        "ready_work": lambda: rows == [],
        "resource_holders": lambda: rows == [],
    }
    assert expected[name](), rows
