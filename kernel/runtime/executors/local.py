"""The ``subprocess`` executor: the task's command in its own process group on this machine.

Public API:
    ``SubprocessExecutor``, ``attempt_output(request)`` (this attempt's section of the log),
    ``CappedLog``; re-exports ``kill_group`` and ``pid_alive`` from ``kernel.base.processes``.

Stability Guarantees:
    No shell unless the task sets ``execution.shell``; placeholders are filled safely (see
    ``kernel.definitions.commands.substitute``).
    **The gate.** The command's process is started held at a gate (its standard input, read by
    a one-line ``/bin/sh`` before it ``exec``s the command) and let through only after
    ``on_start(pgid)`` returned, i.e. after the worker committed the attempt's process group.
    If the worker dies in between, the gate's pipe closes and the process exits (code 125)
    without ever running the command: a task handed on by the scheduler can never run twice at
    the same time because its group was unknown.
    **Ending.** On timeout or cancel the whole process group gets SIGTERM, then SIGKILL after
    ``kill_grace_seconds``; the worker is free as soon as the group is gone (zombies are reaped,
    not waited out). When the attempt ends, however it ends, every process it started that is
    still alive — in the group or escaped from it with ``setsid`` or a double fork — is ended
    (the worker is a child subreaper, ``kernel.base.processes``): no process outlives its attempt.
    **The log.** stdout and stderr go through a pipe to ``.state/logs/{task_id}.log`` (0600),
    one section per attempt; a section keeps at most ``workers.max_log_bytes_per_attempt``
    bytes (16 MiB by default): the first half and the last half, with a line saying how many
    bytes were cut between them.
    **Spawn errors** (no such program, not executable, a NUL byte, an argument list too long,
    a missing working directory) fail the attempt with outcome ``error`` and a message; the
    worker survives.

Integration Points:
    ``kernel.runtime.worker`` calls it; ``kernel.runtime.scheduler`` kills the recorded process
    group of an
    attempt whose worker died; ``kernel.base.faults`` point ``after_spawn`` sits inside the gate's
    window for the tests that kill a worker there.

Dependencies:
    ``kernel.base.clock``, ``kernel.base.faults``, ``kernel.base.files``,
    ``kernel.base.processes``, ``kernel.definitions.commands``,
    ``kernel.runtime.executors.base``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from kernel.base import clock, faults, processes
from kernel.base.files import open_private
from kernel.base.processes import kill_group, kill_leftovers, pid_alive
from kernel.definitions.commands import substitute
from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult, Outcome

__all__ = ["CappedLog", "SubprocessExecutor", "attempt_output", "kill_group", "pid_alive"]

_POLL = 0.02
_GATE = 'IFS= read -r _ || exit 125; exec </dev/null; exec "$@"'
# The gate of a command that must die with the process that started it (``die_with_worker``):
# the gate's pipe stays open for the whole attempt; the command runs in the background, in the
# same process group, and a watcher kills that group (SIGKILL) when the pipe reaches EOF, that
# is when the worker process is gone. When the command ends first, the watcher is ended and the
# shell exits with the command's status.
_GUARDED_GATE = ('IFS= read -r _ || exit 125; exec 3<&0; "$@" </dev/null 3<&- & c=$!; '
                 '{ IFS= read -r _ <&3; kill -KILL 0; } <&3 & w=$!; exec 0</dev/null; '
                 'wait "$c"; s=$?; kill "$w" 2>/dev/null; exit "$s"')
DEFAULT_LOG_CAP = 16 * 1024 * 1024


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


class CappedLog:
    """Writes an attempt's output to its log, keeping at most ``cap`` bytes: the first half as
    it comes, the last half held back and written at ``close()``, after a line that says how
    many bytes were cut. Output under the cap is written as it comes."""

    def __init__(self, fh: IO[bytes], cap: int) -> None:
        self.fh = fh
        self.head_left = cap - cap // 2
        self.tail_cap = cap // 2
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.cut = 0

    def write(self, data: bytes) -> None:
        if self.head_left > 0:
            part = data[:self.head_left]
            self.fh.write(part)
            self.fh.flush()
            self.head_left -= len(part)
            data = data[len(part):]
        if not data:
            return
        self.tail.append(data)
        self.tail_len += len(data)
        while self.tail_len > self.tail_cap:
            extra = self.tail_len - self.tail_cap
            first = self.tail[0]
            if len(first) <= extra:
                self.tail.popleft()
                self.tail_len -= len(first)
                self.cut += len(first)
            else:
                self.tail[0] = first[extra:]
                self.tail_len -= extra
                self.cut += extra

    def close(self) -> None:
        if self.cut:
            self.fh.write(f"\n==== [orch: {self.cut} bytes of output cut here; an attempt's log "
                          f"keeps its first and last {self.tail_cap} bytes "
                          f"(workers.max_log_bytes_per_attempt)]\n".encode())
        for chunk in self.tail:
            self.fh.write(chunk)
        self.tail.clear()
        self.fh.flush()


def _header(log: IO[bytes], request: ExecutionRequest, argv: list[str] | str) -> None:
    shown = argv if isinstance(argv, str) else " ".join(argv)
    log.write(f"==== {clock.now_iso()} attempt {request.attempt_no} of {request.task_id} "
              f"in {request.cwd}\n$ {shown}\n".encode("utf-8", "replace"))
    log.flush()


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _cannot_exec(cmd: list[str], cwd: Path, env: Mapping[str, str]) -> str | None:
    """Why ``cmd`` cannot be started (as Popen would say it), or None. Checked before the
    gate's shell is started, so a missing program is a clear start error, not exit 127."""
    if not cwd.is_dir():
        return f"[Errno 2] No such file or directory: {str(cwd)!r} (the working directory)"
    if not cmd:
        return "the command is empty"
    prog = cmd[0]
    if "\0" in prog:
        return "embedded null byte"
    if "/" in prog:
        path = prog if os.path.isabs(prog) else os.path.join(cwd, prog)
        if not os.path.exists(path):
            return f"[Errno 2] No such file or directory: {prog!r}"
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return f"[Errno 13] Permission denied: {prog!r}"
        return None
    if shutil.which(prog, path=env.get("PATH", os.defpath)) is None:
        return f"[Errno 2] No such file or directory: {prog!r}"
    return None


def _open_gate(proc: subprocess.Popen[bytes], gate_w: int, out_r: int,
               on_start: Callable[[int], None], keep_open: bool = False) -> None:
    """Record the process group (``on_start``), then let the command through the gate (whose
    pipe stays open with ``keep_open``: the caller closes it when the command ended)."""
    try:
        faults.point("after_spawn")
        on_start(proc.pid)    # the process group is durably recorded ...
        os.write(gate_w, b"go\n")   # ... and only then does the command start
    except BaseException:
        _close(gate_w)
        proc.wait()
        _close(out_r)
        raise
    if not keep_open:
        _close(gate_w)


def _end_note(request: ExecutionRequest, outcome: Outcome, code: int | None,
              reason: str | None) -> str:
    """How the attempt ended, for the log and the error."""
    return {"succeeded": "exit 0", "failed": f"exit code {code}",
            "timeout": f"timed out after {request.timeout_seconds:g} s; "
                       "process group killed" if request.timeout_seconds else "timeout",
            "cancelled": f"{reason}; process group killed"}[outcome]


class SubprocessExecutor:
    name = "subprocess"

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        started = time.monotonic()
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open_private(request.log_path, "ab") as fh:
            command = self._command(fh, request, started)
            if isinstance(command, ExecutionResult):
                return command
            spawned = self._spawn(fh, request, *command, started)
            if isinstance(spawned, ExecutionResult):
                return spawned
            proc, gate_w, out_r = spawned
            _open_gate(proc, gate_w, out_r, on_start, keep_open=request.die_with_worker)
            try:
                outcome, reason = self._follow(proc, request, should_stop, started, out_r,
                                               CappedLog(fh, request.log_cap_bytes))
            finally:
                if request.die_with_worker:
                    _close(gate_w)
            duration = time.monotonic() - started
            code = proc.returncode
            if outcome == "succeeded" and code != 0:
                outcome = "failed"
            note = _end_note(request, outcome, code, reason)
            fh.write(f"\n==== attempt {request.attempt_no} ended: {note} "
                     f"({duration:.2f} s)\n".encode())
        error = None if outcome == "succeeded" else note
        return ExecutionResult(outcome, exit_code=code, error=error, duration_seconds=duration,
                               details=self.details(request, code))

    def _command(self, fh: IO[bytes], request: ExecutionRequest,
                 started: float) -> tuple[list[str], dict[str, str]] | ExecutionResult:
        """The argv and environment of the command (its placeholders filled in, the log's
        header written), or the ``error`` result of a command that cannot start."""
        try:
            argv, extra_env = substitute(request.command, request.placeholders,
                                         shell=request.shell)
        except ValueError as exc:
            return self._cannot_start(fh, request, f"the command cannot be parsed: {exc}",
                                      started)
        _header(fh, request, argv)
        cmd = ["/bin/sh", "-c", argv] if isinstance(argv, str) else argv
        env = {**request.env, **extra_env}
        problem = _cannot_exec(cmd, request.cwd, env)
        if problem:
            return self._cannot_start(fh, request, f"cannot start the command: {problem}",
                                      started)
        return cmd, env

    def _spawn(self, fh: IO[bytes], request: ExecutionRequest, cmd: list[str],
               env: dict[str, str], started: float
               ) -> tuple[subprocess.Popen[bytes], int, int] | ExecutionResult:
        """The command started behind the gate: (process, the gate's write end, the output's
        read end), or the ``error`` result when it cannot be started."""
        gate_r, gate_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", _GUARDED_GATE if request.die_with_worker else _GATE,
                 "orch-gate", *cmd], cwd=request.cwd,
                env=env, stdin=gate_r, stdout=out_w,
                stderr=out_w, start_new_session=True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            _close(gate_r, gate_w, out_r, out_w)
            return self._cannot_start(fh, request, f"cannot start the command: {exc}",
                                      started)
        finally:
            _close(gate_r, out_w)
        return proc, gate_w, out_r

    def _follow(self, proc: subprocess.Popen[bytes], request: ExecutionRequest,
                should_stop: Callable[[], str | None], started: float, out_r: int,
                log: CappedLog) -> tuple[Outcome, str | None]:
        """Copy the output to the log until the command ends (or is killed); then end what it
        left behind and copy the rest."""
        try:
            outcome, reason = self._wait(proc, request, should_stop, started, out_r, log)
            # Nothing the command started outlives the attempt (escaped processes are
            # ours to end only in a worker process, which is their subreaper).
            if processes.SUBREAPER:
                kill_leftovers(min(request.kill_grace_seconds, 1.0))
            self._drain(out_r, log)
        finally:
            _close(out_r)
            log.close()
        return outcome, reason

    @staticmethod
    def _cannot_start(fh: IO[bytes], request: ExecutionRequest, message: str,
                      started: float) -> ExecutionResult:
        fh.write(f"==== {clock.now_iso()} attempt {request.attempt_no} of {request.task_id}: "
                 f"{message}\n".encode("utf-8", "replace"))
        return ExecutionResult("error", error=message,
                               duration_seconds=time.monotonic() - started)

    def details(self, request: ExecutionRequest, exit_code: int | None) -> dict[str, object]:
        return {}

    @staticmethod
    def _drain(out_r: int, log: CappedLog, wait: float = 1.0) -> None:
        """Copy what is left in the pipe; every writer is gone, so EOF comes at once (a bounded
        wait all the same, in case a writer survived on a system without a subreaper)."""
        end = time.monotonic() + wait
        while time.monotonic() < end:
            ready, _, _ = select.select([out_r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return
            data = os.read(out_r, 65536)
            if not data:
                return
            log.write(data)

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], request: ExecutionRequest,
              should_stop: Callable[[], str | None], started: float, out_r: int,
              log: CappedLog) -> tuple[Outcome, str | None]:
        deadline = started + request.timeout_seconds if request.timeout_seconds else None
        checked = 0.0
        eof = False
        while True:
            if not eof:
                ready, _, _ = select.select([out_r], [], [], _POLL)
                if ready:
                    data = os.read(out_r, 65536)
                    if data:
                        log.write(data)
                    else:
                        eof = True
            else:
                # The output is closed, so the command is exiting or has exited: wait for it
                # (waking within a millisecond of its exit), not a whole _POLL.
                try:
                    proc.wait(timeout=_POLL)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is not None:
                return "succeeded", None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                kill_group(proc.pid, request.kill_grace_seconds, leader=proc)
                proc.wait()
                return "timeout", None
            if now - checked >= 0.1:
                checked = now
                reason = should_stop()
                if reason:
                    kill_group(proc.pid, request.kill_grace_seconds, leader=proc)
                    proc.wait()
                    return "cancelled", reason
