"""A small project that has run, for the `orch browse` tests: a git repository, two workstreams,
an agent edit (the scripted agent, reporting tokens and cost), a task that fails once and
succeeds on retry, two branches in parallel, and a failed task with a dependent left blocked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import git
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
    from tests.conftest import orch

    orch("--root", str(root), "load", check=True)
    proc = run(root, workers=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return root
