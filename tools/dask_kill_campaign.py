"""Dask kill campaign: SIGKILL Dask worker processes (and now and then `orch run`) while a real
cluster runs a DAG of ledger tasks; then check that no task was lost or ran twice at once.

A cluster as a user starts one across machines (`dask scheduler`, `dask worker --nworkers N
--nthreads 1`, all on 127.0.0.1), `orch run --executor dask --scheduler-address ...`, and the
tasks, checks and verdict of tools/kill_campaign.py: every task completed, no overlap in the
ledger (each task holds a lock on its own file while it runs), every re-execution explained by
a lost attempt, `orch doctor` clean, the views and `orch replay` equal to the tables. A killed
Dask worker is restarted by its nanny (a new address, a new proxy worker).

    python tools/dask_kill_campaign.py --tasks 200 --kills 20 --workers 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.kill_campaign import ORCH, _kill, _rows, build, check, print_result  # noqa: E402

DASK = str(Path(sys.executable).parent / "dask")


class DaskCluster:
    """A real Dask cluster as a user starts one across machines: `dask scheduler`, then
    `dask worker` processes (``add_workers``), each in its own session, on 127.0.0.1.
    tests/test_dask.py uses it too."""

    def __init__(self, base: Path) -> None:
        import distributed

        self.log = open(base / "dask.log", "ab")  # noqa: SIM115 - closed in close()
        scheduler_file = base / "scheduler.json"
        self.procs = [self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(scheduler_file)])]
        _wait(scheduler_file.exists, "the scheduler's file")
        self.address = json.loads(scheduler_file.read_text())["address"]
        self.client = distributed.Client(self.address, timeout=60, set_as_default=False)

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdout=self.log, stderr=self.log,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def add_workers(self, count: int, resources: str | None = None) -> None:
        """``count`` more Dask worker processes (one thread each), advertising ``resources``
        (``"cpu_cores=4"``); returns once the scheduler lists them."""
        before = len(self.workers())
        argv = [DASK, "worker", self.address, "--nworkers", str(count), "--nthreads", "1",
                "--no-dashboard", "--host", "127.0.0.1"]
        self.procs.append(self._start(argv + (["--resources", resources] if resources else [])))
        _wait(lambda: len(self.workers()) >= before + count, f"{count} Dask workers")

    def workers(self) -> dict[str, Any]:
        return dict(self.client.scheduler_info(n_workers=-1)["workers"])

    def pids(self) -> dict[str, int]:
        """Each Dask worker's process id, by address ({} while a worker restarts)."""
        try:
            return dict(self.client.run(os.getpid))
        except Exception:  # noqa: BLE001 - a worker restarting: try again later
            return {}

    def close(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.log.close()


def _wait(ready: Callable[[], Any], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.1)


def _start_run(root: Path, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([ORCH, "--root", str(root), "run", "--executor", "dask",
                             "--scheduler-address", address], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _busy_dask_workers(root: Path) -> list[str]:
    """The Dask workers (addresses) whose proxy runs a task whose command has started."""
    rows = _rows(root, "SELECT w.name FROM attempt a JOIN worker w ON w.worker_id = a.worker_id "
                       "WHERE a.finished_at IS NULL AND a.pgid IS NOT NULL AND w.state = 'busy' "
                       "AND w.executor = 'dask'")
    return [str(name).removeprefix("dask:") for (name,) in rows]


def campaign(root: Path, cluster: DaskCluster, kills: int, run_share: float,
             rng: random.Random, deadline: float) -> dict[str, Any]:
    counts = {"dask_worker": 0, "run": 0, "restarts": 0}
    proc = _start_run(root, cluster.address)
    done = 0
    while done < kills and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 1.0))
        if proc.poll() is not None:
            if proc.returncode == 0:
                break
            proc = _start_run(root, cluster.address)
            counts["restarts"] += 1
            continue
        busy = _busy_dask_workers(root)
        pids = cluster.pids()
        targets = [pids[a] for a in busy if a in pids]
        if not targets:
            continue
        if rng.random() < run_share:
            _kill(proc.pid)
            proc.wait()
            counts["run"] += 1
            proc = _start_run(root, cluster.address)
            counts["restarts"] += 1
        else:
            _kill(rng.choice(targets))
            counts["dask_worker"] += 1
        done += 1
    for _ in range(20):   # let it finish: restart `orch run` until everything is done
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            break
        if proc.returncode == 0:
            break
        proc = _start_run(root, cluster.address)
        counts["restarts"] += 1
    counts["kills"] = done
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3, help="Dask worker processes")
    parser.add_argument("--run-share", type=float, default=0.15,
                        help="share of the kills aimed at `orch run` itself")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="project directory to keep")
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    base = args.keep or Path(tempfile.mkdtemp(prefix="orch-dask-kill-campaign-"))
    base.mkdir(parents=True, exist_ok=True)
    root = base / "project"
    started = time.monotonic()
    build(root, args.tasks, rng, worktrees=False, seconds=(0.2, 1.5))
    cluster = DaskCluster(base)
    try:
        cluster.add_workers(args.workers)
        counts = campaign(root, cluster, args.kills, args.run_share, rng,
                          started + args.max_seconds)
    finally:
        cluster.close()
    result = {"seed": seed, "project": str(root), "dask_workers": args.workers, **counts,
              **check(root), "seconds": round(time.monotonic() - started, 1)}
    print_result(result, args.json, "OK: no task lost or run twice at once")
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
