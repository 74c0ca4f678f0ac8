"""orch plan and kernel.planning.plan: execution plans read from rows in a real database."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import apsw
import pytest

from kernel.base.errors import OrchError
from kernel.planning.dag import PlanTask, execution_plan
from kernel.planning.plan import (
    all_workstreams,
    plan_tasks,
    read_workstream,
    timestamp,
    workstream_plan,
)
from kernel.planning.render import plan_table
from kernel.store import db
from kernel.store.project import Project

from .conftest import run_cli

# task id -> (type, estimated seconds, dependencies, resources)
TaskRow = tuple[str, float, tuple[str, ...], dict[str, Any]]

DIAMOND: dict[str, TaskRow] = {
    "design": ("aider", 300, (), {"api_quota_openai": 20}),
    "backend": ("aider", 600, ("design",), {"cpu_cores": 2}),
    "frontend": ("aider", 400, ("design",), {"cpu_cores": 1, "git_repo_read": "shared"}),
    "integration": ("pytest", 120, ("backend", "frontend"), {"git_repo_write": "exclusive"}),
}
RESOURCES = {
    "api_quota_openai": ("rate_limited", 100),
    "cpu_cores": ("pooled", 8),
    "git_repo_read": ("shared", None),
    "git_repo_write": ("exclusive", None),
}


def insert_workstream(
    conn: apsw.Connection,
    workstream_id: str,
    tasks: dict[str, TaskRow],
    max_parallelism: int | None = None,
    extra_edges: Iterable[tuple[str, str]] = (),
) -> None:
    """The rows `orch load` would write, inserted directly: workstream, task, task_dependency,
    task_resource (resources are created as needed)."""
    with db.write_tx(conn):
        conn.execute(
            "INSERT INTO workstream (workstream_id, max_parallelism) VALUES (?, ?)",
            (workstream_id, max_parallelism),
        )
        for resource_id, (kind, capacity) in RESOURCES.items():
            conn.execute(
                "INSERT OR IGNORE INTO resource (resource_id, type, capacity, refill_per_second) "
                "VALUES (?, ?, ?, ?)",
                (resource_id, kind, capacity, 1.0 if kind == "rate_limited" else None),
            )
        for task_id, (type_, seconds, _deps, _res) in tasks.items():
            conn.execute(
                "INSERT INTO task (task_id, workstream_id, name, type, estimated_duration_seconds,"
                " critical, priority) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task_id, workstream_id, task_id.title(), type_, seconds,
                 int(type_ == "pytest"), len(task_id) % 3),
            )
        for task_id, (_type, _seconds, deps, resources) in tasks.items():
            for dep in deps:
                conn.execute("INSERT INTO task_dependency VALUES (?, ?)", (task_id, dep))
            for resource_id, value in resources.items():
                mode, amount = (value, 1) if isinstance(value, str) else ("units", value)
                conn.execute(
                    "INSERT INTO task_resource VALUES (?, ?, ?, ?)",
                    (task_id, resource_id, mode, amount),
                )
        for task_id, dep in extra_edges:
            conn.execute("INSERT INTO task_dependency VALUES (?, ?)", (task_id, dep))


def expected_tasks(tasks: dict[str, TaskRow]) -> list[PlanTask]:
    return [
        PlanTask(task_id, task_id.title(), type_, "pending", deps, seconds, len(task_id) % 3,
                 type_ == "pytest", resources)
        for task_id, (type_, seconds, deps, resources) in tasks.items()
    ]


@pytest.fixture
def conn(project: Project) -> Any:
    connection = project.connect()
    yield connection
    connection.close()


@pytest.fixture
def diamond_project(project: Project, conn: apsw.Connection) -> Project:
    """The project fixture plus workstream 'diamond' (max_parallelism 1): design -> backend,
    frontend -> integration."""
    insert_workstream(conn, "diamond", DIAMOND, max_parallelism=1)
    return project


def cli(project: Project, *args: str) -> int:
    return run_cli("--root", str(project.root), *args)


def cli_json(project: Project, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = cli(project, *args)
    return code, json.loads(capsys.readouterr().out)


def test_plan_tasks_reads_the_rows(diamond_project: Project, conn: apsw.Connection) -> None:
    found = {t.task_id: t for t in plan_tasks(conn, "diamond")}
    assert set(found) == set(DIAMOND)
    for task_id, (type_, seconds, deps, resources) in DIAMOND.items():
        task = found[task_id]
        assert (task.type, task.estimated_duration_seconds, task.status) == (type_, seconds,
                                                                              "pending")
        assert sorted(task.dependencies) == sorted(deps)
        assert dict(task.resource_requirements) == resources
        assert task.critical is (type_ == "pytest")
    # Pooled amounts come back as ints, so the JSON shows 2 and not 2.0.
    assert isinstance(found["backend"].resource_requirements["cpu_cores"], int)
    assert all_workstreams(conn) == ["diamond"]


def test_status_is_the_task_state(diamond_project: Project, conn: apsw.Connection) -> None:
    with db.write_tx(conn):
        conn.execute("UPDATE task SET state = 'cancelled', transition_trigger = 'user_cancelled' "
                     "WHERE task_id = 'frontend'")
    dag_doc, _ = workstream_plan(conn, "diamond", "2025-01-01T00:00:00.000Z")
    status = {n["task_id"]: n["status"] for n in dag_doc["nodes"]}
    assert status == {"design": "pending", "backend": "pending", "frontend": "cancelled",
                      "integration": "pending"}


def test_plan_json_equals_the_dag_modules_plan(diamond_project: Project, capsys) -> None:
    code, doc = cli_json(diamond_project, capsys, "plan", "diamond", "--json")
    assert code == 0
    assert doc.pop("external_dependencies") == []
    expected = execution_plan(expected_tasks(DIAMOND), "diamond", 1, doc["generated_at"])
    assert doc == json.loads(json.dumps(expected))
    assert doc["critical_path_tasks"] == ["design", "backend", "integration"]
    # --format json is the same document.
    code, same = cli_json(diamond_project, capsys, "plan", "diamond", "--format", "json")
    assert code == 0
    same.pop("external_dependencies")
    assert same == {**doc, "generated_at": same["generated_at"]}


def test_workstream_plan_matches_the_dag_module(diamond_project: Project,
                                                conn: apsw.Connection) -> None:
    from kernel.planning.dag import dag_document

    now = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    dag_doc, plan_doc = workstream_plan(conn, "diamond", now)
    assert dag_doc.pop("external_dependencies") == plan_doc.pop("external_dependencies") == []
    at = "2025-03-01T12:30:15.123Z"
    assert dag_doc == dag_document(expected_tasks(DIAMOND), "diamond", at)
    assert plan_doc == execution_plan(expected_tasks(DIAMOND), "diamond", 1, at)


def test_max_parallelism_is_respected(project: Project, conn: apsw.Connection, capsys) -> None:
    wide = {f"t{i}": ("custom", 100.0, (), {}) for i in range(4)}
    insert_workstream(conn, "capped", wide, max_parallelism=2)
    insert_workstream(conn, "free", {f"u{i}": row for i, row in enumerate(wide.values())})
    code, doc = cli_json(project, capsys, "--json", "plan")
    assert code == 0
    capped, free = doc["workstreams"]["capped"], doc["workstreams"]["free"]
    assert [(s["max_parallelism"], s["estimated_duration_seconds"]) for s in capped["stages"]] \
        == [(2, 200.0)]
    assert capped["total_estimated_duration"] == 200.0
    assert [(s["max_parallelism"], s["estimated_duration_seconds"]) for s in free["stages"]] \
        == [(4, 100.0)]


def test_cross_workstream_dependency_is_reported_not_graphed(
    diamond_project: Project, conn: apsw.Connection, capsys
) -> None:
    docs: dict[str, TaskRow] = {
        "write-docs": ("custom", 60.0, (), {}),
        "publish": ("custom", 30.0, ("write-docs",), {}),
    }
    insert_workstream(conn, "docs", docs,
                      extra_edges=[("write-docs", "integration"), ("publish", "design")])
    code, doc = cli_json(diamond_project, capsys, "plan", "docs", "--json")
    assert code == 0
    assert doc["external_dependencies"] == [
        {"task_id": "publish", "depends_on": "design", "workstream_id": "diamond"},
        {"task_id": "write-docs", "depends_on": "integration", "workstream_id": "diamond"},
    ]
    assert [s["parallel_tasks"] for s in doc["stages"]] == [["write-docs"], ["publish"]]
    ws = read_workstream(conn, "docs")
    assert {t.task_id: t.dependencies for t in ws.tasks} == {"write-docs": (),
                                                            "publish": ("write-docs",)}
    # The prerequisite's own workstream is unaffected.
    code, diamond = cli_json(diamond_project, capsys, "plan", "diamond", "--json")
    assert diamond["external_dependencies"] == []
    # The DAG document carries the same field.
    dag_doc, _ = workstream_plan(conn, "docs", "2025-01-01T00:00:00.000Z")
    assert len(dag_doc["external_dependencies"]) == 2
    assert {(e["from"], e["to"]) for e in dag_doc["edges"]} == {("write-docs", "publish")}
    # The table names them.
    assert cli(diamond_project, "plan", "docs") == 0
    assert "External: write-docs waits for integration (workstream diamond)" in \
        capsys.readouterr().out


def test_a_small_workstream_beside_a_large_one_reads_the_same(
    project: Project, conn: apsw.Connection
) -> None:
    # Two read strategies (whole tables for a workstream holding most tasks, key probes for a
    # small one) must give the same records.
    big = {f"b{i:03d}": ("custom", 10.0, (f"b{i - 1:03d}",) if i else (), {"cpu_cores": 1})
           for i in range(50)}
    insert_workstream(conn, "big", big)
    insert_workstream(conn, "diamond", DIAMOND, extra_edges=[("design", "b049")])
    small = read_workstream(conn, "diamond")
    assert sorted(small.tasks, key=lambda t: t.task_id) == \
        sorted(expected_tasks(DIAMOND), key=lambda t: t.task_id)
    assert [e.as_dict() for e in small.external_dependencies] == [
        {"task_id": "design", "depends_on": "b049", "workstream_id": "big"}]
    large = read_workstream(conn, "big")
    assert sorted(large.tasks, key=lambda t: t.task_id) == \
        sorted(expected_tasks(big), key=lambda t: t.task_id)
    assert large.external_dependencies == []


def test_table_format_fits_80_columns(diamond_project: Project, capsys, monkeypatch) -> None:
    """The terminal's table fits 80 columns; piped (capsys is no terminal) the stages are
    tab-separated, every id whole."""
    monkeypatch.setenv("COLUMNS", "80")
    code, doc = cli_json(diamond_project, capsys, "plan", "diamond", "--json")
    table = plan_table(doc)
    assert code == 0 and table is not None
    assert "Execution plan diamond: 3 stages, 4 tasks" in table
    assert "Critical path: design → backend → integration" in table
    assert "backend, frontend" in table
    assert max(len(line) for line in table.splitlines()) <= 80
    assert cli(diamond_project, "plan", "diamond") == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Execution plan diamond", "stage\ttasks\tparallelism\testimated\tcritical",
        "1\tdesign\t1\t5m 0s\t★", "2\tbackend, frontend\t1\t16m 40s\t★",
        "3\tintegration\t1\t2m 0s\t★", "critical path\tdesign -> backend -> integration"]
    # Without WS: one section per workstream, same text for a single one.
    assert cli(diamond_project, "plan") == 0
    assert capsys.readouterr().out == out


def test_mermaid_and_dot(diamond_project: Project, conn: apsw.Connection, capsys) -> None:
    assert cli(diamond_project, "plan", "diamond", "--format", "mermaid") == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart TD\n")
    assert '["integration"]' in mermaid and "class " in mermaid
    assert cli(diamond_project, "plan", "diamond", "--format", "dot") == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "dag diamond" {')
    assert '"design" -> "backend" [color=' in dot
    # One workstream in the project: WS may be left out.
    assert cli(diamond_project, "plan", "--format", "dot") == 0
    assert capsys.readouterr().out == dot
    # Several: a diagram needs a name.
    insert_workstream(conn, "other", {"x": ("custom", 1.0, (), {})})
    assert cli(diamond_project, "plan", "--format", "mermaid") == 2
    err = capsys.readouterr().err
    assert "diamond, other" in err and "orch plan diamond --format mermaid" in err


def test_json_flag_conflicts_with_a_diagram_format(diamond_project: Project, capsys) -> None:
    code, doc = cli_json(diamond_project, capsys, "--json", "plan", "diamond", "--format", "dot")
    assert code == 2
    assert doc["error"]["code"] == "usage"


def test_every_workstream_as_json(diamond_project: Project, conn: apsw.Connection,
                                  capsys) -> None:
    insert_workstream(conn, "other", {"x": ("custom", 1.0, (), {})})
    code, doc = cli_json(diamond_project, capsys, "plan", "--json")
    assert code == 0
    assert sorted(doc["workstreams"]) == ["diamond", "other"]
    assert doc["workstreams"]["other"]["critical_path_tasks"] == ["x"]
    assert cli(diamond_project, "plan") == 0
    out = capsys.readouterr().out
    assert out.index("Execution plan diamond") < out.index("Execution plan other")


def test_unknown_workstream(diamond_project: Project, capsys) -> None:
    code, doc = cli_json(diamond_project, capsys, "--json", "plan", "nope")
    assert code == 1
    assert doc["error"]["code"] == "unknown_workstream"
    assert "diamond" in doc["error"]["hint"]
    assert cli(diamond_project, "plan", "nope", "--format", "mermaid") == 1
    assert "unknown" not in capsys.readouterr().out


def test_unknown_workstream_in_the_library(project: Project, conn: apsw.Connection) -> None:
    with pytest.raises(OrchError) as info:
        plan_tasks(conn, "nope")
    assert info.value.code == "unknown_workstream"
    assert "no workstreams are loaded yet" in (info.value.hint or "")


def test_empty_project(project: Project, capsys) -> None:
    assert cli(project, "plan") == 0
    assert "No workstreams loaded yet" in capsys.readouterr().out
    code, doc = cli_json(project, capsys, "plan", "--json")
    assert (code, doc) == (0, {"workstreams": {}})
    assert cli(project, "plan", "--format", "dot") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "No workstreams loaded yet" in captured.err


def test_empty_workstream(project: Project, conn: apsw.Connection, capsys) -> None:
    insert_workstream(conn, "empty", {})
    code, doc = cli_json(project, capsys, "plan", "empty", "--json")
    assert code == 0
    assert (doc["stages"], doc["critical_path_tasks"], doc["total_estimated_duration"]) == (
        [], [], 0.0)
    assert cli(project, "plan", "empty") == 0
    assert "critical path\t(empty)" in capsys.readouterr().out
    assert "Critical path: (empty)" in (plan_table(doc) or "")


def test_a_cycle_written_behind_the_loaders_back(diamond_project: Project,
                                                 conn: apsw.Connection, capsys) -> None:
    with db.write_tx(conn):
        conn.execute("INSERT INTO task_dependency VALUES ('design', 'integration')")
    code, doc = cli_json(diamond_project, capsys, "--json", "plan", "diamond")
    assert code == 1
    assert doc["error"]["code"] == "dependency_cycle_detected"
    assert "design" in doc["error"]["message"]


def test_plan_needs_a_project(tmp_path: Path, capsys) -> None:
    code = run_cli("--root", str(tmp_path), "--json", "plan")
    assert code == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_initialised"


def test_timestamp() -> None:
    at = datetime(2025, 1, 31, 13, 0, 0, 999999, tzinfo=timezone(timedelta(hours=1)))
    assert timestamp(at) == "2025-01-31T12:00:00.999Z"
    assert timestamp(datetime(2025, 1, 31)) == "2025-01-31T00:00:00.000Z"
    assert timestamp("2025-01-31T00:00:00.000Z") == "2025-01-31T00:00:00.000Z"
