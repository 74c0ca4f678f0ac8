"""The ``aider`` executor: the Aider CLI on exactly the task's files, non-interactive, out of git.

Public API:
    ``AiderExecutor``; ``aider_argv(settings, message_file, files, read_only, state) ->
    list[str]`` (the command line, for tests against Aider's own parser); ``aider_env(env,
    home) -> dict``; re-exports ``estimate_tokens`` and ``BYTES_PER_TOKEN``.

Stability Guarantees:
    **Command line.** ``[agents.aider] executable`` (default ``aider`` on PATH), then
    ``--message-file`` (the prompt and orch's note, written to
    ``.state/agents/aider/{task}/prompt-{attempt}.txt``, 0600: the prompt never passes through
    a shell or the argument list), the flags that keep Aider non-interactive and away from git
    and the network (``--yes-always --no-auto-commits --no-dirty-commits --no-stream
    --no-pretty --no-fancy-input --no-check-update --no-analytics --no-show-model-warnings
    --no-git --no-gitignore --map-tokens 0 --no-auto-lint --no-auto-test
    --no-suggest-shell-commands --no-detect-urls``), its history files under
    ``.state/agents/aider/{task}/``, ``--model`` / ``--openai-api-base`` / ``--edit-format``
    when set in ``[agents.aider]``, the configured ``extra_args``, then one ``--file`` per
    ``required_files`` entry and one ``--read`` per optional file that fits the budget. The
    task's ``execution.command`` is not run; the prompt is ``execution.prompt`` (else the
    task's description).
    **Environment.** The worker's environment without any ``AIDER_*`` variable (a user's
    settings cannot change the contract), with ``HOME`` set to a private directory under
    ``.state/agents/aider/home`` (Aider's caches and its home config file live there). With
    ``api_key_env``, the value of that variable is passed as ``{PROVIDER}_API_KEY`` (the
    model's prefix: ``openai/gpt-4o`` → ``OPENAI_API_KEY``); unset, the attempt cannot start.
    **Usage.** Tokens and cost come from Aider's own report lines ("Tokens: 1.2k sent, 30
    received. Cost: $0.01 message, ..."), summed over the attempt.
    **Everything else** — the context budget (Context-Overflow before Aider starts), the
    missing-context protocol, the judgement by the diff rather than the exit code (Aider exits
    0 when the model is unreachable or edits nothing), the revert of a failed attempt — is
    shared with every agent executor: ``kernel.runtime.executors.agentkit``.

Integration Points:
    ``kernel.runtime.executors.EXECUTORS["aider"]`` (``"executor": "aider"``, or ``"type":
    "aider"`` without an executor); reads ``[agents.aider]`` of ``orch.toml``
    (``kernel.base.config.AiderConfig``). docs/agents/aider.md.

Dependencies:
    ``kernel.base.config``, ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.runtime.executors.agentkit``, ``kernel.runtime.executors.base``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernel.base.config import AiderConfig
from kernel.base.errors import OrchError
from kernel.base.files import private_dir
from kernel.runtime.executors.agentkit import (
    BYTES_PER_TOKEN,
    AgentContext,
    AgentSpec,
    estimate_tokens,
    run_agent,
)
from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult
from kernel.store.project import Project

__all__ = ["BYTES_PER_TOKEN", "AiderExecutor", "aider_argv", "aider_env", "estimate_tokens"]

FIXED_FLAGS = (
    "--yes-always", "--no-auto-commits", "--no-dirty-commits", "--no-stream", "--no-pretty",
    "--no-fancy-input", "--no-check-update", "--no-analytics", "--no-show-model-warnings",
    "--no-git", "--no-gitignore", "--map-tokens", "0", "--no-auto-lint", "--no-auto-test",
    "--no-suggest-shell-commands", "--no-detect-urls",
)
_TOKENS = re.compile(r"Tokens: ([\d.]+)(k?) sent, ([\d.]+)(k?) received")
_COST = re.compile(r"Cost: \$([\d.]+) message")


def aider_argv(settings: AiderConfig, message_file: Path, files: Sequence[str],
               read_only: Sequence[str], state: Path) -> list[str]:
    """Aider's command line (see the module docstring for each part and why)."""
    argv = [settings.executable, "--message-file", str(message_file), *FIXED_FLAGS,
            "--input-history-file", str(state / "input.history"),
            "--chat-history-file", str(state / "chat.history.md"),
            "--llm-history-file", str(state / "llm.history")]
    if settings.model:
        argv += ["--model", settings.model]
    if settings.api_base:
        argv += ["--openai-api-base", settings.api_base]
    if settings.edit_format:
        argv += ["--edit-format", settings.edit_format]
    argv += settings.extra_args
    for name in files:
        argv += ["--file", name]
    for name in read_only:
        argv += ["--read", name]
    return argv


def aider_env(env: Mapping[str, str], home: Path,
              settings: AiderConfig | None = None) -> dict[str, str]:
    """The worker's environment minus every ``AIDER_*`` variable, with a private HOME, and the
    key of ``api_key_env`` under the provider's variable; raises ``OrchError`` when that
    variable is not set."""
    out = {k: v for k, v in env.items() if not k.upper().startswith("AIDER_")}
    out["HOME"] = str(home)
    target = settings.key_variable() if settings else None
    if settings and settings.api_key_env and target:
        if not env.get(settings.api_key_env):
            raise OrchError("api_key_missing",
                            f"[agents.aider] api_key_env names {settings.api_key_env}, which is "
                            "not set in the worker's environment",
                            hint=f"export {settings.api_key_env} in the shell that starts "
                                 "`orch run` or `orch worker`")
        out[target] = env[settings.api_key_env]
    return out


def _usage(text: str) -> dict[str, Any]:
    """Token counts and cost from Aider's own report lines ("Tokens: 1.2k sent, 30 received.
    Cost: $0.01 message, ...")."""
    def count(n: str, k: str) -> int:
        return round(float(n) * (1000 if k else 1))

    sent = received = 0
    for n1, k1, n2, k2 in _TOKENS.findall(text):
        sent += count(n1, k1)
        received += count(n2, k2)
    out: dict[str, Any] = {}
    if sent or received:
        out["tokens"] = {"sent": sent, "received": received}
        out["tokens_used"] = sent + received
    costs = _COST.findall(text)
    if costs:
        out["cost"] = round(sum(float(c) for c in costs), 6)
    return out


class AiderExecutor:
    name = "aider"

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        root = Path(request.placeholders.get("root") or request.cwd)
        base = Path(request.placeholders.get("worktree") or root)
        project = Project(root)
        settings = project.config.agents.aider

        def build(ctx: AgentContext, message_file: Path,
                  state: Path) -> tuple[list[str], dict[str, str]]:
            home = project.state_dir / "agents" / "aider" / "home"
            private_dir(home)

            def rel_to_cwd(rel: str) -> str:
                return os.path.relpath(base / rel, request.cwd)

            argv = aider_argv(settings, message_file, [rel_to_cwd(r) for r in ctx.required],
                              [rel_to_cwd(r) for r in ctx.read_only], state)
            return argv, aider_env(request.env, home, settings)

        return run_agent(request, on_start, should_stop,
                         AgentSpec("aider", settings.model, build, _usage))
