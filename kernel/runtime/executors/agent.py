"""The ``agent`` executor: any agent CLI (Claude Code, Codex, Gemini CLI, ...), by configuration.

Public API:
    ``AgentExecutor``; ``agent_argv(command, values, files, read_only) -> list[str]``;
    ``agent_env(env, allowed) -> dict``; ``pattern_usage(text, tokens_pattern, cost_pattern)
    -> dict``; ``BASE_ENV``.

Stability Guarantees:
    A task runs ``"executor": "agent", "agent": "NAME"``; ``[agents.NAME]`` in orch.toml says
    how (``kernel.base.config.AgentCommandConfig``). Adding an agent is configuration, not code.
    **Command line.** ``command`` is an argument list, run without a shell. In each argument,
    ``{prompt_file}`` (the prompt and orch's note, a 0600 file under
    ``.state/agents/NAME/{task}/``), ``{prompt}`` (the same text, as one argument), ``{task_id}``,
    ``{workstream_id}``, ``{attempt}``, ``{root}``, ``{worktree}`` and ``{model}`` are replaced
    by their values; an argument containing ``{files}`` (or ``{read_only_files}``) is repeated
    once per editable (read-only) file with the placeholder replaced by the file's path
    relative to the working directory — ``"{files}"`` gives one argument per file,
    ``"--file={files}"`` one option per file — and dropped when there are none. Nothing in a
    value is ever parsed again (no shell, no second substitution).
    **Environment.** An allow-list: ``BASE_ENV`` (PATH, HOME, USER, LANG, LC_*, TERM, TMPDIR,
    TZ, SHELL, SSL_CERT_FILE...), the ``ORCH_*`` variables of the task (ORCH_AGENT_REPORT
    included), and the names in ``env`` (``NAME`` or a prefix ``NAME_*``). Everything else of
    the worker's environment is withheld, API keys of other tools included.
    **Usage.** ``tokens_pattern`` and ``cost_pattern`` are regular expressions searched in the
    attempt's output; the first group of every match (else the whole match) is summed. The
    report file (``$ORCH_AGENT_REPORT``) wins over both. ``model`` is recorded as given.
    **Everything else** — context budget, missing-context protocol, judgement by the diff,
    revert — is ``kernel.runtime.executors.agentkit``'s, the same as Aider's. A task naming an
    agent that orch.toml does not define fails at once (``start_failed``, not retried), and
    ``orch validate`` warns about it first.

Integration Points:
    ``kernel.runtime.executors.EXECUTORS["agent"]``; docs/agents/README.md (recipes).

Dependencies:
    ``kernel.base.config``, ``kernel.runtime.executors.agentkit``,
    ``kernel.runtime.executors.base``, ``kernel.store.project``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernel.base.config import AgentCommandConfig
from kernel.runtime.executors.agentkit import AgentContext, AgentSpec, run_agent
from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult
from kernel.store.project import Project

__all__ = ["BASE_ENV", "AgentExecutor", "agent_argv", "agent_env", "pattern_usage"]

BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_*", "TERM", "TMPDIR", "TZ", "SHELL",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "ORCH_*")
_SCALARS = ("prompt_file", "prompt", "task_id", "workstream_id", "attempt", "root",
            "worktree", "model")


def agent_argv(command: Sequence[str], values: Mapping[str, str], files: Sequence[str],
               read_only: Sequence[str]) -> list[str]:
    """The agent's argv from the ``command`` template (see the module docstring)."""
    def fill(arg: str) -> str:
        # One pass, left to right: a value is never scanned for placeholders again.
        return re.sub(r"\{(" + "|".join(_SCALARS) + r")\}",
                      lambda m: values.get(m.group(1), m.group(0)), arg)

    argv: list[str] = []
    for arg in command:
        for name, paths in (("{files}", files), ("{read_only_files}", read_only)):
            if name in arg:
                argv += [fill(arg.replace(name, "\0")).replace("\0", path) for path in paths]
                break
        else:
            argv.append(fill(arg))
    return argv


def _allowed(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


def agent_env(env: Mapping[str, str], allowed: Sequence[str]) -> dict[str, str]:
    """The worker's environment reduced to ``BASE_ENV`` and ``allowed``."""
    patterns = (*BASE_ENV, *allowed)
    return {k: v for k, v in env.items() if _allowed(k, patterns)}


def _sum(pattern: str | None, text: str, kind: Callable[[str], float]) -> float | None:
    if not pattern:
        return None
    total, found = 0.0, False
    for match in re.finditer(pattern, text):
        raw = match.group(1) if match.groups() else match.group(0)
        try:
            total += kind(raw.replace(",", ""))
            found = True
        except (TypeError, ValueError):
            continue
    return total if found else None


def pattern_usage(text: str, tokens_pattern: str | None,
                  cost_pattern: str | None) -> dict[str, Any]:
    """``tokens_used`` and ``cost`` found in ``text`` by the configured patterns."""
    out: dict[str, Any] = {}
    tokens = _sum(tokens_pattern, text, int)
    if tokens is not None:
        out["tokens_used"] = int(tokens)
    cost = _sum(cost_pattern, text, float)
    if cost is not None:
        out["cost"] = round(cost, 6)
    return out


class AgentExecutor:
    name = "agent"

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        root = Path(request.placeholders.get("root") or request.cwd)
        base = Path(request.placeholders.get("worktree") or root)
        name = str((request.definition.get("execution") or {}).get("agent") or "")
        settings = Project(root).config.agents.command_agent(name)
        if settings is None:
            return ExecutionResult(
                "error", error=f"no agent named {name!r}: orch.toml has no [agents.{name}] "
                               "section (docs/agents/README.md has recipes)")
        config: AgentCommandConfig = settings

        def build(ctx: AgentContext, message_file: Path,
                  state: Path) -> tuple[list[str], dict[str, str]]:
            def rel(paths: Sequence[str]) -> list[str]:
                return [os.path.relpath(base / p, request.cwd) for p in paths]

            values = {**{k: str(v) for k, v in request.placeholders.items()},
                      "prompt_file": str(message_file), "prompt": ctx.message(),
                      "model": config.model or ""}
            argv = agent_argv(config.command, values, rel(ctx.required), rel(ctx.read_only))
            return argv, agent_env(request.env, config.env)

        def usage(text: str) -> dict[str, Any]:
            return pattern_usage(text, config.tokens_pattern, config.cost_pattern)

        return run_agent(request, on_start, should_stop,
                         AgentSpec(name, config.model, build, usage))
