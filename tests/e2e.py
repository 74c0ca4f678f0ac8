"""Helpers for the end-to-end tests (tests/test_run.py, tests/test_recovery.py): real projects in
tmp_path, the real `orch` CLI in subprocesses, and every claim read back from the event log."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kernel.base import clock
from kernel.observe import audit
from kernel.store import db, schema
from kernel.store.project import init_project
from tests.conftest import orch

PY = sys.executable
ORCH = str(Path(sys.executable).parent / "orch")

FAST_TOML = """\
[workers]
heartbeat_seconds = 0.2
unresponsive_after_missed = 3
shutdown_after_unresponsive_seconds = 1
kill_grace_seconds = 0.3
retry_jitter = 0

[run]
tick_seconds = 0.05
worktrees = {worktrees}
"""

# A task command for a rendezvous: it returns once every listed task is running at the same time
# as it (a listed task that already completed counts: it could only finish after seeing all of
# them running). Parallelism then follows from the scheduler, not from sleeps and start-up luck.
BARRIER_SCRIPT = """\
import os, sqlite3, sys, time
names = sys.argv[1:]
path = os.path.join(os.environ["ORCH_ROOT"], ".state", "kernel.db")
sql = ("SELECT COUNT(*) FROM task WHERE state IN ('running', 'validating', 'completed') "
       "AND task_id IN (%s)" % ", ".join("?" for _ in names))
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        together = conn.execute(sql, names).fetchone()[0]
    finally:
        conn.close()
    if together == len(names):
        sys.exit(0)
    time.sleep(0.01)
sys.exit(9)
"""


def py(code: str, *args: str) -> str:
    """A task command running ``code`` with this environment's Python (no shell needed)."""
    return " ".join(shlex.quote(a) for a in (PY, "-c", code, *args))


def sleep_cmd(seconds: float) -> str:
    return py(f"import time; time.sleep({seconds})")


def barrier_cmd(root: Path, *task_ids: str) -> str:
    """Wait until all of ``task_ids`` run at once (see BARRIER_SCRIPT); exit 9 after 15 s."""
    script = root / "barrier.py"
    if not script.exists():
        root.mkdir(parents=True, exist_ok=True)
        script.write_text(BARRIER_SCRIPT)
    return " ".join(shlex.quote(a) for a in (PY, str(script), *task_ids))


def task(task_id: str, *, ws: str = "ws", deps: Iterable[str] = (), command: str = "true",
         executor: str = "subprocess", timeout: int = 20, max_retries: int = 0,
         retry_delay: float = 0.2, resources: dict[str, Any] | None = None,
         pre: Iterable[str] = (), post: Iterable[str] = (), shell: bool = False,
         **top: Any) -> dict[str, Any]:
    execution: dict[str, Any] = {"command": command, "timeout_seconds": timeout,
                                 "max_retries": max_retries, "retry_delay_seconds": retry_delay,
                                 "executor": executor, "estimated_duration_seconds": 1}
    if shell:
        execution["shell"] = True
    doc: dict[str, Any] = {"schema_version": "2.0.0", "task_id": task_id, "workstream_id": ws,
                           "name": task_id, "type": "custom", "dependencies": list(deps),
                           "execution": execution, **top}
    if resources:
        doc["resource_requirements"] = resources
    if pre or post:
        doc["validation_rules"] = {"pre_execution": list(pre), "post_execution": list(post)}
    return doc


def make_project(root: Path, tasks: list[dict[str, Any]], *, toml_extra: str = "",
                 worktrees: bool = False,
                 resources: Callable[[list[dict[str, Any]]], None] | None = None,
                 load: bool = True) -> Path:
    """orch.toml (fast timings) + `orch init` + the task files + `orch load`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "orch.toml").write_text(
        FAST_TOML.format(worktrees="true" if worktrees else "false") + toml_extra)
    init_project(root)
    if resources is not None:
        path = root / "capabilities" / "resources.yaml"
        doc = yaml.safe_load(path.read_text())
        resources(doc["resources"])
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    write_tasks(root, tasks)
    if load:
        orch("--root", str(root), "load", check=True)
    return root


def write_tasks(root: Path, tasks: list[dict[str, Any]]) -> None:
    for t in tasks:
        path = root / "tasks" / t["workstream_id"] / f"{t['task_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(t))


def resource(doc: list[dict[str, Any]], resource_id: str) -> dict[str, Any]:
    return next(r for r in doc if r["resource_id"] == resource_id)


def run(root: Path, *args: str, workers: int = 4) -> subprocess.CompletedProcess[str]:
    return orch("--root", str(root), "run", "--workers", str(workers), *args)


def start_run(root: Path, *args: str, workers: int = 4) -> subprocess.Popen[str]:
    """`orch run` in the background (its own session, so a test can kill it alone)."""
    return subprocess.Popen([ORCH, "--root", str(root), "run", "--workers", str(workers), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str, str]:
    """Wait for a background run (SIGKILL it past the timeout: a test never leaves it behind)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"`orch run` did not end within {timeout} s:\n{err}") from None
    return proc.returncode, out, err


def connect(root: Path) -> Any:
    return schema.connect(root / ".state" / "kernel.db", readonly=True)


def query(root: Path, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    conn = connect(root)
    try:
        return db.rows(conn, sql, params)
    finally:
        conn.close()


def events(root: Path, **filters: Any) -> list[dict[str, Any]]:
    conn = connect(root)
    try:
        return audit.list_events(conn, **filters)
    finally:
        conn.close()


def states(root: Path) -> dict[str, str]:
    return {r["task_id"]: r["state"] for r in query(root, "SELECT task_id, state FROM task")}


def wait_for(what: Callable[[], Any], timeout: float = 10, interval: float = 0.02,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def pid_gone(pid: int) -> bool:
    """The process does not exist (a zombie nobody reaped yet counts as gone: it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def group_gone(pgid: int) -> bool:
    """No live (non-zombie) process is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return False
    return True


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ----------------------------------------------------------------------------- the event log

ACTIVE = ("running", "validating")


@dataclass(frozen=True)
class Interval:
    """One attempt of a task as the event log tells it: from its task_started event to the first
    later event of the task that leaves running/validating. ``start``/``end`` are event seqs
    (the commit order of the database, exact); ``t0``/``t1`` their timestamps."""

    task_id: str
    start: int
    end: int
    t0: float
    t1: float
    resources: dict[str, Any]

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end


def intervals(evs: list[dict[str, Any]]) -> list[Interval]:
    open_: dict[str, dict[str, Any]] = {}
    out: list[Interval] = []
    for e in evs:
        if e["entity_type"] != "task" or e["to_state"] is None:
            continue
        tid = e["task_id"]
        if e["event"] == "task_started":
            open_[tid] = e
        elif tid in open_ and e["to_state"] not in ACTIVE:
            s = open_.pop(tid)
            out.append(Interval(tid, s["seq"], e["seq"], clock.epoch(s["timestamp"]),
                                clock.epoch(e["timestamp"]),
                                s["metadata"].get("resources") or {}))
    assert not open_, f"tasks still running at the end of the log: {sorted(open_)}"
    return out


def first(evs: list[dict[str, Any]], name: str, task_id: str) -> dict[str, Any]:
    return next(e for e in evs if e["event"] == name and e["task_id"] == task_id)


def max_concurrency(ivs: list[Interval]) -> int:
    points = sorted([(i.start, 1) for i in ivs] + [(i.end, -1) for i in ivs])
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best
