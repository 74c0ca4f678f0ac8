"""The ``subprocess`` executor: the task's command in its own process group on this machine.

Public API:
    ``SubprocessExecutor``, ``kill_group(pgid, grace)``, ``pid_alive(pid)``,
    ``attempt_output(request)`` (this attempt's section of the log).

Stability Guarantees:
    No shell unless the task sets ``execution.shell``; placeholders are filled safely (see
    ``kernel.executors.base.substitute``). On timeout or cancel the whole process group gets
    SIGTERM, then SIGKILL after ``kill_grace_seconds`` — children that ignore SIGTERM die too.
    stdout and stderr go to ``.state/logs/{task_id}.log``, one section per attempt.

Integration Points:
    ``kernel.worker`` calls it; ``kernel.scheduler`` calls ``kill_group`` on the recorded
    process group of an attempt whose worker died.

Dependencies:
    ``kernel.executors.base``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import IO

from kernel import clock
from kernel.executors.base import ExecutionRequest, ExecutionResult, Outcome, substitute

_POLL = 0.02


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host (it may belong to someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace: float) -> bool:
    """SIGTERM the group, then SIGKILL after ``grace`` seconds; True if it existed."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(_POLL)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def attempt_output(request: ExecutionRequest, size: int = 8192) -> str:
    """The end of this attempt's section of the task's log (for executors that parse it)."""
    try:
        with open(request.log_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text.split(f"==== attempt {request.attempt_no} ended")[0]


def _header(log: IO[str], request: ExecutionRequest, argv: list[str] | str) -> None:
    shown = argv if isinstance(argv, str) else " ".join(argv)
    log.write(f"==== {clock.now_iso()} attempt {request.attempt_no} of {request.task_id} "
              f"in {request.cwd}\n$ {shown}\n")
    log.flush()


class SubprocessExecutor:
    name = "subprocess"

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        argv = substitute(request.command, request.placeholders, shell=request.shell)
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(request.log_path, "a", encoding="utf-8", errors="replace") as log:
            _header(log, request, argv)
            try:
                proc = subprocess.Popen(
                    argv, shell=request.shell, cwd=request.cwd, env=dict(request.env),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
                msg = f"cannot start the command: {exc}"
                log.write(f"==== {msg}\n")
                return ExecutionResult("error", error=msg,
                                       duration_seconds=time.monotonic() - started)
            on_start(proc.pid)
            outcome: Outcome
            outcome, reason = self._wait(proc, request, should_stop, started)
            duration = time.monotonic() - started
            code = proc.returncode
            if outcome == "succeeded" and code != 0:
                outcome = "failed"
            note = {"succeeded": "exit 0", "failed": f"exit code {code}",
                    "timeout": f"timed out after {request.timeout_seconds:g} s; "
                               "process group killed" if request.timeout_seconds else "timeout",
                    "cancelled": f"{reason}; process group killed"}[outcome]
            log.write(f"\n==== attempt {request.attempt_no} ended: {note} "
                      f"({duration:.2f} s)\n")
        error = None if outcome == "succeeded" else note
        return ExecutionResult(outcome, exit_code=code, error=error, duration_seconds=duration,
                               details=self.details(request, code))

    def details(self, request: ExecutionRequest, exit_code: int | None) -> dict[str, object]:
        return {}

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], request: ExecutionRequest,
              should_stop: Callable[[], str | None], started: float
              ) -> tuple[Outcome, str | None]:
        deadline = started + request.timeout_seconds if request.timeout_seconds else None
        checked = 0.0
        while True:
            try:
                proc.wait(timeout=_POLL)
                return "succeeded", None
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                kill_group(proc.pid, request.kill_grace_seconds)
                proc.wait()
                return "timeout", None
            if now - checked >= 0.1:
                checked = now
                reason = should_stop()
                if reason:
                    kill_group(proc.pid, request.kill_grace_seconds)
                    proc.wait()
                    return "cancelled", reason
