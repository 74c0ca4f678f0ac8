"""plan-100k: validate, load and plan a layered random DAG, against bare networkx.

Public API:
    ``figures(ctx) -> list[Figure]``; ``measure(ctx) -> PlanRun`` (memoized in the context:
    ``views-100k`` exports the loaded project and ``footprint`` reads its peak RSS);
    ``plan_all(project)``; ``write_project(root, tasks, workstream)``;
    ``reference_steps(tasks)``.

Stability Guarantees:
    The workload is ``kernel.planning.generate.generate_layered_dag`` (100,000 tasks, 300,000
    edges, seed 42; 2,000 / 6,000 with ``--quick``) written by ``write_project`` as v2 task
    files, all in ONE workstream, so that ``orch plan`` plans exactly the graph the networkx
    reference works on. Everything it needs is in the package: it runs from an installed
    wheel as from a source checkout. Library figures: ``kernel.definitions.check.validate``
    and ``kernel.definitions.load.load`` once each on the freshly initialised project, and
    ``plan_all`` (what ``orch plan --json`` computes: every workstream's ``plan_document`` in
    one read snapshot) as the best of three. Reference: ``reference_steps`` on the same tasks
    (build the DiGraph, acyclicity check, topological generations, weighted longest path),
    best of three totals. Then the CLI once, on a fresh database: ``orch validate``, ``orch
    load``, ``orch plan --json`` as subprocesses (interpreter start-up and output included;
    informational), each with its peak RSS. Goals: validate + load under 5 s; plan within 2x
    the reference.

Integration Points:
    Registered as ``plan-100k`` in ``kernel.bench.BENCHMARKS``. ``tools/bench_plan.py`` and
    ``tools/bench_definitions.py`` (source checkout only) hold older copies of
    ``reference_steps`` and of the project writer, with more options.

Dependencies:
    networkx; ``kernel.bench``, ``kernel.bench.harness``, ``kernel.definitions.check``,
    ``kernel.definitions.load``, ``kernel.planning.generate``, ``kernel.planning.plan``,
    ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernel.bench import SEED, BenchContext, Figure, at_most, figure, unavailable
from kernel.bench.harness import ProcRun, last_lines, run_orch, timed
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
    missing: str = ""   # why the workload could not run (kept for the figures' notes)

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


_SOURCE = "__bench_source__"


def write_project(root: Path, tasks: list[Any], workstream: str = "bench") -> None:
    """An initialised project with ``tasks`` (``kernel.planning.dag.PlanTask``) written as v2
    task files, all in ``workstream``."""
    import json
    import os

    from kernel.store.project import init_project

    init_project(root)
    directory = root / "tasks" / workstream
    directory.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        doc: dict[str, Any] = {
            "schema_version": "2.0.0", "task_id": t.task_id, "workstream_id": workstream,
            "name": t.name, "description": f"Generated task {t.task_id} of a layered DAG.",
            "type": t.type, "priority": t.priority, "dependencies": list(t.dependencies),
            "execution": {"command": f"echo {t.task_id}", "timeout_seconds": 600,
                          "estimated_duration_seconds": t.estimated_duration_seconds},
            "resource_requirements": dict(t.resource_requirements),
        }
        fd = os.open(directory / f"{t.task_id}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o644)
        try:
            os.write(fd, json.dumps(doc, indent=2).encode())
        finally:
            os.close(fd)


def reference_steps(tasks: list[Any]) -> dict[str, Callable[[], Any]]:
    """The same work done the plain networkx way, step by step on one shared graph: build the
    DiGraph, acyclicity, topological generations, weighted longest path (its length)."""
    import networkx as nx

    duration = {t.task_id: t.estimated_duration_seconds for t in tasks}
    state: dict[str, Any] = {}

    def build() -> Any:
        graph = nx.DiGraph()
        graph.add_nodes_from(t.task_id for t in tasks)
        graph.add_edges_from((d, t.task_id) for t in tasks for d in t.dependencies)
        state["graph"] = graph
        return graph

    def longest() -> float:
        # dag_longest_path weighs edges; put each task's duration on its incoming edges, and
        # give every task an edge from a virtual source so the first task counts too.
        weighted = nx.DiGraph()
        weighted.add_weighted_edges_from((u, v, duration[v]) for u, v in state["graph"].edges())
        weighted.add_weighted_edges_from((_SOURCE, v, d) for v, d in duration.items())
        path = nx.dag_longest_path(weighted, weight="weight")
        return float(sum(duration[v] for v in path[1:]))

    return {
        "build DiGraph": build,
        "is_directed_acyclic_graph": lambda: nx.is_directed_acyclic_graph(state["graph"]),
        "topological_generations": lambda: list(nx.topological_generations(state["graph"])),
        "weighted longest path": longest,
    }


def _reference(tasks: list[Any], repeat: int) -> tuple[float, float]:
    """Best total seconds of the bare-networkx steps, and the critical path length found."""
    import gc
    import time

    best, length = float("inf"), 0.0
    for _ in range(max(1, repeat)):
        steps = reference_steps(tasks)
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
        root = (ctx.directory("plan") / "project").resolve()
        ctx.say(f"{NAME}: writing {s.plan_tasks:,} task files")
        tasks = generate_layered_dag(s.plan_tasks, s.plan_edges, SEED)
        write_project(root, tasks)
        del tasks
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
        run.reference, length = _reference(tasks, s.plan_repeat)
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
