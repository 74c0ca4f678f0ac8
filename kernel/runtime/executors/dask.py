"""The ``dask`` executor: a claimed task's command runs on a worker of a Dask cluster.

Public API:
    ``DaskExecutor(session, name)`` (the proxy's side: ``run(request, on_start, should_stop)``,
    the ``Executor`` protocol); ``run_on_worker(spec)`` and ``assess_on_worker(rows, config,
    root)`` (what runs on the Dask worker); ``dask_resources(requests, advertised)``;
    ``WorkerLost`` (from ``kernel.runtime.executors.base``).

Stability Guarantees:
    **Where.** The task's own executor (``subprocess``, ``pytest``, ``ruff``, ``aider``,
    ``agent``: ``execution.executor`` or the type, as on a local worker) runs on the proxy's
    one Dask worker, in the task's working directory, with the task's environment, as a
    subprocess in its own process group. Its timeout is enforced there; its log is written to
    a temporary file there and streamed back, at least every 0.25 s, into
    ``.state/logs/{task}.log`` (the same sections as a local run, after a line naming the Dask
    worker).
    **The working directory.** With ``[executors.dask] setup_command``, that command runs first
    on the worker (``/bin/sh -c``, the task's ``ORCH_*`` variables; a failure is the attempt's
    ``error``). A working directory missing on the worker fails the attempt with outcome
    ``error`` and a message naming the worker, the directory and the fix, never an exit code.
    **Never twice at once.** The command dies with its Dask worker: its gate's pipe stays open
    for the attempt, and the group is SIGKILLed when the worker process is gone
    (``ExecutionRequest.die_with_worker``). It dies with its kernel worker too: the remote side
    polls its own Dask task, and a task the proxy cancelled or abandoned (its client went away)
    ends the process group like a cancel. A Dask worker that leaves the cluster mid-task raises
    ``WorkerLost``: the proxy worker hands its task on as lost (``worker_lost``, a new
    generation). Dask never retries or moves a task (``kernel.runtime.cluster``).
    **Results.** A remote error (Dask could not run the function) is the attempt's ``error``.
    An agent's ``undo`` comes back pickled and runs on the kernel's machine, in the same
    worktree path (a shared file system).

Integration Points:
    ``kernel.runtime.worker`` uses it instead of ``executor_for`` when it stands for a Dask
    worker (``WorkerOptions.dask``); ``kernel.runtime.cluster.Session`` submits and carries
    the messages. docs/operations/SCALING.md.

Dependencies:
    cloudpickle, distributed; ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.definitions.offers``, ``kernel.runtime.executors``,
    ``kernel.runtime.executors.base``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from kernel.base.errors import OrchError
from kernel.base.files import open_private
from kernel.runtime.executors.base import ExecutionRequest, ExecutionResult, WorkerLost

__all__ = ["DaskExecutor", "WorkerLost", "assess_on_worker", "dask_resources",
           "run_on_worker"]

_FORWARD_EVERY = 0.25     # seconds between two log messages from a running command
_ANSWER_GRACE = 10.0      # seconds to wait for the remote side's last word after a cancel


def dask_resources(requests: Mapping[str, float], advertised: set[str]) -> dict[str, float]:
    """The Dask resource restrictions of a task: what it asks of the resources the cluster's
    workers advertise (``kernel.definitions.fit.task_requests`` gives ``requests``)."""
    return {r: float(a) for r, a in requests.items() if r in advertised}


# ---------------------------------------------------------------------- on the Dask worker

_QUEUES: dict[str, Any] = {}   # queue name -> its handle in this Dask worker process


class _Remote:
    """The Dask worker's side of one attempt: the messages it sends, the log it forwards and
    whether the kernel still wants it."""

    def __init__(self, spec: dict[str, Any], log: Path) -> None:
        from distributed import Queue, get_worker
        from distributed.worker import thread_state

        self.spec = spec
        self.tag = spec["tag"]
        if spec["queue"] not in _QUEUES:   # one per proxy, made once in this worker process
            _QUEUES[spec["queue"]] = Queue(spec["queue"])
        self.queue = _QUEUES[spec["queue"]]
        self.worker = get_worker()
        self.key = thread_state.key
        self.log = log
        self.sent = 0
        self.last = 0.0

    def send(self, op: str, **fields: Any) -> None:
        self.queue.put({"tag": self.tag, "op": op, **fields})

    def unsent(self, limit: int = 4 * 1024 * 1024) -> bytes:
        """What the log gained since it was last sent (at most ``limit`` bytes)."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.sent)
                data = fh.read(limit)
        except OSError:
            return b""
        self.sent += len(data)
        return data

    def forward(self) -> None:
        """Send what the log gained, at most every ``_FORWARD_EVERY`` seconds."""
        now = time.monotonic()
        if now - self.last < _FORWARD_EVERY:
            return
        self.last = now
        data = self.unsent()
        if data:
            self.send("log", data=data)

    def end(self, payload: dict[str, Any]) -> None:
        """The last message: the rest of the log (whole) with the result."""
        rest = b""
        while True:
            data = self.unsent()
            if not data:
                break
            if len(rest) + len(data) > 4 * 1024 * 1024:
                self.send("log", data=rest)
                rest = b""
            rest += data
        self.send("ended", result=payload, log=rest)

    def abandoned(self) -> bool:
        task = self.worker.state.tasks.get(self.key)
        return task is None or task.state not in ("executing", "long-running")

    def should_stop(self) -> str | None:
        self.forward()
        return "the kernel stopped the attempt" if self.abandoned() else None


def _setup(spec: dict[str, Any], request: ExecutionRequest, fh: IO[bytes]) -> str | None:
    """Run ``setup_command`` on this worker; why it failed, or None."""
    command = spec.get("setup_command")
    if not command:
        return None
    fh.write(f"==== set-up on {socket.gethostname()}: $ {command}\n".encode())
    fh.flush()
    try:
        done = subprocess.run(["/bin/sh", "-c", command], env=dict(request.env), stdout=fh,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=request.timeout_seconds, check=False)
    except subprocess.TimeoutExpired:
        return f"the set-up command ran longer than {request.timeout_seconds:g} s"
    except OSError as exc:
        return f"the set-up command could not start: {exc}"
    if done.returncode != 0:
        return f"the set-up command exited {done.returncode} ([executors.dask] setup_command)"
    return None


def _missing_cwd(spec: dict[str, Any], request: ExecutionRequest) -> str | None:
    if request.cwd.is_dir():
        return None
    return (f"the working directory {request.cwd} does not exist on Dask worker "
            f"{spec['worker']} ({socket.gethostname()}): put the project at the same path on "
            "a shared file system, or set [executors.dask] setup_command to create it "
            "(docs/operations/SCALING.md)")


def _attempt(spec: dict[str, Any], remote: _Remote, log: Path) -> ExecutionResult:
    from kernel.runtime.executors import EXECUTORS

    sent: ExecutionRequest = spec["request"]
    # This worker's own environment, with the task's ORCH_* variables: not the kernel
    # machine's PATH and HOME.
    env = {**os.environ, **{k: v for k, v in sent.env.items() if k.startswith("ORCH_")}}
    request = dataclasses.replace(sent, env=env, log_path=log, die_with_worker=True)
    started = time.monotonic()
    with open_private(log, "ab") as fh:
        problem = _setup(spec, request, fh) or _missing_cwd(spec, request)
        if problem:
            fh.write(f"==== attempt {request.attempt_no} of {request.task_id}: {problem}\n"
                     .encode())
    if problem:
        return ExecutionResult("error", error=problem,
                               duration_seconds=time.monotonic() - started)
    host = socket.gethostname()
    return EXECUTORS[spec["executor"]]().run(
        request, on_start=lambda pgid: remote.send("started", pgid=pgid, host=host),
        should_stop=remote.should_stop)


def run_on_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One attempt on this Dask worker (see the module docstring); its result is also the
    last message sent."""
    import cloudpickle
    from distributed import get_worker

    # In the Dask worker's own scratch directory, which Dask clears when the worker ends,
    # even when it was killed (this function's cleanup then never ran).
    workdir = Path(tempfile.mkdtemp(prefix="orch-attempt-", dir=get_worker().local_directory))
    log = workdir / "attempt.log"
    remote = _Remote(spec, log)
    try:
        try:
            result = _attempt(spec, remote, log)
        except Exception as exc:  # noqa: BLE001 - reported as the attempt's error
            result = ExecutionResult("error", error=f"the {spec['executor']} executor failed "
                                                    f"on the Dask worker: "
                                                    f"{type(exc).__name__}: {exc}")
        payload = {"outcome": result.outcome, "exit_code": result.exit_code,
                   "error": result.error, "duration": result.duration_seconds,
                   "details": dict(result.details),
                   "undo": cloudpickle.dumps(result.undo) if result.undo is not None else None}
        remote.end(payload)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {k: v for k, v in payload.items() if k != "undo"}


def assess_on_worker(rows: list[Any], config: Any, root: str) -> list[Any]:
    """The capability catalog assessed on this Dask worker
    (``kernel.definitions.offers.Assessment`` each)."""
    from kernel.definitions.offers import assess

    return assess(rows, config, Path(root))


# ---------------------------------------------------------------------- on the kernel's machine

def _undo_here(pickled: bytes | None) -> Callable[[], None] | None:
    """An agent's ``undo``, run on this machine (the worktree at the same path)."""
    if pickled is None:
        return None
    import cloudpickle

    remote_undo = cloudpickle.loads(pickled)

    def undo() -> None:
        try:
            remote_undo()
        except OSError as exc:
            raise OrchError("cannot_revert", f"could not undo on this machine: {exc}") from None

    return undo


def _result(payload: Mapping[str, Any]) -> ExecutionResult:
    return ExecutionResult(
        payload["outcome"], exit_code=payload.get("exit_code"), error=payload.get("error"),
        duration_seconds=float(payload.get("duration") or 0.0),
        details=dict(payload.get("details") or {}), undo=_undo_here(payload.get("undo")))


class DaskExecutor:
    """The proxy's side (see the module docstring)."""

    name = "dask"

    def __init__(self, session: Any, inner: str, setup_command: str | None = None,
                 resources: dict[str, float] | None = None) -> None:
        self.session = session
        self.inner = inner
        self.setup_command = setup_command
        self.resources = resources or {}

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        started = time.monotonic()
        tag = f"{request.task_id}-{request.attempt_no}-{os.getpid()}-{time.time_ns()}"
        remote_request = dataclasses.replace(request, env=dict(request.env),
                                             placeholders=dict(request.placeholders),
                                             definition=dict(request.definition))
        spec = {"tag": tag, "task_id": request.task_id, "queue": self.session.queue_name,
                "worker": self.session.worker, "executor": self.inner,
                "request": remote_request, "setup_command": self.setup_command}
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open_private(request.log_path, "ab") as fh:
            fh.write(f"==== on Dask worker {self.session.worker} ({self.session.host})\n"
                     .encode())
            fh.flush()
            future = self.session.submit(run_on_worker, spec, self.resources)
            stopped: list[str] = []

            def stop_reason() -> str | None:
                reason = should_stop()
                if reason:
                    stopped.append(reason)
                return reason

            payload = self._follow(future, tag, request, fh, on_start, stop_reason, started)
            if stopped:   # the remote side only knows that it was stopped; this says why
                fh.write(f"==== stopped by the kernel: {stopped[0]}\n".encode())
        return _result(payload)

    def _follow(self, future: Any, tag: str, request: ExecutionRequest, fh: IO[bytes],
                on_start: Callable[[int], None], should_stop: Callable[[], str | None],
                started: float) -> Mapping[str, Any]:
        """Carry the remote side's messages until its last one (or until it cannot come)."""
        stopping: float | None = None
        backstop = (request.timeout_seconds + request.kill_grace_seconds + 60
                    if request.timeout_seconds else None)
        while True:
            try:
                found = self.session.messages(tag, 0.1)
            except OSError as exc:   # the scheduler is gone (CommClosedError is an OSError)
                raise WorkerLost(f"lost the connection to the Dask scheduler while "
                                 f"{request.task_id} ran on {self.session.worker}: "
                                 f"{type(exc).__name__}") from None
            for msg in found:
                if msg["op"] == "log":
                    fh.write(msg["data"])
                    fh.flush()
                elif msg["op"] == "started":
                    on_start(int(msg["pgid"]))
                elif msg["op"] == "ended":
                    fh.write(msg.get("log") or b"")
                    fh.flush()
                    return dict(msg["result"])
            if future.status == "error":
                return {"outcome": "error", "error": "the Dask worker could not run the "
                        f"attempt: {type(future.exception()).__name__}: {future.exception()}"}
            if not self.session.present():
                with contextlib.suppress(Exception):
                    future.cancel()
                raise WorkerLost(f"Dask worker {self.session.worker} "
                                 f"({self.session.host}) left the cluster while running "
                                 f"{request.task_id}")
            now = time.monotonic()
            if stopping is None:
                reason = should_stop()
                if reason:
                    future.cancel()
                    stopping = now
            elif now - stopping > request.kill_grace_seconds + _ANSWER_GRACE:
                return {"outcome": "cancelled", "error": "stopped; the Dask worker did not "
                        "answer in time"}
            if backstop is not None and now - started > backstop:
                future.cancel()
                return {"outcome": "timeout", "error": f"timed out after "
                        f"{request.timeout_seconds:g} s; the Dask worker did not answer"}
