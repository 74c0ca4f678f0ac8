"""YAML task and workstream files are first-class: the same definition as the JSON file, the
same line-numbered problems, and YAML's surprises (``on: yes``, dates, base 60, octal, keys
that are booleans, duplicate keys) refused with their line. Any other file under tasks/ is a
warning, never silence. Real files, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel.definitions.collect import collect
from kernel.store.project import Project

from .conftest import orch, orch_json
from .test_validate import only, problems_of


def write(project: Project, rel: str, text: str) -> Path:
    path = project.tasks_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


TASK_YAML = """\
# a comment, which JSON cannot have
name: Compile
dependencies: [prepare]
execution:
  command: make -j4
  timeout_seconds: 600
  max_retries: 1
"""
TASK_JSON = {"name": "Compile", "dependencies": ["prepare"],
             "execution": {"command": "make -j4", "timeout_seconds": 600, "max_retries": 1}}


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_a_yaml_task_is_the_same_task_as_its_json(project: Project, suffix: str) -> None:
    write(project, "build/prepare.json", json.dumps({"execution": {"command": "true"}}))
    write(project, f"build/compile{suffix}", TASK_YAML)
    yaml_record = next(t for t in collect(project, workers=1).tasks if t.task_id == "compile")
    (project.tasks_dir / "build" / f"compile{suffix}").unlink()
    write(project, "build/compile.json", json.dumps(TASK_JSON))
    json_record = next(t for t in collect(project, workers=1).tasks if t.task_id == "compile")
    assert yaml_record.definition == json_record.definition
    assert yaml_record.sha256 == json_record.sha256
    assert yaml_record.file == f"tasks/build/compile{suffix}"


def test_schema_problems_of_a_yaml_file_have_their_line(project: Project) -> None:
    write(project, "ws/t.yaml", "execution:\n  command: make\n\n  timeout_seconds: '60'\n"
          "prioritty: 3\n")
    problems = problems_of(project)
    timeout = next(p for p in problems if p.path == "execution.timeout_seconds")
    assert (timeout.code, timeout.file, timeout.line) == ("schema", "tasks/ws/t.yaml", 4)
    typo = next(p for p in problems if p.path == "prioritty")
    assert typo.line == 5 and "did you mean 'priority'" in typo.message


@pytest.mark.parametrize(("text", "path", "line", "words"), [
    ("execution:\n  command: make\n  shell: yes\n", "execution.shell", 3, "boolean true"),
    ("execution:\n  command: make\n  allow_no_change: off\n", "execution.allow_no_change", 3,
     "boolean false"),
    ("name: no\nexecution:\n  command: make\n", "name", 1, "boolean false"),
    ("description: 2024-01-01\nexecution:\n  command: make\n", "description", 1, "a date"),
    ("execution:\n  command: make\n  timeout_seconds: 1:30\n", "execution.timeout_seconds", 3,
     "base-60"),
    ("priority: 010\nexecution:\n  command: make\n", "priority", 1, "octal"),
    ("execution:\n  command: make\non: push\n", "on", 3, "the boolean true"),
])
def test_yaml_surprises_are_errors_with_their_line(project: Project, text: str, path: str,
                                                   line: int, words: str) -> None:
    write(project, "ws/t.yaml", text)
    problem = only(problems_of(project), "yaml_ambiguous")
    assert (problem.file, problem.path, problem.line) == ("tasks/ws/t.yaml", path, line)
    assert words in problem.message and problem.hint


def test_what_looks_like_what_it_is_stays_allowed(project: Project) -> None:
    write(project, "ws/t.yaml", 'name: "no"\ndescription: "2024-01-01"\npriority: 10\n'
          "critical: true\nexecution:\n  command: make\n  prompt: null\n"
          "  retry_delay_seconds: 1.5\n  allow_no_change: false\n")
    assert problems_of(project) == []


def test_yaml_document_problems_have_their_line(project: Project) -> None:
    write(project, "ws/dup.yaml", "execution:\n  command: make\n  command: other\n")
    write(project, "ws/syntax.yaml", "execution:\n  command: [make\n")
    write(project, "ws/alias.yaml", "execution: &x\n  command: make\nname: *x\n")
    write(project, "ws/list.yaml", "- execution\n")
    problems = {p.file: p for p in problems_of(project)}
    assert (problems["tasks/ws/dup.yaml"].code, problems["tasks/ws/dup.yaml"].line) == (
        "duplicate_key", 3)
    assert problems["tasks/ws/syntax.yaml"].code == "yaml_syntax"
    assert problems["tasks/ws/syntax.yaml"].line is not None
    assert problems["tasks/ws/alias.yaml"].code == "yaml_syntax"
    assert "a mapping" in problems["tasks/ws/list.yaml"].message


def test_a_yaml_workstream_file_gives_its_defaults(project: Project) -> None:
    write(project, "ws/workstream.yml", "max_parallelism: 2\ntask_defaults:\n  execution:\n"
          "    max_retries: 3\n")
    write(project, "ws/t.yaml", "execution:\n  command: make\n")
    defs = collect(project, workers=1)
    assert defs.workstreams["ws"].definition.max_parallelism == 2
    assert json.loads(defs.tasks[0].definition)["execution"]["max_retries"] == 3
    write(project, "ws/workstream.json", "{}")
    problem = only(problems_of(project), "workstream_file_invalid")
    assert "a second workstream file" in problem.message


def test_a_yaml_task_given_by_path_is_a_task_not_a_registry(project: Project) -> None:
    path = write(project, "ws/t.yaml", "execution:\n  command: make\n")
    assert problems_of(project, path) == []
    assert [t.task_id for t in collect(project, [str(path)], workers=1).tasks] == ["t"]


def test_the_same_id_in_json_and_yaml_is_a_duplicate(project: Project) -> None:
    write(project, "ws/t.json", json.dumps({"execution": {"command": "make"}}))
    write(project, "ws/t.yaml", "execution:\n  command: make\n")
    assert only(problems_of(project), "duplicate_task_id").file == "tasks/ws/t.yaml"


def test_every_other_file_under_tasks_is_a_warning(project: Project) -> None:
    write(project, "ws/t.json", json.dumps({"execution": {"command": "make"}}))
    write(project, "ws/README.md", "notes\n")
    write(project, "ws/t.json.bak", "{}\n")
    write(project, "notes.txt", "top level\n")
    write(project, "ws/.t.json.swp", "editor\n")  # dotfiles: an editor's, skipped
    write(project, ".backups/20260101/ws/t.json", "{}\n")  # orch migrate-tasks' backups
    code, result = orch_json("--root", str(project.root), "validate")
    assert code == 0, result
    warned = sorted((p["file"], p["severity"]) for p in result["problems"])
    assert warned == [("tasks/notes.txt", "warning"), ("tasks/ws/README.md", "warning"),
                      ("tasks/ws/t.json.bak", "warning")]
    assert {p["code"] for p in result["problems"]} == {"not_a_task_file"}
    loaded = orch("--root", str(project.root), "load")
    assert loaded.returncode == 0 and "tasks/ws/README.md" in loaded.stdout
