"""subprocess: tasks that run a real command (``true``), against ``xargs -P``.

Public API:
    ``figures(ctx) -> list[Figure]``; ``xargs_rate(n_tasks, parallel) -> float | None``.

Stability Guarantees:
    2,000 (``--quick``: 60) independent tasks whose command is ``true`` (the default
    ``subprocess`` executor: no shell, own process group, output appended to the task's log),
    run by ``orch run --workers 8 --no-worktrees``; throughput from the events as in
    noop-throughput. Reference: ``xargs -P 8 -n 1 true`` fed the 2,000 task ids (one ``true``
    process per line; ``true`` ignores its argument), tasks / wall time. Goal: orch within 2x
    of xargs, i.e. a ratio >= 0.5.

Integration Points:
    Registered as ``subprocess`` in ``kernel.bench.BENCHMARKS``.

Dependencies:
    ``kernel.bench``, ``kernel.bench.harness``.
"""

from __future__ import annotations

import shutil
import subprocess
import time

from kernel.bench import BenchContext, Figure, at_least, figure, unavailable
from kernel.bench.harness import noop_project, orch_run

NAME = "subprocess"
GOAL = at_least(0.5, ">= 0.50x reference (within 2x)", on="ratio")


def xargs_rate(n_tasks: int, parallel: int) -> float | None:
    xargs = shutil.which("xargs")
    if xargs is None or shutil.which("true") is None:
        return None
    lines = "".join(f"t-{i}\n" for i in range(n_tasks))
    start = time.perf_counter()
    proc = subprocess.run([xargs, "-P", str(parallel), "-n", "1", "true"], input=lines,
                          text=True, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"xargs exited {proc.returncode}: {proc.stderr[-300:]}")
    return n_tasks / elapsed


def figures(ctx: BenchContext) -> list[Figure]:
    s = ctx.sizes
    base = ctx.directory(NAME)
    ctx.say(f"{NAME}: {s.subprocess_tasks:,} tasks running `true`, "
            f"{s.subprocess_workers} workers")
    project = noop_project(base / "project", s.subprocess_tasks, executor=None,
                           command="true")
    run = orch_run(ctx, project, s.subprocess_workers)
    ctx.say(f"{NAME}: xargs -P {s.subprocess_workers}")
    reference = xargs_rate(s.subprocess_tasks, s.subprocess_workers)
    name = f"`true` tasks, {s.subprocess_workers} workers vs xargs"
    note = run.incomplete_note() + (
        f"{run.completed:,} tasks; orch run wall time {run.proc.wall_seconds:.1f} s; "
        f"reference: xargs -P {s.subprocess_workers} -n 1 true")
    if reference is None:
        row = unavailable(NAME, name, "tasks/s", "xargs or true not found", goal=GOAL)
        row.value = run.throughput
        return [row]
    return [figure(NAME, name, run.throughput, "tasks/s", reference=reference, goal=GOAL,
                   note=note)]
