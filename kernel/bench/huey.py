"""The Huey reference of noop-throughput: ``huey.SqliteHuey`` running the same no-op tasks.

Public API:
    ``HUEY_REQUIREMENT``; ``cache_dir()``; ``huey_python(install) -> (Path | None, reason)``;
    ``HueyResult``; ``huey_throughput(workdir, n_tasks, workers, install) -> HueyResult``.

Stability Guarantees:
    Huey is never a dependency of orch: it lives in its own virtual environment under
    ``$XDG_CACHE_HOME/orch-bench/huey-venv`` (default ``~/.cache/orch-bench/huey-venv``),
    created with ``python -m venv`` and ``pip install huey`` the first time it is needed, unless
    ``install`` is false. When that is impossible (no network, ``--no-install``) the result
    carries ``tasks_per_second=None`` and the reason; never a made-up number. The measurement:
    N tasks are enqueued first, then ``huey_consumer MODULE.huey -w 4 -k process -n -q`` (four
    worker processes, no periodic tasks, quiet logging) drains them; each task returns
    ``time.time()``, which Huey stores as its result (one more write, as orch records a
    completion), and throughput is N / (last result - first result), the same span orch's
    figure uses. CPU per task: user + system time of ``huey_consumer`` and its worker
    processes (``RUSAGE_CHILDREN`` of the driver once the consumer has exited; enqueueing,
    the analogue of ``orch load``, is not counted), over the completed tasks. Huey's storage
    is switched to ``synchronous=NORMAL`` in WAL mode, orch's default durability (Huey's own
    default is SQLite's FULL).

Integration Points:
    ``kernel.bench.throughput`` (the ``vs Huey`` figure).

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HUEY_REQUIREMENT = "huey>=2.5,<4"

_TASKS = '''\
import os
import time

from huey import SqliteHuey
from huey.storage import SqliteStorage


class NormalSync(SqliteStorage):
    """orch's default durability: WAL with synchronous=NORMAL."""

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=1")
        return conn


huey = SqliteHuey("orch-bench", filename=os.environ["ORCH_BENCH_HUEY_DB"],
                  storage_class=NormalSync)


@huey.task()
def noop(i):
    return time.time()
'''

_DRIVER = '''\
import json, os, resource, signal, subprocess, sys, time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
n, workers, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
import huey
import hb_tasks

start = time.perf_counter()
for i in range(n):
    hb_tasks.noop(i)
enqueue = time.perf_counter() - start
consumer = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
proc = subprocess.Popen([consumer, "hb_tasks.huey", "-w", workers, "-k", "process", "-n", "-q"],
                        cwd=here, env={**os.environ, "PYTHONPATH": here},
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
start = time.perf_counter()
while hb_tasks.huey.result_count() < n and time.perf_counter() - start < limit:
    if proc.poll() is not None:
        break
    time.sleep(0.05)
wall = time.perf_counter() - start
proc.send_signal(signal.SIGINT)
try:
    _, err = proc.communicate(timeout=20)
except subprocess.TimeoutExpired:
    proc.kill()
    _, err = proc.communicate()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the consumer and its workers
stamps = []
for value in hb_tasks.huey.all_results().values():
    try:
        stamps.append(float(hb_tasks.huey.serializer.deserialize(value)))
    except Exception:
        pass
print(json.dumps({"enqueue_seconds": enqueue, "wall_seconds": wall, "done": len(stamps),
                  "first": min(stamps) if stamps else None,
                  "last": max(stamps) if stamps else None,
                  "version": huey.__version__, "stderr": (err or "")[-500:],
                  "consumer_cpu": usage.ru_utime + usage.ru_stime}))
'''


@dataclass
class HueyResult:
    tasks_per_second: float | None
    note: str
    version: str = ""
    cpu_ms_per_task: float | None = None   # the consumer and its worker processes


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orch-bench"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _has_huey(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import huey"], capture_output=True, timeout=60)
    return probe.returncode == 0


def huey_python(install: bool) -> tuple[Path | None, str]:
    """The interpreter of the Huey venv, installing it on first use when allowed."""
    venv = cache_dir() / "huey-venv"
    python = _venv_python(venv)
    if _has_huey(python):
        return python, ""
    if not install:
        return None, (f"Huey is not installed in {venv} and --no-install forbids installing "
                      f"it (a full `orch bench` installs it on first use)")
    try:
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                              text=True, timeout=300)
        if made.returncode != 0:
            raise RuntimeError(f"python -m venv failed: {made.stderr.strip()[-300:]}")
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", HUEY_REQUIREMENT],
                             capture_output=True, text=True, timeout=600)
        if pip.returncode != 0:
            raise RuntimeError(f"pip install {HUEY_REQUIREMENT} failed: "
                               f"{(pip.stderr or pip.stdout).strip()[-300:]}")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        return None, f"could not install Huey into {venv}: {exc}"
    return python, ""


def huey_throughput(workdir: Path, n_tasks: int, workers: int, install: bool,
                    limit: float = 300.0) -> HueyResult:
    python, reason = huey_python(install)
    if python is None:
        return HueyResult(None, reason)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "hb_tasks.py").write_text(_TASKS, encoding="utf-8")
    (workdir / "driver.py").write_text(_DRIVER, encoding="utf-8")
    env = {**os.environ, "ORCH_BENCH_HUEY_DB": str(workdir / "huey.db")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(python), str(workdir / "driver.py"), str(n_tasks), str(workers),
                           str(limit)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=limit + 120)
    if proc.returncode != 0:
        return HueyResult(None, f"the Huey run failed: {proc.stderr.strip()[-300:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    version = data.get("version", "")
    if not data["done"] or data["first"] is None:
        return HueyResult(None, f"Huey completed no task: {data.get('stderr', '')}", version)
    span = max(data["last"] - data["first"], 1e-3)
    done = int(data["done"])
    note = (f"huey {version} SqliteHuey, huey_consumer -w {workers} -k process, "
            f"synchronous=NORMAL; {done:,} tasks")
    if done < n_tasks:
        note += f" (only {done} of {n_tasks} completed within {limit:.0f} s)"
    cpu = data.get("consumer_cpu")
    cpu_ms = float(cpu) * 1000 / done if isinstance(cpu, int | float) else None
    return HueyResult(done / span, note, version, cpu_ms)
