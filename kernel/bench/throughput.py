"""noop-throughput: independent noop tasks through the whole task state machine.

Public API:
    ``figures(ctx) -> list[Figure]``; ``measure(ctx) -> RunResult`` (memoized: ``footprint``
    and ``views-100k`` read the same run); ``run_noop(ctx, name, config, count_tx, tasks)``
    (one such run, e.g. with exports off); ``tx_counts(ctx) -> RunResult``;
    ``shim_forces_spawn()``; ``KERNEL_TX_PER_TASK``; the goals.

Stability Guarantees:
    The workload: 20,000 (``--quick``: 300) independent tasks with ``"execution": {"executor":
    "noop"}`` in one workstream, loaded into a fresh project with the default ``orch.toml``
    (durability normal), then ``orch run --workers 4 --no-worktrees`` as a subprocess, started
    as a user starts it (``harness.run_orch``): pending -> queued -> running -> validating ->
    completed with the triggers and events. While it runs, a second process reads the
    database every 100 ms (``harness.Reader``, for ``footprint``). Throughput = completed
    tasks / span, the span being last ``task_completed`` - first ``task_started`` from the
    event table; beside it the end-to-end wall clock of the command (exec to exit) and the
    CPU per task of the run (``orch run`` and every process it waited for, ``os.wait4``).

    This run is not instrumented whenever the bench shim would change how ``orch run`` starts
    its workers (``shim_forces_spawn``: ``kernel.runtime.runner`` spawns instead of forking
    while ``ORCH_BENCH_TX_LOG`` is set); write transactions per task are then counted in a
    separate run of the same workload (a quarter of the tasks in the full suite) with the
    shim (``kernel.bench.shim``: an apsw commit hook in every process of the run, all
    processes together, divided by the completed tasks).

    References, measured in the same run, each with its CPU per task: (a) the same-work
    ceiling, ``kernel.bench.ceiling.same_work_ceiling`` on a fresh project loaded with the
    same tasks, ``noop_workers`` worker rows, ``ceiling.CEILING_BATCH`` tasks per transaction;
    (b) the raw SQLite floor, ``kernel.bench.ceiling.raw_floor`` (the task-row updates alone,
    no triggers or events, in as many write transactions per task as the workers committed,
    rounded to 1..3; ``KERNEL_TX_PER_TASK`` when not counted), informational; (c) Huey
    (``kernel.bench.huey``). Goals: >= 10,000 tasks/s; >= 0.8x the same-work ceiling;
    >= 0.5x Huey; CPU per task <= 0.5 ms; <= 3 write transactions per task.

Integration Points:
    Registered as ``noop-throughput`` in ``kernel.bench.BENCHMARKS``.

Dependencies:
    ``kernel.bench``, ``kernel.bench.ceiling``, ``kernel.bench.harness``, ``kernel.bench.huey``,
    ``kernel.bench.shim``, ``kernel.runtime.runner``.
"""

from __future__ import annotations

from kernel.bench import BenchContext, Figure, at_least, at_most, figure, unavailable
from kernel.bench.ceiling import CEILING_BATCH, Reference, raw_floor, same_work_ceiling
from kernel.bench.harness import RunResult, noop_project, orch_run, shim_env, span_rows
from kernel.bench.huey import HueyResult, huey_throughput
from kernel.bench.shim import TX_LOG_ENV, read_tx_log

NAME = "noop-throughput"
#: Write transactions per task when the run's own count is missing: a worker that finishes a
#: task claims its next one in the same transaction (kernel.runtime.claims.finish_and_claim).
KERNEL_TX_PER_TASK = 1

RATE_GOAL = at_least(10_000, ">= 10,000 tasks/s")
CEILING_GOAL = at_least(0.8, ">= 0.80x reference", on="ratio")
HUEY_GOAL = at_least(0.5, ">= 0.50x reference", on="ratio")
CPU_GOAL = at_most(0.5, "<= 0.5 ms")
TX_GOAL = at_most(3, "<= 3")


def shim_forces_spawn() -> bool:
    """True while ``orch run`` refuses to fork its workers with the bench shim's variables set
    (``kernel.runtime.runner.SPAWN_ENV``): an instrumented run would then not be the run a
    user has."""
    from kernel.runtime import runner

    return TX_LOG_ENV in getattr(runner, "SPAWN_ENV", ())


def run_noop(ctx: BenchContext, name: str, config: str | None = None,
             count_tx: bool = True, tasks: int | None = None) -> RunResult:
    s = ctx.sizes
    n = tasks or s.noop_tasks
    base = ctx.directory(name)
    ctx.say(f"{name}: {n:,} noop tasks, {s.noop_workers} workers"
            + (" (counting write transactions)" if count_tx else ""))
    project = noop_project(base / "project", n, config=config)
    tx_log = base / "tx.log"
    env = shim_env(ctx, tx_log=tx_log) if count_tx else None
    result = orch_run(ctx, project, s.noop_workers, env=env, reader=True, sample_wal=True)
    result.extra["tx"] = read_tx_log(tx_log) if count_tx else {}
    return result


def measure(ctx: BenchContext) -> RunResult:
    result: RunResult = ctx.once(NAME, lambda: run_noop(ctx, NAME,
                                                        count_tx=not shim_forces_spawn()))
    return result


def tx_counts(ctx: BenchContext) -> RunResult:
    """The run whose write transactions were counted: ``measure``'s, or a separate one."""
    run = measure(ctx)
    if run.extra.get("tx") or not shim_forces_spawn():
        return run
    n = ctx.sizes.noop_tasks if ctx.quick else max(ctx.sizes.noop_tasks // 4, 1)
    counted: RunResult = ctx.once(f"{NAME}-tx", lambda: run_noop(
        ctx, f"{NAME}-tx", count_tx=True, tasks=n))
    return counted


def _tx_per_task(counted: RunResult) -> tuple[int, str]:
    tx = counted.extra.get("tx") or {}
    if tx.get("worker") and counted.completed:
        return (max(1, min(3, round(tx["worker"] / counted.completed))),
                "as the workers' commits per task measured in this run")
    return KERNEL_TX_PER_TASK, "as kernel.runtime.claims documents (not measured)"


def _tx_row(counted: RunResult, separate: bool) -> Figure:
    tx = counted.extra.get("tx") or {}
    total = sum(v for k, v in tx.items() if k != "processes")
    if not (total and counted.completed):
        return unavailable(NAME, "write transactions per task", "tx/task",
                           "no commit counts were recorded (the bench shim did not load)",
                           goal=TX_GOAL)
    where = (f"in a separate run of {counted.completed:,} tasks with the bench shim (which "
             "makes orch run spawn its workers: kernel.runtime.runner.SPAWN_ENV); "
             if separate else "")
    return figure(
        NAME, "write transactions per task", total / counted.completed, "tx/task",
        goal=TX_GOAL,
        note=f"{where}counted by the bench shim's commit hook in all "
             f"{tx.get('processes', 0)} processes (the kernel has no counter): workers "
             f"{tx.get('worker', 0) / counted.completed:.2f}/task (finishing and claiming, "
             f"empty claims included), scheduler "
             f"{tx.get('scheduler', 0) / counted.completed:.2f}/task")


def _references(ctx: BenchContext, tx_per_task: int) -> tuple[Reference, Reference]:
    s = ctx.sizes

    def ceiling() -> Reference:
        project = noop_project(ctx.directory("same-work-ceiling") / "project", s.noop_tasks)
        return same_work_ceiling(project, s.noop_workers, CEILING_BATCH)

    ctx.say(f"{NAME}: the same-work ceiling ({s.noop_tasks:,} tasks, {s.noop_workers} worker "
            f"rows, {CEILING_BATCH} tasks per transaction)")
    same: Reference = ctx.once("same-work-ceiling", ceiling)
    ctx.say(f"{NAME}: the raw SQLite floor, {tx_per_task} transaction(s) per task")
    floor: Reference = ctx.once("raw-floor", lambda: raw_floor(
        ctx.directory("raw-floor"), s.noop_tasks, tx_per_task))
    return same, floor


def figures(ctx: BenchContext) -> list[Figure]:
    s = ctx.sizes
    run = measure(ctx)
    counted = tx_counts(ctx)
    tx_per_task, how = _tx_per_task(counted)
    same, floor = _references(ctx, tx_per_task)
    ctx.say(f"{NAME}: the Huey reference")
    huey = huey_throughput(ctx.directory("huey"), s.huey_tasks, s.noop_workers, ctx.install,
                           limit=ctx.sizes.run_limit_seconds)
    rate = run.throughput
    base = run.incomplete_note() + f"{run.completed:,} tasks, {s.noop_workers} workers, " \
        "over the span"
    rows = [figure(NAME, "throughput", rate, "tasks/s", goal=RATE_GOAL, note=base),
            *span_rows(NAME, run, cpu_goal=CPU_GOAL, cpu_reference=same.cpu_ms_per_task,
                       cpu_note="reference: the same-work ceiling's CPU per task"),
            figure(NAME, "throughput vs same-work ceiling", rate, "tasks/s",
                   reference=same.tasks_per_second, goal=CEILING_GOAL,
                   note=f"ceiling: orch's own per-task SQL through the kernel's functions "
                        f"(claims.claim_in_tx, finish_execution_in_tx, the scheduler's "
                        f"queue move) on the shipped schema, {s.noop_workers} worker rows, "
                        f"{CEILING_BATCH} tasks per write transaction, one process; "
                        f"{same.tasks:,} tasks, loop {same.wall_seconds:.2f} s"),
            figure(NAME, "throughput vs raw SQLite floor", rate, "tasks/s",
                   reference=floor.tasks_per_second,
                   note=f"informational: the three task-row updates alone with apsw, no "
                        f"triggers, events, attempts or workers, one connection, "
                        f"{tx_per_task} write transaction(s) per task {how}")]
    if huey.tasks_per_second is None:
        rows.append(unavailable(NAME, "throughput vs Huey", "tasks/s", huey.note,
                                goal=HUEY_GOAL))
        rows[-1].value = rate
    else:
        rows.append(figure(NAME, "throughput vs Huey", rate, "tasks/s",
                           reference=huey.tasks_per_second, goal=HUEY_GOAL, note=huey.note))
    rows += _cpu_references(same, floor, huey)
    rows.append(_tx_row(counted, counted is not run))
    return rows


def _cpu_references(same: Reference, floor: Reference, huey: HueyResult) -> list[Figure]:
    rows = [
        figure(NAME, "CPU per task, same-work ceiling", same.cpu_ms_per_task, "ms",
               note=f"informational: process CPU of the ceiling's loop, "
                    f"{same.cpu_seconds:.2f} s over {same.tasks:,} tasks"),
        figure(NAME, "CPU per task, raw SQLite floor", floor.cpu_ms_per_task, "ms",
               note=f"informational: process CPU of the floor's loop, "
                    f"{floor.cpu_seconds:.3f} s over {floor.tasks:,} tasks"),
    ]
    if huey.cpu_ms_per_task is None:
        rows.append(unavailable(NAME, "CPU per task, Huey", "ms",
                                huey.note if huey.tasks_per_second is None
                                else "the Huey driver reported no CPU time"))
    else:
        rows.append(figure(NAME, "CPU per task, Huey", huey.cpu_ms_per_task, "ms",
                           note="informational: huey_consumer and its worker processes "
                                "(RUSAGE_CHILDREN), enqueueing not counted"))
    return rows
