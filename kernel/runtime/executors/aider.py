"""The ``aider`` executor: the Aider CLI on exactly the task's files, non-interactive, out of git.

Public API:
    ``AiderExecutor``; ``aider_argv(settings, message_file, files, read_only, state) ->
    list[str]`` (the command line, for tests against Aider's own parser); ``aider_env(env,
    home) -> dict``; ``estimate_tokens(n_bytes) -> int``; ``BYTES_PER_TOKEN``.

Stability Guarantees:
    **Command line.** ``[agents.aider] executable`` (default ``aider`` on PATH), then
    ``--message-file`` (the prompt, written to ``.state/prompts/{task}-{attempt}.txt``, 0600:
    the prompt never passes through a shell or the argument list), the flags that keep Aider
    non-interactive and away from git and the network (``--yes-always --no-auto-commits
    --no-dirty-commits --no-stream --no-pretty --no-fancy-input --no-check-update
    --no-analytics --no-show-model-warnings --no-git --no-gitignore --map-tokens 0
    --no-auto-lint --no-auto-test --no-suggest-shell-commands --no-detect-urls``), its history
    files under ``.state/agents/aider/{task}/``, ``--model`` / ``--openai-api-base`` /
    ``--edit-format`` when set in ``[agents.aider]``, the configured ``extra_args``, then one
    ``--file`` per ``required_files`` entry and one ``--read`` per ``optional_files`` entry
    (files matching ``exclude_patterns`` are never passed). The task's ``execution.command`` is
    not run; the prompt is ``execution.prompt`` (else the task's description).
    **Environment.** The worker's environment without any ``AIDER_*`` variable (a user's
    settings cannot change the contract), with ``HOME`` set to a private directory under
    ``.state/agents/aider/home`` (Aider's caches and its home config file live there).
    **Context budget** (AIDER-INT-002). Before Aider starts, the prompt and the required files
    are estimated at ``BYTES_PER_TOKEN`` (3) bytes per token, rounded up: conservative, since
    BPE tokenizers average about 4 bytes per token on English and code. Over
    ``context_requirements.max_context_tokens`` the attempt fails as Context-Overflow
    (``error_type`` ``context_overflow``, ``required_tokens`` and ``max_tokens`` in the failure
    event, not retried) and Aider is never started. Optional files are added, in order, while
    they fit; those that do not fit are left out (named in the attempt's details).
    **Success is judged here, not by Aider's exit code**: Aider exits 0 when the model is
    unreachable or edits nothing, so an exit 0 that left every required file unchanged fails
    the attempt ("no change"). Running, timeout, cancel, the gate and the log are the
    ``subprocess`` executor's (``kernel.runtime.executors.local``): Aider runs in the task's
    working directory in its own process group, within the task's timeout.

Integration Points:
    ``kernel.runtime.executors.EXECUTORS["aider"]`` (``"executor": "aider"`` in a task file);
    reads ``[agents.aider]`` of ``orch.toml`` (``kernel.base.config.AiderConfig``); a failure it
    names reaches ``kernel.runtime.claims`` as ``details["failure"]``. docs/agents/aider.md.

Dependencies:
    ``kernel.base.config``, ``kernel.base.files``, ``kernel.base.tokens``,
    ``kernel.definitions.commands``, ``kernel.runtime.executors.base``,
    ``kernel.runtime.executors.local``, ``kernel.store.project``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernel.base.config import AiderConfig
from kernel.base.files import open_private, private_dir
from kernel.base.tokens import BYTES_PER_TOKEN, estimate_tokens
from kernel.definitions.commands import PLACEHOLDERS
from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult
from kernel.runtime.executors.local import SubprocessExecutor, attempt_output
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


def aider_env(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """The worker's environment minus every ``AIDER_*`` variable, with a private HOME."""
    out = {k: v for k, v in env.items() if not k.upper().startswith("AIDER_")}
    out["HOME"] = str(home)
    return out


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts)
               for p in patterns)


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


def _task_files(definition: Mapping[str, Any]) -> tuple[str, list[str], list[str], Any]:
    """(prompt, required files, optional files, max_context_tokens) of a task definition;
    files matching ``exclude_patterns`` are left out."""
    context = definition.get("context_requirements") or {}
    execution = definition.get("execution") or {}
    prompt = str(execution.get("prompt") or definition.get("description") or "")
    excluded = list(context.get("exclude_patterns") or [])
    required = [r for r in context.get("required_files") or [] if not _excluded(r, excluded)]
    optional = [r for r in context.get("optional_files") or [] if not _excluded(r, excluded)]
    return prompt, required, optional, context.get("max_context_tokens")


def _fit_optional(base: Path, optional: Sequence[str], needed: int,
                  budget: Any) -> tuple[list[str], list[str], int]:
    """(optional files that fit, in order; those left out; the tokens then needed)."""
    read_only, left_out = [], []
    for rel in optional:
        cost = estimate_tokens(_size(base / rel))
        if budget is None or needed + cost <= int(budget):
            read_only.append(rel)
            needed += cost
        else:
            left_out.append(rel)
    return read_only, left_out, needed


def _private_files(project: Project, request: ExecutionRequest,
                   prompt: str) -> tuple[Path, Path, Path]:
    """Private files under .state/: Aider's histories (the task's state directory), its HOME,
    and the prompt written to its message file."""
    state = project.state_dir / "agents" / "aider" / request.task_id
    home = project.state_dir / "agents" / "aider" / "home"
    for directory in (state, home):
        private_dir(directory)
    message_file = Path(request.placeholders.get("prompt_file")
                        or state / f"prompt-{request.attempt_no}.txt")
    private_dir(message_file.parent)
    with open_private(message_file, "w") as fh:
        fh.write(prompt)
    return state, home, message_file


class AiderExecutor:
    name = "aider"

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        started = time.monotonic()
        root = Path(request.placeholders.get("root") or request.cwd)
        base = Path(request.placeholders.get("worktree") or root)
        project = Project(root)
        settings = project.config.agents.aider
        prompt, required, optional, budget = _task_files(request.definition)
        # The context budget, before anything starts.
        needed = estimate_tokens(len(prompt.encode("utf-8"))) + sum(
            estimate_tokens(_size(base / rel)) for rel in required)
        if budget is not None and needed > int(budget):
            return self._overflow(request, needed, int(budget), started)
        read_only, left_out, needed = _fit_optional(base, optional, needed, budget)
        state, home, message_file = _private_files(project, request, prompt)

        def rel_to_cwd(rel: str) -> str:
            return os.path.relpath(base / rel, request.cwd)

        argv = aider_argv(settings, message_file, [rel_to_cwd(r) for r in required],
                          [rel_to_cwd(r) for r in read_only], state)
        before = {rel: _digest(base / rel) for rel in required}
        # The subprocess executor runs it: the gate, the process group, the timeout, the log.
        # Every placeholder maps to itself, so nothing in a file name is ever substituted.
        inner = dataclasses.replace(
            request, command=shlex.join(argv), shell=False,
            env=aider_env(request.env, home),
            placeholders={name: "{" + name + "}" for name in PLACEHOLDERS})
        result = SubprocessExecutor().run(inner, on_start, should_stop)
        changed = [rel for rel in required if _digest(base / rel) != before[rel]]
        details: dict[str, Any] = {
            "agent": "aider", "model": settings.model, "files_modified": changed,
            "context": {"required_tokens": needed, "max_tokens": budget,
                        "read_only_files": read_only, "left_out_files": left_out},
            **_usage(self._this_attempt(request))}
        if result.outcome == "succeeded" and required and not changed:
            message = ("Aider exited 0 but changed none of the required files (no change is a "
                       "failure: the model may be unreachable or have answered nothing usable; "
                       f"see .state/logs/{request.task_id}.log)")
            self._note(request, message)
            return dataclasses.replace(result, outcome="failed", error=message, details=details)
        return dataclasses.replace(result, details={**result.details, **details})

    def _overflow(self, request: ExecutionRequest, needed: int, budget: int,
                  started: float) -> ExecutionResult:
        """Context-Overflow: the prompt and the required files do not fit the budget; Aider
        is never started, and the failure is named for the claim (not retried)."""
        message = (f"context overflow: the prompt and required files need about {needed} "
                   f"tokens (estimated at {BYTES_PER_TOKEN} bytes per token), over "
                   f"max_context_tokens {budget}; Aider was not started")
        self._note(request, message)
        return ExecutionResult("error", error=message,
                               duration_seconds=time.monotonic() - started,
                               details={"failure": {
                                   "mode": "Context-Overflow",
                                   "error_type": "context_overflow",
                                   "metadata": {"required_tokens": needed,
                                                "max_tokens": budget}},
                                   "context": {"required_tokens": needed,
                                               "max_tokens": budget}})

    @staticmethod
    def _this_attempt(request: ExecutionRequest) -> str:
        text = attempt_output(request, 65536)
        start = text.rfind(f"attempt {request.attempt_no} of {request.task_id}")
        return text[start:] if start >= 0 else text

    @staticmethod
    def _note(request: ExecutionRequest, message: str) -> None:
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open_private(request.log_path, "ab") as fh:
            fh.write(f"==== attempt {request.attempt_no} of {request.task_id} (aider): "
                     f"{message}\n".encode("utf-8", "replace"))
