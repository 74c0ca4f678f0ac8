"""orch validate: one test per problem code (exact code, file, JSON path, severity), every problem
reported at once, nothing written, the --json shape and the exit codes. Real files in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kernel.definitions.check import CODES, ValidationProblem, validate
from kernel.definitions.load import load
from kernel.store.project import Project

from .conftest import logical_dump, orch_json, run_cli


def task_doc(task_id: str, ws: str = "ws", **fields: Any) -> dict[str, Any]:
    """A minimal valid v2 task; ``fields`` override or add top-level keys."""
    return {
        "schema_version": "2.0.0",
        "task_id": task_id,
        "workstream_id": ws,
        "name": f"Task {task_id}",
        "type": "custom",
        "execution": {"command": f"echo {task_id}"},
    } | fields


def write_task(project: Project, doc: dict[str, Any] | None = None, *, ws: str | None = None,
               name: str | None = None, text: str | None = None) -> Path:
    """Write tasks/<ws>/<name>.json (directory and name default to the document's ids)."""
    assert doc is not None or (ws and name)
    ws = ws or doc["workstream_id"]  # type: ignore[index]
    name = name or doc["task_id"]  # type: ignore[index]
    path = project.tasks_dir / ws / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else json.dumps(doc, indent=2) + "\n")
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based number of the first line of ``path`` that contains ``needle``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def problems_of(project: Project, *paths: str | Path) -> list[ValidationProblem]:
    return validate(project, [str(p) for p in paths] or None, workers=1).problems


def only(problems: list[ValidationProblem], code: str) -> ValidationProblem:
    found = [p for p in problems if p.code == code]
    assert len(found) == 1, (code, [p.as_dict() for p in problems])
    assert found[0].severity == CODES[code]
    return found[0]


def test_a_valid_project_has_no_problems(project: Project) -> None:
    write_task(project, task_doc("a"))
    write_task(project, task_doc("b", dependencies=["a"]))
    result = validate(project)
    assert result.ok and result.problems == []
    assert result.counts() == {"errors": 0, "warnings": 0, "files": 2, "tasks": 2,
                               "workstreams": 1, "migrated": 0}


# --------------------------------------------------------------------------- one test per code


def test_json_syntax_has_line_and_column(project: Project) -> None:
    write_task(project, ws="ws", name="a", text='{\n  "task_id": "a",\n  "name": "A",,\n}\n')
    p = only(problems_of(project), "json_syntax")
    assert (p.file, p.line, p.column, p.path) == ("tasks/ws/a.json", 3, 15, "")  # the second comma
    assert p.hint and "JSON" in p.hint


def test_schema_one_problem_per_pydantic_error_with_path_line_and_hint(project: Project) -> None:
    doc = task_doc("a", dependecies=["x"])
    doc["execution"] = {"command": "run", "timeout_seconds": -5}
    path = write_task(project, doc)
    problems = problems_of(project)
    assert {(p.code, p.path) for p in problems} == {
        ("schema", "dependecies"), ("schema", "execution.timeout_seconds")}
    timeout = next(p for p in problems if p.path == "execution.timeout_seconds")
    assert timeout.file == "tasks/ws/a.json"
    assert timeout.line == line_of(path, '"timeout_seconds"')
    assert "greater than 0" in timeout.message
    assert timeout.hint and "Wall-clock" in timeout.hint  # the field's description
    typo = next(p for p in problems if p.path == "dependecies")
    assert "did you mean 'dependencies'" in typo.message


def test_unsupported_schema_version(project: Project) -> None:
    write_task(project, task_doc("a", schema_version="3.0.0"))
    p = only(problems_of(project), "unsupported_schema_version")
    assert (p.file, p.path, p.line) == ("tasks/ws/a.json", "schema_version", 2)


def test_file_name_mismatch(project: Project) -> None:
    write_task(project, task_doc("a"), name="b")
    p = only(problems_of(project), "file_name_mismatch")
    assert (p.file, p.path) == ("tasks/ws/b.json", "task_id")
    assert "b.json" in p.message and p.hint and "a.json" in p.hint


def test_wrong_directory(project: Project) -> None:
    write_task(project, task_doc("a", ws="ws"), ws="other")
    p = only(problems_of(project), "wrong_directory")
    assert (p.file, p.path) == ("tasks/other/a.json", "workstream_id")
    assert "tasks/ws/" in p.message


def test_a_task_file_directly_in_tasks_is_in_the_wrong_directory(project: Project) -> None:
    (project.tasks_dir / "a.json").write_text(json.dumps(task_doc("a")))
    p = only(problems_of(project), "wrong_directory")
    assert p.file == "tasks/a.json"


def test_duplicate_task_id_names_both_files(project: Project) -> None:
    write_task(project, task_doc("a", ws="ws1"))
    write_task(project, task_doc("a", ws="ws2"))
    p = only(problems_of(project), "duplicate_task_id")
    assert (p.file, p.path) == ("tasks/ws2/a.json", "task_id")
    assert "tasks/ws1/a.json" in p.message and "tasks/ws2/a.json" in p.message


def test_unknown_dependency_in_dependencies_and_in_blocks(project: Project) -> None:
    write_task(project, task_doc("build"))
    write_task(project, task_doc("a", dependencies=["build", "biuld"], blocks=["ghost"]))
    problems = [p for p in problems_of(project) if p.code == "unknown_dependency"]
    assert {(p.file, p.path) for p in problems} == {
        ("tasks/ws/a.json", "dependencies[1]"), ("tasks/ws/a.json", "blocks[0]")}
    typo = next(p for p in problems if p.path == "dependencies[1]")
    assert typo.hint == "did you mean 'build'?"


def test_dependencies_may_cross_workstreams(project: Project) -> None:
    write_task(project, task_doc("a", ws="ws1"))
    write_task(project, task_doc("b", ws="ws2", dependencies=["a"]))
    assert problems_of(project) == []


def test_dependency_cycle_is_named_in_order(project: Project) -> None:
    write_task(project, task_doc("a", dependencies=["c"]))
    write_task(project, task_doc("b", ws="ws2", dependencies=["a"]))  # across workstreams
    write_task(project, task_doc("c", dependencies=["b"]))
    write_task(project, task_doc("d", dependencies=["a"]))  # downstream, not in the cycle
    p = only(problems_of(project), "dependency_cycle")
    assert "a -> b -> c -> a" in p.message
    assert (p.file, p.path) == ("tasks/ws/a.json", "dependencies[0]")


def test_every_independent_cycle_is_reported_also_through_blocks(project: Project) -> None:
    write_task(project, task_doc("a", dependencies=["b"]))
    write_task(project, task_doc("b", dependencies=["a"]))
    write_task(project, task_doc("x", blocks=["y"]))
    write_task(project, task_doc("y", blocks=["x"]))
    cycles = [p for p in problems_of(project) if p.code == "dependency_cycle"]
    assert sorted(p.message.split(" (")[0] for p in cycles) == [
        "dependency cycle: a -> b -> a", "dependency cycle: x -> y -> x"]
    blocks = next(p for p in cycles if "x -> y" in p.message)
    assert (blocks.file, blocks.path) == ("tasks/ws/y.json", "blocks[0]")


def _registry_with_deprecated(project: Project) -> None:
    path = project.capabilities_dir / "registry.yaml"
    path.write_text(path.read_text() + """
  - capability_id: cap-aider-000
    name: OldAider
    version: 0.9.0
    deprecated_by: cap-aider-001
    stability: deprecated
    since_version: 0.0.1
""")


def test_unknown_capability_is_a_warning(project: Project) -> None:
    # A worker started with --capability cap-nope@1.0.0 can still run it: loaded, said aloud.
    write_task(project, task_doc("a", worker_requirements={"capabilities": ["RuffLinting",
                                                                            "cap-nope"]}))
    result = validate(project, workers=1)
    p = only(result.problems, "unknown_capability")
    assert (p.file, p.path, p.severity) == (
        "tasks/ws/a.json", "worker_requirements.capabilities[1]", "warning")
    assert p.hint and "cap-ruff-001" in p.hint
    assert result.ok
    assert load(project, workers=1).tasks_created == 1


def test_deprecated_capability_is_a_warning(project: Project) -> None:
    _registry_with_deprecated(project)
    write_task(project, task_doc("a", worker_requirements={"capabilities": ["cap-aider-000"]}))
    result = validate(project)
    p = only(result.problems, "deprecated_capability")
    assert (p.file, p.path, p.severity) == (
        "tasks/ws/a.json", "worker_requirements.capabilities[0]", "warning")
    assert p.hint == "use 'cap-aider-001' instead"
    assert result.ok


def test_unknown_resource(project: Project) -> None:
    write_task(project, task_doc("a", resource_requirements={"gpu": 1}))
    p = only(problems_of(project), "unknown_resource")
    assert (p.file, p.path) == ("tasks/ws/a.json", "resource_requirements.gpu")


def test_impossible_resource_amount(project: Project) -> None:
    write_task(project, task_doc("a", resource_requirements={"cpu_cores": 99}))
    p = only(problems_of(project), "impossible_resource_amount")
    assert (p.file, p.path) == ("tasks/ws/a.json", "resource_requirements.cpu_cores")
    assert "1 to 4" in p.message


def test_resource_mode_mismatch(project: Project) -> None:
    write_task(project, task_doc("a", resource_requirements={
        "cpu_cores": "exclusive", "git_repo_write": 1, "git_repo_read": "exclusive"}))
    found = [p for p in problems_of(project) if p.code == "resource_mode_mismatch"]
    assert sorted(p.path for p in found) == [
        "resource_requirements.cpu_cores", "resource_requirements.git_repo_read",
        "resource_requirements.git_repo_write"]


def test_required_file_missing(project: Project) -> None:
    (project.root / "src").mkdir()
    (project.root / "src" / "ok.py").write_text("")
    write_task(project, task_doc("a", type="custom", context_requirements={
        "required_files": ["src/ok.py", "src/gone.py"], "optional_files": ["src/later.py"]}))
    p = only(problems_of(project), "required_file_missing")
    assert (p.file, p.path) == ("tasks/ws/a.json", "context_requirements.required_files[1]")
    assert p.severity == "error"


def test_a_file_an_agent_is_to_create_is_a_warning(project: Project) -> None:
    # An agent task's required file that does not exist yet: the agent may create it.
    write_task(project, task_doc("a", type="aider", context_requirements={
        "required_files": ["src/new.py"]}))
    p = only(problems_of(project), "required_file_new")
    assert (p.severity, p.path) == ("warning", "context_requirements.required_files[0]")
    assert "may create it" in p.message


def test_path_escapes_root_through_a_symlink(project: Project, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("")
    (project.root / "vendor").symlink_to(outside)
    write_task(project, task_doc("a", type="aider", context_requirements={
        "required_files": ["vendor/secret.py"]}))
    p = only(problems_of(project), "path_escapes_root")
    assert (p.file, p.path) == ("tasks/ws/a.json", "context_requirements.required_files[0]")
    assert str(outside) in p.message


def test_a_task_file_symlinked_from_outside_escapes_the_root(project: Project,
                                                             tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(task_doc("evil")))
    (project.tasks_dir / "ws").mkdir()
    (project.tasks_dir / "ws" / "evil.json").symlink_to(target)
    p = only(problems_of(project), "path_escapes_root")
    assert p.file == "tasks/ws/evil.json"


def test_status_not_pending(project: Project) -> None:
    path = write_task(project, task_doc("a", status="running"))
    p = only(problems_of(project), "status_not_pending")
    assert (p.file, p.path, p.line) == ("tasks/ws/a.json", "status", line_of(path, "status"))


def test_registry_invalid_yaml_syntax_has_a_line(project: Project) -> None:
    (project.capabilities_dir / "resources.yaml").write_text(
        "resources:\n  - resource_id: x\n    type: [unclosed\n")
    p = only(problems_of(project), "registry_invalid")
    assert p.file == "capabilities/resources.yaml"
    assert p.line == 4


def test_registry_invalid_schema_has_path_and_line(project: Project) -> None:
    (project.capabilities_dir / "registry.yaml").write_text(
        "capabilities:\n  - capability_id: cap-x-001\n    name: X\n    version: 1.0.0\n"
        "    deprecated_by: null\n    since_version: 0.1.0\n")
    p = only(problems_of(project), "registry_invalid")
    assert (p.file, p.path, p.line) == (
        "capabilities/registry.yaml", "capabilities[0].stability", 2)


def test_registry_default_is_a_warning(project: Project) -> None:
    (project.capabilities_dir / "resources.yaml").unlink()
    write_task(project, task_doc("a", resource_requirements={"cpu_cores": 1}))
    result = validate(project)
    p = only(result.problems, "registry_default")
    assert p.file == "capabilities/resources.yaml"
    assert result.ok


def test_workstream_file_invalid(project: Project) -> None:
    write_task(project, task_doc("a"))
    (project.tasks_dir / "ws" / "workstream.json").write_text(
        json.dumps({"workstream_id": "ws", "max_parallelism": 0}, indent=2))
    (project.tasks_dir / "other").mkdir()
    (project.tasks_dir / "other" / "workstream.json").write_text(
        json.dumps({"workstream_id": "not-other"}))
    found = [p for p in problems_of(project) if p.code == "workstream_file_invalid"]
    assert sorted((p.file, p.path, p.line) for p in found) == [
        ("tasks/other/workstream.json", "workstream_id", 1),
        ("tasks/ws/workstream.json", "max_parallelism", 3)]


def test_v1_files_validate_and_are_counted(project: Project) -> None:
    write_task(project, task_doc("a", schema_version="1.0.0", type="aider"))
    result = validate(project)
    assert result.ok and result.counts()["migrated"] == 1


# --------------------------------------------------------------------------- all at once


def test_every_problem_is_reported_in_one_run(project: Project) -> None:
    write_task(project, ws="ws", name="broken", text="{")
    write_task(project, task_doc("a", dependencies=["nope"], status="done"))
    write_task(project, task_doc("b", resource_requirements={"cpu_cores": 99, "gpu": 1},
                                 worker_requirements={"capabilities": ["cap-nope"]},
                                 context_requirements={"required_files": ["missing.py"]},
                                 execution={"command": "x", "timeout_seconds": 0}))
    write_task(project, task_doc("c"), name="see")
    write_task(project, task_doc("x", dependencies=["y"]))
    write_task(project, task_doc("y", dependencies=["x"]))
    codes = sorted(p.code for p in problems_of(project))
    assert codes == sorted([
        "json_syntax", "status_not_pending", "impossible_resource_amount", "unknown_resource",
        "unknown_capability", "required_file_missing", "schema", "file_name_mismatch",
        "dependency_cycle"])  # a's unknown dependency: a is invalid, so it has no record
    write_task(project, task_doc("a", dependencies=["nope"]))
    assert "unknown_dependency" in {p.code for p in problems_of(project)}


def test_paths_may_be_files_or_directories(project: Project) -> None:
    write_task(project, task_doc("a", ws="ws1"))
    bad = write_task(project, task_doc("b", ws="ws2", status="x"))
    assert problems_of(project, project.tasks_dir / "ws1") == []
    assert [p.code for p in problems_of(project, bad)] == ["status_not_pending"]
    assert [p.code for p in problems_of(project, project.root)] == ["status_not_pending"]
    missing = problems_of(project, project.root / "nowhere")
    assert [p.code for p in missing] == ["file_unreadable"]


def test_registries_may_be_given_as_paths(project: Project, tmp_path: Path) -> None:
    write_task(project, task_doc("a", resource_requirements={"cpu_cores": 6}))
    assert [p.code for p in problems_of(project)] == ["impossible_resource_amount"]
    bigger = project.root / "big-resources.yaml"
    bigger.write_text((project.capabilities_dir / "resources.yaml").read_text().replace(
        "    capacity: 8\n    min_per_task: 1\n    max_per_task: 4",
        "    capacity: 8\n    min_per_task: 1\n    max_per_task: 8"))
    assert problems_of(project, project.tasks_dir, bigger) == []
    assert [p.code for p in problems_of(project, project.capabilities_dir)] == []
    (project.tasks_dir / "notes.yaml").write_text("not: a registry\n")  # not read, but said
    assert [p.code for p in problems_of(project)] == ["not_a_task_file",
                                                      "impossible_resource_amount"]


def test_a_missing_field_points_at_the_object_that_lacks_it(project: Project) -> None:
    doc = task_doc("a")
    doc["execution"] = {"timeout_seconds": 60}
    path = write_task(project, doc)
    p = only(problems_of(project), "schema")
    assert (p.path, p.line) == ("execution.command", line_of(path, '"execution"'))


def test_the_backups_of_migrate_tasks_are_ignored(project: Project) -> None:
    write_task(project, task_doc("a"))
    backup = project.tasks_dir / ".backups" / "20260101T000000Z" / "ws"
    backup.mkdir(parents=True)
    (backup / "a.json").write_text("{ not json")
    assert problems_of(project) == []


# --------------------------------------------------------------------------- writes nothing


def test_validate_does_not_create_the_state_directory(tmp_path: Path) -> None:
    bare = Project(tmp_path / "bare")
    write_task(bare, task_doc("a"))
    result = validate(bare)
    assert [p.code for p in result.problems] == ["registry_default", "registry_default"]
    assert not bare.state_dir.exists()


def test_validate_leaves_the_database_unchanged(project: Project) -> None:
    write_task(project, task_doc("a"))
    load(project, workers=1)
    write_task(project, task_doc("a", name="renamed"))
    write_task(project, task_doc("b", dependencies=["a", "nope"]))
    before = logical_dump(project.db_path)
    assert not validate(project).ok
    assert logical_dump(project.db_path) == before


def test_validate_resolves_dependencies_on_loaded_tasks(project: Project) -> None:
    write_task(project, task_doc("a", ws="ws1"))
    load(project, workers=1)
    later = write_task(project, task_doc("b", ws="ws2", dependencies=["a"]))
    assert problems_of(project, later) == []


def test_task_file_missing_is_a_warning(project: Project) -> None:
    path = write_task(project, task_doc("a"))
    write_task(project, task_doc("b"))
    load(project, workers=1)
    path.unlink()
    p = only(problems_of(project), "task_file_missing")
    assert p.file == "tasks/ws/a.json" and "kept" in p.message


# --------------------------------------------------------------------------- CLI


def test_cli_json_shape_and_exit_codes(project: Project, capsys: pytest.CaptureFixture) -> None:
    root = str(project.root)
    path = write_task(project, task_doc("a", resource_requirements={"gpu": 1}))
    line = line_of(path, '"gpu"')
    assert run_cli("--root", root, "validate", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["counts"] == {"errors": 1, "warnings": 0, "files": 1, "tasks": 1,
                             "workstreams": 1, "migrated": 0}
    assert doc["problems"] == [{
        "code": "unknown_resource", "severity": "error", "file": "tasks/ws/a.json",
        "line": line, "column": None, "path": "resource_requirements.gpu",
        "message": "unknown resource 'gpu'", "hint": doc["problems"][0]["hint"]}]
    _registry_with_deprecated(project)
    path = write_task(project, task_doc("a", worker_requirements={
        "capabilities": ["cap-aider-000"]}))
    assert run_cli("--root", root, "validate") == 0  # warnings alone
    out = capsys.readouterr().out
    assert f"tasks/ws/a.json:{line_of(path, 'cap-aider-000')}" in out
    assert "[deprecated_capability]" in out and "hint:" in out
    os.remove(project.tasks_dir / "ws" / "a.json")
    assert run_cli("--root", root, "--json", "validate") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_cli_text_groups_problems_by_file(project: Project,
                                          capsys: pytest.CaptureFixture) -> None:
    write_task(project, task_doc("a", status="x"))
    write_task(project, task_doc("b", resource_requirements={"gpu": 1}))
    assert run_cli("--root", str(project.root), "validate") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tasks/ws/a.json"
    assert "tasks/ws/b.json" in out
    assert out[-1].endswith("2 errors, 0 warnings")


def test_the_real_orch_command(project: Project) -> None:
    write_task(project, task_doc("a", dependencies=["a2"]))
    shutil.copytree(project.tasks_dir, project.root / "copy")
    code, doc = orch_json("validate", "tasks", cwd=project.root)
    assert code == 1
    assert [(p["code"], p["file"], p["path"]) for p in doc["problems"]] == [
        ("unknown_dependency", "tasks/ws/a.json", "dependencies[0]")]


def test_parsing_lives_in_taskfiles_and_check_still_exports_the_records(project: Project
                                                                          ) -> None:
    from kernel.definitions import check, records, taskfiles

    for name in ("ValidationProblem", "TaskRecord", "WorkstreamRecord", "CODES", "ERROR",
                 "WARNING"):
        assert getattr(check, name) is getattr(records, name)
    path = write_task(project, text='{\n  "task_id": "a",\n}\n', ws="ws", name="a")
    ctx = records.ParseContext(str(project.root), os.path.realpath(project.root), None, None)
    record, problems = taskfiles.parse_task(str(path), "tasks/ws/a.json", ctx)
    assert record is None
    assert [(p.code, p.line, p.column) for p in problems] == [("json_syntax", 3, 1)]


def test_discover_finds_the_files_and_opens_none(project: Project) -> None:
    from kernel.definitions.discover import discover

    task = write_task(project, task_doc("a"))
    ws_file = task.parent / "workstream.json"
    ws_file.write_text('{"workstream_id": "ws"}')
    write_task(project, ws=".backups", name="old")  # dot-entries are not definitions
    os.mkfifo(task.parent / "pipe.json")  # reported, never opened (it would block)
    found = discover(project)
    assert found.tasks == [(str(task), "tasks/ws/a.json")]
    assert found.workstreams == {str(task.parent): (str(ws_file), "tasks/ws/workstream.json")}
    assert [(p.code, p.file) for p in found.problems] == [
        ("not_a_regular_file", "tasks/ws/pipe.json")]
    given = discover(project, [task])  # a task file brings its workstream.json
    assert given.tasks == found.tasks and given.workstreams == found.workstreams


def test_problems_are_listed_by_file_line_path_and_code() -> None:
    from kernel.definitions.records import problem_order

    problems = [ValidationProblem("schema", "b.json", "x", "m", line=1),
                ValidationProblem("schema", "a.json", "y", "m", line=9),
                ValidationProblem("schema", "a.json", "x", "m", line=9),
                ValidationProblem("json_syntax", "a.json", "", "m", line=2),
                ValidationProblem("registry_default", None, "", "m")]
    assert [(p.file, p.line, p.path) for p in sorted(problems, key=problem_order)] == [
        (None, None, ""), ("a.json", 2, ""), ("a.json", 9, "x"), ("a.json", 9, "y"),
        ("b.json", 1, "x")]


def test_a_parse_layer_problem_keeps_its_position() -> None:
    from kernel.base.formats import parse_json
    from kernel.definitions.records import document_problem

    _, flaws = parse_json(b'{\n  "a": 1,\n  "a": 2\n}', "tasks/ws/a.json")
    problem = document_problem(flaws[0], "tasks/ws/a.json")
    assert (problem.code, problem.file, problem.path, problem.line, problem.severity) == (
        "duplicate_key", "tasks/ws/a.json", "a", 3, "error")
    assert problem.hint == flaws[0].hint


def test_the_checks_beyond_the_schema_run_on_a_model_and_on_a_broken_document(
        project: Project) -> None:
    from kernel.definitions.models import TaskDefinition
    from kernel.definitions.records import ParseContext
    from kernel.definitions.task_checks import TaskFileProblems, check_document, check_model

    path = write_task(project, task_doc("a"), name="b")
    ctx = ParseContext(str(project.root), os.path.realpath(project.root), None, None)
    on_model = TaskFileProblems(str(path), "tasks/ws/b.json")
    on_model.raw = path.read_bytes()
    check_model(on_model, TaskDefinition.model_validate(task_doc("a")), ctx)
    on_raw = TaskFileProblems(str(path), "tasks/ws/b.json")
    on_raw.raw = path.read_bytes()
    check_document(on_raw, task_doc("a", type=5), ctx)
    assert on_model.problems == on_raw.problems
    assert [(p.code, p.path, p.line) for p in on_model.problems] == [
        ("file_name_mismatch", "task_id", line_of(path, '"task_id"'))]
