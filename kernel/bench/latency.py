"""dispatch-latency and claim-contention: how fast work moves on, and how claims behave under
many workers.

Public API:
    ``dispatch_figures(ctx)``, ``contention_figures(ctx)`` (each ``-> list[Figure]``);
    ``dispatch_latencies(project) -> list[float]``; ``double_claims(project) -> dict``.

Stability Guarantees:
    dispatch-latency: a chain of 1,000 (``--quick``: 40) noop tasks, each depending on the one
    before, run by ``orch run --workers 4``; for each dependent, the time from its
    prerequisite's ``task_completed`` event to its own ``task_started`` event (event
    timestamps have millisecond resolution). Goals: p50 <= 5 ms, p99 <= 50 ms.

    claim-contention: 16 workers (``orch run --workers 16``) draining 20,000 (``--quick``: 300)
    independent noop tasks. Claim latency is the time a worker spends in the call that claims
    a task — ``kernel.runtime.claims.claim_next``, or ``finish_and_claim``, the one transaction that
    finishes a task and claims the next — waiting for the write lock included, read from the
    claim log (``ORCH_BENCH_CLAIM_LOG``: one ``seconds<TAB>claimed[<TAB>call]`` line per
    call), written by the kernel if it supports that variable and otherwise by the bench shim;
    the percentiles are over the calls that claimed a task. Double claims, from the attempt
    table: tasks with two overlapping attempts or more than one attempt (must be 0).
    SQLITE_BUSY surfacing to users: lines of the workers' logs and of ``orch run``'s output
    that match ``harness.BUSY_PATTERN`` (must be 0). Goal: claim latency p99.9 <= 50 ms.

    Both also report the run's span (first ``task_started`` to last ``task_completed``), the
    end-to-end wall clock of ``orch run`` (exec to exit) and its CPU per task
    (``harness.span_rows``, informational). claim-contention's workers are forked, as a
    user's are: they time their claims themselves (``kernel.runtime.worker.CLAIM_LOG_ENV``;
    linked to their ``orch run``, a claim is the round trip of a report to the kernel's reply,
    which carries the next claim).

Integration Points:
    Registered as ``dispatch-latency`` and ``claim-contention`` in
    ``kernel.bench.BENCHMARKS``.

Dependencies:
    ``kernel.base.clock``, ``kernel.bench``, ``kernel.bench.harness``, ``kernel.bench.shim``,
    ``kernel.runtime.worker``, ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

from typing import Any

from kernel.base import clock
from kernel.bench import BenchContext, Figure, at_most, figure, unavailable
from kernel.bench.harness import (
    busy_lines,
    noop_project,
    orch_run,
    percentile,
    shim_env,
    span_rows,
)
from kernel.bench.shim import read_claim_log
from kernel.store import db
from kernel.store.project import Project

DISPATCH = "dispatch-latency"
CONTENTION = "claim-contention"
P50_GOAL = at_most(5.0, "<= 5 ms")
P99_GOAL = at_most(50.0, "<= 50 ms")
P999_GOAL = at_most(50.0, "<= 50 ms")
ZERO = at_most(0, "= 0")


def dispatch_latencies(project: Project) -> list[float]:
    """Milliseconds from each prerequisite's completion to its dependent's start."""
    conn = project.connect(readonly=True)
    try:
        pairs = conn.execute(
            "SELECT (SELECT max(timestamp) FROM event e WHERE e.task_id = d.depends_on "
            "        AND e.event = 'task_completed'), "
            "       (SELECT min(timestamp) FROM event e WHERE e.task_id = d.task_id "
            "        AND e.event = 'task_started') "
            "FROM task_dependency d").fetchall()
    finally:
        conn.close()
    return [(clock.epoch(str(started)) - clock.epoch(str(done))) * 1000
            for done, started in pairs if done and started]


def dispatch_figures(ctx: BenchContext) -> list[Figure]:
    s = ctx.sizes
    ctx.say(f"{DISPATCH}: a chain of {s.chain_tasks:,} noop tasks, {s.chain_workers} workers")
    project = noop_project(ctx.directory(DISPATCH) / "project", s.chain_tasks, chain=True)
    run = orch_run(ctx, project, s.chain_workers)
    latencies = dispatch_latencies(project)
    note = run.incomplete_note() + (
        f"{len(latencies):,} hand-overs (task_completed of a prerequisite -> task_started of "
        f"its dependent), {s.chain_workers} workers; event timestamps have 1 ms resolution")
    return [
        figure(DISPATCH, "p50", percentile(latencies, 50), "ms", goal=P50_GOAL, note=note),
        figure(DISPATCH, "p99", percentile(latencies, 99), "ms", goal=P99_GOAL,
               note=f"max {max(latencies):.0f} ms" if latencies else "no hand-over"),
        *span_rows(DISPATCH, run),
    ]


def double_claims(project: Project) -> dict[str, Any]:
    conn = project.connect(readonly=True)
    try:
        overlapping = {r[0] for r in conn.execute(
            "SELECT DISTINCT a.task_id FROM attempt a JOIN attempt b "
            "ON a.task_id = b.task_id AND a.attempt_id < b.attempt_id "
            "AND a.started_at < COALESCE(b.finished_at, '9999') "
            "AND b.started_at < COALESCE(a.finished_at, '9999')")}
        several = {r[0] for r in conn.execute(
            "SELECT task_id FROM attempt GROUP BY task_id HAVING count(*) > 1")}
        none = int(db.scalar(conn, "SELECT count(*) FROM task WHERE task_id NOT IN "
                                   "(SELECT task_id FROM attempt)"))
        worker_overlap = int(db.scalar(
            conn, "SELECT count(*) FROM attempt a JOIN attempt b "
                  "ON a.worker_id = b.worker_id AND a.attempt_id < b.attempt_id "
                  "AND a.started_at < COALESCE(b.finished_at, '9999') "
                  "AND b.started_at < COALESCE(a.finished_at, '9999')"))
        failed = int(db.scalar(conn, "SELECT count(*) FROM task WHERE state = 'failed'"))
    finally:
        conn.close()
    return {"double": len(overlapping | several), "overlapping": len(overlapping),
            "several": len(several), "none": none, "worker_overlap": worker_overlap,
            "failed": failed}


def _claim_source() -> str:
    import kernel.runtime.worker

    if getattr(kernel.runtime.worker, "CLAIM_LOG_ENV", None):
        return "the kernel's claim log"
    return ("the bench shim timing kernel.runtime.claims.claim_next and finish_and_claim "
            "(the kernel "
            "has no claim log yet)")


def contention_figures(ctx: BenchContext) -> list[Figure]:
    s = ctx.sizes
    base = ctx.directory(CONTENTION)
    ctx.say(f"{CONTENTION}: {s.contention_tasks:,} noop tasks, {s.contention_workers} workers")
    project = noop_project(base / "project", s.contention_tasks)
    claim_log = base / "claims.log"
    run = orch_run(ctx, project, s.contention_workers,
                   env=shim_env(ctx, claim_log=claim_log))
    log = read_claim_log(claim_log)
    ms = [x * 1000 for x in log.claimed]
    prefix = run.incomplete_note()
    rows: list[Figure] = []
    names = (("claim latency p50", 50, None), ("claim latency p99", 99, None),
             ("claim latency p99.9", 99.9, P999_GOAL))
    for name, q, goal in names:
        if not ms:
            rows.append(unavailable(CONTENTION, name, "ms", "no claim was logged "
                                    "(ORCH_BENCH_CLAIM_LOG: neither the kernel nor the bench "
                                    "shim wrote it)", goal=goal))
            continue
        note = "" if goal else "informational"
        if q == 50:
            empty_p99 = percentile([x * 1000 for x in log.empty], 99)
            calls = ", ".join(f"{n:,} by {c}" for c, n in sorted(log.calls.items()))
            note = (prefix + f"{len(ms):,} claims ({calls}), {s.contention_workers} workers, "
                    f"from {_claim_source()}; {len(log.empty):,} more calls claimed nothing"
                    + (f" (their p99 {empty_p99:.1f} ms)" if empty_p99 is not None else ""))
        elif q == 99.9:
            note = f"max {max(ms):.1f} ms"
        rows.append(figure(CONTENTION, name, percentile(ms, q), "ms", goal=goal, note=note))
    checks = double_claims(project)
    rows.append(figure(
        CONTENTION, "double claims", float(checks["double"]), "count", goal=ZERO,
        note=f"tasks with overlapping attempts: {checks['overlapping']}, with more than one "
             f"attempt: {checks['several']}; without an attempt: {checks['none']}; "
             f"overlapping attempts of one worker: {checks['worker_overlap']}"))
    busy = busy_lines([run.proc.stdout, run.proc.stderr, run.worker_logs])
    rows.append(figure(
        CONTENTION, "SQLITE_BUSY surfaced to users", float(len(busy)), "count", goal=ZERO,
        note=(f"{len(busy)} line(s) in worker logs and orch run output, e.g. "
              f"{busy[0][:160]!r}; {checks['failed']} task(s) failed"
              if busy else f"worker logs and orch run output scanned; "
                           f"{checks['failed']} task(s) failed")))
    rows.append(figure(CONTENTION, "throughput", run.throughput, "tasks/s",
                       note=prefix + f"informational: {run.completed:,} tasks, "
                                     f"{s.contention_workers} workers, over the span; the "
                                     "claims are timed by the bench shim"))
    return rows + span_rows(CONTENTION, run)
