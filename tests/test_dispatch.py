"""The one writer of the hot path (kernel.runtime.dispatch, kernel.runtime.channel): workers
linked to their kernel write no claim and no outcome themselves; the kernel group-commits them,
with every audited transition; a report the kernel cannot apply, or a kernel that is gone, makes
the worker write it itself. Real SQLite files, real workers (threads and processes), real sockets.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import apsw

from kernel.runtime import scheduler
from kernel.runtime.channel import socket_pair
from kernel.runtime.dispatch import Dispatcher
from kernel.runtime.worker import Worker, WorkerOptions
from kernel.store import db
from kernel.store.project import Project
from tests.e2e import events, make_project, query, run, states, task


def _count_commits(conn: apsw.Connection) -> list[int]:
    counter = [0]

    def hook() -> bool:
        counter[0] += 1
        return False   # False: let the commit happen

    conn.set_commit_hook(hook)
    return counter


class _Kernel:
    """A dispatcher and linked workers in threads of this process, over a real project."""

    def __init__(self, root: Path, workers: int) -> None:
        self.project = Project(root.resolve())
        self.conn = self.project.connect()
        self.kernel_commits = _count_commits(self.conn)
        self.dispatcher = Dispatcher(self.conn, self.project.config.workers)
        self.ctx = scheduler.TickContext(root=self.project.root, config=self.project.config)
        self.workers: list[Worker] = []
        self.worker_commits: list[list[int]] = []
        self.threads: list[threading.Thread] = []
        for i in range(workers):
            kernel_end, worker_end = socket_pair()
            self.dispatcher.add(kernel_end)
            # Managed, as by an `orch run`: a worker exits once its link closes. (Its "parent"
            # is this process's parent, which stays alive: os.getppid() in a thread.)
            worker = Worker(self.project, WorkerOptions(name=f"w{i}", link=worker_end,
                                                        scheduler_owner="test-kernel",
                                                        parent_pid=os.getppid()))
            self.worker_commits.append(_count_commits(worker.conn))
            self.workers.append(worker)

    def start(self) -> None:
        for worker in self.workers:
            worker.register()
            thread = threading.Thread(target=worker.run_forever, daemon=True)
            thread.start()
            self.threads.append(thread)

    def run_until(self, done: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the tasks did not finish"
            scheduler.tick(self.conn, time.time(), self.ctx)
            self.dispatcher.poke()
            for _ in range(20):
                self.dispatcher.pump(0.02)

    def close(self) -> None:
        self.dispatcher.close()          # the workers see their link close and exit
        for thread in self.threads:
            thread.join(timeout=10)
        self.conn.close()


def _all_completed(root: Path, n: int) -> Any:
    return lambda: Counter(states(root).values()).get("completed", 0) == n


def test_linked_workers_write_no_claim_and_no_outcome_the_kernel_group_commits(
        tmp_path: Path) -> None:
    n = 60
    root = make_project(tmp_path / "p", [task(f"t{i:02d}", executor="noop") for i in range(n)])
    kernel = _Kernel(root, workers=3)
    registered = [c[0] for c in kernel.worker_commits]
    kernel.start()
    try:
        kernel.run_until(_all_completed(root, n))
    finally:
        kernel.close()
    # Each worker committed its registration and its shutdown, and nothing per task: every claim
    # and every report went through the kernel's connection.
    assert registered == [0, 0, 0]
    assert [c[0] for c in kernel.worker_commits] == [2, 2, 2]
    attempts = query(root, "SELECT task_id, worker_id, outcome FROM attempt")
    assert len(attempts) == n and {a["outcome"] for a in attempts} == {"succeeded"}
    assert len({a["worker_id"] for a in attempts}) >= 2
    # Group commit: fewer kernel transactions than claims plus reports (2 per task).
    assert kernel.kernel_commits[0] < 2 * n
    # Every audited transition is there, once per task, in order.
    per_task: dict[str, list[str]] = {}
    for e in events(root):
        if e["entity_type"] == "task" and e["to_state"]:
            per_task.setdefault(e["task_id"], []).append(e["to_state"])
    assert all(seq == ["pending", "queued", "running", "validating", "completed"]
               for seq in per_task.values()), per_task
    worker_moves = Counter((e["from_state"], e["to_state"]) for e in events(root)
                           if e["entity_type"] == "worker")
    assert worker_moves[("idle", "busy")] == n and worker_moves[("busy", "idle")] == n
    seqs = [e["seq"] for e in events(root)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_a_report_the_kernel_cannot_apply_is_written_by_the_worker(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("only", executor="noop")])
    kernel = _Kernel(root, workers=1)
    kernel.start()
    forget = kernel.dispatcher.claims
    try:
        deadline = time.monotonic() + 30
        while not forget:        # claimed: now the kernel "loses" its record of the claim
            assert time.monotonic() < deadline
            scheduler.tick(kernel.conn, time.time(), kernel.ctx)
            kernel.dispatcher.poke()
            kernel.dispatcher.pump(0.02)
        # The claim is on its way to the worker; the kernel forgets it before the report.
        forget.clear()
        kernel.run_until(_all_completed(root, 1))
    finally:
        kernel.close()
    assert states(root) == {"only": "completed"}
    # The worker wrote the report in its own transaction (its third commit, after the
    # registration; then the shutdown).
    assert kernel.worker_commits[0][0] == 3
    assert not [e for e in events(root) if e["event"] == "stale_result_rejected"]


def test_a_linked_run_and_a_direct_run_leave_the_same_audit_trail(tmp_path: Path) -> None:
    """ORCH_DIRECT_WORKERS=1: the workers claim and report themselves (as `orch worker` does).
    Both ways every task passes the same transitions with the same events."""
    trails = []
    for direct in (False, True):
        root = make_project(tmp_path / f"p{int(direct)}", [
            task(f"t{i}", deps=[f"t{i - 1}"] if i % 3 else [], executor="noop")
            for i in range(12)])
        env = os.environ.copy()
        if direct:
            env["ORCH_DIRECT_WORKERS"] = "1"
        else:
            env.pop("ORCH_DIRECT_WORKERS", None)
        old = os.environ.copy()
        os.environ.clear()
        os.environ.update(env)
        try:
            result = run(root, workers=3)
        finally:
            os.environ.clear()
            os.environ.update(old)
        assert result.returncode == 0, result.stdout + result.stderr
        trail = Counter((e["event"], e["from_state"], e["to_state"]) for e in events(root)
                        if e["entity_type"] == "task")
        trails.append(trail)
        with db.snapshot(conn := Project(root.resolve()).connect()):
            assert db.scalar(conn, "SELECT COUNT(*) FROM attempt WHERE outcome = 'succeeded'") \
                == 12
        conn.close()
    assert trails[0] == trails[1]


def test_a_worker_joined_by_hand_reports_through_the_running_kernel(tmp_path: Path) -> None:
    """`orch run --workers 0` listens on its socket (kernel.runtime.channel.socket_path); an
    `orch worker` started by hand joins it: the kernel claims for it and commits its reports.
    When the run is over, the socket is gone and the worker claims on its own."""
    import signal
    import subprocess

    from kernel.runtime.channel import socket_path
    from tests.e2e import ORCH, start_run, stop, wait_for

    root = make_project(tmp_path / "p", [
        task(f"t{i}", deps=[f"t{i - 1}"] if i % 4 else [], executor="noop") for i in range(16)])
    path = socket_path(Path(root).resolve() / ".state" / "kernel.db")
    assert path is not None
    run_proc = start_run(root, workers=0)
    log = tmp_path / "claims.log"
    worker = None
    try:
        wait_for(path.exists, message="the kernel's socket")
        worker = subprocess.Popen(
            [ORCH, "--root", str(root), "worker", "--name", "by-hand"],
            env={**os.environ, "ORCH_BENCH_CLAIM_LOG": str(log)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        code, out, err = stop(run_proc, timeout=60)
        assert code == 0, out + err
        assert set(states(root).values()) == {"completed"}
        assert not path.exists()
    finally:
        for proc in (run_proc, worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
    calls = Counter(line.split("\t")[2].strip() for line in log.read_text().splitlines())
    # Every claim but the first came with a report's reply from the kernel; the worker never
    # claimed in its own transaction while the kernel ran (it may have tried once the run was
    # over: then nothing was left to claim).
    assert calls["report"] >= 15, calls
    assert calls["finish_and_claim"] == 0, calls
    workers = query(root, "SELECT DISTINCT worker_id FROM attempt")
    assert len(workers) == 1
