"""The aider executor with the real Aider CLI (its own venv, tests/aider_venv.py) against the
scripted model server (kernel.demo.model_server) run as a real process on 127.0.0.1: real git,
real `orch run`, real HTTP; no mocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel.base.config import AiderConfig
from kernel.demo.model_server import whole_file
from kernel.runtime.executors import EXECUTORS, executor_for
from kernel.runtime.executors.aider import FIXED_FLAGS, aider_argv, aider_env, estimate_tokens
from tests.conftest import git, orch

HELLO = 'print("old")\n'
NEW = 'def greet() -> str:\n    return "hello from the scripted model"\n'


def make_project(root: Path, venv: Path, url: str, *, max_tokens: int = 4000,
                 hello: str = HELLO, **execution: Any) -> Path:
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    orch("--root", str(root), "init", check=True)
    config = (root / "orch.toml").read_text().replace(
        'executable = "aider"',
        f'executable = {json.dumps(str(venv / "bin" / "aider"))}\n'
        f'model = "openai/test-model"\napi_base = {json.dumps(url)}\nedit_format = "whole"')
    (root / "orch.toml").write_text(config)
    (root / "hello.py").write_text(hello)
    task = {"schema_version": "2.0.0", "task_id": "edit", "workstream_id": "ws",
            "name": "edit hello", "type": "aider",
            "execution": {"command": "aider", "executor": "aider", "timeout_seconds": 300,
                          "prompt": "Replace hello.py with a greet() function.", **execution},
            "context_requirements": {"max_context_tokens": max_tokens,
                                     "required_files": ["hello.py"]},
            "validation_rules": {"pre_execution": [], "post_execution": []}}
    (root / "tasks" / "ws").mkdir(parents=True)
    (root / "tasks" / "ws" / "edit.json").write_text(json.dumps(task))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    orch("--root", str(root), "load", check=True)
    return root


def run(root: Path) -> subprocess.CompletedProcess[str]:
    # The dummy key reaches Aider through the worker's environment, like a real one would.
    env = {**os.environ, "OPENAI_API_KEY": "sk-dummy", "AIDER_AUTO_COMMITS": "true"}
    return subprocess.run([str(Path(sys.executable).parent / "orch"), "--root", str(root),
                           "run", "--workers", "1"], capture_output=True, text=True, env=env)


def task_row(root: Path) -> dict[str, Any]:
    """``orch show edit`` as JSON: the task's columns and its ``attempts``."""
    proc = orch("--root", str(root), "--json", "show", "edit")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


# --------------------------------------------------------------------------- the command line


def test_aider_is_a_registered_executor() -> None:
    assert "aider" in EXECUTORS
    assert executor_for({"execution": {"executor": "aider"}}).name == "aider"


def test_the_command_line_parses_with_aiders_own_parser(aider_venv: Path,
                                                        tmp_path: Path) -> None:
    settings = AiderConfig(executable="aider", model="openai/test-model",
                           api_base="http://127.0.0.1:9/v1", edit_format="diff",
                           extra_args=["--timeout", "60"])
    state = tmp_path / "state"
    argv = aider_argv(settings, tmp_path / "prompt.txt", ["hello.py", "src/a b.py"],
                      ["README.md"], state)
    assert argv[0] == "aider"
    code = ("import json, sys\nfrom aider.args import get_parser\n"
            "ns = get_parser([], None).parse_args(json.loads(sys.argv[1]))\n"
            "print(json.dumps(vars(ns), default=str))")
    proc = subprocess.run([str(aider_venv / "bin" / "python"), "-c", code,
                           json.dumps(argv[1:])], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("AIDER_")})
    assert proc.returncode == 0, proc.stderr
    ns = json.loads(proc.stdout)
    assert ns["file"] == ["hello.py", "src/a b.py"]
    assert ns["read"] == ["README.md"]
    assert ns["message_file"] == str(tmp_path / "prompt.txt")
    assert (ns["model"], ns["openai_api_base"], ns["edit_format"]) == \
        ("openai/test-model", "http://127.0.0.1:9/v1", "diff")
    assert ns["yes_always"] is True
    for off in ("auto_commits", "dirty_commits", "stream", "pretty", "fancy_input",
                "check_update", "analytics", "show_model_warnings", "git", "gitignore",
                "auto_lint", "auto_test", "suggest_shell_commands", "detect_urls"):
        assert ns[off] is False, off
    assert ns["map_tokens"] == 0
    assert float(ns["timeout"]) == 60
    for key, name in (("input_history_file", "input.history"),
                      ("chat_history_file", "chat.history.md"),
                      ("llm_history_file", "llm.history")):
        assert ns[key] == str(state / name)
    assert set(FIXED_FLAGS) <= set(argv)


def test_the_environment_loses_every_aider_variable_and_gets_a_private_home(
        tmp_path: Path) -> None:
    env = aider_env({"PATH": "/bin", "AIDER_MODEL": "gpt-x", "aider_yes": "1",
                     "OPENAI_API_KEY": "k", "HOME": "/home/someone"}, tmp_path / "home")
    assert env == {"PATH": "/bin", "OPENAI_API_KEY": "k", "HOME": str(tmp_path / "home")}


def test_the_token_estimate_is_conservative() -> None:
    assert [estimate_tokens(n) for n in (0, 1, 3, 4, 3000)] == [0, 1, 1, 2, 1000]


# --------------------------------------------------------------------------- end to end


def test_orch_run_edits_a_file_through_the_real_aider(aider_venv: Path, tmp_path: Path,
                                                      server_factory: Any) -> None:
    server = server_factory([{"content": "Here it is.\n\n" + whole_file("hello.py", NEW),
                              "prompt_tokens": 700, "completion_tokens": 30}])
    root = make_project(tmp_path / "proj", aider_venv, server.url)
    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert (root / "hello.py").read_text() == NEW, log
    assert git(root, "show", "main:hello.py") == NEW
    assert len(server.requests()) == 1
    sent = json.dumps(server.requests()[0]["body"])
    assert "greet() function" in sent and 'print(\\"old\\")' in sent
    show = task_row(root)
    assert show["state"] == "completed"
    details = show["attempts"][-1]["output"]["details"]
    assert details["files_modified"] == ["hello.py"]
    assert details["tokens"] == {"sent": 700, "received": 30}
    # Aider stayed out of git and the worktree: its files are under .state/.
    subjects = git(root, "log", "--format=%s", "main").splitlines()
    assert "orch: edit: edit hello" in subjects, subjects   # orch committed, not Aider
    assert len(subjects) == 3, subjects                       # project, the task, the merge
    assert not list(root.glob(".aider*"))
    assert (root / ".state" / "agents" / "aider" / "edit" / "chat.history.md").exists()


def test_context_over_budget_fails_before_aider_starts(aider_venv: Path, tmp_path: Path,
                                                       server_factory: Any) -> None:
    server = server_factory([whole_file("hello.py", NEW)])
    big = "# filler line for the budget\n" * 200   # 5800 bytes: about 1934 tokens
    root = make_project(tmp_path / "proj", aider_venv, server.url, max_tokens=100, hello=big)
    proc = run(root)
    assert proc.returncode != 0
    show = task_row(root)
    assert show["state"] == "failed"
    assert show["failure_mode"] == "Context-Overflow"
    attempt = show["attempts"][-1]
    assert attempt["error_type"] == "context_overflow"
    assert attempt["output"]["details"]["context"]["max_tokens"] == 100
    assert attempt["output"]["details"]["context"]["required_tokens"] > 1900
    assert server.requests() == [], "the model was called: Aider ran"
    assert not (root / ".state" / "agents" / "aider" / "edit").exists()
    events = json.loads(orch("--root", str(root), "--json", "events", "--task", "edit").stdout)

    failed = [e for e in events["events"] if e["event"] == "context_overflow"]
    assert failed and failed[-1]["metadata"]["required_tokens"] > 1900
    assert failed[-1]["metadata"]["max_tokens"] == 100
    assert (root / "hello.py").read_text() == big


def test_a_model_that_fails_never_completes_the_task(aider_venv: Path, tmp_path: Path,
                                                     server_factory: Any) -> None:
    # 401 is not retried by Aider: it reports the error and exits 0 with nothing edited.
    server = server_factory([{"mode": "fail", "status": 401}])
    root = make_project(tmp_path / "proj", aider_venv, server.url)
    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode != 0, log
    show = task_row(root)
    assert show["state"] == "failed", log
    assert "changed no file" in show["last_error"], log
    assert (root / "hello.py").read_text() == HELLO
    assert len(server.requests()) >= 1


def test_an_http_500_model_never_completes_the_task(aider_venv: Path, tmp_path: Path,
                                                    server_factory: Any) -> None:
    # Aider retries 5xx with backoff for about a minute; the task's timeout ends it first.
    server = server_factory([{"mode": "fail", "status": 500}])
    root = make_project(tmp_path / "proj", aider_venv, server.url, timeout_seconds=20)
    run(root)
    show = task_row(root)
    assert show["state"] == "failed"
    assert show["failure_mode"] in ("Task-Timeout", "Task-Failed")
    assert (root / "hello.py").read_text() == HELLO
    assert server.requests()


# --------------------------------------------------------------------------- failure paths


def processes_mentioning(text: str) -> list[int]:
    """The live processes whose command line contains ``text`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue   # gone meanwhile
        if text.encode() in cmdline and "\nState:\tZ" not in status:
            found.append(int(entry.name))
    return found


def assert_aider_is_gone(root: Path, attempt: dict[str, Any]) -> None:
    """The attempt's process group no longer exists, and no process names the project."""
    pgid = attempt["pgid"]
    assert isinstance(pgid, int) and pgid > 1, attempt
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert processes_mentioning(str(root)) == []


def events_of(root: Path, task_id: str = "edit") -> list[dict[str, Any]]:
    proc = orch("--root", str(root), "--json", "events", "--task", task_id)
    assert proc.returncode == 0, proc.stderr
    found: list[dict[str, Any]] = json.loads(proc.stdout)["events"]
    return found


def set_executable(root: Path, old: str, new: str) -> None:
    config = (root / "orch.toml").read_text()
    assert f"executable = {json.dumps(old)}" in config
    (root / "orch.toml").write_text(config.replace(f"executable = {json.dumps(old)}",
                                                   f"executable = {json.dumps(new)}"))


def assert_never_completed(root: Path, show: dict[str, Any]) -> None:
    assert show["state"] == "failed", show
    assert all(a["outcome"] != "success" for a in show["attempts"]), show["attempts"]
    assert "task_completed" not in [e["event"] for e in events_of(root)]
    assert (root / "hello.py").read_text() == HELLO
    assert git(root, "show", "main:hello.py") == HELLO


def test_a_stalled_model_times_out_and_aiders_process_group_is_killed(
        aider_venv: Path, tmp_path: Path, server_factory: Any) -> None:
    server = server_factory([{"mode": "stall", "seconds": 600,
                              "content": whole_file("hello.py", NEW)}])
    root = make_project(tmp_path / "proj", aider_venv, server.url, timeout_seconds=15)
    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 1, proc.stdout + proc.stderr + log
    show = task_row(root)
    assert_never_completed(root, show)
    assert show["failure_mode"] == "Task-Timeout", show
    assert len(show["attempts"]) == 1
    attempt = show["attempts"][0]
    assert "timed out" in (attempt["error_message"] or "") + (show["last_error"] or ""), attempt
    # Aider had sent its request and was waiting for the model when the timeout struck.
    assert len(server.requests()) == 1, log
    assert "Aider v0.86.2" in log
    assert_aider_is_gone(root, attempt)
    ended = [e for e in events_of(root) if e["to_state"] == "failed"]
    assert [(e["event"], e["trigger"]) for e in ended] == [("task_timeout", "task_timeout")]


def test_garbage_from_the_model_never_completes_the_task(aider_venv: Path, tmp_path: Path,
                                                         server_factory: Any) -> None:
    # HTTP 200 with a body that is not JSON: Aider reports it and retries; the retry gets an
    # answer with no edit, and Aider exits 0 having changed nothing. orch judges: failed.
    server = server_factory([{"mode": "garbage"},
                             {"content": "I would rather not change anything."}])
    root = make_project(tmp_path / "proj", aider_venv, server.url, timeout_seconds=120)
    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 1, log
    show = task_row(root)
    assert_never_completed(root, show)
    assert show["failure_mode"] == "Task-Failed", show
    assert "changed no file" in show["last_error"], show
    attempt = show["attempts"][-1]
    assert attempt["exit_code"] == 0, attempt          # Aider itself claimed success
    assert "changed no file" in (attempt["error_message"] or ""), attempt
    flat = " ".join(log.split())    # Aider wraps its lines
    assert "invalid response from LLM endpoint" in flat and "not a chat completion" in flat, log
    assert len(server.requests()) == 2
    assert_aider_is_gone(root, attempt)
    why = json.loads(orch("--root", str(root), "--json", "why", "edit").stdout)
    assert "changed no file" in " ".join(why["sentences"]), why


def test_an_unreachable_model_never_completes_the_task(aider_venv: Path,
                                                       tmp_path: Path) -> None:
    with socket.socket() as probe:          # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = make_project(tmp_path / "proj", aider_venv, f"http://127.0.0.1:{port}/v1",
                        timeout_seconds=20)
    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 1, log
    show = task_row(root)
    assert_never_completed(root, show)
    # Aider retries a refused connection for about a minute: the task's timeout ends it.
    assert show["failure_mode"] == "Task-Timeout", show
    assert "OpenAIException - Connection error." in " ".join(log.split()), log
    assert_aider_is_gone(root, show["attempts"][-1])


def test_a_worker_without_aider_never_claims_an_aider_task(aider_venv: Path, tmp_path: Path,
                                                           server_factory: Any) -> None:
    server = server_factory([{"content": whole_file("hello.py", NEW)}])
    root = make_project(tmp_path / "proj", aider_venv, server.url)
    real, missing = str(aider_venv / "bin" / "aider"), str(tmp_path / "no-aider" / "aider")
    set_executable(root, real, missing)
    validate = json.loads(orch("--root", str(root), "--json", "validate").stdout)
    assert [p["code"] for p in validate["problems"]] == ["capability_unoffered"], validate
    assert "cap-aider-001" in validate["problems"][0]["message"]

    proc = run(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cap-aider-001" in proc.stdout + proc.stderr
    show = task_row(root)
    assert show["state"] == "queued" and show["attempts"] == [], show
    assert show["capabilities"] == [{"capability_id": "cap-aider-001", "min_version": None}]
    assert [e["metadata"]["reason"] for e in events_of(root) if e["event"] ==
            "task_unrunnable"] == ["no registered worker offers cap-aider-001"]
    why = json.loads(orch("--root", str(root), "--json", "why", "edit").stdout)
    assert "cap-aider-001" in why["sentences"][0], why
    assert "one started on this machine would lack" in why["sentences"][0], why
    workers = json.loads(orch("--root", str(root), "--json", "events").stdout)["events"]
    registered = [e["metadata"] for e in workers if e["event"] == "worker_registered"]
    assert len(registered) == 1 and "cap-aider-001" not in registered[0]["capabilities"]
    assert missing in registered[0]["not_offered"]["cap-aider-001"][0]
    assert server.requests() == [] and not (root / ".state" / "agents").exists()
    assert (root / "hello.py").read_text() == HELLO

    # The same project, with Aider where orch.toml says: it runs.
    set_executable(root, missing, real)
    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    show = task_row(root)
    assert show["state"] == "completed" and len(show["attempts"]) == 1
    assert git(root, "show", "main:hello.py") == NEW
    assert len(server.requests()) == 1


def test_an_edit_that_breaks_the_tests_fails_validation(aider_venv: Path, tmp_path: Path,
                                                        server_factory: Any) -> None:
    good = 'def greet() -> str:\n    return "hello"\n'
    broken = 'def greet() -> str:\n    return "goodbye"\n'
    server = server_factory([{"content": whole_file("hello.py", broken)}])
    root = make_project(tmp_path / "proj", aider_venv, server.url, hello=good)
    (root / "test_hello.py").write_text(
        "from hello import greet\n\n\ndef test_greet():\n    assert greet() == 'hello'\n")
    config = (root / "orch.toml").read_text()
    rule = f"{sys.executable} -B -m pytest -q -p no:cacheprovider"
    assert 'tests_still_passing = "python -m pytest -q"' in config
    (root / "orch.toml").write_text(config.replace(
        'tests_still_passing = "python -m pytest -q"', f"tests_still_passing = {json.dumps(rule)}"))
    task_file = root / "tasks" / "ws" / "edit.json"
    task = json.loads(task_file.read_text())
    task["validation_rules"] = {"pre_execution": [], "post_execution": ["tests_still_passing"]}
    task_file.write_text(json.dumps(task))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tests")
    orch("--root", str(root), "load", check=True)
    # The rule passes before the edit: the failure below is the edit's.
    assert subprocess.run(rule.split(), cwd=root, capture_output=True).returncode == 0

    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 1, proc.stdout + proc.stderr + log
    show = task_row(root)
    assert show["state"] == "failed", show
    assert show["failure_mode"] == "Validation-Failed", show
    assert "tests_still_passing" in show["last_error"], show
    assert "task_completed" not in [e["event"] for e in events_of(root)]
    failed = [e for e in events_of(root) if e["to_state"] == "failed"]
    assert [(e["event"], e["from_state"]) for e in failed] == \
        [("validation_failed", "validating")], failed
    assert "assert 'goodbye' == 'hello'" in json.dumps(failed[0]["metadata"]), failed
    assert len(server.requests()) == 1
    # Aider did edit (in the workstream's worktree), but nothing reached main.
    assert git(root, "show", "main:hello.py") == good
    assert (root / "hello.py").read_text() == good
