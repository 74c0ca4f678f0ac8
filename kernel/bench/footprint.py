"""footprint: peak memory of the orch processes and the largest WAL with a reader polling.

Public API:
    ``figures(ctx) -> list[Figure]``.

Stability Guarantees:
    Reuses the plan-100k and noop-throughput measurements (running them if they have not run
    yet). Peak RSS is the process's own high-water mark (``VmHWM`` in ``/proc/PID/status``,
    sampled every 50 ms, no psutil): for plan-100k the largest of the ``orch validate``,
    ``orch load`` and ``orch plan --json`` processes; for noop-throughput the ``orch run``
    process (the scheduler; its workers are separate processes). The WAL is the largest size
    of ``kernel.db-wal`` seen during noop-throughput, while a second process read the database
    every 100 ms with Python's ``sqlite3`` as Datasette would (when views-100k ran first, the
    note gives the largest WAL of each of its runs with exports on and off). Goals: RSS <= 400
    MB each; WAL <= 64 MB. MB here is 10^6 bytes.

Integration Points:
    Registered as ``footprint`` in ``kernel.bench.BENCHMARKS``.

Dependencies:
    ``kernel.bench``, ``kernel.bench.plan``, ``kernel.bench.throughput``.
"""

from __future__ import annotations

from kernel.bench import BenchContext, Figure, at_most, figure, unavailable

NAME = "footprint"
RSS_GOAL = at_most(400.0, "<= 400 MB")
WAL_GOAL = at_most(64.0, "<= 64 MB")
MB = 1e6


def figures(ctx: BenchContext) -> list[Figure]:
    from kernel.bench import plan, throughput

    rows: list[Figure] = []
    planned = plan.measure(ctx)
    peak = planned.cli_peak_rss
    if planned.project is None or peak is None:
        rows.append(unavailable(NAME, "peak RSS, plan-100k", "MB",
                                planned.missing or "no sample of the CLI processes",
                                goal=RSS_GOAL))
    else:
        each = ", ".join(f"{k} {p.peak_rss / MB:.0f}" for k, p in planned.cli.items()
                         if p.peak_rss)
        rows.append(figure(NAME, "peak RSS, plan-100k", peak / MB, "MB", goal=RSS_GOAL,
                           note=f"largest of the CLI processes (MB: {each}); "
                                f"{planned.tasks:,} tasks"))
    run = throughput.measure(ctx)
    if run.proc.peak_rss is None:
        rows.append(unavailable(NAME, "peak RSS, orch run (noop-throughput)", "MB",
                                "the scheduler process could not be sampled", goal=RSS_GOAL))
    else:
        rows.append(figure(NAME, "peak RSS, orch run (noop-throughput)", run.proc.peak_rss / MB,
                           "MB", goal=RSS_GOAL,
                           note=f"the scheduler process, {run.tasks:,} tasks"))
    reader = run.reader
    reads = (f"; the reader made {reader.reads} passes, {reader.errors} failed"
             + (f" ({reader.last_error})" if reader.errors else "")) if reader else ""
    if run.proc.max_wal is None:
        rows.append(unavailable(NAME, "largest WAL (noop-throughput + reader)", "MB",
                                "the WAL was not sampled", goal=WAL_GOAL))
    else:
        runs = ctx.cache.get("views-runs") or {}
        compare = ""
        for label in ("on", "off"):
            walls = [r.proc.max_wal for r in runs.get(label, []) if r.proc.max_wal is not None]
            if walls:
                compare += (f"; views-100k's runs with exports {label}: "
                            f"{', '.join(f'{w / MB:.0f}' for w in walls)} MB")
        rows.append(figure(NAME, "largest WAL (noop-throughput + reader)",
                           run.proc.max_wal / MB, "MB", goal=WAL_GOAL,
                           note="a second process read the database every 100 ms with "
                                "Python's sqlite3, connection kept open" + reads + compare))
    return rows
