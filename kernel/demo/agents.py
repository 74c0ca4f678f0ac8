"""The demo's agents: its code edits are made by a coding agent talking to a scripted model.

Public API:
    ``AGENT_TASKS`` (task id -> ``AgentTask``: name, prompt, required and optional files);
    ``AGENTS`` (``mini``, ``aider``); ``find_agent(name) -> str`` (the program to run, or
    ``OrchError("demo_needs_aider")``); ``DemoModel`` (the scripted model server on 127.0.0.1,
    ``start()``, ``url``, ``stop()``, ``requests``); ``agents_toml(agent, url, python,
    aider)`` (the ``[agents]`` part of the demo's orch.toml; ``agent="scripted"``: the
    stand-in of ``orch init --example``, reading ``SCRIPT_PATH``); ``agent_execution(task_id,
    agent)`` (the task's ``execution`` keys); ``read_back(conn) -> list[dict]`` (what each
    agent task did, from its last attempt's output contract).

Stability Guarantees:
    The model knows the demo's three edits (``kernel/demo/edits.json``: the whole new content
    of each file) and answers each agent task's request with its edit in the whole-file
    format, found by the task's prompt, after "thinking" ``THINK_SECONDS``; the usage it
    reports is estimated from the request (characters / 4). The ``mini`` agent is
    ``python -m kernel.demo.mini_agent`` through the generic ``agent`` executor; ``aider`` is
    the real Aider CLI (``orch demo --agent aider``; it must be on PATH) through the ``aider``
    executor, pointed at the same server. Either way orch judges the edit by its diff, runs the
    post-execution rules, then commits it.

Integration Points:
    ``kernel.demo`` writes the project and runs it; ``kernel.cli.demo`` prints the agents'
    lines.

Dependencies:
    apsw; ``kernel.base.errors``, ``kernel.demo.model_server``, ``kernel.store.db``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from kernel.base.errors import OrchError
from kernel.demo.model_server import Reply, ScriptedModelServer, whole_file
from kernel.store import db

__all__ = ["AGENTS", "AGENT_TASKS", "AgentTask", "DemoModel", "agent_execution",
           "agents_toml", "find_agent", "read_back"]

EDITS_FILE = Path(__file__).with_name("edits.json")
#: Where ``orch init --example`` puts the scripted agent's edits, relative to the project.
SCRIPT_PATH = "scripts/agent_edits.json"
THINK_SECONDS = 1.0
AGENTS = ("mini", "aider")
MODEL = "test-model"


@dataclass(frozen=True)
class AgentTask:
    name: str
    prompt: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


AGENT_TASKS: dict[str, AgentTask] = {
    "add-word-count": AgentTask(
        "Add word_count()",
        "Add word_count(text) to textstats/core.py (the number of words: runs of characters "
        "between whitespace) and export it from textstats/__init__.py.",
        ("textstats/core.py", "textstats/__init__.py"), ("README.md",)),
    "test-word-count": AgentTask(
        "Test word_count()",
        "Write tests/test_word_count.py: unittest tests of word_count(), with words separated "
        "by any whitespace and with no words at all.",
        ("tests/test_word_count.py",), ("textstats/core.py",)),
    "add-cli": AgentTask(
        "Add a command line",
        "Add textstats/__main__.py so that python -m textstats FILE... prints the lines, words "
        "and characters of each file.",
        ("textstats/__main__.py",), ("textstats/__init__.py",)),
}


def find_agent(name: str) -> str:
    """The program the demo's agent tasks run: ``mini`` needs nothing; ``aider`` must be on
    PATH."""
    if name == "aider":
        found = shutil.which("aider")
        if not found:
            raise OrchError("demo_needs_aider", "orch demo --agent aider: no `aider` on PATH",
                            hint="install it (e.g. `pipx install aider-chat`), or run "
                                 "`orch demo` without --agent to use the built-in mini agent")
        return found
    return "mini"


def _replies(think: float) -> list[Reply]:
    edits: dict[str, dict[str, str]] = json.loads(EDITS_FILE.read_text(encoding="utf-8"))
    out = []
    for task_id, task in AGENT_TASKS.items():
        blocks = "\n".join(whole_file(path, text) for path, text in edits[task_id].items())
        out.append(Reply(content=f"Here is the change for: {task.name}.\n\n{blocks}",
                         mode="stall", seconds=think, when=task.prompt))
    return out


class DemoModel:
    """The scripted model server the demo's agents talk to (a thread of the demo's process)."""

    def __init__(self, think: float = THINK_SECONDS) -> None:
        self._server = ScriptedModelServer(_replies(think))

    def start(self) -> DemoModel:
        self._server.start()
        return self

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def requests(self) -> int:
        return len(self._server.requests)

    def stop(self) -> None:
        self._server.stop()


def agents_toml(agent: str, url: str, python: str, aider: str | None) -> str:
    """The ``[agents]`` sections of the demo's orch.toml."""
    def s(text: str) -> str:  # a TOML basic string (JSON escapes are valid TOML escapes)
        return json.dumps(text)

    if agent == "aider":
        return f"""
# The demo's edits are made by the real Aider CLI, talking to the scripted model that
# `orch demo` serves on {url} while it runs.
[agents.aider]
executable = {s(aider or "aider")}
model = "openai/{MODEL}"
api_base = {s(url)}
edit_format = "whole"
# The scripted model needs no key; Aider wants one, so it gets a dummy.
extra_args = ["--openai-api-key", "demo-key-for-the-scripted-model"]
"""
    if agent == "scripted":
        command = [python, "-m", "kernel.demo.mini_agent", "--script", SCRIPT_PATH,
                   "--message-file", "{prompt_file}", "{files}"]
        return f"""
# The agent tasks run a scripted stand-in for a coding agent: kernel/demo/mini_agent.py
# writing the edits prepared in {SCRIPT_PATH}, asking no model (no key, no network).
# To run a real agent, replace this command (docs/agents/README.md has recipes for Aider,
# Claude Code, Codex and others) or write "executor": "aider" in the tasks.
[agents.mini]
command = [{", ".join(s(a) for a in command)}]
model = "scripted"
"""
    command = [python, "-m", "kernel.demo.mini_agent", "--api-base", url, "--model", "{model}",
               "--message-file", "{prompt_file}", "--read={read_only_files}", "{files}"]
    return f"""
# The demo's edits are made by a minimal agent CLI (kernel/demo/mini_agent.py) through the
# generic agent executor, talking to the scripted model that `orch demo` serves on
# {url} while it runs. docs/agents/README.md has recipes for real agent CLIs.
[agents.mini]
command = [{", ".join(s(a) for a in command)}]
model = "{MODEL}"
"""


def agent_execution(task_id: str, agent: str) -> dict[str, Any]:
    """The agent-specific ``execution`` keys of an agent task."""
    task = AGENT_TASKS[task_id]
    if agent == "aider":
        return {"executor": "aider", "prompt": task.prompt}
    return {"executor": "agent", "agent": "mini", "prompt": task.prompt}


def context(task_id: str) -> dict[str, Any]:
    task = AGENT_TASKS[task_id]
    return {"max_context_tokens": 8000, "required_files": list(task.required),
            "optional_files": list(task.optional)}


def read_back(conn: apsw.Connection) -> list[dict[str, Any]]:
    """Per agent task: its state, attempts, and its last attempt's files, tokens and model."""
    out = []
    for task_id in AGENT_TASKS:
        row = db.row(conn, "SELECT t.state, (SELECT COUNT(*) FROM attempt a WHERE a.task_id = "
                           "t.task_id) AS attempts, (SELECT output FROM attempt a WHERE "
                           "a.task_id = t.task_id ORDER BY a.attempt_no DESC LIMIT 1) AS output "
                           "FROM task t WHERE t.task_id = ?", (task_id,))
        if row is None:
            continue
        output = json.loads(row["output"]) if row.get("output") else {}
        details = output.get("details") or {}
        meta = output.get("metadata") or {}
        out.append({
            "task_id": task_id, "state": row["state"], "attempts": row["attempts"],
            "files_modified": output.get("files_modified") or details.get("files_modified")
            or [],
            "tokens_used": meta.get("tokens_used") or details.get("tokens_used"),
            "model": meta.get("model") or details.get("model"),
            "agent": details.get("agent"),
            "commit_message": output.get("commit_message") or details.get("commit_message"),
        })
    return out
