"""The benchmark suite behind ``orch bench``: the registry, the run and the report.

Public API:
    ``Figure`` (one row of the report: ``benchmark``, ``figure``, ``value``, ``unit``,
    ``reference``, ``ratio``, ``goal``, ``met``, ``note``) and ``Goal`` (``at_most`` /
    ``at_least`` on the value or on the ratio); ``figure(...)`` builds a row and decides ``met``;
    ``unavailable(...)`` a row whose value could not be measured (``met`` null, the note says
    why); ``Report`` (``as_dict()``, ``ok``); ``Sizes`` (``FULL``, ``QUICK``); ``BenchContext``
    (what a benchmark gets: sizes, the temporary directory, ``once(key, fn)`` for measurements
    shared between benchmarks, ``say(text)`` for progress); ``Benchmark`` and ``BENCHMARKS``
    (the registry, in running order); ``select(names)``;
    ``run(names, quick, install, say, keep) -> Report``;
    ``format_table(report)``, ``markdown_table(report)``; ``machine_info()``.

Stability Guarantees:
    Every benchmark always returns the same figure rows, whatever happens: a figure that could
    not be measured has ``value`` null, ``met`` null and a note saying why (Huey or
    ``dask.distributed`` not installed, ``kernel.observe.exports`` missing, ...). A benchmark
    that raises is recorded in ``Report.errors`` with its traceback and the others still
    run; ``Report.ok`` is false then. ``met`` is true or false only for a figure with a goal
    and a value; informational figures have ``met`` null and a note. ``--json`` prints
    ``Report.as_dict()``: ``{ok, quick, machine, benchmarks, figures: [...], errors: [...],
    started_at, elapsed_seconds}``. Workloads are seeded
    (``SEED``): same sizes, same tasks. Everything runs in a fresh temporary directory that is
    removed afterwards (kept with ``keep=True``, its path then in ``machine.kept_directory``);
    the user's project is never touched.

Integration Points:
    ``kernel.cli.bench`` (``orch bench``) calls ``run`` and prints the table or the JSON. Each
    benchmark module (``kernel.bench.plan``, ``throughput``, ``commands``, ``dask``,
    ``latency``, ``views``, ``footprint``, ``startup``; ``ceiling`` and ``huey`` hold
    references) has a function ``(ctx) -> list[Figure]`` (``figures`` unless the registry
    names another); the registry imports them lazily, so this module can be imported by all of
    them.
    docs/PERFORMANCE.md holds the last full run's table (``orch bench --markdown``).

Dependencies:
    apsw, networkx; ``kernel.base.clock``.
"""

from __future__ import annotations

import importlib
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEED = 42


@dataclass(frozen=True)
class Goal:
    """``value`` (or ``ratio``, with ``on="ratio"``) compared with ``target``."""

    op: str  # "<=" or ">="
    target: float
    text: str
    on: str = "value"  # "value" or "ratio"

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        got = ratio if self.on == "ratio" else value
        if got is None or (isinstance(got, float) and math.isnan(got)):
            return None
        return got <= self.target if self.op == "<=" else got >= self.target


def at_most(target: float, text: str, on: str = "value") -> Goal:
    return Goal("<=", target, text, on)


def at_least(target: float, text: str, on: str = "value") -> Goal:
    return Goal(">=", target, text, on)


@dataclass
class Figure:
    benchmark: str
    figure: str
    value: float | None
    unit: str
    reference: float | None = None
    ratio: float | None = None
    goal: str | None = None
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def figure(benchmark: str, name: str, value: float | None, unit: str, *,
           reference: float | None = None, goal: Goal | None = None,
           note: str = "") -> Figure:
    """A row; ``ratio`` is value / reference, ``met`` follows from the goal (null without a
    goal or without a value, in which case the note must say why)."""
    ratio = None
    if value is not None and reference is not None and reference > 0:
        ratio = value / reference
    met = goal.met(value, ratio) if goal is not None else None
    if goal is None and not note:
        note = "informational (no goal)"
    if goal is not None and met is None and not note:
        note = "not measured"
    return Figure(benchmark, name, value, unit, reference, ratio,
                  goal.text if goal else None, met, note)


def unavailable(benchmark: str, name: str, unit: str, reason: str, *,
                goal: Goal | None = None, reference: float | None = None) -> Figure:
    return Figure(benchmark, name, None, unit, reference, None, goal.text if goal else None,
                  None, f"unavailable: {reason}")


@dataclass(frozen=True)
class Sizes:
    plan_tasks: int
    plan_edges: int
    plan_repeat: int
    noop_tasks: int
    noop_workers: int
    huey_tasks: int
    subprocess_tasks: int
    subprocess_workers: int
    chain_tasks: int
    chain_workers: int
    contention_tasks: int
    contention_workers: int
    run_limit_seconds: float   # orch run --max-seconds for every run (a safety net)


FULL = Sizes(plan_tasks=100_000, plan_edges=300_000, plan_repeat=3, noop_tasks=20_000,
             noop_workers=4, huey_tasks=20_000, subprocess_tasks=2_000, subprocess_workers=8,
             chain_tasks=1_000, chain_workers=4, contention_tasks=20_000,
             contention_workers=16, run_limit_seconds=240.0)
QUICK = Sizes(plan_tasks=2_000, plan_edges=6_000, plan_repeat=1, noop_tasks=300,
              noop_workers=4, huey_tasks=300, subprocess_tasks=60, subprocess_workers=8,
              chain_tasks=40, chain_workers=4, contention_tasks=300, contention_workers=16,
              run_limit_seconds=60.0)


@dataclass
class BenchContext:
    sizes: Sizes
    quick: bool
    install: bool                      # may pip-install the Huey reference into its cache venv
    workdir: Path                      # a fresh temporary directory, removed afterwards
    say: Callable[[str], None] = lambda text: None
    cache: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        """The measurement ``key``, made on first use and shared by every benchmark after."""
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def directory(self, name: str) -> Path:
        path = self.workdir / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    summary: str
    function: str = "figures"

    def figures(self, ctx: BenchContext) -> list[Figure]:
        fn: Callable[[BenchContext], list[Figure]] = getattr(
            importlib.import_module(self.module), self.function)
        return fn(ctx)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("plan-100k", "kernel.bench.plan",
              "validate, load and plan a layered random DAG of 100,000 tasks and 300,000 "
              "edges, against bare networkx"),
    Benchmark("noop-throughput", "kernel.bench.throughput",
              "20,000 independent noop tasks through the whole state machine with 4 workers, "
              "against the same-work ceiling, the raw SQLite floor and Huey"),
    Benchmark("subprocess", "kernel.bench.commands",
              "2,000 tasks running `true` with 8 workers, against xargs -P 8"),
    Benchmark("subprocess-git", "kernel.bench.commands",
              "the same 2,000 `true` tasks in a git repository, run in the workstream's "
              "worktree with its commits, against xargs -P 8", "git_figures"),
    Benchmark("dask", "kernel.bench.dask",
              "the same 2,000 `true` tasks with 2 workers on the local pool and on a Dask "
              "LocalCluster (orch run --executor dask), as a ratio"),
    Benchmark("dispatch-latency", "kernel.bench.latency",
              "a chain of 1,000 noop tasks: completion of one to start of the next",
              "dispatch_figures"),
    Benchmark("claim-contention", "kernel.bench.latency",
              "16 workers draining 20,000 noop tasks: claim latency, double claims, "
              "SQLITE_BUSY surfaced", "contention_figures"),
    Benchmark("views-100k", "kernel.bench.views",
              "exporting .state/ views for 100,000 tasks, and what exports cost a run"),
    Benchmark("footprint", "kernel.bench.footprint",
              "peak RSS of the scheduler and the largest WAL with a reader polling"),
    Benchmark("startup", "kernel.bench.startup",
              "the wall clock of orch --version, orch --help and orch status as typed, "
              "against python -c pass"),
)}


@dataclass
class Report:
    quick: bool
    machine: dict[str, Any]
    benchmarks: list[str]
    figures: list[Figure] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    started_at: str = ""
    elapsed_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "quick": self.quick, "machine": self.machine,
                "benchmarks": self.benchmarks,
                "figures": [f.as_dict() for f in self.figures], "errors": self.errors,
                "started_at": self.started_at,
                "elapsed_seconds": round(self.elapsed_seconds, 1)}


def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import apsw
    import networkx

    from kernel import __version__

    try:
        import sqlite3  # only its version: this process never opens a file with it

        system_sqlite = sqlite3.sqlite_version
    except ImportError:
        system_sqlite = None
    total = _meminfo_total()
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(total / 2**30, 1) if total else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite_apsw": apsw.sqlite_lib_version(),
        "sqlite_system": system_sqlite,
        "apsw": apsw.apsw_version(),
        "networkx": networkx.__version__,
        "orch": __version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def select(names: Iterable[str] | None) -> list[Benchmark]:
    """The benchmarks to run, in registry order; unknown names raise ``KeyError``."""
    if not names:
        return list(BENCHMARKS.values())
    wanted = set(names)
    unknown = sorted(wanted - set(BENCHMARKS))
    if unknown:
        raise KeyError(", ".join(unknown))
    return [b for b in BENCHMARKS.values() if b.name in wanted]


def run(names: Iterable[str] | None = None, *, quick: bool = False, install: bool = True,
        say: Callable[[str], None] | None = None, keep: bool = False) -> Report:
    from kernel.base import clock

    chosen = select(names)
    say = say or (lambda text: None)
    started = time.monotonic()
    report = Report(quick=quick, machine=machine_info(), benchmarks=[b.name for b in chosen],
                    started_at=clock.now_iso())
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    ctx = BenchContext(sizes=QUICK if quick else FULL, quick=quick, install=install,
                       workdir=workdir, say=say)
    try:
        for bench in chosen:
            say(f"{bench.name}: {bench.summary}")
            t0 = time.monotonic()
            try:
                report.figures.extend(bench.figures(ctx))
            except Exception as exc:  # noqa: BLE001 - one crash must not hide the others
                report.errors.append({"benchmark": bench.name,
                                      "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()})
                say(f"{bench.name}: CRASHED: {type(exc).__name__}: {exc}")
            say(f"{bench.name}: done in {time.monotonic() - t0:.1f} s")
    finally:
        for cleanup in reversed(ctx.cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - removing the directory comes next anyway
                pass
        if keep:
            report.machine["kept_directory"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report.elapsed_seconds = time.monotonic() - started
    return report


# ----------------------------------------------------------------------------- formatting

def format_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        text = f"{value:.1f}"
    elif unit == "count" or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1 or value == 0:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit and unit != "count" else text


def _met(f: Figure) -> str:
    return {True: "yes", False: "NO", None: "-"}[f.met]


def _rows(report: Report) -> list[list[str]]:
    rows = []
    for f in report.figures:
        rows.append([f"{f.benchmark}: {f.figure}", format_number(f.value, f.unit),
                     format_number(f.reference, f.unit) if f.reference is not None else "",
                     f"{f.ratio:.2f}x" if f.ratio is not None else "", f.goal or "",
                     _met(f)])
    return rows


_HEAD = ["figure", "value", "reference", "ratio", "goal", "met"]


def format_table(report: Report, notes: bool = True) -> str:
    rows = _rows(report)
    widths = [max(len(r[i]) for r in [_HEAD, *rows]) for i in range(len(_HEAD))]
    right = {1, 2, 3}
    lines = []
    for r in [_HEAD, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    if notes:
        lines.append("")
        for f in report.figures:
            if f.note and f.note != "informational (no goal)":
                lines.append(f"- {f.benchmark}: {f.figure}: {f.note}")
    for err in report.errors:
        lines.append(f"CRASHED {err['benchmark']}: {err['error']}")
    unmet = [f for f in report.figures if f.met is False]
    m = report.machine
    lines.append("")
    lines.append(f"{len(report.figures)} figures, {len(unmet)} goals unmet, "
                 f"{sum(1 for f in report.figures if f.value is None)} unavailable; "
                 f"{report.elapsed_seconds:.0f} s on {m.get('nproc')} CPUs, Python "
                 f"{m.get('python')}, SQLite {m.get('sqlite_apsw')}"
                 + (" (--quick: sizes shrunk, timings meaningless)" if report.quick else ""))
    return "\n".join(lines)


def markdown_table(report: Report) -> str:
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    lines = ["| " + " | ".join(_HEAD + ["note"]) + " |",
             "|" + "|".join(["---", "---:", "---:", "---:", "---", "---", "---"]) + "|"]
    for f, r in zip(report.figures, _rows(report), strict=True):
        note = "" if f.note == "informational (no goal)" else f.note
        lines.append("| " + " | ".join(cell(c) for c in [*r, note]) + " |")
    for err in report.errors:
        lines.append(f"| {err['benchmark']}: CRASHED | | | | | | {cell(err['error'])} |")
    return "\n".join(lines)


def default_say(text: str) -> None:
    sys.stderr.write(f"[bench] {text}\n")
    sys.stderr.flush()
