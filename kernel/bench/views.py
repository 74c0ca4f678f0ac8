"""views-100k: exporting the ``.state/`` views, and what exports cost a run.

Public API:
    ``figures(ctx) -> list[Figure]``; ``export_function()`` (``kernel.observe.exports.export`` or
    the
    reason it is missing); ``export_switch()`` (the default of ``[views] export`` in
    ``orch.toml``, or the reason there is none).

Stability Guarantees:
    Export: ``kernel.observe.exports.export(conn, state_dir, full=True)`` once on the project
    plan-100k
    loaded (100,000 tasks; ``--quick``: 2,000), timed in this process; the files under
    ``.state/`` it wrote are counted. Slowdown: the noop-throughput workload four more times,
    with ``[views] export = false`` / ``true`` in ``orch.toml`` in the order off, on, on, off
    (so that a drift in the machine's load weighs on both sides alike), as 1 - on/off in
    percent, each side's throughput being its completed tasks over its summed event spans
    (negative: noise in favour of exports); the runs are kept in the context as ``views-runs``
    (``footprint`` compares their WAL sizes). Both figures are
    reported unavailable, with the reason, while ``kernel.observe.exports.export`` or the ``[views]
    export`` key does not exist. Goals: export under 1.5 s; slowdown at most 15%.

Integration Points:
    Registered as ``views-100k`` in ``kernel.bench.BENCHMARKS``; reuses ``kernel.bench.plan``
    and ``kernel.bench.throughput`` measurements.

Dependencies:
    ``kernel.base.config``, ``kernel.bench``, ``kernel.bench.harness``, ``kernel.bench.plan``,
    ``kernel.bench.throughput``.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from typing import Any

from kernel.bench import BenchContext, Figure, at_most, figure, unavailable
from kernel.bench.harness import RunResult, timed

NAME = "views-100k"
EXPORT_GOAL = at_most(1.5, "< 1.5 s")
SLOWDOWN_GOAL = at_most(15.0, "<= 15%")


def export_function() -> tuple[Callable[..., Any] | None, str]:
    try:
        module = importlib.import_module("kernel.observe.exports")
    except ImportError as exc:
        return None, f"kernel.observe.exports cannot be imported yet ({exc})"
    fn = getattr(module, "export", None)
    if not callable(fn):
        return None, "kernel.observe.exports has no export() yet"
    return fn, ""


def export_switch() -> tuple[bool | None, str]:
    from kernel.base.config import ViewsConfig

    field = ViewsConfig.model_fields.get("export")
    if field is None:
        return None, ("orch.toml has no [views] export switch yet (kernel.base.config.ViewsConfig "
                      "lacks `export`)")
    return bool(field.default), ""


def _export(ctx: BenchContext) -> Figure:
    from kernel.bench import plan

    fn, reason = export_function()
    if fn is None:
        return unavailable(NAME, "export current.json and indices", "s", reason,
                           goal=EXPORT_GOAL)
    run = plan.measure(ctx)
    if run.project is None:
        return unavailable(NAME, "export current.json and indices", "s", run.missing,
                           goal=EXPORT_GOAL)
    project = run.project
    ctx.say(f"{NAME}: exporting the views of {run.tasks:,} tasks")
    before = {p for p in project.state_dir.rglob("*") if p.is_file()}
    conn = project.connect()
    try:
        seconds, report = timed(lambda: fn(conn, project.state_dir, full=True))
    finally:
        conn.close()
    written = [p for p in project.state_dir.rglob("*") if p.is_file() and p not in before
               and p.suffix in (".json", ".jsonl")]
    size = sum(p.stat().st_size for p in written)
    # The goal is about current.json and the indices: the snapshot they are made from, the
    # file and the indices. The whole export also appends every event (on a first export,
    # all of them) and plans each workstream for its DAG and plan files.
    steps = getattr(report, "timings", {}) or {}
    part = sum(steps.get(k, 0.0) for k in ("snapshot", "current", "indices")) if steps \
        else seconds
    detail = ", ".join(f"{k} {v:.2f} s" for k, v in steps.items())
    return figure(NAME, "export current.json and indices", part, "s", goal=EXPORT_GOAL,
                  note="kernel.observe.exports.export(conn, state_dir, full=True) on "
                       f"{run.tasks:,} "
                       f"tasks: {seconds:.2f} s in all ({detail}); {len(written)} new "
                       f"file(s), {size / 2**20:.1f} MiB")


#: Exports on (True) and off (False), in an ABBA order so that a machine getting busier or
#: quieter during the four runs weighs on both sides alike.
ORDER = (False, True, True, False)


def _rate(runs: list[RunResult]) -> float | None:
    spans = [r.span for r in runs if r.span and r.completed]
    done = sum(r.completed for r in runs if r.span and r.completed)
    return done / sum(spans) if spans else None


def _slowdown(ctx: BenchContext) -> Figure:
    from kernel.bench import throughput

    default, reason = export_switch()
    if default is None:
        return unavailable(NAME, "exports' slowdown of noop-throughput", "%", reason,
                           goal=SLOWDOWN_GOAL)
    runs: dict[bool, list[RunResult]] = {True: [], False: []}
    sequence: list[str] = []
    for i, on in enumerate(ORDER):
        label = "on" if on else "off"
        name = f"views-{label}-{i + 1}"
        run = throughput.run_noop(ctx, name, f"[views]\nexport = {str(on).lower()}\n",
                                  count_tx=False)
        shutil.rmtree(ctx.workdir / name, ignore_errors=True)
        runs[on].append(run)
        sequence.append(f"{label} {run.throughput or 0:,.0f}")
    ctx.cache["views-runs"] = {"default": default, "on": runs[True], "off": runs[False]}
    rate_on, rate_off = _rate(runs[True]), _rate(runs[False])
    if not rate_on or not rate_off:
        return unavailable(NAME, "exports' slowdown of noop-throughput", "%",
                           "a run completed no task", goal=SLOWDOWN_GOAL)
    return figure(NAME, "exports' slowdown of noop-throughput", (1 - rate_on / rate_off) * 100,
                  "%", goal=SLOWDOWN_GOAL,
                  note=f"{rate_on:,.0f} tasks/s with exports, {rate_off:,.0f} without; "
                       f"1 - on/off over four runs, in order: {', '.join(sequence)} tasks/s")


def figures(ctx: BenchContext) -> list[Figure]:
    return [_export(ctx), _slowdown(ctx)]
