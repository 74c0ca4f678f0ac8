"""A Dask cluster as orch sees it: the run's connection to it, and each proxy worker's session.

Public API:
    ``require_distributed()`` (raises ``dask_missing``); ``DaskWorkerInfo``; ``Cluster(config,
    address=None, workers=None)`` with ``start()``, ``address``, ``workers()``, ``close()``
    (``orch run --executor dask``'s end: connect to a scheduler, or start a ``LocalCluster`` of
    worker processes); ``Session(scheduler_address, worker_address, timeout)`` with
    ``info()``, ``cluster_workers()``, ``present()``, ``beat_ok(heartbeat_seconds)``,
    ``submit(fn, spec, resources)``, ``messages(tag, timeout)``, ``call(fn, *args)``,
    ``close()`` (one proxy worker's end: the Dask worker it stands for).

Stability Guarantees:
    orch never writes to a Dask worker's state and never runs tasks through Dask's own retries:
    every submission is pinned to the proxy's Dask worker (``workers=[address]``,
    ``allow_other_workers=False``, ``retries=0``, never ``pure``). Dask only carries the
    command there and its messages back; the kernel's claims, leases and fencing decide what
    runs. A worker is "present" while the scheduler lists it; ``beat_ok`` is the scheduler's
    view of its health that the proxy's kernel heartbeats follow (present, and seen by the
    scheduler within ``max(heartbeat_seconds, 5)`` seconds). A ``LocalCluster`` has one thread
    per worker process and Dask's own logging at ERROR only (orch reports what matters).

Integration Points:
    ``kernel.runtime.runner`` starts a ``Cluster`` and one proxy worker per Dask worker
    (``kernel.runtime.worker`` with ``WorkerOptions.dask``); the proxy's executor is
    ``kernel.runtime.executors.dask``. docs/operations/SCALING.md.

Dependencies:
    distributed; ``kernel.base.config``, ``kernel.base.errors``.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernel.base.config import DaskConfig
from kernel.base.errors import OrchError

__all__ = ["Cluster", "DaskWorkerInfo", "Session", "require_distributed"]

_INFO_TTL = 0.5   # seconds a proxy trusts its last look at the scheduler


def require_distributed() -> None:
    """``dask.distributed`` is importable, else ``dask_missing`` (exit 1) with the fix."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise OrchError("dask_missing", "--executor dask needs dask.distributed, which is not "
                        "installed", hint="pip install 'orch-kernel[dask]' (here and on every "
                        "Dask worker), or run without --executor dask") from None


@dataclass(frozen=True)
class DaskWorkerInfo:
    """One Dask worker as the scheduler lists it."""

    address: str
    host: str
    name: str
    resources: dict[str, float] = field(default_factory=dict)
    last_seen: float | None = None


def _workers(client: Any) -> dict[str, DaskWorkerInfo]:
    listed = client.scheduler_info(n_workers=-1).get("workers", {})
    return {addr: DaskWorkerInfo(
        address=addr, host=str(w.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]),
        name=str(w.get("name", "")),
        resources={str(k): float(v) for k, v in (w.get("resources") or {}).items()},
        last_seen=w.get("last_seen")) for addr, w in listed.items()}


def _quiet() -> None:
    """Dask's own log lines (a nanny restarting a worker, a closed comm) are not the user's
    business: orch reports what happened to tasks and workers itself."""
    prefixes = ("distributed", "dask", "tornado", "asyncio")
    for name in [*prefixes, *logging.root.manager.loggerDict]:
        if name.split(".")[0] in prefixes:
            logging.getLogger(name).setLevel(logging.CRITICAL)


class Cluster:
    """``orch run``'s connection to a Dask cluster (see the module docstring)."""

    def __init__(self, config: DaskConfig, address: str | None = None,
                 workers: int | None = None) -> None:
        self.config = config
        self.requested = address or config.scheduler_address
        self.size = workers or config.workers or os.cpu_count() or 1
        self.client: Any = None
        self.local: Any = None

    @property
    def address(self) -> str:
        return str(self.client.scheduler.address)

    def start(self) -> Cluster:
        require_distributed()
        from distributed import Client, LocalCluster

        _quiet()
        timeout = self.config.connect_timeout_seconds
        try:
            if self.requested:
                self.client = Client(self.requested, timeout=timeout, set_as_default=False)
            else:
                self.local = LocalCluster(
                    n_workers=self.size, threads_per_worker=1, processes=True,
                    resources=dict(self.config.resources) or None, host="127.0.0.1",
                    scheduler_port=0, dashboard_address="127.0.0.1:0",   # never the network
                    silence_logs=logging.CRITICAL)
                self.client = Client(self.local, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, RuntimeError) as exc:
            self.close()
            where = f"the Dask scheduler at {self.requested}" if self.requested \
                else "a Dask LocalCluster"
            raise OrchError("dask_unavailable", f"could not reach {where}: {exc}",
                            hint="check the address and that `dask scheduler` runs there "
                                 "(docs/operations/SCALING.md)") from None
        if not self.wait_for_workers(timeout):
            self.close()
            raise OrchError("dask_unavailable", f"the Dask cluster at {self.requested} has no "
                            f"workers (waited {timeout:g} s)",
                            hint="start some: dask worker " + str(self.requested))
        return self

    def wait_for_workers(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.workers():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def workers(self) -> dict[str, DaskWorkerInfo]:
        try:
            return _workers(self.client)
        except (OSError, TimeoutError, RuntimeError):
            return {}

    def close(self) -> None:
        for thing in (self.client, self.local):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing must never hide how the run ended
                    pass
        self.client = self.local = None


class Session:
    """A proxy worker's end: its own client, the one Dask worker it stands for, and a queue
    the remote side sends its messages to (``kernel.runtime.executors.dask``)."""

    def __init__(self, scheduler_address: str, worker_address: str, timeout: float) -> None:
        require_distributed()
        from distributed import Client, Queue

        _quiet()
        self.worker = worker_address
        self.client = Client(scheduler_address, timeout=timeout, set_as_default=False)
        self.queue_name = f"orch-{uuid.uuid4().hex}"
        self.queue = Queue(self.queue_name, client=self.client)
        self._info: DaskWorkerInfo | None = None
        self._looked = 0.0
        first = self.info(fresh=True)
        if first is None:
            self.close()
            raise OrchError("dask_unavailable", f"no Dask worker {worker_address} in the "
                            f"cluster at {scheduler_address}")
        # Its host name as the worker's own machine says it (the scheduler lists an address):
        # where the attempts' process groups live, as a local worker's `hostname`.
        try:
            self.host = str(self.call(socket.gethostname, timeout=timeout))
        except (OSError, TimeoutError) as exc:
            self.close()
            raise OrchError("dask_unavailable", f"Dask worker {worker_address} did not answer "
                            f"within {timeout:g} s ({type(exc).__name__})") from None

    def info(self, fresh: bool = False) -> DaskWorkerInfo | None:
        """The scheduler's record of this Dask worker (at most ``_INFO_TTL`` s old), or None
        once it left the cluster."""
        now = time.monotonic()
        if fresh or now - self._looked >= _INFO_TTL:
            try:
                self._info = _workers(self.client).get(self.worker)
            except (OSError, TimeoutError, RuntimeError):
                self._info = None
            self._looked = now
        return self._info

    def cluster_workers(self) -> dict[str, DaskWorkerInfo]:
        """Every Dask worker of the cluster, as the scheduler lists them now."""
        return _workers(self.client)

    def present(self) -> bool:
        return self.info() is not None

    def beat_ok(self, heartbeat_seconds: float) -> bool:
        """Whether the kernel heartbeat should go out: the scheduler lists the worker and saw
        it recently."""
        info = self.info()
        if info is None:
            return False
        if info.last_seen is None:
            return True
        return time.time() - float(info.last_seen) < max(heartbeat_seconds, 5.0)

    def submit(self, fn: Callable[..., Any], spec: dict[str, Any],
               resources: dict[str, float]) -> Any:
        return self.client.submit(
            fn, spec, key=f"orch-{spec['task_id']}-{spec['tag']}-{uuid.uuid4().hex[:8]}",
            workers=[self.worker], allow_other_workers=False, retries=0, pure=False,
            resources=resources or None)

    def messages(self, tag: str, timeout: float) -> list[dict[str, Any]]:
        """The remote side's next message for attempt ``tag`` (a list of at most one), waiting
        up to ``timeout`` s; another attempt's (a late line of a previous one) is dropped."""
        try:
            first = self.queue.get(timeout=timeout)
        except TimeoutError:
            return []
        return [first] if isinstance(first, dict) and first.get("tag") == tag else []

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
        """Run ``fn(*args)`` in this Dask worker's process, beside its task threads (a task
        still running there does not delay it), and return its result."""
        answer: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def ask() -> None:   # in a daemon thread: a worker that never answers is given up
            try:
                done = self.client.run(fn, *args, workers=[self.worker], on_error="raise")
                answer.put((True, done[self.worker]))
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                answer.put((False, exc))

        threading.Thread(target=ask, daemon=True, name="orch-dask-call").start()
        try:
            ok, value = answer.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"Dask worker {self.worker} did not answer within "
                               f"{timeout:g} s") from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        try:
            self.queue.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
