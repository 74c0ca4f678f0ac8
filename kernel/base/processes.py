"""Process helpers: is a pid alive, kill a process group without waiting on zombies, and make
sure no process a task started outlives its attempt.

Public API:
    ``pid_alive(pid)``; ``kill_group(pgid, grace, leader=None) -> bool``;
    ``become_subreaper() -> bool``, ``SUBREAPER``; ``children() -> list[int]``;
    ``kill_leftovers(grace, keep=()) -> list[int]``; ``reap_group(pgid, leader=None)``;
    ``pids_with_env(name, value) -> list[int]``; ``kill_pids(pids, grace)``.

Stability Guarantees:
    ``kill_group`` sends SIGTERM to the group, then SIGKILL after ``grace`` seconds, and returns
    as soon as no live process is left in it: it reaps the zombies that are this process's
    children (the group leader through its ``Popen``, so its exit status is kept), so a
    cancelled or timed-out task frees its worker at once instead of after the whole grace.
    A worker is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): a process its task
    started that escapes the task's group (``setsid``, a double fork, a background job) is
    re-parented to the worker when its parent exits, and ``kill_leftovers`` ends every such
    descendant when the attempt ends. On systems without it, only the group is killed.

Integration Points:
    ``kernel.runtime.executors.local`` (each attempt), ``kernel.runtime.worker`` (becomes a
    subreaper at
    start), ``kernel.runtime.scheduler`` (kills the recorded group of a lost worker's attempt),
    and, by the ``ORCH_WORKER_ID`` every task process inherits (``pids_with_env``), whatever
    else a dead worker's task left running (even with a new session).

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

_POLL = 0.01
_PR_SET_CHILD_SUBREAPER = 36
#: True once this process became a subreaper: only then does it own every process below it,
#: and only then may ``kill_leftovers`` end them (a test process running a worker in-process
#: has other children).
SUBREAPER = False


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host (it may belong to someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux only); True if it is."""
    global SUBREAPER
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        SUBREAPER = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        SUBREAPER = False
    return SUBREAPER


def reap_group(pgid: int, leader: subprocess.Popen[bytes] | None = None) -> None:
    """Reap every exited child of this process in group ``pgid`` (the leader via its Popen)."""
    for _ in range(1024):
        try:
            info = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ChildProcessError, OSError):
            return
        if info is None:
            return
        if leader is not None and info.si_pid == leader.pid:
            leader.poll()
        else:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(info.si_pid, os.WNOHANG)


def _group_alive(pgid: int, leader: subprocess.Popen[bytes] | None) -> bool:
    reap_group(pgid, leader)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, grace: float, leader: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM the group, then SIGKILL after ``grace`` seconds; True if it existed. Returns as
    soon as the group is gone (its zombies among this process's children are reaped)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        reap_group(pgid, leader)
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid, leader):
            return True
        time.sleep(_POLL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    end = time.monotonic() + 1.0
    while _group_alive(pgid, leader) and time.monotonic() < end:
        time.sleep(_POLL)
    return True


def children() -> list[int]:
    """The pids of this process's children (of all its threads), alive or zombie."""
    found: list[int] = []
    task_dir = Path(f"/proc/{os.getpid()}/task")
    try:
        tids = list(task_dir.iterdir())
    except OSError:
        return _children_by_scan()
    for tid in tids:
        try:
            text = (tid / "children").read_text()
        except OSError:
            return _children_by_scan()
        found.extend(int(p) for p in text.split())
    return found


def _children_by_scan() -> list[int]:
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry.name))
    return found


def kill_leftovers(grace: float, keep: Iterable[int] = ()) -> list[int]:
    """End every child of this process but ``keep`` (and, since this process is a subreaper,
    every descendant re-parented to it as their parents die): SIGTERM, then SIGKILL after
    ``grace`` seconds; reap them. Returns the pids that were ended."""
    kept = set(keep)
    ended: list[int] = []
    deadline = time.monotonic() + grace
    hard_end = deadline + 2.0
    signalled: set[int] = set()
    while time.monotonic() < hard_end:
        left = [p for p in children() if p not in kept]
        if not left:
            break
        now = time.monotonic()
        for pid in left:
            sig = signal.SIGTERM if now < deadline else signal.SIGKILL
            if pid not in signalled or sig == signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                signalled.add(pid)
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                ended.append(pid)
        time.sleep(_POLL)
    return ended


def pids_with_env(name: str, value: str) -> list[int]:
    """Processes of this user on this host whose environment has ``name=value`` (a task's
    processes inherit ``ORCH_WORKER_ID`` and ``ORCH_GENERATION``, so they can be found after
    their worker died, whatever session or group they moved to)."""
    want = f"{name}={value}".encode()
    me = os.getpid()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if want in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_pids(pids: Iterable[int], grace: float) -> None:
    """SIGTERM each pid, SIGKILL those still there after ``grace`` seconds (reaping our own
    children among them)."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid) or _zombie(pid):
                pids.remove(pid)
        time.sleep(_POLL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"
