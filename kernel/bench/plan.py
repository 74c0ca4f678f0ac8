"""plan-100k: validate, load and plan a layered random DAG, against bare networkx.

Public API:
    ``figures(ctx) -> list[Figure]``; ``measure(ctx) -> PlanRun`` (memoized in the context:
    ``views-100k`` exports the loaded project and ``footprint`` reads its peak RSS);
    ``plan_all(project)``.

Stability Guarantees:
    The workload is ``tools/bench_definitions.write_project`` with ``kernel.planning.dag``'s seeded
    ``generate_layered_dag`` (100,000 tasks, 300,000 edges, seed 42; 2,000 / 6,000 with
    ``--quick``), all in ONE workstream, so that ``orch plan`` plans exactly the graph the
    networkx reference works on. Library figures: ``kernel.definitions.check.validate`` and
    ``kernel.definitions.load.load`` once each on the freshly initialised project, and ``plan_all``
    (what
    ``orch plan --json`` computes: every workstream's ``plan_document`` in one read snapshot)
    as the best of three. Reference: ``tools/bench_plan.reference_steps`` on the same tasks
    (build the DiGraph, acyclicity check, topological generations, weighted longest path),
    best of three totals. Then the CLI once, on a fresh database: ``orch validate``, ``orch
    load``, ``orch plan --json`` as subprocesses (interpreter start-up and output included;
    informational), each with its peak RSS. Goals: validate + load under 5 s; plan within 2x
    the reference.

Integration Points:
    Registered as ``plan-100k`` in ``kernel.bench.BENCHMARKS``. Needs the checkout's
    ``tools/`` (the figures are reported unavailable without it).

Dependencies:
    ``kernel.bench``, ``kernel.bench.harness``, ``kernel.definitions.check``,
    ``kernel.definitions.load``, ``kernel.planning.generate``, ``kernel.planning.plan``,
    ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernel.bench import SEED, BenchContext, Figure, at_most, figure, unavailable
from kernel.bench.harness import ProcRun, ToolMissing, last_lines, load_tool, run_orch, timed
from kernel.store import db
from kernel.store.project import Project

NAME = "plan-100k"
LOAD_GOAL = at_most(5.0, "< 5 s")
PLAN_GOAL = at_most(2.0, "<= 2x reference", on="ratio")


@dataclass
class PlanRun:
    project: Project | None
    tasks: int = 0
    edges: int = 0
    validate: float | None = None
    load: float | None = None
    plan: float | None = None
    reference: float | None = None
    matches: bool | None = None
    cli: dict[str, ProcRun] = field(default_factory=dict)
    missing: str = ""

    @property
    def cli_peak_rss(self) -> int | None:
        peaks = [p.peak_rss for p in self.cli.values() if p.peak_rss]
        return max(peaks) if peaks else None


def plan_all(project: Project) -> dict[str, Any]:
    """What ``orch plan --json`` computes: every workstream's plan, in one read snapshot."""
    from kernel.planning.plan import all_workstreams, plan_document

    now = datetime.now(UTC)
    conn = project.connect(readonly=True)
    try:
        with db.read_tx(conn):
            return {ws: plan_document(conn, ws, now) for ws in all_workstreams(conn)}
    finally:
        conn.close()


def _reference(tools_plan: Any, tasks: list[Any], repeat: int) -> tuple[float, float]:
    """Best total seconds of the bare-networkx steps, and the critical path length found."""
    import gc
    import time

    best, length = float("inf"), 0.0
    for _ in range(max(1, repeat)):
        steps = tools_plan.reference_steps(tasks)
        total = 0.0
        for step_name, step in steps.items():
            gc.collect()
            start = time.perf_counter()
            result = step()
            total += time.perf_counter() - start
            if step_name == "weighted longest path":
                length = float(result)
        best = min(best, total)
    return best, length


def measure(ctx: BenchContext) -> PlanRun:
    def go() -> PlanRun:
        from kernel.definitions.check import validate
        from kernel.definitions.load import load
        from kernel.planning.generate import generate_layered_dag

        s = ctx.sizes
        try:
            tools_defs = load_tool("bench_definitions")
            tools_plan = load_tool("bench_plan")
        except ToolMissing as exc:
            return PlanRun(project=None, missing=str(exc))
        root = (ctx.directory("plan") / "project").resolve()
        ctx.say(f"{NAME}: writing {s.plan_tasks:,} task files")
        tools_defs.write_project(root, s.plan_tasks, s.plan_edges, SEED, 1)
        project = Project(root)
        run = PlanRun(project=project, tasks=s.plan_tasks, edges=s.plan_edges)
        ctx.say(f"{NAME}: validate, load and plan (library)")
        run.validate, checked = timed(lambda: validate(project))
        if not checked.ok:
            raise RuntimeError(f"the generated project does not validate: "
                               f"{checked.problems[:3]}")
        run.load, report = timed(lambda: load(project))
        if report.tasks_created != s.plan_tasks:
            raise RuntimeError(f"load created {report.tasks_created} tasks, not {s.plan_tasks}")
        run.plan, plans = timed(lambda: plan_all(project), s.plan_repeat)
        ctx.say(f"{NAME}: the networkx reference")
        tasks = generate_layered_dag(s.plan_tasks, s.plan_edges, SEED)
        run.reference, length = _reference(tools_plan, tasks, s.plan_repeat)
        del tasks
        found = [p["critical_path_duration"] for p in plans.values()]
        run.matches = len(found) == 1 and abs(found[0] - length) < 1e-6
        del plans
        ctx.say(f"{NAME}: the CLI once, on a fresh database")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{project.db_path}{suffix}").unlink(missing_ok=True)
        logs = ctx.directory("plan-cli")
        run_orch(root, ["init"], log_dir=logs, name="init")
        for step, args in (("validate", ["validate"]), ("load", ["load"]),
                           ("plan", ["plan", "--json"])):
            proc = run_orch(root, args, log_dir=logs, name=step)
            if proc.returncode != 0:
                raise RuntimeError(f"orch {' '.join(args)} exited {proc.returncode}: "
                                   f"{last_lines(proc.stderr or proc.stdout)}")
            run.cli[step] = proc
        return run

    result: PlanRun = ctx.once(NAME, go)
    return result


def figures(ctx: BenchContext) -> list[Figure]:
    run = measure(ctx)
    names = [("validate (library)", "s", None), ("load (library)", "s", None),
             ("validate + load (library)", "s", LOAD_GOAL), ("plan (library)", "s", PLAN_GOAL),
             ("orch validate (CLI)", "s", None), ("orch load (CLI)", "s", None),
             ("orch plan --json (CLI)", "s", None)]
    if run.project is None:
        return [unavailable(NAME, n, u, run.missing, goal=g) for n, u, g in names]
    size = f"{run.tasks:,} tasks, {run.edges:,} edges, one workstream"
    assert run.validate is not None and run.load is not None
    cli = {k: p.wall_seconds for k, p in run.cli.items()}
    startup = "interpreter start-up and output included"
    return [
        figure(NAME, "validate (library)", run.validate, "s",
               note=f"kernel.definitions.check.validate, {size}, fresh database"),
        figure(NAME, "load (library)", run.load, "s",
               note="kernel.definitions.load.load into the fresh database"),
        figure(NAME, "validate + load (library)", run.validate + run.load, "s", goal=LOAD_GOAL,
               note=size),
        figure(NAME, "plan (library)", run.plan, "s", reference=run.reference, goal=PLAN_GOAL,
               note="read from the database + every workstream's plan_document; reference: "
                    "bare networkx build + is_directed_acyclic_graph + topological_generations "
                    "+ weighted dag_longest_path on the same graph; critical path "
                    + ("matches networkx" if run.matches else "DIFFERS from networkx")),
        figure(NAME, "orch validate (CLI)", cli.get("validate"), "s",
               note=f"informational, {startup}"),
        figure(NAME, "orch load (CLI)", cli.get("load"), "s",
               note=f"informational, {startup}"),
        figure(NAME, "orch plan --json (CLI)", cli.get("plan"), "s",
               note=f"informational, {startup}"),
    ]
