"""Benchmark of kernel/planning/dag.py on a large seeded layered DAG, against bare networkx.

Public API:
    python tools/bench_plan.py [--tasks 100000] [--edges 300000] [--seed 42] [--repeat 3]
    main(argv=None) -> int

Stability Guarantees:
    Same arguments, same graph (kernel.planning.generate.generate_layered_dag). Each step reports
    the
    best of
    ``--repeat`` runs after a gc.collect(), in seconds. Exit status 1 when the whole plan misses a
    target: under 2 s, and within 2x the bare-networkx reference (the figures EXEC-DOC-002 quotes).

Integration Points:
    Numbers quoted in docs/execution_model/OVERVIEW.md and SCHEDULING.md come from this script;
    the benchmark suite reuses generate_layered_dag.

Dependencies:
    kernel.planning.dag, networkx, standard library.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx

try:
    import kernel.planning.dag as dag
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import kernel.planning.dag as dag
from kernel.bench.plan import reference_steps  # the reference orch bench measures too
from kernel.planning.generate import generate_layered_dag

PLAN_LIMIT_SECONDS = 2.0
REFERENCE_FACTOR = 2.0


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    runs = []
    result = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
    return min(runs), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parallelism", type=int, default=8)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    tasks = generate_layered_dag(args.tasks, args.edges, args.seed)
    generated = time.perf_counter() - start
    durations = {t.task_id: t.estimated_duration_seconds for t in tasks}
    print(
        f"layered DAG: {args.tasks} tasks, {args.edges} edges, seed {args.seed} "
        f"(generated in {generated:.2f} s); best of {args.repeat} runs, python "
        f"{sys.version.split()[0]}, networkx {nx.__version__}"
    )

    rows: list[tuple[str, float]] = []
    build_time, graph = timed(lambda: dag.build_graph(tasks), args.repeat)
    rows.append(("orch build_graph", build_time))
    rows.append(("orch find_cycle", timed(lambda: dag.find_cycle(graph), args.repeat)[0]))
    stage_time, gens = timed(lambda: dag.stages(graph), args.repeat)
    rows.append(("orch stages", stage_time))
    cp_time, (path, cp_len) = timed(lambda: dag.critical_path(graph, durations), args.repeat)
    rows.append(("orch critical_path", cp_time))
    plan_time, plan = timed(
        lambda: dag.execution_plan(tasks, "bench", args.parallelism, "now"), args.repeat
    )
    rows.append((f"orch execution_plan (p={args.parallelism})", plan_time))
    rows.append(("orch dag_document", timed(lambda: dag.dag_document(tasks, "bench", "now"), 1)[0]))

    reference_total = 0.0
    reference_len = None
    for name, step in reference_steps(tasks).items():
        seconds, result = timed(step, args.repeat)
        reference_total += seconds
        rows.append((f"networkx {name}", seconds))
        if name == "weighted longest path":
            reference_len = result
    rows.append(("networkx reference total", reference_total))

    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"  {name:<{width}}  {seconds:7.3f} s")
    widest = max(len(g) for g in gens)
    print(
        f"stages {len(gens)} (widest {widest}), critical path {len(path)} tasks, "
        f"{cp_len:.0f} s; total estimate {plan['total_estimated_duration']:.0f} s"
    )
    ratio = plan_time / reference_total
    ok = plan_time < PLAN_LIMIT_SECONDS and ratio <= REFERENCE_FACTOR and reference_len == cp_len
    print(
        f"whole plan {plan_time:.3f} s (target < {PLAN_LIMIT_SECONDS} s), "
        f"{ratio:.2f}x the networkx reference (target <= {REFERENCE_FACTOR}x), "
        f"critical path {'matches' if reference_len == cp_len else 'DIFFERS from'} networkx: "
        f"{'OK' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
