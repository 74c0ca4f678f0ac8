"""What a task file may leave out: the ids (from its path), the name (its id), the type (custom),
and whatever its workstream file's ``task_defaults`` give (kernel.definitions.defaults). The
loaded definition is the effective one, its sha256 follows the defaults, and the parse cache
re-parses the tasks of a workstream whose defaults changed. Real files, real databases."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kernel.definitions import parsecache
from kernel.definitions.collect import collect
from kernel.definitions.load import load
from kernel.store.project import Project

from .conftest import orch, orch_json
from .test_validate import line_of, only, problems_of


def write(project: Project, rel: str, doc: dict[str, Any] | str) -> Path:
    path = project.tasks_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2) + "\n")
    return path


def definitions(project: Project) -> dict[str, dict[str, Any]]:
    """task_id -> the stored (effective) definition, as `orch show` reads it."""
    conn = project.connect(readonly=True)
    try:
        return {t: json.loads(d) for t, d in conn.execute(
            "SELECT task_id, definition FROM task")}
    finally:
        conn.close()


def effective(project: Project, task_id: str) -> dict[str, Any]:
    record = next(t for t in collect(project, workers=1).tasks if t.task_id == task_id)
    return json.loads(record.definition)


# --------------------------------------------------------------------------- from the path


def test_a_task_file_needs_only_its_execution(project: Project) -> None:
    write(project, "build/compile.json", {"execution": {"command": "make"}})
    assert problems_of(project) == []
    task = effective(project, "compile")
    assert (task["task_id"], task["workstream_id"], task["name"], task["type"]) == (
        "compile", "build", "compile", "custom")
    assert task["validation_rules"] == {"pre_execution": [], "post_execution": []}


def test_the_ids_given_must_still_match_the_path(project: Project) -> None:
    path = write(project, "build/compile.json",
                 {"task_id": "other", "workstream_id": "elsewhere",
                  "execution": {"command": "make"}})
    problems = problems_of(project)
    mismatch = only(problems, "file_name_mismatch")
    assert (mismatch.file, mismatch.path, mismatch.line) == (
        "tasks/build/compile.json", "task_id", line_of(path, '"task_id"'))
    assert "leave it out" in (mismatch.hint or "")
    wrong = only(problems, "wrong_directory")
    assert (wrong.file, wrong.path, wrong.line) == (
        "tasks/build/compile.json", "workstream_id", line_of(path, '"workstream_id"'))


def test_a_file_outside_a_workstream_directory_gets_no_workstream(project: Project) -> None:
    write(project, "loose.json", {"execution": {"command": "make"}})
    problem = only(problems_of(project), "schema")
    assert (problem.file, problem.path) == ("tasks/loose.json", "workstream_id")
    assert "tasks/{workstream}/{task}.json" in problem.message


def test_a_file_name_that_is_no_id_is_reported_at_task_id(project: Project) -> None:
    write(project, "build/two words.json", {"execution": {"command": "make"}})
    problem = only(problems_of(project), "schema")
    assert (problem.file, problem.path) == ("tasks/build/two words.json", "task_id")
    assert "not a valid id" in problem.message


# --------------------------------------------------------------------------- workstream defaults

WS_DEFAULTS = {
    "task_defaults": {
        "execution": {"timeout_seconds": 120, "max_retries": 2, "retry_delay_seconds": 5},
        "validation_rules": {"post_execution": ["tests_passing"]},
        "worker_requirements": {"capabilities": ["cap-python-001"]},
        "resource_requirements": {"cpu_cores": 2},
    }
}


def test_a_field_the_task_gives_wins_field_by_field(project: Project) -> None:
    write(project, "ws/workstream.json", WS_DEFAULTS)
    write(project, "ws/plain.json", {"execution": {"command": "make"}})
    write(project, "ws/own.json", {
        "execution": {"command": "make", "max_retries": 0},
        "validation_rules": {"pre_execution": ["git_clean"]},
        "worker_requirements": {"capabilities": []},
        "resource_requirements": {"git_repo_write": "exclusive"},
    })
    assert [p for p in problems_of(project) if p.severity == "error"] == []
    plain, own = effective(project, "plain"), effective(project, "own")
    assert (plain["execution"]["timeout_seconds"], plain["execution"]["max_retries"],
            plain["execution"]["retry_delay_seconds"]) == (120, 2, 5)
    assert plain["validation_rules"]["post_execution"] == ["tests_passing"]
    assert plain["worker_requirements"]["capabilities"] == ["cap-python-001"]
    assert plain["resource_requirements"] == {"cpu_cores": 2}
    # own values win; the others still come from the workstream
    assert (own["execution"]["timeout_seconds"], own["execution"]["max_retries"]) == (120, 0)
    assert own["validation_rules"] == {"pre_execution": ["git_clean"],
                                       "post_execution": ["tests_passing"]}
    assert own["worker_requirements"]["capabilities"] == []  # a list is replaced, not merged
    assert own["resource_requirements"] == {"git_repo_write": "exclusive"}  # the whole map too


def test_precedence_is_task_then_workstream_then_type(project: Project) -> None:
    write(project, "ws/workstream.json", {"task_defaults": {
        "validation_rules": {"post_execution": ["tests_passing"]},
        "context_requirements": {"max_context_tokens": 16000},
        "execution": {"executor": "agent", "agent": "claude"}}})
    write(project, "ws/edit.json", {"type": "aider", "execution": {"executor": "aider",
                                                                   "prompt": "Do it"}})
    write(project, "ws/check.json", {"type": "pytest", "execution": {
        "command": "pytest", "executor": "pytest"}})
    write(project, "ws/slow.json", {"execution": {"prompt": "Think", "max_runtime_seconds": 9}})
    edit, check, slow = (effective(project, t) for t in ("edit", "check", "slow"))
    # aider's type default pre_execution stays; the workstream's post_execution replaces its own
    assert edit["validation_rules"] == {"pre_execution": ["git_clean"],
                                        "post_execution": ["tests_passing"]}
    assert edit["context_requirements"]["max_context_tokens"] == 16000
    assert edit["context_requirements"]["exclude_patterns"]  # the type default's, kept
    assert edit["execution"]["agent"] is None  # a default agent only for the agent executor
    assert check["context_requirements"] is None  # context defaults only reach agent tasks
    assert (slow["execution"]["executor"], slow["execution"]["agent"]) == ("agent", "claude")
    assert slow["execution"]["timeout_seconds"] == 9  # the alias counts as the task's own


def test_bad_defaults_are_errors_of_the_workstream_file(project: Project) -> None:
    path = write(project, "ws/workstream.json", {"task_defaults": {
        "execution": {"timeout_seconds": -1, "command": "make"}}})
    write(project, "ws/t.json", {"execution": {"command": "make"}})
    problems = [p for p in problems_of(project) if p.code == "workstream_file_invalid"]
    assert {(p.file, p.path, p.line) for p in problems} == {
        ("tasks/ws/workstream.json", "task_defaults.execution.timeout_seconds",
         line_of(path, "timeout_seconds")),
        ("tasks/ws/workstream.json", "task_defaults.execution.command", line_of(path, "command")),
    }
    assert "unknown field 'command'" in next(p.message for p in problems if "command" in p.path)


def test_show_prints_the_effective_definition(project: Project) -> None:
    write(project, "ws/workstream.json", WS_DEFAULTS)
    write(project, "ws/t.json", {"execution": {"command": "make"}})
    orch("--root", str(project.root), "load", check=True)
    code, shown = orch_json("--root", str(project.root), "show", "t")
    assert code == 0
    assert shown["definition"]["execution"]["timeout_seconds"] == 120
    assert shown["definition"]["resource_requirements"] == {"cpu_cores": 2}


def test_a_changed_default_changes_the_definition_and_a_reload_picks_it_up(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsecache, "RACY_SECONDS", 0.0)
    ws_file = write(project, "ws/workstream.json", WS_DEFAULTS)
    for name in ("a", "b"):
        write(project, f"ws/{name}.json", {"execution": {"command": "make"}})
    write(project, "other/c.json", {"execution": {"command": "make"}})
    past = os.stat(ws_file).st_mtime - 10
    for path in project.tasks_dir.rglob("*.json"):
        os.utime(path, (past, past))
    first = load(project, workers=1)
    assert first.tasks_created == 3
    assert collect(project, workers=1).cached == 3
    changed = json.loads(json.dumps(WS_DEFAULTS))
    changed["task_defaults"]["execution"]["timeout_seconds"] = 300
    ws_file.write_text(json.dumps(changed))
    defs = collect(project, workers=1)
    assert defs.cached == 1  # only the other workstream's task came from the cache
    report = load(project, workers=1)
    assert sorted(report.tasks_updated) == ["a", "b"] and report.tasks_unchanged == 1
    assert definitions(project)["a"]["execution"]["timeout_seconds"] == 300
    assert load(project, workers=1).changed is False  # and then it is a no-op again


def test_a_workstream_file_without_defaults_keeps_its_stored_form(project: Project) -> None:
    """No task_defaults: the stored workstream definition has no such key (old sha256 kept)."""
    write(project, "ws/workstream.json", {"workstream_id": "ws", "max_parallelism": 2})
    write(project, "ws/t.json", {"execution": {"command": "make"}})
    load(project, workers=1)
    conn = project.connect(readonly=True)
    try:
        (stored,) = conn.execute("SELECT definition FROM workstream").fetchone()
    finally:
        conn.close()
    assert "task_defaults" not in json.loads(stored)
