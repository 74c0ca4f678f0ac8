"""The executor interface: what turns a claimed task into an outcome. One module per executor.

Public API:
    ``ExecutionRequest``, ``ExecutionResult``, ``Executor`` (protocol: ``name`` and
    ``run(request, on_start, should_stop) -> ExecutionResult``), ``WorkerLost``. How a
    command template becomes an argv (the placeholders) is ``kernel.definitions.commands``. A
    result may carry ``undo`` (agent executors): the worker then commits the change only after
    the post-execution rules passed, and calls ``undo`` when they fail.

Stability Guarantees:
    Adding an executor is adding a module with a class that satisfies ``Executor`` and one line
    in ``kernel.runtime.executors.EXECUTORS``. Outcomes are ``succeeded``, ``failed``, ``timeout``,
    ``cancelled`` and ``error`` (could not start: not retryable).

Integration Points:
    ``kernel.runtime.worker`` builds the request from the claim (working directory in the
    workstream's
    worktree, environment, timeout, log file) and drives the task's state machine from the
    result; ``should_stop`` is how a cancel or a lost claim reaches a running command.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Outcome = Literal["succeeded", "failed", "timeout", "cancelled", "error"]

@dataclass(frozen=True)
class ExecutionRequest:
    task_id: str
    workstream_id: str
    attempt_no: int
    command: str
    shell: bool
    cwd: Path
    env: Mapping[str, str]
    timeout_seconds: float | None
    log_path: Path
    placeholders: Mapping[str, str]
    kill_grace_seconds: float = 5.0
    definition: Mapping[str, Any] = field(default_factory=dict)
    log_cap_bytes: int = 16 * 1024 * 1024
    #: The command's process group is killed at once if the process running the executor dies
    #: (set on a Dask worker, where no kernel on the same host kills what a dead worker left).
    die_with_worker: bool = False


@dataclass(frozen=True)
class ExecutionResult:
    outcome: Outcome
    exit_code: int | None = None
    error: str | None = None
    duration_seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Set by the agent executors on success: puts the working tree back as it was before the
    #: attempt (the worker calls it when the post-execution rules or the commit fail).
    undo: Callable[[], None] | None = field(default=None, compare=False, repr=False)


class WorkerLost(Exception):
    """Raised by an executor whose remote worker is gone mid-attempt (a Dask worker that left
    its cluster): what happened to the command is unknown, so the kernel worker hands the task
    on as lost (``worker_lost``, a new generation) instead of reporting an outcome."""


class Executor(Protocol):
    name: str

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        """Run the task. ``on_start(pgid)`` once its process group exists; ``should_stop()``
        returns a reason (e.g. "cancelled") when the run must be killed, else None."""
        ...
