"""The real Aider CLI kept to its files: an edit the model makes outside ``required_files`` is
reverted and fails the attempt, and a model that says it lacks context fails the task for
review (the ``ORCH-INSUFFICIENT-CONTEXT:`` protocol of kernel.runtime.executors.agentkit)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kernel.demo.model_server import whole_file
from kernel.runtime.executors.agentkit import INSUFFICIENT_CONTEXT
from tests.test_agents_aider import HELLO, NEW, make_project, run, task_row


def _status(where: Path) -> str:
    return subprocess.run(["git", "-C", str(where), "status", "--porcelain"],
                          capture_output=True, text=True, check=True).stdout


def test_an_edit_outside_the_required_files_is_reverted(aider_venv: Path, tmp_path: Path,
                                                        server_factory: Any) -> None:
    # The model edits hello.py and also writes a file it was never given: Aider (with
    # --yes-always) creates it. orch sees it in the diff, fails the attempt, reverts both.
    reply = whole_file("hello.py", NEW) + "\n" + whole_file("extra.py", "x = 1\n")
    server = server_factory([{"content": reply}])
    root = make_project(tmp_path / "proj", aider_venv, server.url)
    proc = run(root)
    tree = root / ".state" / "worktrees" / "ws"
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 1, log
    show = task_row(root)
    assert show["state"] == "failed", log
    attempt = show["attempts"][-1]
    assert attempt["error_type"] == "out_of_scope", log
    assert "extra.py" in attempt["error_message"]
    assert (tree / "hello.py").read_text() == HELLO
    assert not (tree / "extra.py").exists()
    assert _status(tree) == ""
    assert (root / ".state" / "agents" / "aider" / "edit" / "attempt-1.diff").exists()


def test_a_model_that_lacks_context_fails_the_task_for_review(
        aider_venv: Path, tmp_path: Path, server_factory: Any) -> None:
    server = server_factory([{"content": "I cannot do this with hello.py alone.\n"
                                         f"{INSUFFICIENT_CONTEXT} config.py, which defines the "
                                         "greeting"}])
    root = make_project(tmp_path / "proj", aider_venv, server.url, max_retries=2)
    proc = run(root)
    log = (root / ".state" / "logs" / "edit.log").read_text()
    assert proc.returncode == 1, log
    show = task_row(root)
    assert len(show["attempts"]) == 1, log          # not retried: a person reviews it
    attempt = show["attempts"][0]
    assert attempt["error_type"] == "insufficient_context", log
    assert "config.py, which defines the greeting" in attempt["error_message"]
    # What the model was sent: the prompt, the file, and orch's note on missing context.
    sent = json.dumps(server.requests()[0]["body"])
    assert "Replace hello.py" in sent and INSUFFICIENT_CONTEXT in sent
