"""The ``noop`` executor: succeeds at once without running anything (tests and benchmarks).

Public API:
    ``NoopExecutor``.

Stability Guarantees:
    Always returns ``succeeded`` with exit code 0 and never starts a process.

Integration Points:
    Chosen with ``"execution": {"executor": "noop"}``; ``orch bench`` uses it to measure the
    kernel's own overhead through the full task state machine.

Dependencies:
    ``kernel.runtime.executors.base``.
"""

from __future__ import annotations

from collections.abc import Callable

from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult


class NoopExecutor:
    name = "noop"

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        return ExecutionResult("succeeded", exit_code=0, details={"executor": "noop"})
