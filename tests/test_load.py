"""orch load: the import into SQLite, all or nothing; reloads are no-ops; pending tasks may
change, started ones may not. Real files and a real database in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from kernel.base.errors import DatabaseUnavailable
from kernel.definitions.load import LoadError, load
from kernel.store import db
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project

from .conftest import logical_dump, run_cli
from .test_validate import task_doc, write_task

REPO = Path(__file__).resolve().parent.parent
NOW = "2026-11-24T10:15:00.000Z"


def query(project: Project, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = project.connect(readonly=True)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def events(project: Project) -> list[tuple[str, str | None, str | None]]:
    return query(project, "SELECT event, entity_id, to_state FROM event ORDER BY seq")


@pytest.fixture
def small_project(project: Project) -> Project:
    """ws1: a <- b (b depends on a), a blocks c (so c depends on a); ws2: d depends on b."""
    (project.tasks_dir / "ws1").mkdir()
    (project.tasks_dir / "ws1" / "workstream.json").write_text(json.dumps(
        {"workstream_id": "ws1", "name": "First", "max_parallelism": 2}))
    write_task(project, task_doc("a", ws="ws1", blocks=["c"], critical=True, priority=3,
                                 resource_requirements={"git_repo_write": "exclusive",
                                                        "cpu_cores": 2},
                                 worker_requirements={"capabilities": ["RuffLinting"]}))
    write_task(project, task_doc("b", ws="ws1", type="pytest", dependencies=["a"],
                                 execution={"command": "pytest -q", "timeout_seconds": 60,
                                            "max_retries": 2}))
    write_task(project, task_doc("c", ws="ws1"))
    write_task(project, task_doc("d", ws="ws2", dependencies=["b"]))
    return project


def test_a_good_load(small_project: Project) -> None:
    report = load(small_project, workers=1)
    assert report.tasks_created == 4 and report.tasks_unchanged == 0
    assert report.workstreams_created == ["ws1", "ws2"]
    assert report.workstreams_ready == ["ws1", "ws2"]
    assert report.dependencies == 3
    p = small_project
    assert query(p, "SELECT task_id, workstream_id, name, type, critical, priority, max_retries, "
                    "timeout_seconds, command, source_file, state FROM task ORDER BY task_id") == [
        ("a", "ws1", "Task a", "custom", 1, 3, 0, 3600.0, "echo a", "tasks/ws1/a.json",
         "pending"),
        ("b", "ws1", "Task b", "pytest", 0, 0, 2, 60.0, "pytest -q", "tasks/ws1/b.json",
         "pending"),
        ("c", "ws1", "Task c", "custom", 0, 0, 0, 3600.0, "echo c", "tasks/ws1/c.json",
         "pending"),
        ("d", "ws2", "Task d", "custom", 0, 0, 0, 3600.0, "echo d", "tasks/ws2/d.json",
         "pending")]
    assert query(p, "SELECT task_id, depends_on FROM task_dependency ORDER BY 1, 2") == [
        ("b", "a"), ("c", "a"), ("d", "b")]
    assert query(p, "SELECT * FROM task_resource ORDER BY 2") == [
        ("a", "cpu_cores", "units", 2.0), ("a", "git_repo_write", "exclusive", 1.0)]
    assert query(p, "SELECT task_id, capability_id FROM task_capability") == [
        ("a", "cap-ruff-001")]
    assert query(p, "SELECT count(*) FROM capability") == [(7,)]
    assert query(p, "SELECT count(*) FROM resource") == [(11,)]
    assert ("filesystem_read", "filesystem_write") in query(p, "SELECT * FROM resource_conflict")
    assert query(p, "SELECT workstream_id, name, max_parallelism, state FROM workstream") == [
        ("ws1", "First", 2, "ready"), ("ws2", "ws2", None, "ready")]
    definition, sha = query(p, "SELECT definition, definition_sha256 FROM task "
                               "WHERE task_id = 'b'")[0]
    assert json.loads(definition)["validation_rules"] == {"pre_execution": [],
                                                          "post_execution": ["tests_passing"]}
    assert len(sha) == 64
    assert events(p) == [
        ("workstream_created", "ws1", "planned"), ("workstream_created", "ws2", "planned"),
        ("task_created", "a", "pending"), ("task_created", "b", "pending"),
        ("task_created", "c", "pending"), ("task_created", "d", "pending"),
        ("workstream_ready", "ws1", "ready"), ("workstream_ready", "ws2", "ready")]


def test_reloading_unchanged_files_writes_nothing(small_project: Project) -> None:
    load(small_project, workers=1)
    before = logical_dump(small_project.db_path)
    report = load(small_project, workers=1)
    assert not report.changed and report.tasks_unchanged == 4
    assert logical_dump(small_project.db_path) == before


def test_now_sets_the_timestamps(small_project: Project) -> None:
    load(small_project, now=NOW, workers=1)
    assert set(query(small_project, "SELECT timestamp FROM event")) == {(NOW,)}
    assert set(query(small_project, "SELECT created_at, updated_at FROM task")) == {(NOW, NOW)}


def test_a_changed_pending_task_is_updated_with_one_event(small_project: Project) -> None:
    load(small_project, workers=1)
    old_sha = query(small_project, "SELECT definition_sha256 FROM task WHERE task_id = 'b'")
    write_task(small_project, task_doc("b", ws="ws1", type="pytest", name="Run the tests",
                                       dependencies=[], execution={"command": "pytest"}))
    seq = query(small_project, "SELECT max(seq) FROM event")[0][0]
    report = load(small_project, workers=1)
    assert report.tasks_updated == ["b"] and report.tasks_unchanged == 3
    assert query(small_project, "SELECT name, command FROM task WHERE task_id = 'b'") == [
        ("Run the tests", "pytest")]
    assert query(small_project, "SELECT task_id, depends_on FROM task_dependency "
                                "ORDER BY 1, 2") == [("c", "a"), ("d", "b")]
    new = query(small_project, "SELECT event, event_type, severity, entity_type, task_id, "
                               "metadata FROM event WHERE seq > ?", (seq,))
    assert len(new) == 1
    event, event_type, severity, entity, task_id, metadata = new[0]
    assert (event, event_type, severity, entity, task_id) == (
        "task_definition_updated", "task_definition", "info", "task", "b")
    meta = json.loads(metadata)
    assert meta["old_sha256"] == old_sha[0][0] and meta["new_sha256"] != meta["old_sha256"]
    assert meta["changed_fields"] == ["dependencies", "execution", "name"]


def test_dropping_a_blocks_entry_removes_the_edge(small_project: Project) -> None:
    load(small_project, workers=1)
    write_task(small_project, task_doc("a", ws="ws1", critical=True, priority=3,
                                       resource_requirements={"git_repo_write": "exclusive",
                                                              "cpu_cores": 2},
                                       worker_requirements={"capabilities": ["RuffLinting"]}))
    load(small_project, workers=1)
    assert query(small_project, "SELECT task_id, depends_on FROM task_dependency "
                                "ORDER BY 1, 2") == [("b", "a"), ("d", "b")]


def _start(project: Project, task_id: str) -> None:
    conn = project.connect()
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO worker (worker_id) VALUES ('w1')")
            transition_in_tx(conn, "worker", "w1", "idle", "registration_complete")
            transition_in_tx(conn, "task", task_id, "queued", "scheduler_assigned")
            transition_in_tx(conn, "task", task_id, "running", "worker_started", worker_id="w1")
    finally:
        conn.close()


def test_a_started_task_cannot_change_and_nothing_is_written(small_project: Project) -> None:
    load(small_project, workers=1)
    _start(small_project, "a")
    write_task(small_project, task_doc("a", ws="ws1", name="changed"))
    write_task(small_project, task_doc("e", ws="ws1"))  # would be new: not written either
    before = logical_dump(small_project.db_path)
    with pytest.raises(LoadError) as err:
        load(small_project, workers=1)
    assert err.value.code == "load_refused"
    problem = next(p for p in err.value.problems if p.code == "task_already_started")
    assert problem.file == "tasks/ws1/a.json"
    assert "task 'a' is running" in problem.message
    assert logical_dump(small_project.db_path) == before


def test_a_pending_task_with_attempts_cannot_change(small_project: Project) -> None:
    load(small_project, workers=1)
    conn = small_project.connect()
    with db.write_tx(conn):
        conn.execute("INSERT INTO attempt (task_id, attempt_no, generation, started_at, outcome) "
                     "VALUES ('c', 1, 0, ?, 'not_started')", (NOW,))
    conn.close()
    write_task(small_project, task_doc("c", ws="ws1", name="changed"))
    with pytest.raises(LoadError) as err:
        load(small_project, workers=1)
    assert "pending and has attempts" in err.value.problems[0].message


def test_blocks_cannot_add_a_dependency_to_a_started_task(small_project: Project) -> None:
    load(small_project, workers=1)
    _start(small_project, "a")
    write_task(small_project, task_doc("late", ws="ws1", blocks=["a"]))
    before = logical_dump(small_project.db_path)
    with pytest.raises(LoadError) as err:
        load(small_project, workers=1)
    problem = next(p for p in err.value.problems if p.code == "task_already_started")
    assert problem.file == "tasks/ws1/late.json"
    assert logical_dump(small_project.db_path) == before


def test_no_tasks_are_added_to_a_terminal_workstream(small_project: Project) -> None:
    load(small_project, workers=1)
    conn = small_project.connect()
    with db.write_tx(conn):
        transition_in_tx(conn, "workstream", "ws2", "cancelled", "user_cancelled")
    conn.close()
    write_task(small_project, task_doc("e", ws="ws2"))
    before = logical_dump(small_project.db_path)
    with pytest.raises(LoadError) as err:
        load(small_project, workers=1)
    problem = next(p for p in err.value.problems if p.code == "workstream_terminal")
    assert (problem.file, problem.path) == ("tasks/ws2/e.json", "workstream_id")
    assert "cancelled" in problem.message
    assert logical_dump(small_project.db_path) == before


def _json_syntax(p: Project) -> None:
    write_task(p, ws="ws1", name="x", text="{,}")


def _schema(p: Project) -> None:
    write_task(p, task_doc("x", ws="ws1", priority="high"))


def _unknown_dependency(p: Project) -> None:
    write_task(p, task_doc("x", ws="ws1", dependencies=["nope"]))


def _cycle(p: Project) -> None:
    write_task(p, task_doc("a", ws="ws1", blocks=["c"], dependencies=["d"]))


def _duplicate(p: Project) -> None:
    write_task(p, task_doc("a", ws="ws2"))


def _resource(p: Project) -> None:
    write_task(p, task_doc("x", ws="ws1", resource_requirements={"cpu_cores": 64}))


def _registry(p: Project) -> None:
    (p.capabilities_dir / "registry.yaml").write_text("capabilities: [1\n")


def _workstream(p: Project) -> None:
    (p.tasks_dir / "ws2" / "workstream.json").write_text('{"workstream_id": "ws2", "x": 1}')


def _name(p: Project) -> None:
    write_task(p, task_doc("x", ws="ws1"), name="y")


@pytest.mark.parametrize("breaks", [_json_syntax, _schema, _unknown_dependency, _cycle,
                                    _duplicate, _resource, _registry, _workstream, _name])
def test_a_failed_load_leaves_the_database_logically_unchanged(
        small_project: Project, breaks: Callable[[Project], None]) -> None:
    write_task(small_project, task_doc("new", ws="ws3"))
    load(small_project, workers=1)
    write_task(small_project, task_doc("b", ws="ws1", name="changed", dependencies=["a"]))
    write_task(small_project, task_doc("another", ws="ws4"))
    breaks(small_project)
    before = logical_dump(small_project.db_path)
    with pytest.raises(LoadError) as err:
        load(small_project, workers=1)
    assert err.value.code == "invalid_definitions"
    after = logical_dump(small_project.db_path)
    if breaks is _cycle:  # Dependency-Cycle: its one event, nothing else (test_failure_modes.py)
        def event_row(line: str) -> bool:
            return line.startswith("event: ") and "'dependency_cycle_detected'" in line

        def without(dump: str) -> str:
            return "\n".join(line for line in dump.split("\n") if not event_row(line)
                             and not line.startswith("sqlite_sequence: "))

        assert sum(map(event_row, after.split("\n"))) == 1
        before, after = without(before), without(after)
    assert after == before


def test_a_v1_task_is_migrated_on_load(project: Project) -> None:
    write_task(project, task_doc("a", schema_version="1.0.0", type="aider"))
    report = load(project, workers=1)
    assert report.migrated == 1
    definition = json.loads(query(project, "SELECT definition FROM task")[0][0])
    assert definition["schema_version"] == "2.0.0"
    assert definition["context_requirements"]["max_context_tokens"] == 8000
    assert definition["validation_rules"] == {"pre_execution": ["git_clean"],
                                              "post_execution": ["no_lint_errors"]}
    metadata = query(project, "SELECT metadata FROM event WHERE event = 'task_created'")[0][0]
    assert json.loads(metadata)["migrated_from"] == "1.0.0"


def test_a_task_whose_file_is_gone_is_kept_with_a_warning(small_project: Project) -> None:
    load(small_project, workers=1)
    (small_project.tasks_dir / "ws2" / "d.json").unlink()
    report = load(small_project, workers=1)
    assert [(p.code, p.file) for p in report.warnings] == [("task_file_missing",
                                                            "tasks/ws2/d.json")]
    assert query(small_project, "SELECT count(*) FROM task WHERE task_id = 'd'") == [(1,)]


def test_loading_part_of_a_project(small_project: Project) -> None:
    with pytest.raises(LoadError) as err:  # ws2's d depends on b, which is not loaded yet
        load(small_project, [small_project.tasks_dir / "ws2"], workers=1)
    assert [p.code for p in err.value.problems] == ["unknown_dependency"]
    load(small_project, [small_project.tasks_dir / "ws1"], workers=1)
    report = load(small_project, [small_project.tasks_dir / "ws2" / "d.json"], workers=1)
    assert report.tasks_created == 1 and report.warnings == []
    assert query(small_project, "SELECT count(*) FROM task_dependency") == [(3,)]


def test_a_workstream_file_change_updates_a_ready_workstream(small_project: Project) -> None:
    load(small_project, workers=1)
    (small_project.tasks_dir / "ws1" / "workstream.json").write_text(json.dumps(
        {"workstream_id": "ws1", "name": "Renamed", "max_parallelism": 4}))
    report = load(small_project, workers=1)
    assert report.workstreams_updated == ["ws1"]
    assert query(small_project, "SELECT name, max_parallelism FROM workstream "
                                "WHERE workstream_id = 'ws1'") == [("Renamed", 4)]
    assert query(small_project, "SELECT count(*) FROM event "
                                "WHERE event = 'workstream_definition_updated'") == [(1,)]


def test_load_needs_an_initialised_project(tmp_path: Path) -> None:
    bare = Project(tmp_path)
    write_task(bare, task_doc("a"))
    with pytest.raises(DatabaseUnavailable, match="orch init"):
        load(bare)
    assert not bare.state_dir.exists()


def test_the_example_project_validates_and_loads_cleanly(project: Project,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    example = REPO / "docs" / "examples"
    # As a user runs it: with the virtual environment active, so ruff and pytest (the example's
    # commands) are on PATH; without them `program_not_found` warns, as it should.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for part in ("src", "tests"):
        shutil.copytree(example / part, project.root / part)
    shutil.copytree(example / "tasks", project.tasks_dir, dirs_exist_ok=True)
    from kernel.definitions.check import validate

    # Its tasks need cap-aider-001: a program that exists stands in for Aider, so this machine
    # meets it (else `capability_unoffered` warns, as it should without Aider).
    config = project.config_path.read_text().replace(
        'executable = "aider"', f"executable = {json.dumps(sys.executable)}")
    project.config_path.write_text(config)
    assert validate(project).problems == []
    report = load(project, workers=1)
    assert report.warnings == [] and report.tasks_created == 5
    assert report.workstreams_ready == ["add-verbose-flag"]
    assert query(project, "SELECT count(*) FROM task_dependency") == [(5,)]
    assert query(project, "SELECT depends_on FROM task_dependency "
                          "WHERE task_id = 'lint-greet'") == [("implement-verbose-flag",)]


def test_parsing_in_worker_processes_gives_the_same_result(small_project: Project,
                                                           monkeypatch) -> None:
    from kernel.definitions import check, taskfiles

    monkeypatch.setattr(taskfiles, "CHUNK_FILES", 1)
    write_task(small_project, task_doc("bad", ws="ws1", status="x"))
    serial = check.collect(small_project, workers=1)
    parallel = check.collect(small_project, workers=2)
    assert parallel.tasks == serial.tasks and parallel.problems == serial.problems


# --------------------------------------------------------------------------- CLI


def test_cli_load_success_and_failure(small_project: Project,
                                      capsys: pytest.CaptureFixture) -> None:
    root = str(small_project.root)
    assert run_cli("--root", root, "load", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["tasks"] == {"created": 4, "updated": [], "unchanged": 0, "migrated_from_v1": 0}
    assert doc["workstreams"]["ready"] == ["ws1", "ws2"]
    assert run_cli("--root", root, "load") == 0
    assert "nothing changed" in capsys.readouterr().out
    write_task(small_project, task_doc("x", ws="ws1", dependencies=["ghost"]))
    assert run_cli("--root", root, "--json", "load") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["error"]["code"] == "invalid_definitions"
    assert [p["code"] for p in doc["problems"]] == ["unknown_dependency"]
    assert run_cli("--root", root, "load") == 1
    out = capsys.readouterr().out
    assert "tasks/ws1/x.json" in out and "nothing was loaded" in out


def test_cli_migrate_tasks(project: Project, capsys: pytest.CaptureFixture) -> None:
    root = str(project.root)
    path = write_task(project, task_doc("a", schema_version="1.0.0", type="pytest"))
    original = path.read_bytes()
    assert run_cli("--root", root, "--json", "migrate-tasks", "--dry-run") == 0
    assert json.loads(capsys.readouterr().out)["changed"] == ["ws/a.json"]
    assert path.read_bytes() == original
    assert run_cli("--root", root, "--json", "migrate-tasks", "--from", "1.0.0",
                   "--to", "2.0.0") == 0
    backup = json.loads(capsys.readouterr().out)["backup"]
    assert json.loads(path.read_text())["schema_version"] == "2.0.0"
    assert run_cli("--root", root, "--json", "migrate-tasks", "--restore-backup") == 0
    assert json.loads(capsys.readouterr().out)["backup"] == Path(backup).name
    assert path.read_bytes() == original
    assert run_cli("--root", root, "migrate-tasks", "--to", "3.0.0") == 2
    assert run_cli("--root", root, "migrate-tasks", "--restore-backup", "nope") == 1


def test_a_database_error_is_not_a_traceback(small_project: Project) -> None:
    load(small_project, workers=1)
    conn = apsw.Connection(str(small_project.db_path))
    conn.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
    try:
        (small_project.root / "orch.toml").write_text("[database]\nbusy_timeout_ms = 50\n")
        write_task(small_project, task_doc("x", ws="ws1"))
        assert run_cli("--root", str(small_project.root), "load") == 3
    finally:
        conn.execute("ROLLBACK")
        conn.close()
