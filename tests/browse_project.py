"""A small project that has run, for the `orch browse` tests: a git repository, two workstreams,
an agent edit (the scripted agent, reporting tokens and cost), a task that fails once and
succeeds on retry, two branches in parallel, and a failed task with a dependent left blocked."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import git, orch
from tests.e2e import make_project, py, run, task

AGENT = Path(__file__).with_name("scripted_agent.py")

AGENT_TOML = """
[agents.scripted]
command = {command}
model = "scripted-1"
tokens_pattern = 'used (\\d+) tokens'
cost_pattern = 'cost \\$([\\d.]+)'
"""


def _agent_task() -> dict[str, object]:
    doc = task("edit-greeting", deps=["setup"], executor="agent", max_retries=0)
    execution = doc["execution"]
    assert isinstance(execution, dict)
    execution.pop("command")
    execution.update({"agent": "scripted", "prompt": "Make greet() say hello."})
    doc["context_requirements"] = {"max_context_tokens": 4000, "required_files": ["app.py"]}
    return doc


def ran_project(root: Path) -> Path:
    """The project, loaded and run once (`orch run` exits 1: one task fails on purpose)."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    (root / "app.py").write_text("def greet():\n    return 'hi'\n")
    script = root / "agent-script.json"
    script.write_text(json.dumps([{"write": {"app.py": "def greet():\n    return 'hello'\n"},
                                   "say": "done: used 1200 tokens, cost $0.0125"}]))
    (root / ".gitignore").write_text("agent-script.json*\n")
    command = [sys.executable, str(AGENT), str(script), "--message-file", "{prompt_file}",
               "--model", "{model}", "{files}"]
    flaky = py("import os, sys; sys.exit(3 if os.environ.get('ORCH_ATTEMPT') == '1' else 0)")
    tasks = [
        task("setup"), _agent_task(), task("lint", deps=["setup"]),
        task("flaky-smoke", deps=["edit-greeting"], command=flaky, max_retries=2,
             retry_delay=0.1),
        task("unit-tests", deps=["edit-greeting", "lint"]),
        task("release", deps=["flaky-smoke", "unit-tests"]),
        task("write-docs", ws="docs"),
        task("check-links", ws="docs", deps=["write-docs"], command="false"),
        task("publish-docs", ws="docs", deps=["check-links"]),
    ]
    make_project(root, tasks, toml_extra=AGENT_TOML.format(command=json.dumps(command)),
                 load=False)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    orch("--root", str(root), "load", check=True)
    proc = run(root, workers=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return root


ORCH = str(Path(sys.executable).parent / "orch")


def start_browse(root: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`orch browse --port 0` in the background; (process, URL) once it printed the URL."""
    proc = subprocess.Popen([ORCH, "--root", str(root), "browse", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError("orch browse printed no URL:\n" + proc.communicate()[1])
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert match, line
    return proc, match.group(0)


def stop_browse(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C (SIGINT to `orch browse` alone); its exit status and standard error."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("orch browse did not stop on SIGINT") from None
    return proc.returncode, err


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
