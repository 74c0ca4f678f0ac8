"""Shared machinery of the benchmarks: generated projects, timed ``orch`` processes, samplers.

Public API:
    ``load_tool(name)`` (a module of the checkout's ``tools/``, or ``ToolMissing``);
    ``noop_project(root, n, ...)`` (an initialised project with N generated task files, loaded);
    ``shim_env(ctx, tx_log, claim_log)``; ``ProcRun`` and ``run_orch(root, args, ...)`` (an
    ``orch`` subprocess with its peak RSS and the largest WAL sampled from ``/proc`` and the
    file system); ``RunResult`` and ``orch_run(project, workers, ...)`` (``orch run`` plus the
    figures read back from the event table); ``Reader`` (a second process that reads the
    database every 100 ms with Python's ``sqlite3``, as Datasette would); ``percentile``;
    ``BUSY_PATTERN`` and ``busy_lines(texts)``; ``timed(fn, repeat)``; ``last_lines(text)``.

Stability Guarantees:
    Every process it starts is waited for or killed before it returns; the files it writes
    stay under the directory it is given. Sampling is every 50 ms: a peak RSS is the
    process's own high-water mark (``VmHWM``, so a peak between two samples is not missed;
    only growth in its last 50 ms could be), a WAL size is the largest size seen.

Integration Points:
    The benchmark modules of ``kernel.bench``; ``kernel.bench.shim`` is loaded into the
    processes ``orch_run`` starts when asked.

Dependencies:
    ``kernel.base.clock``, ``kernel.bench``, ``kernel.bench.shim``, ``kernel.definitions.load``,
    ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from kernel.base import clock
from kernel.bench import BenchContext
from kernel.bench.shim import CLAIM_LOG_ENV, SITECUSTOMIZE, TX_LOG_ENV
from kernel.store import db
from kernel.store.project import Project, init_project

SAMPLE_SECONDS = 0.05


class ToolMissing(Exception):
    pass


def load_tool(name: str) -> ModuleType:
    """``tools/NAME.py`` of the source checkout this kernel runs from (not in the wheel)."""
    import kernel

    path = Path(kernel.__file__).resolve().parents[1] / "tools" / f"{name}.py"
    if not path.exists():
        raise ToolMissing(f"tools/{name}.py is not there (orch bench needs a source checkout "
                          f"for this workload)")
    module_name = f"_orch_tools_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def last_lines(text: str, n: int = 2) -> str:
    """The last ``n`` non-empty lines of a process's output, on one line (for error notes)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall-clock seconds of ``repeat`` runs (after a gc.collect()), and the last result."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between the closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ----------------------------------------------------------------------------- projects

def noop_project(root: Path, n_tasks: int, *, executor: str | None = "noop",
                 command: str = "true", chain: bool = False, workstream: str = "bench",
                 config: str | None = None) -> Project:
    """An initialised, loaded project of ``n_tasks`` tasks in one workstream: independent, or
    a chain (each depends on the one before) with ``chain=True``. ``config`` replaces
    orch.toml (every key is optional)."""
    init_project(root)
    project = Project(root.resolve())
    if config is not None:
        project.config_path.write_text(config, encoding="utf-8")
    directory = project.tasks_dir / workstream
    directory.mkdir(parents=True, exist_ok=True)
    digits = len(str(max(n_tasks - 1, 0)))
    for i in range(n_tasks):
        task_id = f"t-{i:0{digits}d}"
        execution: dict[str, Any] = {"command": command, "estimated_duration_seconds": 1}
        if executor:
            execution["executor"] = executor
        doc = {"schema_version": "2.0.0", "task_id": task_id, "workstream_id": workstream,
               "name": f"bench task {i}", "description": "generated by orch bench",
               "type": "custom", "execution": execution,
               "dependencies": [f"t-{i - 1:0{digits}d}"] if chain and i else []}
        (directory / f"{task_id}.json").write_text(json.dumps(doc), encoding="utf-8")
    from kernel.definitions.load import load

    load(project)
    return project


def shim_env(ctx: BenchContext, *, tx_log: Path | None = None,
             claim_log: Path | None = None) -> dict[str, str]:
    """Environment that loads ``kernel.bench.shim`` into ``orch run`` and its workers."""
    shim_dir = ctx.workdir / "shim"
    if not (shim_dir / "sitecustomize.py").exists():
        shim_dir.mkdir(parents=True, exist_ok=True)
        (shim_dir / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {"PYTHONPATH": os.pathsep.join(
        p for p in (str(shim_dir), os.environ.get("PYTHONPATH", "")) if p)}
    if tx_log is not None:
        env[TX_LOG_ENV] = str(tx_log)
    if claim_log is not None:
        env[CLAIM_LOG_ENV] = str(claim_log)
    return env


# ----------------------------------------------------------------------------- sampling

def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class Sampler(threading.Thread):
    """Samples a process's peak RSS and a file's size every 50 ms until ``stop()``."""

    def __init__(self, pid: int | None, wal: Path | None = None) -> None:
        super().__init__(daemon=True, name="orch-bench-sampler")
        self.pid = pid
        self.wal = wal
        self.peak_rss: int | None = None
        self.max_wal: int | None = None
        self._stop_event = threading.Event()

    def sample(self) -> None:
        if self.pid is not None:
            hwm = _vm_hwm(self.pid)
            if hwm is not None:
                self.peak_rss = max(self.peak_rss or 0, hwm)
        if self.wal is not None:
            try:
                size = self.wal.stat().st_size
            except OSError:
                size = 0
            self.max_wal = max(self.max_wal or 0, size)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)


_READER = r'''
import signal, sqlite3, sys, time
path, interval = sys.argv[1], float(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, check_same_thread=False)
queries = [
    "SELECT count(*) FROM task",
    "SELECT state, count(*) FROM task GROUP BY state",
    "SELECT * FROM event ORDER BY seq DESC LIMIT 100",
    "SELECT count(*) FROM event",
    "SELECT * FROM task ORDER BY task_id LIMIT 100",
]
reads = errors = 0
last = ""
while not stop:
    try:
        for q in queries:
            conn.execute(q).fetchall()
        reads += 1
    except sqlite3.Error as exc:
        errors += 1
        last = str(exc)
    time.sleep(interval)
print("%d %d %s" % (reads, errors, last))
'''


class Reader:
    """A second process that reads the database every ``interval`` seconds with Python's own
    ``sqlite3`` module (the system SQLite, read-only URI), keeping its connection open between
    reads, as Datasette does."""

    def __init__(self, db_path: Path, interval: float = 0.1) -> None:
        self.db_path = db_path
        self.interval = interval
        self.proc: subprocess.Popen[str] | None = None
        self.reads = 0
        self.errors = 0
        self.last_error = ""

    def __enter__(self) -> Reader:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _READER, str(self.db_path), str(self.interval)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        parts = (out or "").strip().splitlines()[-1:] or [""]
        fields = parts[0].split(" ", 2)
        try:
            self.reads, self.errors = int(fields[0]), int(fields[1])
            self.last_error = fields[2] if len(fields) > 2 else ""
        except (ValueError, IndexError):
            self.last_error = (out or "").strip()[-300:]


# ----------------------------------------------------------------------------- processes

@dataclass
class ProcRun:
    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss: int | None
    max_wal: int | None
    timed_out: bool = False


def _tail(path: Path, limit: int = 20_000) -> str:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size > limit:
                f.seek(size - limit)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_orch(root: Path, args: Sequence[str], *, env: dict[str, str] | None = None,
             timeout: float = 600.0, wal: Path | None = None, log_dir: Path | None = None,
             name: str = "orch") -> ProcRun:
    """``python -m kernel --root ROOT ARGS`` with its peak RSS (and the WAL) sampled; stdout and
    stderr go to files (a large ``--json`` document never fills a pipe), their tails are kept."""
    log_dir = log_dir or root
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "kernel", "--root", str(root), *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        sampler = Sampler(proc.pid, wal)
        sampler.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            wall = time.perf_counter() - start
            sampler.stop()
    return ProcRun(proc.returncode, _tail(out_path), _tail(err_path), wall, sampler.peak_rss,
                   sampler.max_wal, timed_out)


@dataclass
class RunResult:
    """One ``orch run`` and what its event table says."""

    tasks: int
    completed: int
    first_started: float | None
    last_completed: float | None
    proc: ProcRun
    reader: Reader | None = None
    worker_logs: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def span(self) -> float | None:
        if self.first_started is None or self.last_completed is None:
            return None
        return max(self.last_completed - self.first_started, 1e-3)

    @property
    def throughput(self) -> float | None:
        """Completed tasks / (last task_completed - first task_started), from the events."""
        return self.completed / self.span if self.span and self.completed else None

    def incomplete_note(self) -> str:
        if self.completed == self.tasks:
            return ""
        why = " (stopped at the time limit)" if self.proc.timed_out or \
            "interrupted" in self.proc.stdout else ""
        return f"only {self.completed} of {self.tasks} tasks completed{why}; "


def event_span(project: Project) -> tuple[int, float | None, float | None]:
    conn = project.connect(readonly=True)
    try:
        completed = db.scalar(conn, "SELECT count(*) FROM event WHERE event = 'task_completed'")
        last = db.scalar(conn, "SELECT max(timestamp) FROM event WHERE event = 'task_completed'")
        first = db.scalar(conn, "SELECT min(timestamp) FROM event WHERE event = 'task_started'")
    finally:
        conn.close()
    return (int(completed or 0), clock.epoch(first) if first else None,
            clock.epoch(last) if last else None)


def orch_run(ctx: BenchContext, project: Project, workers: int, *,
             env: dict[str, str] | None = None, reader: bool = False,
             sample_wal: bool = False, name: str = "run") -> RunResult:
    """``orch run --workers N --no-worktrees`` on a loaded project, until nothing more can run
    (at most ``sizes.run_limit_seconds``)."""
    conn = project.connect(readonly=True)
    try:
        tasks = int(db.scalar(conn, "SELECT count(*) FROM task"))
    finally:
        conn.close()
    limit = ctx.sizes.run_limit_seconds
    args = ["run", "--workers", str(workers), "--no-worktrees", "--max-seconds", str(limit)]
    wal = Path(f"{project.db_path}-wal") if sample_wal else None
    watcher = Reader(project.db_path) if reader else None
    if watcher is not None:
        watcher.__enter__()
    try:
        proc = run_orch(project.root, args, env=env, timeout=limit + 60, wal=wal,
                        log_dir=project.state_dir, name=name)
    finally:
        if watcher is not None:
            watcher.__exit__()
    completed, first, last = event_span(project)
    if completed == 0 and proc.returncode != 0:
        raise RuntimeError(f"orch run exited {proc.returncode} and completed no task: "
                           f"{last_lines(proc.stderr or proc.stdout)}")
    logs = "".join(_tail(p) for p in sorted(project.logs_dir.glob("worker-*.log")))
    return RunResult(tasks, completed, first, last, proc, watcher, logs)


# What an SQLITE_BUSY looks like when it reaches a user: apsw's BusyError, SQLite's own
# messages, and orch's "database_locked" error (exit code 3).
BUSY_PATTERN = re.compile(
    r"busyerror|sqlite_busy|sqlite_locked|database is locked|database table is locked|"
    r"database_locked|locked by another writer|locked beyond|\bbusy\b|\blocked\b",
    re.IGNORECASE)


def busy_lines(texts: Iterable[str]) -> list[str]:
    return [line.strip() for text in texts for line in text.splitlines()
            if BUSY_PATTERN.search(line)]
