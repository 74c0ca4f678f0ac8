"""Bench-only instrumentation of orch processes, loaded through a ``sitecustomize`` module.

Public API:
    ``install()`` (called by the ``sitecustomize.py`` that ``kernel.bench.harness`` writes into
    a temporary directory and puts first on ``PYTHONPATH`` of the ``orch run`` it starts, and so
    of its workers); ``SITECUSTOMIZE`` (that file's text); the environment variables
    ``TX_LOG_ENV`` (``ORCH_BENCH_TX_LOG``) and ``CLAIM_LOG_ENV`` (``ORCH_BENCH_CLAIM_LOG``);
    ``CLAIM_CALLS``; ``flush()`` (write this process's counts, once); ``read_tx_log(path)``,
    ``ClaimLog`` and ``read_claim_log(path)``.

Stability Guarantees:
    Measures without changing what it measures: an apsw commit hook (added to every connection
    through ``apsw.connection_hooks``) counts committed write transactions — every ``BEGIN
    IMMEDIATE`` counts, an empty claim included, read transactions do not — and each process
    appends ``pid<TAB>role<TAB>commits`` to ``ORCH_BENCH_TX_LOG`` when it exits (role:
    ``worker``, ``scheduler`` or ``other``). With ``ORCH_BENCH_CLAIM_LOG`` set, every call of
    ``kernel.runtime.claims.claim_next`` and ``kernel.runtime.claims.finish_and_claim`` (the
    transaction that
    finishes a task and claims the next) is timed (``time.perf_counter`` around the call, the
    wait for the write lock included) and appended as ``seconds<TAB>claimed(0|1)<TAB>call``,
    one line per call, in single ``O_APPEND`` writes so that concurrent workers never
    interleave lines (the third field is optional for readers). If the kernel writes
    that file itself (``kernel.runtime.worker.CLAIM_LOG_ENV`` exists), the shim leaves claims
    alone, so
    the same reader works for both. Without the variables set, nothing is installed. A failure
    to install is printed to stderr and never stops the process.

    Fork-aware: a child forked from an instrumented process starts from zero
    (``os.register_at_fork``: its commit count and unwritten claim lines are reset, so the
    parent's are never counted twice), is a ``worker`` when forked by ``orch run``, and
    writes its counts when ``kernel.runtime.worker.main`` returns or raises (the shim wraps
    it in the child; ``kernel.runtime.runner`` calls ``module.main`` and then ``os._exit``,
    which skips ``atexit``). A forked child that exits some other way (``os._exit`` without
    returning from ``main``) writes nothing. ``kernel.runtime.runner`` forks its workers with
    these variables set, too (``SPAWN_ENV`` no longer lists them).

Integration Points:
    ``kernel.bench.harness.shim_env``; read by ``kernel.bench.throughput`` (write transactions
    per task) and ``kernel.bench.latency`` (claim latency).

Dependencies:
    apsw; ``kernel.runtime.claims``, ``kernel.runtime.worker``.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TX_LOG_ENV = "ORCH_BENCH_TX_LOG"
CLAIM_LOG_ENV = "ORCH_BENCH_CLAIM_LOG"
#: The calls of kernel.runtime.claims through which a worker claims a task: on its own, or in the
#: transaction that finishes the previous task.
CLAIM_CALLS = ("claim_next", "finish_and_claim")

SITECUSTOMIZE = f'''\
# Written by `orch bench` into its temporary directory; never installed anywhere else.
import os
import sys

if os.environ.get("{TX_LOG_ENV}") or os.environ.get("{CLAIM_LOG_ENV}"):
    try:
        from kernel.bench.shim import install

        install()
    except Exception as exc:  # noqa: BLE001
        sys.stderr.write("orch bench shim not installed: %r\\n" % (exc,))
'''

class _State:
    """What this process has counted and not yet written: reset in a forked child."""

    commits = 0
    role: str | None = None               # None: decided from sys.argv at exit
    claims: list[str] = []                # claim-log lines not yet appended
    tx_log: str | None = None
    claim_log: str | None = None
    flushed = False


def _role() -> str:
    if _State.role is not None:
        return _State.role
    args = sys.argv[1:]
    if "worker" in args:
        return "worker"
    if "run" in args:
        return "scheduler"
    return "other"


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _flush_claims() -> None:
    if _State.claims and _State.claim_log:
        _append(_State.claim_log, "".join(_State.claims))
        _State.claims.clear()


def flush() -> None:
    """Write this process's counts once: at exit (``atexit``), or, in a forked worker, when
    ``kernel.runtime.worker.main`` returns (it ends with ``os._exit``, which skips atexit)."""
    if _State.flushed:
        return
    _State.flushed = True
    if _State.tx_log:
        _append(_State.tx_log, f"{os.getpid()}\t{_role()}\t{_State.commits}\n")
    _flush_claims()


def _wrap_worker_main() -> None:
    """In a forked child: flush when the worker's ``main`` returns or raises."""
    module = sys.modules.get("kernel.runtime.worker")
    original = getattr(module, "main", None)
    if module is None or not callable(original) or getattr(original, "_bench_flushes", False):
        return

    def main(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            flush()

    main._bench_flushes = True  # type: ignore[attr-defined]
    module.main = main  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    """A forked child starts from zero: the parent's counts stay the parent's. A child forked
    by ``orch run`` is a worker (``kernel.runtime.runner.fork_workers``)."""
    _State.commits = 0
    _State.claims = []
    _State.flushed = False
    _State.role = "worker" if "run" in sys.argv[1:] else None
    _wrap_worker_main()


def _count_commits() -> None:
    import apsw

    def on_commit() -> bool:
        _State.commits += 1
        return False  # False: let the commit go ahead

    def hook(conn: apsw.Connection) -> None:
        conn.set_commit_hook(on_commit)

    apsw.connection_hooks.append(hook)


def _claimed(result: Any) -> bool:
    """``claim_next`` returns a Claim or None; ``finish_and_claim`` (state, Claim | None)."""
    if isinstance(result, tuple):
        return len(result) == 2 and result[1] is not None
    return result is not None


def _time_claims() -> None:
    import kernel.runtime.worker
    from kernel.runtime import claims

    if getattr(kernel.runtime.worker, "CLAIM_LOG_ENV", None) == CLAIM_LOG_ENV:
        _State.claim_log = None
        return  # the kernel logs its claims itself

    def timed(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = None
            try:
                result = original(*args, **kwargs)
                return result
            finally:
                _State.claims.append(f"{time.perf_counter() - start:.6f}"
                                     f"\t{int(_claimed(result))}\t{name}\n")
                if len(_State.claims) >= 64:
                    _flush_claims()

        call.__name__ = name
        return call

    for name in CLAIM_CALLS:
        original = getattr(claims, name, None)
        if callable(original):
            setattr(claims, name, timed(name, original))


def install() -> None:
    _State.tx_log = os.environ.get(TX_LOG_ENV) or None
    _State.claim_log = os.environ.get(CLAIM_LOG_ENV) or None
    if _State.tx_log:
        _count_commits()
    if _State.claim_log:
        _time_claims()
    if _State.tx_log or _State.claim_log:
        atexit.register(flush)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)


def read_tx_log(path: str | os.PathLike[str]) -> dict[str, int]:
    """Committed write transactions by role, summed over the processes that exited."""
    totals: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) == 3:
                    totals[parts[1]] = totals.get(parts[1], 0) + int(parts[2])
                    totals["processes"] = totals.get("processes", 0) + 1
    except FileNotFoundError:
        pass
    return totals


@dataclass
class ClaimLog:
    claimed: list[float] = field(default_factory=list)   # seconds of calls that claimed
    empty: list[float] = field(default_factory=list)     # seconds of calls that found nothing
    calls: dict[str, int] = field(default_factory=dict)  # claims by call name


def read_claim_log(path: str | os.PathLike[str]) -> ClaimLog:
    """Lines ``seconds<TAB>claimed(0|1)[<TAB>call]``; anything else is skipped."""
    log = ClaimLog()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split("\t")
                if len(parts) < 2 or parts[1] not in ("0", "1"):
                    continue
                try:
                    seconds = float(parts[0])
                except ValueError:
                    continue
                if parts[1] == "1":
                    log.claimed.append(seconds)
                    call = parts[2] if len(parts) > 2 else "claim"
                    log.calls[call] = log.calls.get(call, 0) + 1
                else:
                    log.empty.append(seconds)
    except FileNotFoundError:
        pass
    return log
