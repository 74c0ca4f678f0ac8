"""What every agent executor shares: the context it is given, how it runs, how it is judged.

Public API:
    ``AgentContext`` (``assemble(definition, base)``, ``message()``, ``as_dict()``);
    ``run_agent(request, on_start, should_stop, spec) -> ExecutionResult`` with ``AgentSpec``
    (``agent``, ``model``, ``build(context, message_file, state_dir) -> (argv, env)``,
    ``usage(output) -> dict``); ``INSUFFICIENT_CONTEXT`` (the marker line), ``REPORT_ENV``;
    re-exports ``estimate_tokens`` and ``BYTES_PER_TOKEN`` of ``kernel.base.tokens``.

Stability Guarantees:
    **Context** (AIDER-INT-002). The agent may edit exactly the task's ``required_files`` and
    read its ``optional_files`` (files matching ``exclude_patterns`` are never passed). Before
    it starts, the prompt and the required files are estimated by ``kernel.base.tokens`` (the
    one estimate: 3 bytes of ASCII per token, one token per other character), measured at
    1.24-1.38x real tokenizers' counts on code and English (docs/agents/README.md, "The token
    estimate"). Over ``context_requirements.max_context_tokens`` the attempt fails
    as Context-Overflow (a ``context_overflow`` event with ``required_tokens`` and
    ``max_tokens``, ``error_type`` ``context_overflow``, not retried) and the agent is never
    started.
    Optional files are added in order while they fit; those that do not are named in the
    attempt's details.
    **The message.** The agent receives the task's prompt (``execution.prompt``, else its
    description) followed by a short note from orch: the files it may edit, those it may read,
    and the protocol for missing context: a line that starts with ``ORCH-INSUFFICIENT-CONTEXT:``
    in its output (or ``{"status": "insufficient_context"}`` in its report file) fails the
    attempt with ``error_type`` ``insufficient_context``, not retried, for a person to review.
    **The report file.** ``$ORCH_AGENT_REPORT`` names a file the agent may write, one JSON
    object: ``status`` (``insufficient_context``), ``needed`` (what it lacked),
    ``tokens_used``, ``cost``, ``model``, ``commit_message``. Its values win over what orch
    parsed from the output.
    **Judged by the kernel, never by the exit code.** The working tree is snapshotted before
    the agent starts (``kernel.runtime.changes``). When the agent exits 0: a change to any file
    outside ``required_files`` fails the attempt (``error_type`` ``out_of_scope``, retried
    like a failure) and every change of the attempt is reverted; no change at all fails it
    (``no_change``, retried) unless ``execution.allow_no_change``. When the attempt fails in
    any way its changes are reverted too, and kept for review as
    ``.state/agents/{agent}/{task}/attempt-{n}.diff``. A success carries ``undo``, which the
    worker calls when the post-execution rules or the commit fail: a change that did not pass
    never stays in the worktree to be committed by another task.
    Running, timeout, cancel, the gate and the log are the ``subprocess`` executor's: the agent
    runs in the task's working directory in its own process group, within the task's timeout.

Integration Points:
    ``kernel.runtime.executors.aider`` and ``kernel.runtime.executors.agent`` build the command
    line and parse usage; a failure named here reaches ``kernel.runtime.claims`` as
    ``details["failure"]`` (mode, error_type, retryable, metadata).

Dependencies:
    ``kernel.base.errors``, ``kernel.base.files``, ``kernel.base.tokens``,
    ``kernel.definitions.commands``, ``kernel.runtime.changes``,
    ``kernel.runtime.executors.base``, ``kernel.runtime.executors.local``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernel.base.errors import OrchError
from kernel.base.files import open_private, private_dir
from kernel.base.tokens import BYTES_PER_TOKEN, estimate_tokens, file_tokens, text_tokens
from kernel.definitions.commands import PLACEHOLDERS
from kernel.runtime.changes import Snapshot, outside
from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult
from kernel.runtime.executors.local import SubprocessExecutor, attempt_output
from kernel.store.project import Project

__all__ = ["BYTES_PER_TOKEN", "INSUFFICIENT_CONTEXT", "REPORT_ENV", "AgentContext",
           "AgentSpec", "estimate_tokens", "run_agent"]

INSUFFICIENT_CONTEXT = "ORCH-INSUFFICIENT-CONTEXT:"
REPORT_ENV = "ORCH_AGENT_REPORT"
_MARKER = re.compile(r"^\W{0,4}" + re.escape(INSUFFICIENT_CONTEXT) + r"[ \t]*(.*)$", re.M)
_REPORT_MAX_BYTES = 1 << 20


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts)
               for p in patterns)


@dataclasses.dataclass(frozen=True)
class AgentContext:
    """What an agent is given (see the module docstring)."""

    prompt: str
    required: list[str]
    read_only: list[str]
    left_out: list[str]
    required_tokens: int      # the prompt and the required files: what must fit
    total_tokens: int         # with the optional files that fit
    max_tokens: int | None

    @classmethod
    def assemble(cls, definition: Mapping[str, Any], base: Path) -> AgentContext:
        context = definition.get("context_requirements") or {}
        execution = definition.get("execution") or {}
        prompt = str(execution.get("prompt") or definition.get("description") or "")
        excluded = list(context.get("exclude_patterns") or [])
        required = [r for r in context.get("required_files") or [] if not _excluded(r, excluded)]
        optional = [r for r in context.get("optional_files") or [] if not _excluded(r, excluded)]
        budget = context.get("max_context_tokens")
        budget = int(budget) if budget is not None else None
        needed = base_needed = text_tokens(prompt) + sum(
            file_tokens(base / rel) for rel in required)
        read_only, left_out = [], []
        for rel in optional:
            cost = file_tokens(base / rel)
            if budget is None or needed + cost <= budget:
                read_only.append(rel)
                needed += cost
            else:
                left_out.append(rel)
        return cls(prompt, required, read_only, left_out, base_needed, needed, budget)

    def message(self) -> str:
        """The prompt, then orch's note on the files and on missing context."""
        editable = ", ".join(self.required) or "(none)"
        note = [f"orch: you may edit only these files: {editable}."]
        if self.read_only:
            note.append(f"You may read (not edit): {', '.join(self.read_only)}.")
        note.append("If you cannot do this task with these files, change nothing and answer "
                    f"with one line that starts with {INSUFFICIENT_CONTEXT} followed by the "
                    "files or information you need.")
        return f"{self.prompt.rstrip()}\n\n---\n" + "\n".join(note) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"required_tokens": self.required_tokens, "total_tokens": self.total_tokens,
                "max_tokens": self.max_tokens,
                "required_files": self.required, "read_only_files": self.read_only,
                "left_out_files": self.left_out}


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """What one agent executor adds: its name, model, command line and usage parser."""

    agent: str
    model: str | None
    build: Callable[[AgentContext, Path, Path], tuple[list[str], dict[str, str]]]
    usage: Callable[[str], dict[str, Any]]


def run_agent(request: ExecutionRequest, on_start: Callable[[int], None],
              should_stop: Callable[[], str | None], spec: AgentSpec) -> ExecutionResult:
    """Assemble the context, run the agent, judge what it changed (the module docstring)."""
    started = time.monotonic()
    root = Path(request.placeholders.get("root") or request.cwd)
    base = Path(request.placeholders.get("worktree") or root)
    ctx = AgentContext.assemble(request.definition, base)
    if ctx.max_tokens is not None and ctx.required_tokens > ctx.max_tokens:
        return _overflow(request, spec, ctx.required_tokens, ctx.max_tokens, started)
    state = Project(root).state_dir / "agents" / spec.agent / request.task_id
    private_dir(state)
    message_file = state / f"prompt-{request.attempt_no}.txt"
    with open_private(message_file, "w") as fh:
        fh.write(ctx.message())
    report_file = state / f"report-{request.attempt_no}.json"
    report_file.unlink(missing_ok=True)
    try:
        argv, env = spec.build(ctx, message_file, state)
    except OrchError as exc:          # e.g. its API key variable is not set: cannot start
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        _note(request, message)
        return ExecutionResult("error", error=message,
                               duration_seconds=time.monotonic() - started,
                               details={"agent": spec.agent, "model": spec.model})
    env[REPORT_ENV] = str(report_file)
    snapshot = Snapshot.take(base)
    # The subprocess executor runs it: the gate, the process group, the timeout, the log.
    # Every placeholder maps to itself, so nothing in a file name is ever substituted.
    inner = dataclasses.replace(request, command=shlex.join(argv), shell=False, env=env,
                                placeholders={n: "{" + n + "}" for n in PLACEHOLDERS})
    result = SubprocessExecutor().run(inner, on_start, should_stop)
    text = _this_attempt(request)
    report = _read_report(report_file)
    changed = snapshot.changed()
    details: dict[str, Any] = {
        "agent": spec.agent, "model": report.get("model") or spec.model,
        "files_modified": changed, "context": ctx.as_dict(),
        **spec.usage(text), **_report_usage(report)}
    judged = _judge(request, ctx, result, text, report, changed, details)
    if judged.outcome == "succeeded":
        return dataclasses.replace(judged, undo=lambda: snapshot.revert(changed))
    return _undone(request, state, snapshot, changed, judged)


def _judge(request: ExecutionRequest, ctx: AgentContext, result: ExecutionResult, text: str,
           report: Mapping[str, Any], changed: list[str],
           details: dict[str, Any]) -> ExecutionResult:
    """The attempt's outcome, decided from what the agent did rather than its exit code."""
    if result.outcome != "succeeded":
        return dataclasses.replace(result, details={**result.details, **details})
    needed = _insufficient(text, report)
    if needed is not None:
        return _failed(request, result, details, "insufficient_context", retryable=False,
                       message=f"the agent could not do the task with the context it was "
                               f"given; it asked for: {needed or '(nothing said)'} — a person "
                               f"should review the task's files",
                       metadata={"needed": needed})
    bad = outside(changed, ctx.required)
    if bad:
        return _failed(request, result, details, "out_of_scope", retryable=True,
                       message=f"the agent changed files outside required_files: "
                               f"{', '.join(bad)}; every change of the attempt was reverted",
                       metadata={"files_outside": bad})
    allow = bool((request.definition.get("execution") or {}).get("allow_no_change"))
    if not changed and not allow:
        return _failed(request, result, details, "no_change", retryable=True,
                       message="the agent exited 0 but changed no file (no change is a "
                               "failure: the model may be unreachable or have answered nothing "
                               f"usable; see .state/logs/{request.task_id}.log)",
                       metadata={})
    return dataclasses.replace(result, details={**result.details, **details})


def _failed(request: ExecutionRequest, result: ExecutionResult, details: dict[str, Any],
            error_type: str, *, retryable: bool, message: str,
            metadata: dict[str, Any]) -> ExecutionResult:
    _note(request, message)
    failure = {"mode": "Task-Failed", "error_type": error_type, "retryable": retryable,
               "metadata": {"error_type": error_type, **metadata}}
    return dataclasses.replace(result, outcome="failed", error=message,
                               details={**result.details, **details, "failure": failure})


def _undone(request: ExecutionRequest, state: Path, snapshot: Snapshot, changed: list[str],
            result: ExecutionResult) -> ExecutionResult:
    """A failed attempt leaves nothing behind: its diff is kept for review, its changes are
    reverted (or the error says why they could not be)."""
    if not changed:
        return result
    diff = snapshot.diff_text(changed)
    extra: dict[str, Any] = {"reverted": True}
    if diff:
        path = state / f"attempt-{request.attempt_no}.diff"
        with open_private(path, "w") as fh:
            fh.write(diff)
        extra["diff_file"] = str(path.relative_to(state.parents[3]))
    error = result.error
    try:
        snapshot.revert(changed)
    except OrchError as exc:
        extra["reverted"] = False
        error = f"{error or 'the attempt failed'}; its changes were NOT undone: {exc.message}"
    _note(request, f"the attempt's changes to {', '.join(changed)} were "
                   f"{'reverted' if extra['reverted'] else 'left in place'}")
    return dataclasses.replace(result, error=error, details={**result.details, **extra})


def _insufficient(text: str, report: Mapping[str, Any]) -> str | None:
    if report.get("status") == "insufficient_context":
        needed = report.get("needed")
        return ", ".join(map(str, needed)) if isinstance(needed, list) else str(needed or "")
    found = _MARKER.findall(text)
    return found[-1].strip() if found else None


def _read_report(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        if path.stat().st_size <= _REPORT_MAX_BYTES:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
    return {}


def _report_usage(report: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tokens, cost = report.get("tokens_used"), report.get("cost")
    if isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens < 2**53:
        out["tokens_used"] = tokens
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < 1e9:
        out["cost"] = float(cost)
    message = report.get("commit_message")
    if isinstance(message, str) and message.strip():
        out["commit_message"] = message.strip()[:4096]
    return out


def _overflow(request: ExecutionRequest, spec: AgentSpec, needed: int, budget: int,
              started: float) -> ExecutionResult:
    """Context-Overflow: the prompt and the required files do not fit the budget; the agent
    is never started, and the failure is named for the claim (not retried)."""
    message = (f"context overflow: the prompt and required files need about {needed} "
               f"tokens (orch's conservative estimate: {BYTES_PER_TOKEN} bytes of ASCII per "
               f"token), over max_context_tokens {budget}; {spec.agent} was not started")
    _note(request, message)
    return ExecutionResult("error", error=message, duration_seconds=time.monotonic() - started,
                           details={"agent": spec.agent, "model": spec.model,
                                    "failure": {"mode": "Context-Overflow",
                                                "trigger": "context_overflow",
                                                "error_type": "context_overflow",
                                                "metadata": {"required_tokens": needed,
                                                             "max_tokens": budget}},
                                    "context": {"required_tokens": needed,
                                                "max_tokens": budget}})


def _this_attempt(request: ExecutionRequest) -> str:
    text = attempt_output(request, 65536)
    start = text.rfind(f"attempt {request.attempt_no} of {request.task_id}")
    return text[start:] if start >= 0 else text


def _note(request: ExecutionRequest, message: str) -> None:
    request.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open_private(request.log_path, "ab") as fh:
        fh.write(f"==== attempt {request.attempt_no} of {request.task_id} (agent): "
                 f"{message}\n".encode("utf-8", "replace"))
