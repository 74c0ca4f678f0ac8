"""orch demo through the real console script: a generated git project whose workstream is run
by `orch run` (agent edits against a scripted model on 127.0.0.1, tests, lint, a task that
fails once and is retried, two branches side by side), merged into main, and kept in a new
directory (or with --temp removed again); and `orch demo --agent aider` with the real Aider
CLI."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernel.definitions.models import WorkstreamDefinition
from kernel.definitions.task_documents import parse_task
from kernel.demo import (
    AGENT_TASKS,
    BRANCHES,
    FLAKY_TASK,
    WORKSTREAM,
    DemoModel,
    DemoTools,
    detect_tools,
    example_project_files,
    example_task_files,
)
from kernel.planning.dag import PlanTask, execution_plan

from .conftest import orch, orch_json, run_cli

TASK_IDS = {name.removesuffix(".json") for name in example_task_files()} - {"workstream"}


def _git(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True, env=env).stdout


def test_the_example_definitions_are_realistic() -> None:
    files = example_task_files()
    WorkstreamDefinition.model_validate(files["workstream.json"])
    tasks = {t.task_id: t for t in (parse_task(doc, name)[0] for name, doc in files.items()
                                    if name != "workstream.json")}
    assert {t.type for t in tasks.values()} == {"custom", "pytest", "lint"}
    edits = [t for t in tasks.values() if t.execution.executor == "agent"]
    assert {t.task_id for t in edits} == set(AGENT_TASKS)
    for t in edits:
        assert t.execution.agent == "mini" and t.execution.command == ""
        assert t.execution.prompt == AGENT_TASKS[t.task_id].prompt
        assert t.context_requirements is not None
        assert t.context_requirements.required_files == list(AGENT_TASKS[t.task_id].required)
    for task_id in ("add-word-count", "test-word-count", "add-cli"):
        assert tasks[task_id].resource_requirements == {"git_repo_write": "exclusive"}
    assert tasks["add-word-count"].validation_rules.pre_execution == ["git_clean"]
    flaky = tasks[FLAKY_TASK].execution
    assert (flaky.max_retries, flaky.retry_delay_seconds) == (2, 0.5)
    assert any(t.critical for t in tasks.values())
    plan = execution_plan(
        [PlanTask(t.task_id, t.name, t.type, dependencies=tuple(t.dependencies),
                  estimated_duration_seconds=t.execution.estimated_duration_seconds)
         for t in tasks.values()],
        WORKSTREAM, None, "2025-01-01T00:00:00.000Z")
    # After the first edit, the two branches run side by side; lint joins them.
    assert [len(s["parallel_tasks"]) for s in plan["stages"]] == [1, 2, 2, 1]
    assert set(BRANCHES["tests"]) | set(BRANCHES["cli"]) | {"add-word-count", "lint"} \
        == TASK_IDS
    # The project's config: quick heartbeats and ticks, rules run by this Python.
    toml = example_project_files()["orch.toml"]
    assert "heartbeat_seconds = 1\n" in toml and "tick_seconds = 0.1\n" in toml
    assert json.dumps(detect_tools().tests_command) in toml
    assert "[agents.mini]" in toml and "kernel.demo.mini_agent" in toml


def test_the_tools_fall_back_to_the_standard_library(tmp_path: Path) -> None:
    """Without pytest and ruff (a plain `pip install .`) the tasks use unittest and
    compileall; the agent's edits (the mini agent against the demo's model), the tests and the
    flaky smoke test work with them."""
    tools = detect_tools()
    assert (tools.tests, tools.lint) == ("pytest", "ruff")  # the test environment has both
    q = shlex.quote(sys.executable)
    fallback = DemoTools(sys.executable, "unittest", f"{q} -m unittest discover -q -s tests",
                         "compileall", f"{q} -m compileall -q textstats tests scripts")
    model = DemoModel(think=0).start()
    try:
        for rel, text in example_project_files(fallback, model.url).items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        tasks = {name.removesuffix(".json"): doc for name, doc in
                 example_task_files(fallback).items() if name != "workstream.json"}
        assert tasks["run-tests"]["type"] == "custom"
        assert tasks["lint"]["execution"]["executor"] == "subprocess"
        env = {**os.environ, "ORCH_ROOT": str(tmp_path)}
        for task_id, task in AGENT_TASKS.items():   # what the agent executor runs
            message = tmp_path / f"{task_id}.txt"
            message.write_text(task.prompt)
            agent = subprocess.run([sys.executable, "-m", "kernel.demo.mini_agent",
                                    "--api-base", model.url, "--message-file", str(message),
                                    *task.required], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=60)
            assert agent.returncode == 0, agent.stdout + agent.stderr
            assert "Tokens: " in agent.stdout
        assert model.requests == len(AGENT_TASKS)
    finally:
        model.stop()

    def run(task_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(shlex.split(tasks[task_id]["execution"]["command"]), cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)

    assert "Ran 4 tests" in run("run-tests").stderr
    first, second = run(FLAKY_TASK), run(FLAKY_TASK)
    assert first.returncode == 1 and "orch will retry" in first.stdout
    assert second.returncode == 0 and "README.md" in second.stdout, second.stderr
    assert run("lint").returncode == 0


def _times(events: list[dict], task_id: str) -> tuple[str, str]:
    started = min(e["timestamp"] for e in events
                  if e["task_id"] == task_id and e["event"] == "task_started")
    completed = max(e["timestamp"] for e in events
                    if e["task_id"] == task_id and e["event"] == "task_completed")
    return started, completed


def test_demo_dir_runs_the_workstream_end_to_end(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    proc = orch("demo", "--dir", str(keep))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "all tasks completed: 6 completed" in out
    assert f"{FLAKY_TASK} failed its first attempt on purpose" in out
    assert f"orch --root {keep.resolve()} why {FLAKY_TASK}" in out
    assert f"The project is kept in {keep.resolve()}:" in out
    assert f"Remove it with `rm -rf {keep.resolve()}`." in out
    assert all(line == line.rstrip() for line in out.splitlines())  # piped: plain text

    # Every task completed, read back with the operator commands.
    code, status = orch_json("--root", str(keep), "status", "--all")   # shut-down workers too
    assert code == 0
    assert {t["task_id"]: t["state"] for t in status["tasks"]} == dict.fromkeys(TASK_IDS,
                                                                              "completed")
    assert [(w["workstream_id"], w["state"]) for w in status["workstreams"]] == [
        (WORKSTREAM, "completed")]
    assert {w["state"] for w in status["workers"]} == {"shutdown"}
    assert len(status["workers"]) == 3

    # The flaky task: two attempts, one task_retry event.
    code, show = orch_json("--root", str(keep), "show", FLAKY_TASK)
    assert code == 0
    assert [a["outcome"] for a in show["attempts"]] == ["failed", "succeeded"]
    code, events = orch_json("--root", str(keep), "events")
    assert code == 0
    events = events["events"]
    assert [e["event"] for e in events if e["task_id"] == FLAKY_TASK].count("task_retry") == 1
    why = orch("--root", str(keep), "why", FLAKY_TASK, check=True).stdout
    assert "after 2 attempts" in why

    # The two branches overlapped in time.
    overlapping = []
    for a in BRANCHES["tests"]:
        for b in BRANCHES["cli"]:
            (a0, a1), (b0, b1) = _times(events, a), _times(events, b)
            if a0 < b1 and b0 < a1:
                overlapping.append((a, b))
    assert overlapping, "the two branches never ran at the same time"

    # The workstream's branch is merged into main; its worktree and branch are gone.
    log = _git(keep, "log", "--oneline", "main")
    assert f"orch: merge workstream {WORKSTREAM}" in log
    for task_id in ("add-word-count", "test-word-count", "add-cli"):
        assert f"orch: {task_id}:" in log
    assert "def word_count(text: str) -> int:" in _git(keep, "show", "main:textstats/core.py")
    assert "word_count" in _git(keep, "show", "main:textstats/__main__.py")
    assert "test_words_are_separated_by_whitespace" in (keep / "tests" /
                                                        "test_word_count.py").read_text()
    assert not (keep / ".state" / "worktrees" / WORKSTREAM).exists()
    assert _git(keep, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert _git(keep, "branch", "--list", f"orch/{WORKSTREAM}").strip() == ""
    assert _git(keep, "status", "--porcelain") == ""
    assert (keep / ".state" / "logs" / f"{FLAKY_TASK}.log").exists()

    # An agent task: the mini agent was given its files, changed them, reported its tokens.
    code, show = orch_json("--root", str(keep), "show", "add-word-count")
    output = show["attempts"][-1]["output"]
    assert output["files_modified"] == ["textstats/__init__.py", "textstats/core.py"]
    assert output["metadata"]["tokens_used"] > 0
    assert output["commit_message"].startswith("orch: add-word-count:")


def test_demo_temp_json_leaves_nothing_behind(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    code, doc = orch_json("demo", "--temp")  # one JSON document: nothing streamed before it
    assert code == 0, doc
    assert (doc["ok"], doc["kept"], doc["removed"]) == (True, False, True)
    assert Path(doc["project"]).parent == scratch.resolve()
    assert list(scratch.iterdir()) == []
    assert doc["counts"] == {"completed": len(TASK_IDS)}
    assert doc["summary"]["ok"] is True and doc["summary"]["total"] == len(TASK_IDS)
    assert doc["workstream_state"] == "completed"
    assert {t: v["state"] for t, v in doc["tasks"].items()} == dict.fromkeys(TASK_IDS,
                                                                            "completed")
    assert doc["flaky_task"]["attempts"] == 2 and doc["flaky_task"]["retry_events"] == 1
    assert doc["parallel"]
    assert doc["merge"]["merged"] is True and doc["merge"]["worktree_removed"] is True
    assert doc["git_log"][0].endswith(f"orch: merge workstream {WORKSTREAM}")
    assert doc["doctor"]["ok"] is True
    assert doc["model_requests"] == len(AGENT_TASKS)
    assert [(a["task_id"], a["state"], a["agent"]) for a in doc["agents"]] == [
        (t, "completed", "mini") for t in AGENT_TASKS]
    assert all(a["files_modified"] and a["tokens_used"] for a in doc["agents"])
    assert (doc["tools"]["tests"], doc["tools"]["lint"]) == ("pytest", "ruff")
    assert [s["step"] for s in doc["steps"]] == ["project", "init", "tasks", "load", "run"]
    assert any(w["what"].endswith(f"why {FLAKY_TASK}") for w in doc["where_to_look"])
    # How long it took is reported, not judged: a timing belongs in `orch bench`.
    assert isinstance(doc["elapsed_seconds"], int | float) and doc["elapsed_seconds"] > 0


def test_demo_keeps_its_project_in_a_new_directory_by_default(tmp_path: Path) -> None:
    """As the README's first command runs it: no option; the project lands in ./orch-demo,
    or the next free name when that exists, and is kept; the output says how to remove it."""
    (tmp_path / "orch-demo").mkdir()
    (tmp_path / "orch-demo" / "mine.txt").write_text("not the demo's")
    proc = orch("demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    project = tmp_path / "orch-demo-2"
    assert "The project is kept in orch-demo-2:" in proc.stdout
    assert "Remove it with `rm -rf orch-demo-2`." in proc.stdout
    assert "orch --root orch-demo-2 why smoke-test-cli" in proc.stdout   # as the user types it
    assert (project / ".state" / "kernel.db").exists()
    assert sorted(p.name for p in (tmp_path / "orch-demo").iterdir()) == ["mine.txt"]
    status = orch("--json", "status", cwd=project)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["workstreams"][0]["state"] == "completed"


def test_demo_refuses_a_non_empty_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    assert run_cli("--json", "demo", "--dir", str(tmp_path)) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "demo_dir_not_empty"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_demo_with_the_real_aider(tmp_path: Path) -> None:
    """`orch demo` with `aider` on PATH: the same workstream, its edits made by the real Aider CLI
    (its own venv, on PATH) against the demo's scripted model; judged, validated, committed,
    merged, with Aider's own token counts in each attempt."""
    from tests.aider_venv import ensure_aider_venv

    venv = ensure_aider_venv()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "120"}
    env.pop("OPENAI_API_KEY", None)    # the demo needs no key
    keep = tmp_path / "demo"
    # No --agent: with `aider` on PATH the demo picks it (--agent auto, the default).
    proc = subprocess.run([str(Path(sys.executable).parent / "orch"), "--json", "demo",
                           "--dir", str(keep)], capture_output=True,
                          text=True, env=env, timeout=900)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], proc.stdout + proc.stderr
    assert doc["tools"]["agent"] == "aider"
    assert [(a["task_id"], a["state"], a["agent"]) for a in doc["agents"]] == [
        (t, "completed", "aider") for t in AGENT_TASKS]
    assert all(a["tokens_used"] and a["model"] == "openai/test-model" for a in doc["agents"])
    assert doc["model_requests"] >= len(AGENT_TASKS)
    assert "word_count" in _git(keep, "show", "main:textstats/__main__.py")
    assert (keep / ".state" / "agents" / "aider" / "add-cli" / "chat.history.md").exists()


def test_demo_agent_aider_without_aider_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": os.path.dirname(shutil.which("git") or "/usr/bin")}
    proc = subprocess.run([str(Path(sys.executable).parent / "orch"), "demo", "--agent",
                           "aider", "--keep", str(tmp_path / "d")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no `aider` on PATH" in proc.stderr and "pipx install aider-chat" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()
