"""orch bench: the report's shape from a real `--quick` run, never its timings; the pieces of
the harness that decide goals, percentiles and the logs the bench shim writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel import bench
from kernel.bench.dask import ROWS as DASK_ROWS
from kernel.bench.harness import BUSY_PATTERN, CPU, SPAN, WALL, busy_lines, percentile
from kernel.bench.shim import read_claim_log, read_tx_log
from tests.conftest import orch

EXPECTED = {
    "plan-100k": ["validate (library)", "load (library)", "validate + load (library)",
                  "plan (library)", "orch validate (CLI)", "orch load (CLI)",
                  "orch plan --json (CLI)"],
    "noop-throughput": ["throughput", SPAN, WALL, CPU, "throughput vs same-work ceiling",
                        "throughput vs raw SQLite floor", "throughput vs Huey",
                        "CPU per task, same-work ceiling", "CPU per task, raw SQLite floor",
                        "CPU per task, Huey", "write transactions per task"],
    "subprocess": ["`true` tasks end to end, 8 workers vs xargs",
                   "`true` tasks over the span, 8 workers vs xargs", SPAN, WALL, CPU],
    "subprocess-git": ["`true` tasks end to end, 8 workers vs xargs",
                       "`true` tasks over the span, 8 workers vs xargs", SPAN, WALL, CPU],
    "dask": [name for name, _unit in DASK_ROWS],
    "dispatch-latency": ["p50", "p99", SPAN, WALL, CPU],
    "claim-contention": ["claim latency p50", "claim latency p99", "claim latency p99.9",
                         "double claims", "SQLITE_BUSY surfaced to users", "throughput", SPAN,
                         WALL, CPU],
    "views-100k": ["export current.json and indices", "exports' slowdown of noop-throughput"],
    "footprint": ["peak RSS, plan-100k", "peak RSS, orch run (noop-throughput)",
                  "largest WAL (noop-throughput + reader)"],
    "startup": ["orch --version", "orch --help", "orch status",
                "orch run -w 1: to first task started", "orch run -w 1: last task to exit",
                "orch run -w 8: to first task started", "orch run -w 8: last task to exit"],
}
# Figures whose value may be missing for reasons outside the kernel: Huey not installed
# (--no-install), the .state views not written yet.
MAY_BE_UNAVAILABLE = {("noop-throughput", "throughput vs Huey"),
                      ("noop-throughput", "CPU per task, Huey"),
                      ("views-100k", "export current.json and indices"),
                      ("views-100k", "exports' slowdown of noop-throughput")}
FIELDS = {"benchmark", "figure", "value", "unit", "reference", "ratio", "goal", "met", "note"}


@pytest.mark.slow
def test_quick_json_run_reports_every_figure_in_shape(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # never a real Huey venv
    proc = subprocess.run([sys.executable, "-m", "kernel", "bench", "--quick", "--json",
                           "--no-install"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=170, env=env)  # only against a hang: timings are the bench's
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(proc.stdout)  # exactly one JSON document
    assert report["ok"] is True and report["errors"] == []
    assert report["quick"] is True
    assert report["benchmarks"] == list(EXPECTED)
    for key in ("nproc", "memory_gib", "python", "sqlite_apsw"):
        assert report["machine"][key], key
    got: dict[str, list[str]] = {}
    for fig in report["figures"]:
        assert set(fig) == FIELDS, fig
        got.setdefault(fig["benchmark"], []).append(fig["figure"])
        where = (fig["benchmark"], fig["figure"])
        assert fig["unit"], where
        assert fig["met"] in (True, False, None), where
        if fig["met"] is None:
            assert fig["note"], f"{where}: met is null without a note"
        else:
            assert fig["goal"], where
        if fig["value"] is None:
            assert where in MAY_BE_UNAVAILABLE, f"{where} has no value: {fig['note']}"
            assert fig["met"] is None and fig["note"].startswith("unavailable:"), where
        else:
            assert isinstance(fig["value"], int | float), where
        if fig["ratio"] is not None:
            assert isinstance(fig["ratio"], int | float) and fig["reference"], where
        if fig["goal"] and "reference" in fig["goal"] and fig["met"] is not None:
            assert fig["reference"] and fig["ratio"] is not None, where
    assert got == EXPECTED
    values = {(f["benchmark"], f["figure"]): f["value"] for f in report["figures"]}
    for name in ("noop-throughput", "subprocess", "subprocess-git", "dispatch-latency",
                 "claim-contention"):
        assert values[(name, WALL)] >= values[(name, SPAN)] > 0, name  # start-up and exit
        assert values[(name, CPU)] > 0, name
    for name in ("CPU per task, same-work ceiling", "CPU per task, raw SQLite floor"):
        assert values[("noop-throughput", name)] > 0, name
    ceiling = next(f for f in report["figures"]
                   if f["figure"] == "throughput vs same-work ceiling")
    assert ceiling["reference"] > 0 and ceiling["goal"] == ">= 0.80x reference"
    huey = next(f for f in report["figures"] if f["figure"] == "throughput vs Huey")
    assert huey["met"] is None and "--no-install" in huey["note"]
    assert not (tmp_path / "cache" / "orch-bench").exists()  # nothing was installed
    assert not any(tmp_path.iterdir())  # the bench works in its own temporary directory


def test_unknown_benchmark_is_a_usage_error(tmp_path: Path) -> None:
    proc = orch("--json", "bench", "--only", "plan-100k,nope", cwd=tmp_path)
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert "nope" in error["message"] and "plan-100k" in error["hint"]


def test_goals_decide_met_and_unavailable_rows_say_why() -> None:
    fast = bench.figure("b", "rate", 120.0, "tasks/s", reference=100.0,
                        goal=bench.at_least(1.5, ">= 1.5x reference", on="ratio"))
    assert fast.ratio == pytest.approx(1.2) and fast.met is False
    small = bench.figure("b", "size", 3.0, "MB", goal=bench.at_most(64, "<= 64 MB"))
    assert small.met is True and small.ratio is None
    info = bench.figure("b", "info", 1.0, "s")
    assert info.met is None and info.note
    gone = bench.unavailable("b", "x", "s", "no network", goal=bench.at_most(1, "< 1 s"))
    assert gone.value is None and gone.met is None and gone.note == "unavailable: no network"
    missing = bench.figure("b", "y", None, "s", goal=bench.at_most(1, "< 1 s"))
    assert missing.met is None and missing.note


def test_tables_show_every_figure_and_mark_unmet_goals() -> None:
    report = bench.Report(quick=False, machine={"nproc": 2, "python": "3.11",
                                                "sqlite_apsw": "3.54"}, benchmarks=["b"])
    report.figures = [
        bench.figure("b", "rate", 500.0, "tasks/s", goal=bench.at_least(1000, ">= 1,000")),
        bench.unavailable("b", "huey", "tasks/s", "not installed"),
    ]
    text = bench.format_table(report)
    assert "b: rate" in text and "NO" in text and "n/a" in text
    assert "unavailable: not installed" in text
    md = bench.markdown_table(report).splitlines()
    assert md[0].startswith("| figure | value | reference | ratio | goal | met | note |")
    assert len(md) == 4
    assert bench.select(["footprint", "plan-100k"])[0].name == "plan-100k"
    with pytest.raises(KeyError):
        bench.select(["nope"])


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99.9) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(map(float, range(1001))), 99.9) == pytest.approx(999.0)


def test_shim_logs_are_read_by_role_and_outcome(tmp_path: Path) -> None:
    tx = tmp_path / "tx.log"
    tx.write_text("1\tworker\t10\n2\tworker\t5\n3\tscheduler\t4\ngarbage\n")
    assert read_tx_log(tx) == {"worker": 15, "scheduler": 4, "processes": 3}
    assert read_tx_log(tmp_path / "missing") == {}
    claims = tmp_path / "claims.log"
    claims.write_text("0.001000\t1\n0.002000\t0\tclaim_next\nbad\n0.003000\t1\t"
                      "finish_and_claim\n0.5\t2\n")
    log = read_claim_log(claims)
    assert (log.claimed, log.empty) == ([0.001, 0.003], [0.002])
    assert log.calls == {"claim": 1, "finish_and_claim": 1}


def test_busy_pattern_catches_what_users_would_see() -> None:
    lines = busy_lines(["error: .state/kernel.db stayed locked by another writer beyond the "
                        "busy timeout\nall tasks completed: 20 completed",
                        "apsw.BusyError: database is locked"])
    assert len(lines) == 2
    assert not BUSY_PATTERN.search("all tasks completed: 300 completed (300 tasks, 3.1 s)")


def test_shim_counts_commits_and_times_claims_in_a_child(tmp_path: Path) -> None:
    """The sitecustomize the harness writes loads the shim into a fresh interpreter."""
    from kernel.bench.shim import SITECUSTOMIZE

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    script = (
        "import apsw, kernel.runtime.claims as c\n"
        f"conn = apsw.Connection({str(tmp_path / 'x.db')!r})\n"
        "conn.execute('CREATE TABLE t (x)')\n"
        "conn.execute('BEGIN IMMEDIATE'); conn.execute('COMMIT')\n"
        "conn.execute('SELECT * FROM t').fetchall()\n"
        "import kernel.runtime.worker as w\n"
        "assert getattr(w, 'CLAIM_LOG_ENV', None) or c.claim_next.__module__ == "
        "'kernel.bench.shim'\n"
        "assert c.claim_next.__name__ == 'claim_next'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path),
           "ORCH_BENCH_TX_LOG": str(tmp_path / "tx.log"),
           "ORCH_BENCH_CLAIM_LOG": str(tmp_path / "claims.log")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "not installed" not in proc.stderr
    assert read_tx_log(tmp_path / "tx.log") == {"other": 2, "processes": 1}


def _bench_ctx(tmp_path: Path) -> bench.BenchContext:
    return bench.BenchContext(sizes=bench.QUICK, quick=True, install=False,
                              workdir=tmp_path / "bench")


def _task_events(project: Any) -> dict[str, list[tuple[str, str | None, str | None, str]]]:
    conn = project.connect(readonly=True)
    try:
        events: dict[str, list[tuple[str, str | None, str | None, str]]] = {}
        for task_id, event, from_state, to_state, trigger in conn.execute(
                "SELECT task_id, event, from_state, to_state, trigger FROM event "
                "WHERE entity_type = 'task' ORDER BY seq"):
            events.setdefault(task_id, []).append((event, from_state, to_state, trigger))
        return events
    finally:
        conn.close()


def _worker_events(project: Any) -> list[tuple[str, int]]:
    conn = project.connect(readonly=True)
    try:
        return [(e, n) for e, n in conn.execute(
            "SELECT event, count(*) FROM event WHERE entity_type = 'worker' "
            "AND event IN ('worker_busy', 'worker_idle') GROUP BY event ORDER BY event")]
    finally:
        conn.close()


def test_same_work_ceiling_does_the_work_of_orch_run(tmp_path: Path) -> None:
    """The ceiling completes every task through the triggers with the audited transitions
    and events of a real `orch run` of the same tasks, one succeeded attempt each."""
    from kernel.bench.ceiling import same_work_ceiling
    from kernel.bench.harness import noop_project, orch_run

    n = 13
    ceiling_project = noop_project(tmp_path / "ceiling", n)
    ref = same_work_ceiling(ceiling_project, workers=3, batch=4)
    assert ref.tasks == n and ref.span_seconds is not None
    assert ref.cpu_seconds > 0 and ref.cpu_ms_per_task > 0 and ref.tasks_per_second > 0
    conn = ceiling_project.connect(readonly=True)
    try:
        assert conn.execute("SELECT state, count(*) FROM task GROUP BY state").fetchall() \
            == [("completed", n)]
        assert conn.execute("SELECT outcome, count(*), count(DISTINCT task_id) FROM attempt "
                            "GROUP BY outcome").fetchall() == [("succeeded", n, n)]
        assert conn.execute("SELECT state, count(*) FROM worker GROUP BY state").fetchall() \
            == [("shutdown", 3)]
    finally:
        conn.close()
    run_project = noop_project(tmp_path / "run", n)
    run = orch_run(_bench_ctx(tmp_path), run_project, 3)
    assert run.completed == n
    by_ceiling, by_run = _task_events(ceiling_project), _task_events(run_project)
    assert len(by_ceiling) == n
    assert by_ceiling == by_run
    assert ("task_completed", "validating", "completed", "validation_passed") \
        in by_ceiling["t-00"]
    assert _worker_events(ceiling_project) == [("worker_busy", n), ("worker_idle", n)]


def test_orch_run_reports_wall_clock_beside_span_and_cpu(tmp_path: Path) -> None:
    from kernel.bench.harness import CPU, SPAN, WALL, noop_project, orch_run, span_rows

    project = noop_project(tmp_path / "p", 5)
    run = orch_run(_bench_ctx(tmp_path), project, 2)
    assert run.completed == 5 and run.proc.returncode == 0
    assert run.span is not None and run.proc.wall_seconds >= run.span
    assert run.proc.cpu_seconds is not None and run.proc.cpu_seconds > 0
    rows = {f.figure: f for f in span_rows("b", run)}
    assert list(rows) == [SPAN, WALL, CPU]
    assert rows[WALL].value is not None and rows[SPAN].value is not None
    assert rows[WALL].value >= rows[SPAN].value
    assert rows[CPU].value == pytest.approx(run.proc.cpu_seconds * 1000 / 5)


def test_shim_counts_a_forked_worker_once_and_apart(tmp_path: Path) -> None:
    """A child forked by `orch run` starts from zero and writes its own count when the
    worker's main returns, although it ends with os._exit (as runner.fork_workers does)."""
    from kernel.bench.shim import SITECUSTOMIZE

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    db_path = str(tmp_path / "x.db")
    script = (
        "import os, sys, apsw\n"
        "sys.argv = ['orch', 'run']\n"
        "import kernel.runtime.worker as w\n"
        "def commit(n):\n"
        f"    conn = apsw.Connection({db_path!r})\n"
        "    for _ in range(n):\n"
        "        conn.execute('BEGIN IMMEDIATE'); conn.execute('COMMIT')\n"
        "    conn.close()\n"
        "w.main = lambda project, options: commit(3) or 0\n"
        "commit(1)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    code = w.main(None, None)\n"
        "    os._exit(code)\n"
        "assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0\n"
        "commit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path),
           "ORCH_BENCH_TX_LOG": str(tmp_path / "tx.log")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert read_tx_log(tmp_path / "tx.log") == {"scheduler": 2, "worker": 3, "processes": 2}


@pytest.mark.slow
def test_plan_workload_runs_without_the_source_tree_tools(tmp_path: Path) -> None:
    """plan-100k from the package alone, laid out as the wheel installs it (kernel/_data/,
    no tools/ beside it)."""
    import shutil

    import kernel

    source = Path(kernel.__file__).resolve().parents[1]
    site = tmp_path / "site"
    shutil.copytree(source / "kernel", site / "kernel",
                    ignore=shutil.ignore_patterns("__pycache__", "_data"))
    data = site / "kernel" / "_data"
    shutil.copytree(source / "sql", data / "sql")
    shutil.copytree(source / "docs" / "state_machines", data / "state_machines")
    (data / "failure_modes").mkdir()
    shutil.copy(source / "docs" / "failure_modes" / "failure_modes.yaml", data / "failure_modes")
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import kernel; print(kernel.__file__)"],
                           env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert where.stdout.strip() == str(site / "kernel" / "__init__.py")
    assert not (site / "tools").exists()
    proc = subprocess.run([sys.executable, "-m", "kernel", "bench", "--quick", "--json",
                           "--no-install", "--only", "plan-100k"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    plan = [f for f in report["figures"] if f["benchmark"] == "plan-100k"]
    assert [f["figure"] for f in plan] == EXPECTED["plan-100k"]
    for fig in plan:
        assert fig["value"] is not None and fig["value"] > 0, fig
    assert "matches networkx" in plan[3]["note"]
