"""dask: the subprocess workload on the local worker pool and on a 2-worker Dask LocalCluster.

Public API:
    ``figures(ctx) -> list[Figure]``; ``ROWS`` (each figure's name and unit, in order);
    ``missing_reason() -> str | None``.

Stability Guarantees:
    The same 2,000 (``--quick``: 60) independent ``true`` tasks as ``subprocess`` (the default
    ``subprocess`` executor), in a plain directory, run twice in the same run, each as a user
    types it (exec to exit, start-up included, ``kernel.bench.harness.orch_run``): by ``orch
    run --workers 2 --no-worktrees`` on the local pool, then by ``orch run --executor dask
    --workers 2 --no-worktrees``, which starts a ``LocalCluster`` of 2 worker processes (one
    thread each) and one proxy kernel worker per Dask worker. Figures, all informational:
    tasks / wall clock of each; the Dask run's rate against the local one (the ratio
    dask/local); the Dask overhead per task, (Dask wall clock - local wall clock) / tasks,
    the note giving the start-up share of it and the same difference over the span (first
    ``task_started`` to last ``task_completed``); the start-up of a LocalCluster: the wall
    clock of ``orch run --executor dask --workers 2`` on a project of one task against the
    same run on the local pool (median of 3 pairs, one with ``--quick``); the tasks each run
    completed against the tasks loaded (goal: every task); the span, wall clock and CPU per
    task of the Dask run (``span_rows``), its CPU against the local run's.

    Why no goal on the ratio: the workload is Dask's worst case (a command that does
    nothing, so the fixed cost of each hand-over is all there is), nothing in the issue or
    the specification sets a target, and a task that runs for seconds hides an overhead of
    tens of milliseconds. The figure is there to see that overhead move.

    When ``dask.distributed`` cannot be imported, nothing runs and every row is
    ``unavailable`` with the reason and the fix (``kernel.runtime.cluster.require_distributed``).
    The same rows, in the same order (``ROWS``), whatever happens.

Integration Points:
    Registered as ``dask`` in ``kernel.bench.BENCHMARKS``; docs/PERFORMANCE.md ("Dask") holds
    a full run's figures and where the overhead goes.

Dependencies:
    ``kernel.base.errors``, ``kernel.bench``, ``kernel.bench.harness``,
    ``kernel.runtime.cluster``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from kernel.base.errors import OrchError
from kernel.bench import BenchContext, Figure, at_least, figure, harness, unavailable
from kernel.bench.harness import CPU, SPAN, WALL, RunResult

NAME = "dask"
WORKERS = 2
DASK = ("--executor", "dask")
EVERY_TASK = at_least(1.0, "every task (1.00x reference)", on="ratio")

LOCAL_RATE = f"`true` tasks end to end, local pool, {WORKERS} workers"
DASK_RATE = f"`true` tasks end to end, Dask LocalCluster of {WORKERS} vs local pool"
OVERHEAD = "Dask overhead per task (wall clock difference / tasks)"
STARTUP = "1-task run, Dask LocalCluster vs local pool (start-up)"
LOCAL_DONE = "tasks completed, local pool"
DASK_DONE = "tasks completed, Dask"
ROWS: list[tuple[str, str]] = [
    (LOCAL_RATE, "tasks/s"), (DASK_RATE, "tasks/s"), (OVERHEAD, "ms"), (STARTUP, "s"),
    (LOCAL_DONE, "count"), (DASK_DONE, "count"), (SPAN, "s"), (WALL, "s"), (CPU, "ms")]


def missing_reason() -> str | None:
    """Why ``orch run --executor dask`` cannot run here (its own check), or None."""
    from kernel.runtime.cluster import require_distributed

    try:
        require_distributed()
    except OrchError as exc:
        return f"{exc.message}; {exc.hint}" if exc.hint else exc.message
    return None


def figures(ctx: BenchContext) -> list[Figure]:
    reason = missing_reason()
    if reason is not None:
        return [unavailable(NAME, name, unit, reason,
                            goal=EVERY_TASK if unit == "count" else None)
                for name, unit in ROWS]
    n = ctx.sizes.subprocess_tasks
    base = ctx.directory(NAME)
    ctx.say(f"{NAME}: {n:,} tasks running `true`, {WORKERS} local workers")
    local = _run(ctx, base / "local", n, "run-local")
    ctx.say(f"{NAME}: the same tasks on a Dask LocalCluster of {WORKERS} workers")
    dask = _run(ctx, base / "dask", n, "run-dask", DASK)
    repeat = 1 if ctx.quick else 3
    ctx.say(f"{NAME}: start-up, {repeat} pair(s) of 1-task runs")
    pairs = [_one_task_pair(ctx, i) for i in range(repeat)]
    startup = (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs))
    return [*_rate_rows(local, dask, startup[1] - startup[0]),
            _startup_row(startup, len(pairs)), _done_row(LOCAL_DONE, local),
            _done_row(DASK_DONE, dask),
            *harness.span_rows(NAME, dask, cpu_reference=local.cpu_ms_per_task,
                               cpu_note=f"reference: the local pool's run, "
                                        f"{local.proc.cpu_seconds or 0:.2f} s of CPU")]


def _run(ctx: BenchContext, root: Path, n: int, name: str,
         options: tuple[str, ...] = ()) -> RunResult:
    """``orch run [OPTIONS] --workers 2 --no-worktrees`` on a fresh project of ``n`` tasks."""
    project = harness.noop_project(root, n, executor=None, command="true")
    return harness.orch_run(ctx, project, WORKERS, name=name, options=options)


def _one_task_pair(ctx: BenchContext, i: int) -> tuple[float, float]:
    """The wall clocks of one-task runs: (local pool, Dask), each on a fresh project."""
    base = ctx.workdir / NAME
    local = _run(ctx, base / f"one-local-{i}", 1, "run-one-local")
    dask = _run(ctx, base / f"one-dask-{i}", 1, "run-one-dask", DASK)
    for run in (local, dask):
        if run.completed != 1:
            raise RuntimeError(f"`orch {' '.join(run.args)}` completed {run.completed} of 1 "
                               f"task: {harness.last_lines(run.proc.stderr + run.proc.stdout)}")
    return local.proc.wall_seconds, dask.proc.wall_seconds


def _rate(run: RunResult) -> float | None:
    return run.completed / run.proc.wall_seconds if run.completed else None


def _rate_rows(local: RunResult, dask: RunResult, startup: float) -> list[Figure]:
    n = local.tasks
    local_rate, dask_rate = _rate(local), _rate(dask)
    wall_diff = dask.proc.wall_seconds - local.proc.wall_seconds
    spans = (f"over the span (first task_started to last task_completed) "
             f"{(dask.span - local.span) * 1000 / n:.2f} ms per task"
             if dask.span is not None and local.span is not None else "no span")
    return [
        figure(NAME, LOCAL_RATE, local_rate, "tasks/s",
               note=local.incomplete_note() + f"informational: {local.completed:,} tasks / "
                    f"the wall clock of `orch {' '.join(local.args)}`, exec to exit "
                    f"({local.proc.wall_seconds:.2f} s)"),
        figure(NAME, DASK_RATE, dask_rate, "tasks/s", reference=local_rate,
               note=dask.incomplete_note() + f"informational: {dask.completed:,} tasks / the "
                    f"wall clock of `orch {' '.join(dask.args)}`, exec to exit "
                    f"({dask.proc.wall_seconds:.2f} s, LocalCluster start-up included); "
                    f"reference: the local pool's run; ratio: dask/local"),
        figure(NAME, OVERHEAD, wall_diff * 1000 / n, "ms",
               note=local.incomplete_note() + dask.incomplete_note()
               + f"informational: ({dask.proc.wall_seconds:.2f} s - "
                    f"{local.proc.wall_seconds:.2f} s) / {n:,} tasks, {WORKERS} workers in "
                    f"parallel (each worker's own cost per task is about {WORKERS}x this); "
                    f"the LocalCluster's start-up is {startup * 1000 / n:.2f} ms of it; "
                    f"{spans}"),
    ]


def _startup_row(medians: tuple[float, float], repeat: int) -> Figure:
    local, dask = medians
    return figure(NAME, STARTUP, dask, "s", reference=local,
                  note=f"informational: wall clock of `orch run --executor dask --workers "
                       f"{WORKERS} --no-worktrees` on a project of one `true` task, against "
                       f"the same without --executor dask; median of {repeat}; the "
                       f"LocalCluster costs {dask - local:.2f} s more (its scheduler, "
                       f"{WORKERS} worker processes, the proxies' clients)")


def _done_row(name: str, run: RunResult) -> Figure:
    return figure(NAME, name, float(run.completed), "count", reference=float(run.tasks),
                  goal=EVERY_TASK,
                  note=run.incomplete_note() + f"task_completed events of `orch "
                                               f"{' '.join(run.args)}`")
