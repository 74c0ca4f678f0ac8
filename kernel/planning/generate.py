"""Seeded random task graphs for benchmarks and tests.

Public API:
    ``generate_layered_dag(n_tasks, n_edges, seed, n_layers=None) -> list[PlanTask]``.

Stability Guarantees:
    Same arguments, same tasks: the random draws are made in a fixed order, so a seed names
    one graph across versions (benchmark figures stay comparable). Raises ``ValueError`` for
    negative sizes or more edges than a layered DAG of that size holds.

Integration Points:
    ``tools/bench_plan.py``, ``tools/bench_definitions.py`` and ``orch bench``
    (``kernel.bench.plan``) build their graphs here; the planning tests use it for large
    inputs.

Dependencies:
    ``kernel.planning.dag``.
"""

from __future__ import annotations

import math
import random

from kernel.planning.dag import PlanTask, ResourceValue

_TYPES = ("aider", "pytest", "lint", "custom")


def generate_layered_dag(
    n_tasks: int, n_edges: int, seed: int, n_layers: int | None = None
) -> list[PlanTask]:
    """A seeded random layered DAG for benchmarks: same arguments, same tasks.

    Tasks are split into ``n_layers`` equal layers (default about sqrt(n)/3, so 100k tasks give
    105); every edge runs from an earlier layer to a later one, mostly the next, so the graph
    has long chains and wide stages like real workstreams. Ids are shuffled so that id order
    says nothing about layers. Durations are whole seconds in [10, 900]; some tasks carry
    resource requirements.
    """
    if n_tasks < 0 or n_edges < 0:
        raise ValueError("n_tasks and n_edges must be >= 0")
    rng = random.Random(seed)
    layers = max(1, min(n_tasks, n_layers or round(math.sqrt(n_tasks) / 3)))
    width = -(-n_tasks // layers) if n_tasks else 1
    layers = -(-n_tasks // width) if n_tasks else 0
    sizes = [min(width, n_tasks - k * width) for k in range(layers)]
    max_edges = n_tasks * (n_tasks - 1) // 2 - sum(s * (s - 1) // 2 for s in sizes)
    if n_edges > max_edges:
        raise ValueError(f"{n_edges} edges do not fit a {layers}-layer DAG of {n_tasks} tasks")
    edges = _draw_edges(rng, n_tasks, n_edges, width, max_edges)
    return _draw_tasks(rng, n_tasks, edges)


def _draw_edges(rng: random.Random, n_tasks: int, n_edges: int, width: int,
                max_edges: int) -> set[tuple[int, int]]:
    """``n_edges`` distinct edges (u, v), u in an earlier layer of ``width`` tasks than v."""
    edges: set[tuple[int, int]] = set()
    if n_edges * 2 > max_edges:
        # Dense: rejection sampling would stall, so draw from the full list (small n only).
        every = [(u, v) for v in range(n_tasks) for u in range((v // width) * width)]
        edges.update(rng.sample(every, n_edges))
    while len(edges) < n_edges:
        v = rng.randrange(width, n_tasks)
        layer = v // width
        back = 1 if rng.random() < 0.8 else rng.randint(1, layer)
        start = (layer - back) * width
        edges.add((rng.randrange(start, start + width), v))
    return edges


def _draw_tasks(rng: random.Random, n_tasks: int,
                edges: set[tuple[int, int]]) -> list[PlanTask]:
    """The tasks of the graph, with shuffled ids, durations, priorities and resources."""
    labels = list(range(n_tasks))
    rng.shuffle(labels)
    digits = len(str(max(n_tasks - 1, 0)))
    ids = [f"task-{k:0{digits}d}" for k in labels]
    deps: list[list[str]] = [[] for _ in range(n_tasks)]
    for u, v in edges:
        deps[v].append(ids[u])
    tasks = []
    for i in range(n_tasks):
        resources = _draw_resources(rng)
        tasks.append(
            PlanTask(
                task_id=ids[i],
                name=f"Task {labels[i]}",
                type=_TYPES[i % len(_TYPES)],
                dependencies=tuple(sorted(deps[i])),
                estimated_duration_seconds=float(rng.randint(10, 900)),
                priority=rng.randint(0, 3),
                resource_requirements=resources,
            )
        )
    return tasks


def _draw_resources(rng: random.Random) -> dict[str, ResourceValue]:
    roll = rng.random()
    if roll < 0.10:
        return {"cpu_cores": rng.randint(1, 4)}
    if roll < 0.15:
        return {"git_repo_write": "exclusive"}
    if roll < 0.20:
        return {"filesystem_read": "shared"}
    return {}
