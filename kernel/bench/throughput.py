"""noop-throughput: independent noop tasks through the whole task state machine.

Public API:
    ``figures(ctx) -> list[Figure]``; ``measure(ctx) -> RunResult`` (memoized: ``footprint``
    and ``views-100k`` read the same run); ``run_noop(ctx, name, config)`` (one such run, e.g.
    with exports off); ``sqlite_ceiling(directory, n_tasks, tx_per_task) -> float``;
    ``KERNEL_TX_PER_TASK``.

Stability Guarantees:
    The workload: 20,000 (``--quick``: 300) independent tasks with ``"execution": {"executor":
    "noop"}`` in one workstream, loaded into a fresh project with the default ``orch.toml``
    (durability normal), then ``orch run --workers 4 --no-worktrees`` as a subprocess: pending
    -> queued -> running -> validating -> completed with the triggers and events. While it
    runs, a second process reads the database every 100 ms (``harness.Reader``, for
    ``footprint``). Throughput = completed tasks / (last ``task_completed`` - first
    ``task_started``), from the event table. References, measured in the same run: (a) the
    SQLite ceiling — the same task-row updates (claim; running -> validating and validating ->
    completed) issued with apsw on a plain table with the task table's columns, without
    triggers, events or scheduling, one connection, in as many write transactions per task as
    the workers committed in this run (rounded, 1 to 3; ``KERNEL_TX_PER_TASK`` when not
    counted; with 2 the claim is alone, then the two others); (b) Huey
    (``kernel.bench.huey``). Write transactions per task are counted by the bench shim
    (``kernel.bench.shim``: an apsw commit hook in every process of the run, since the kernel
    has no counter of its own), all processes together, divided by the completed tasks.
    Goals: >= 10,000 tasks/s; >= 40% of the SQLite ceiling; >= 1.5x Huey; <= 3 write
    transactions per task.

Integration Points:
    Registered as ``noop-throughput`` in ``kernel.bench.BENCHMARKS``.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.bench``, ``kernel.bench.harness``,
    ``kernel.bench.huey``, ``kernel.bench.shim``, ``kernel.store.db``, ``kernel.store.schema``.
"""

from __future__ import annotations

import time
from pathlib import Path

import apsw

from kernel.base import clock
from kernel.bench import BenchContext, Figure, at_least, at_most, figure, unavailable
from kernel.bench.harness import RunResult, noop_project, orch_run, shim_env
from kernel.bench.shim import read_tx_log
from kernel.store import db, schema

NAME = "noop-throughput"
#: Write transactions per task when the run's own count is missing. kernel.runtime.claims: a worker
#: that finishes a task claims its next one in the same transaction (finish_and_claim), so a
#: task without post-execution rules costs one; claim_next alone adds one when the worker was
#: idle. The SQLite ceiling issues its updates in as many transactions as measured.
KERNEL_TX_PER_TASK = 1

RATE_GOAL = at_least(10_000, ">= 10,000 tasks/s")
CEILING_GOAL = at_least(0.4, ">= 0.40x reference", on="ratio")
HUEY_GOAL = at_least(1.5, ">= 1.5x reference", on="ratio")
TX_GOAL = at_most(3, "<= 3")


def run_noop(ctx: BenchContext, name: str, config: str | None = None,
             count_tx: bool = True) -> RunResult:
    s = ctx.sizes
    base = ctx.directory(name)
    ctx.say(f"{name}: {s.noop_tasks:,} noop tasks, {s.noop_workers} workers")
    project = noop_project(base / "project", s.noop_tasks, config=config)
    tx_log = base / "tx.log"
    env = shim_env(ctx, tx_log=tx_log if count_tx else None)
    result = orch_run(ctx, project, s.noop_workers, env=env, reader=True, sample_wal=True)
    result.extra["tx"] = read_tx_log(tx_log) if count_tx else {}
    return result


def measure(ctx: BenchContext) -> RunResult:
    result: RunResult = ctx.once(NAME, lambda: run_noop(ctx, NAME))
    return result


def _task_columns(directory: Path) -> list[tuple[str, str]]:
    conn = schema.connect(directory / "kernel.db", create=True)
    try:
        return [(name, ctype or "") for _cid, name, ctype, *_ in
                conn.execute("PRAGMA table_info(task)")]
    finally:
        conn.close()


def sqlite_ceiling(directory: Path, n_tasks: int, tx_per_task: int = KERNEL_TX_PER_TASK,
                   ) -> float:
    """Tasks per second of the bare state updates (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    columns = _task_columns(directory)
    conn = apsw.Connection(str(directory / "plain.db"))
    try:
        conn.set_busy_timeout(db.DEFAULT_BUSY_TIMEOUT_MS)
        conn.pragma("journal_mode", "wal")
        conn.pragma("synchronous", "NORMAL")
        conn.pragma("journal_size_limit", db.JOURNAL_SIZE_LIMIT)
        conn.execute("CREATE TABLE task (" + ", ".join(f'"{c}" {t}' for c, t in columns)
                     + ", PRIMARY KEY (task_id))")
        stamp = clock.now_iso()
        ids = [f"t-{i:06d}" for i in range(n_tasks)]
        with db.write_tx(conn):
            conn.executemany(
                "INSERT INTO task (task_id, workstream_id, name, description, type, critical, "
                "priority, state, retry_count, max_retries, retry_delay_seconds, "
                "estimated_duration_seconds, command, definition, generation, created_at, "
                "queued_at, updated_at, bottom_level) VALUES (?, 'bench', 'bench task', '', "
                "'custom', 0, 0, 'queued', 0, 0, 30, 1, 'true', '{}', 0, ?, ?, ?, 1)",
                [(t, stamp, stamp, stamp) for t in ids])
        statements = [
            "UPDATE task SET state = 'running', worker_id = 'w-1', generation = generation + 1, "
            "started_at = ?1, updated_at = ?1, transition_trigger = 'worker_started' "
            "WHERE task_id = ?2 AND state = 'queued' AND generation = 0",
            "UPDATE task SET state = 'validating', worker_id = NULL, updated_at = ?1, "
            "transition_trigger = 'execution_completed' "
            "WHERE task_id = ?2 AND state = 'running' AND generation = 1",
            "UPDATE task SET state = 'completed', completed_at = ?1, updated_at = ?1, "
            "transition_trigger = 'validation_passed' "
            "WHERE task_id = ?2 AND state = 'validating'",
        ]
        # The three updates in tx_per_task transactions: the claim alone first, as the kernel.
        tx_per_task = max(1, min(tx_per_task, len(statements)))
        groups = [statements[:1], statements[1:]] if tx_per_task == 2 else (
            [statements] if tx_per_task == 1 else [[sql] for sql in statements])
        start = time.perf_counter()
        for task_id in ids:
            for group in groups:
                conn.execute("BEGIN IMMEDIATE")
                now = clock.now_iso()
                for sql in group:
                    conn.execute(sql, (now, task_id))
                conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        done = db.scalar(conn, "SELECT count(*) FROM task WHERE state = 'completed'")
        if done != n_tasks:
            raise RuntimeError(f"the SQLite ceiling completed {done} of {n_tasks} rows")
    finally:
        conn.close()
    return n_tasks / elapsed


def figures(ctx: BenchContext) -> list[Figure]:
    from kernel.bench.huey import huey_throughput

    s = ctx.sizes
    run = measure(ctx)
    tx = run.extra.get("tx") or {}
    tx_per_task, how = KERNEL_TX_PER_TASK, "as kernel.runtime.claims documents (not measured)"
    if tx.get("worker") and run.completed:
        tx_per_task = max(1, min(3, round(tx["worker"] / run.completed)))
        how = "as the workers' commits per task measured in this run"
    ctx.say(f"{NAME}: the SQLite ceiling, {tx_per_task} transaction(s) per task")
    ceiling = ctx.once("sqlite-ceiling", lambda: sqlite_ceiling(
        ctx.directory("ceiling"), s.noop_tasks, tx_per_task))
    ctx.say(f"{NAME}: the Huey reference")
    huey = huey_throughput(ctx.directory("huey"), s.huey_tasks, s.noop_workers, ctx.install,
                           limit=ctx.sizes.run_limit_seconds)
    rate = run.throughput
    base = run.incomplete_note() + (f"{run.completed:,} tasks, {s.noop_workers} workers; "
                                    f"orch run wall time {run.proc.wall_seconds:.1f} s, "
                                    "start-up and shutdown included")
    rows = [
        figure(NAME, "throughput", rate, "tasks/s", goal=RATE_GOAL, note=base),
        figure(NAME, "throughput vs SQLite ceiling", rate, "tasks/s", reference=ceiling,
               goal=CEILING_GOAL,
               note=f"ceiling: the same task-row updates with apsw, no triggers, events or "
                    f"scheduling, one connection, {tx_per_task} write transaction(s) per task "
                    f"{how}"),
    ]
    if huey.tasks_per_second is None:
        rows.append(unavailable(NAME, "throughput vs Huey", "tasks/s", huey.note,
                                goal=HUEY_GOAL))
        rows[-1].value = rate
    else:
        rows.append(figure(NAME, "throughput vs Huey", rate, "tasks/s",
                           reference=huey.tasks_per_second, goal=HUEY_GOAL, note=huey.note))
    total = sum(v for k, v in tx.items() if k != "processes")
    if total and run.completed:
        per_task = total / run.completed
        rows.append(figure(
            NAME, "write transactions per task", per_task, "tx/task", goal=TX_GOAL,
            note=f"counted by the bench shim's commit hook in all {tx.get('processes', 0)} "
                 f"processes (the kernel has no counter): workers "
                 f"{tx.get('worker', 0) / run.completed:.2f}/task (finishing and claiming, "
                 f"empty claims included), scheduler "
                 f"{tx.get('scheduler', 0) / run.completed:.2f}/task"))
    else:
        rows.append(unavailable(NAME, "write transactions per task", "tx/task",
                                "no commit counts were recorded (the bench shim did not load)",
                                goal=TX_GOAL))
    return rows
