"""How `orch run` starts its workers and ends: structural checks on real runs (which process a
worker is, what a spawned worker imports, whether the last views export runs), never a time
budget. The figures are `orch bench --only startup` (docs/PERFORMANCE.md, "Start-up")."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel.observe.exports import Exporter
from kernel.observe.metrics_history import write_metrics
from kernel.store.project import Project, init_project
from tests.e2e import ORCH, make_project, py, query, states, task, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(),
                                reason="reads /proc/PID/cmdline")

# A task that records the command line of the process running it (its worker).
RECORD = ("import os, sys; ppid = os.getppid(); "
          "data = open(f'/proc/{ppid}/cmdline', 'rb').read().split(b'\\0'); "
          "open(sys.argv[1], 'w').write(repr((ppid, [a.decode() for a in data if a])))")

# Never imported by a worker that orch run spawns (python -m kernel --root R worker ...).
NOT_ON_THE_WORKERS_PATH = ("click", "rich", "networkx", "prometheus_client", "jsonschema",
                           "datasette", "sqlite_utils")


def worker_command_lines(root: Path, env: dict[str, str] | None = None) -> list[list[str]]:
    """Run two recording tasks with 2 workers; each task's worker: (pid, its argv)."""
    make_project(root, [task(t, command=py(RECORD, str(root / f"{t}.txt"))) for t in "ab"])
    proc = subprocess.run([ORCH, "--root", str(root), "run", "--workers", "2"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert states(root) == {"a": "completed", "b": "completed"}
    pids = {r["pid"] for r in query(root, "SELECT pid FROM worker")}
    out = []
    for t in "ab":
        pid, argv = ast.literal_eval((root / f"{t}.txt").read_text())
        assert pid in pids, "the task's parent is a registered worker"
        out.append(argv)
    return out


def test_orch_run_forks_its_workers_from_itself(tmp_path: Path) -> None:
    """A forked worker is a copy of `orch run`: its command line is that of the run."""
    for argv in worker_command_lines(tmp_path / "p"):
        assert "worker" not in argv and "--managed-by" not in argv, argv
        assert argv[-3:] == ["run", "--workers", "2"], argv


def test_a_spawned_worker_runs_the_light_entry_point(tmp_path: Path) -> None:
    """Where forking is off (ORCH_SPAWN_WORKERS=1; also when the process has threads or open
    connections), each worker is `python -m kernel --root DIR worker --managed-by ...`."""
    for argv in worker_command_lines(tmp_path / "p", {"ORCH_SPAWN_WORKERS": "1"}):
        assert argv[1:3] == ["-m", "kernel"] and argv[5] == "worker", argv
        assert "--parent-pid" in argv and "--managed-by" in argv


def test_a_managed_worker_imports_neither_the_cli_nor_the_heavy_modules(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a")])
    # --parent-pid 1 is not its parent: it registers, sees no parent, and shuts down.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kernel",
                           "--root", str(root), "worker", "--managed-by", "run-x",
                           "--parent-pid", "1", "--name", "probe"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    assert "kernel.runtime.worker" in names
    assert sorted(n for n in names if n.startswith("kernel.cli") or n == "kernel.cli") == []
    assert sorted(n for n in names if n.split(".")[0] in NOT_ON_THE_WORKERS_PATH) == []
    row = query(root, "SELECT state, scheduler_owner FROM worker WHERE name = 'probe'")
    assert row == [{"state": "shutdown", "scheduler_owner": "run-x"}]
    assert query(root, "SELECT COUNT(*) AS n FROM attempt") == [{"n": 0}], "it claimed nothing"


def test_another_option_makes_it_orch_worker(tmp_path: Path) -> None:
    """Only the exact command line `orch run` spawns skips the CLI: with `--once` (not one of
    its options) it is `orch worker`, through click."""
    root = make_project(tmp_path / "p", [task("a")])
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kernel", "--root",
                           str(root), "worker", "--managed-by", "run-x", "--parent-pid", "1",
                           "--name", "by-hand", "--once"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| kernel.cli" in proc.stderr
    assert query(root, "SELECT state FROM worker WHERE name = 'by-hand'") == [
        {"state": "shutdown"}]


def test_run_json_streams_the_forked_workers_registrations(tmp_path: Path) -> None:
    """The forked workers wait at the start gate until the display started: `--jsonl` streams
    every worker's registration and the task's start."""
    root = make_project(tmp_path / "p", [task("a")])
    proc = subprocess.run([ORCH, "--root", str(root), "run", "--workers", "3", "--jsonl"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    streamed = [e.get("event") for e in lines]
    assert streamed.count("worker_registered") == 3, streamed
    assert "task_started" in streamed and "summary" in lines[-1]


def _exporter_after_first_export(project: Project) -> Exporter:
    exporter = Exporter(project.db_path, project.state_dir, min_interval=0.01).start()
    wait_for(lambda: exporter.exports >= 1, message="the first export")
    return exporter


def test_the_last_export_runs_only_when_something_was_committed(tmp_path: Path) -> None:
    init_project(tmp_path)
    project = Project(tmp_path)
    exporter = _exporter_after_first_export(project)
    time.sleep(0.05)   # the thread is idle: no request came
    exporter.close()
    assert exporter.exports == 1 and exporter.errors == []

    exporter = _exporter_after_first_export(project)
    with project.open() as conn:   # a commit after that export: the views are behind
        write_metrics(conn, project.state_dir, time.time())
    exporter.close()
    assert exporter.exports == 2 and exporter.errors == []
