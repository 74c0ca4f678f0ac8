"""startup: the wall clock of ``orch --version``, ``orch --help`` and ``orch status`` as typed, and
how long ``orch run`` takes to start its first task and to exit after its last.

Public API:
    ``figures(ctx) -> list[Figure]``; ``orch_argv() -> tuple[list[str], str]`` (how this
    installation's ``orch`` is started, and a note when it is not the console script);
    ``wall_medians(commands, repeat, cwd) -> dict[str, float]``.

Stability Guarantees:
    Each command is a fresh process started the way a user starts it: the ``orch`` console
    script beside this interpreter (``python -m kernel`` when there is none, and the note says
    so), in the environment of ``orch bench``, output captured. ``orch status`` runs in a
    freshly initialised project (``orch init``, nothing loaded). Reference: ``python -c pass``
    with the same interpreter, measured in the same rounds: the ratio is how many interpreter
    start-ups a command costs. The commands are run round-robin, ``repeat`` rounds (11; 3
    with ``--quick``) after one warm-up round that is not counted, and each figure is the
    median of its rounds in milliseconds. Goals: ``--version`` and ``--help`` <= 300 ms,
    ``status`` <= 600 ms (issue 12; on an idle machine). ``orch run --workers N`` (N = 1 and
    8) runs a project of one ``true`` task, a fresh copy each time, plain directory: "to first
    task" is from just before the command starts to the task's ``task_started`` event, "last
    task to exit" from its ``task_completed`` event to the command's exit (both read back from
    the event log). Goals: <= 500 ms and <= 200 ms (issue 13). When bytecode caching is off
    (``PYTHONDONTWRITEBYTECODE``) every start compiles orch's modules again, and the note says
    so.

Integration Points:
    Registered as ``startup`` in ``kernel.bench.BENCHMARKS``; docs/PERFORMANCE.md ("Start-up")
    explains what each command imports and how ``orch run`` starts its workers.
    tests/test_cli_startup.py and tests/test_worker_startup.py check the structure (which
    modules ``--version`` and a spawned worker import), never these timings.

Dependencies:
    ``kernel.base.clock``, ``kernel.bench``, ``kernel.observe.audit``, ``kernel.store.project``,
    ``kernel.store.schema``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kernel.bench import BenchContext, Figure, at_most, figure

NAME = "startup"
FAST_GOAL = at_most(300.0, "<= 300 ms")
STATUS_GOAL = at_most(600.0, "<= 600 ms")
REFERENCE = "python -c pass"
RUN_WORKERS = (1, 8)
FIRST_TASK_GOAL = at_most(500.0, "<= 500 ms")
EXIT_GOAL = at_most(200.0, "<= 200 ms")
ONE_TASK = {"schema_version": "2.0.0", "task_id": "t1", "workstream_id": "ws", "name": "t1",
            "type": "custom", "dependencies": [],
            "execution": {"command": "true", "timeout_seconds": 60, "max_retries": 0,
                          "executor": "subprocess", "estimated_duration_seconds": 1}}


def orch_argv() -> tuple[list[str], str]:
    """The ``orch`` of this installation: its console script, else ``python -m kernel``."""
    script = Path(sys.executable).parent / "orch"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], ""
    return [sys.executable, "-m", "kernel"], "no orch console script beside the interpreter: " \
        "timed as python -m kernel; "


def wall_medians(commands: dict[str, list[str]], repeat: int, cwd: Path) -> dict[str, float]:
    """Median wall-clock seconds of each command over ``repeat`` round-robin rounds, after one
    warm-up round (the page cache, the bytecode files). A command that fails raises."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_no in range(repeat + 1):
        for name, argv in commands.items():
            start = time.perf_counter()
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[-300:]}")
            if round_no:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def figures(ctx: BenchContext) -> list[Figure]:
    from kernel.store.project import init_project

    repeat = 3 if ctx.quick else 11
    project = ctx.directory(NAME) / "project"
    project.mkdir()
    init_project(project)
    orch, how = orch_argv()
    commands = {REFERENCE: [sys.executable, "-c", "pass"],
                "orch --version": [*orch, "--version"],
                "orch --help": [*orch, "--help"],
                "orch status": [*orch, "status"]}
    ctx.say(f"{NAME}: {', '.join(commands)}, {repeat} rounds")
    medians = wall_medians(commands, repeat, project)
    reference_ms = medians.pop(REFERENCE) * 1000
    cache = ("bytecode caching off (PYTHONDONTWRITEBYTECODE): every start compiles orch's "
             "modules; " if sys.flags.dont_write_bytecode
             or os.environ.get("PYTHONDONTWRITEBYTECODE") else "")
    rows = []
    for name, seconds in medians.items():
        goal = STATUS_GOAL if name == "orch status" else FAST_GOAL
        note = (f"{how}{cache}median of {repeat} runs; reference: {REFERENCE} "
                f"({reference_ms:.0f} ms)" + ("; in a freshly initialised project"
                                              if name == "orch status" else ""))
        rows.append(figure(NAME, name, seconds * 1000, "ms", reference=reference_ms,
                           goal=goal, note=note))
    return rows + run_figures(ctx, orch, how + cache, repeat, reference_ms)


def one_task_project(directory: Path, orch: list[str]) -> Path:
    """An initialised project with one ``true`` task loaded (copied for each run)."""
    from kernel.store.project import init_project

    directory.mkdir(parents=True)
    init_project(directory)
    path = directory / "tasks" / "ws" / "t1.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ONE_TASK))
    proc = subprocess.run([*orch, "load"], cwd=directory, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"orch load exited {proc.returncode}: {proc.stderr[-300:]}")
    return directory


def run_timeline(orch: list[str], template: Path, target: Path,
                 workers: int) -> tuple[float, float]:
    """(seconds from the start of ``orch run`` to the task's start, seconds from its end to
    the command's exit) for a fresh copy of ``template``."""
    from kernel.base import clock
    from kernel.observe.audit import list_events
    from kernel.store import schema

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target)
    start = time.time()
    proc = subprocess.run([*orch, "run", "--workers", str(workers), "--no-worktrees"],
                          cwd=target, capture_output=True, text=True, timeout=120)
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"orch run exited {proc.returncode}: {proc.stderr[-300:]}")
    conn = schema.connect(target / ".state" / "kernel.db", readonly=True)
    try:
        stamps = {e["event"]: clock.epoch(e["timestamp"]) for e in list_events(conn)
                  if e["event"] in ("task_started", "task_completed")}
    finally:
        conn.close()
    return stamps["task_started"] - start, end - stamps["task_completed"]


def run_figures(ctx: BenchContext, orch: list[str], how: str, repeat: int,
                reference_ms: float) -> list[Figure]:
    """``orch run`` to the first task's start and from the last task to the exit."""
    template = one_task_project(ctx.directory(NAME) / "one-task", orch)
    target = template.parent / "run"
    firsts: dict[int, list[float]] = {w: [] for w in RUN_WORKERS}
    tails: dict[int, list[float]] = {w: [] for w in RUN_WORKERS}
    ctx.say(f"{NAME}: orch run of one task with {RUN_WORKERS} workers, {repeat} rounds")
    for round_no in range(repeat + 1):
        for workers in RUN_WORKERS:
            first, tail = run_timeline(orch, template, target, workers)
            if round_no:
                firsts[workers].append(first)
                tails[workers].append(tail)
    note = (f"{how}median of {repeat} runs, one `true` task, plain directory, read back from "
            f"the event log; reference: {REFERENCE} ({reference_ms:.0f} ms)")
    rows = []
    for workers in RUN_WORKERS:
        rows.append(figure(NAME, f"orch run -w {workers}: to first task started",
                           statistics.median(firsts[workers]) * 1000, "ms",
                           reference=reference_ms, goal=FIRST_TASK_GOAL, note=note))
        rows.append(figure(NAME, f"orch run -w {workers}: last task to exit",
                           statistics.median(tails[workers]) * 1000, "ms",
                           reference=reference_ms, goal=EXIT_GOAL, note=note))
    return rows
