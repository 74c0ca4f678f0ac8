"""orch new WS/TASK: a minimal task file that validates, never over an existing task, nothing
left behind when refused, and a shell command that runs exactly as typed. The real CLI in
subprocesses, real git for the run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from kernel.store.project import Project

from .conftest import git, orch, orch_json
from .e2e import ORCH


def new(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return orch("--root", str(project.root), "new", *args)


def test_new_writes_a_minimal_valid_task_and_prints_its_path(project: Project) -> None:
    proc = new(project, "build/compile", "--cmd", "make -j4")
    assert (proc.returncode, proc.stdout) == (0, "tasks/build/compile.json\n")
    doc = json.loads((project.tasks_dir / "build" / "compile.json").read_text())
    assert doc == {"schema_version": "2.0.0",
                   "schema_url": "https://orch.dev/schemas/task/v2.0.0.json",
                   "execution": {"command": "make -j4"}}  # no id repeated, no shell needed
    assert orch("--root", str(project.root), "validate").returncode == 0


def test_new_json_prints_path_and_task(project: Project) -> None:
    new(project, "build/compile", "--cmd", "make")
    code, out = orch_json("--root", str(project.root), "new", "build/test", "--cmd", "make test",
                          "--after", "compile", "--after", "compile")
    assert code == 0
    assert out["path"] == "tasks/build/test.json"
    assert out["task"]["dependencies"] == ["compile"]
    assert out["task"] == json.loads((project.root / out["path"]).read_text())
    assert out["warnings"] == []


def test_new_refuses_to_overwrite_any_task_of_that_id(project: Project) -> None:
    new(project, "build/compile", "--cmd", "make")
    before = (project.tasks_dir / "build" / "compile.json").read_text()
    for target in ("build/compile", "other/compile"):
        code, out = orch_json("--root", str(project.root), "new", target, "--cmd", "rm -rf x")
        assert code == 1
        assert out["error"]["code"] == "task_exists"
        assert out["error"]["file"] == "tasks/build/compile.json"
        assert "never overwrites" in out["error"]["hint"]
    assert (project.tasks_dir / "build" / "compile.json").read_text() == before
    assert not (project.tasks_dir / "other").exists() or not any(
        (project.tasks_dir / "other").iterdir())


def test_a_task_that_would_not_validate_is_not_left_behind(project: Project) -> None:
    code, out = orch_json("--root", str(project.root), "new", "ws/t", "--cmd", "make",
                          "--after", "missing")
    assert code == 1
    assert (out["error"]["code"], out["error"]["file"]) == ("invalid_definitions",
                                                            "tasks/ws/t.json")
    assert "missing" in out["error"]["message"]
    assert not (project.tasks_dir / "ws" / "t.json").exists()


def test_options_that_do_not_fit_are_usage_errors(project: Project) -> None:
    for args in (["ws/t"], ["ws/t", "--cmd", "x", "--agent", "aider"], ["nows", "--cmd", "x"],
                 ["ws/t", "--cmd", "x", "--prompt", "p"], ["ws/bad id", "--cmd", "x"]):
        code, out = orch_json("--root", str(project.root), "new", *args)
        assert code == 2, args
        assert out["error"]["hint"]
    assert not any(project.tasks_dir.rglob("*.json"))


def test_new_agent_tasks(project: Project) -> None:
    (project.root / "src").mkdir()
    (project.root / "src" / "words.py").write_text("")
    code, out = orch_json("--root", str(project.root), "new", "edit/docstring", "--agent",
                          "aider", "--prompt", "Add a docstring", "--file", "src/words.py")
    assert code == 0
    assert out["task"]["type"] == "aider"
    assert out["task"]["execution"] == {"prompt": "Add a docstring"}
    assert out["task"]["context_requirements"] == {"required_files": ["src/words.py"]}
    code, out = orch_json("--root", str(project.root), "new", "edit/other", "--agent", "claude",
                          "--prompt", "Review")
    assert code == 0
    assert out["task"]["execution"] == {"executor": "agent", "agent": "claude",
                                        "prompt": "Review"}
    assert "agent_unconfigured" in {w["code"] for w in out["warnings"]}


def test_new_yaml_reads_back_as_written(project: Project) -> None:
    command = "echo yes no on 2024-01-01 1:30 0755 'a: b' # end"
    proc = new(project, "ws/t", "--cmd", command, "--yaml")
    assert (proc.returncode, proc.stdout) == (0, "tasks/ws/t.yaml\n")
    doc = yaml.safe_load((project.tasks_dir / "ws" / "t.yaml").read_text())
    assert doc["execution"] == {"command": command, "shell": True}
    assert orch("--root", str(project.root), "validate").returncode == 0


def test_a_command_with_quotes_backslash_and_home_runs_exactly_as_typed(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    orch("--root", str(root), "init", check=True)
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "init")
    command = """printf '%s|%s|%s\\n' "it's" 'say "hi"' "a\\\\b $HOME" > out.txt"""
    home = str(tmp_path / "home dir")
    expected = subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, check=True,
                              env={**os.environ, "HOME": home})
    assert expected.returncode == 0
    want = (tmp_path / "out.txt").read_text()
    assert want == f"it's|say \"hi\"|a\\b {home}\n"
    orch("--root", str(root), "new", "ws/quote", "--cmd", command, check=True)
    orch("--root", str(root), "load", check=True)
    run = subprocess.run([ORCH, "--root", str(root), "run", "--workers", "1"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": home})
    assert run.returncode == 0, run.stdout + run.stderr
    outputs = [p.read_text() for p in root.rglob("out.txt")]
    assert outputs and all(text == want for text in outputs), outputs
