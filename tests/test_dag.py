"""Tests for kernel/planning/dag.py: worked examples, then hypothesis properties against
networkx."""

from __future__ import annotations

import gc
import itertools
import json
import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.planning.dag import (
    DagError,
    DependencyCycle,
    DuplicateTask,
    PlanTask,
    UnknownDependency,
    bottom_levels,
    build_graph,
    critical_path,
    dag_document,
    execution_plan,
    find_cycle,
    stage_duration,
    stages,
    topological_order,
)
from kernel.planning.generate import generate_layered_dag

NOW = "2025-01-01T00:00:00.000Z"


def task(task_id: str, *deps: str, duration: float = 60.0, **extra: object) -> PlanTask:
    return PlanTask(
        task_id,
        f"name {task_id}",
        "custom",
        dependencies=deps,
        estimated_duration_seconds=duration,
        **extra,
    )  # type: ignore[arg-type]


def durations_of(tasks: list[PlanTask]) -> dict[str, float]:
    return {t.task_id: t.estimated_duration_seconds for t in tasks}


def canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


@pytest.fixture
def diamond() -> list[PlanTask]:
    return [
        task("d", "b", "c", duration=5),
        task("c", "a", duration=30),
        task("b", "a", duration=20),
        task("a", duration=10),
    ]


# --------------------------------------------------------------------------- examples


def test_diamond_stages_order_and_critical_path(diamond: list[PlanTask]) -> None:
    graph = build_graph(diamond)
    assert sorted(graph.edges()) == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    assert stages(graph) == [["a"], ["b", "c"], ["d"]]
    assert topological_order(graph) == ["a", "b", "c", "d"]
    assert critical_path(graph, durations_of(diamond)) == (["a", "c", "d"], 45.0)
    assert find_cycle(graph) is None


def test_diamond_plan_document(diamond: list[PlanTask]) -> None:
    plan = execution_plan(diamond, "ws-1", None, NOW)
    assert plan["schema_version"] == "1.0.0"
    assert plan["schema_url"] == "https://orch.dev/schemas/execution-plan/v1.0.0.json"
    assert (plan["workstream_id"], plan["generated_at"]) == ("ws-1", NOW)
    assert [s["stage"] for s in plan["stages"]] == [1, 2, 3]
    assert [s["parallel_tasks"] for s in plan["stages"]] == [["a"], ["b", "c"], ["d"]]
    assert [s["max_parallelism"] for s in plan["stages"]] == [1, 2, 1]
    assert [s["estimated_duration_seconds"] for s in plan["stages"]] == [10, 30, 5]
    assert all(s["critical_path"] for s in plan["stages"])
    assert plan["critical_path_tasks"] == ["a", "c", "d"]
    assert plan["critical_path_duration"] == 45
    assert plan["total_estimated_duration"] == 45


def test_diamond_plan_with_one_lane_serialises_the_wide_stage(diamond: list[PlanTask]) -> None:
    plan = execution_plan(diamond, "ws-1", 1, NOW)
    assert plan["stages"][1]["estimated_duration_seconds"] == 50
    assert plan["stages"][1]["max_parallelism"] == 1
    assert plan["total_estimated_duration"] == 65
    assert plan["critical_path_duration"] == 45


def test_chain() -> None:
    tasks = [task("t3", "t2", duration=3), task("t1", duration=1), task("t2", "t1", duration=2)]
    graph = build_graph(tasks)
    assert stages(graph) == [["t1"], ["t2"], ["t3"]]
    assert critical_path(graph, durations_of(tasks)) == (["t1", "t2", "t3"], 6.0)
    plan = execution_plan(tasks, "w", 4, NOW)
    assert plan["total_estimated_duration"] == plan["critical_path_duration"] == 6


def test_independent_tasks_in_waves_use_lpt_packing() -> None:
    tasks = [task(n, duration=d) for n, d in [("a", 30), ("b", 20), ("c", 20), ("d", 10)]]
    plan = execution_plan(tasks, "w", 2, NOW)
    (stage,) = plan["stages"]
    # LPT: 30 -> lane 1, 20 -> lane 2, 20 -> lane 2 (40), 10 -> lane 1 (40).
    assert stage["estimated_duration_seconds"] == 40
    assert stage["max_parallelism"] == 2
    assert plan["critical_path_duration"] == 30
    assert plan["critical_path_tasks"] == ["a"]
    assert execution_plan(tasks, "w", None, NOW)["total_estimated_duration"] == 30
    assert execution_plan(tasks, "w", 1, NOW)["total_estimated_duration"] == 80


def test_stage_duration_is_an_lpt_estimate_not_the_optimum() -> None:
    # Optimal packing of 3,3,2,2,2 on two lanes is 6 (3+3 | 2+2+2); LPT gives 7.
    assert stage_duration([3, 3, 2, 2, 2], 2) == 7
    assert stage_duration([5, 1], None) == 5
    assert stage_duration([5, 1], 7) == 5
    assert stage_duration([], 3) == 0


def test_tie_break_prefers_smallest_ids() -> None:
    for deps in (("x", "b"), ("b", "x")):
        tasks = [task("x"), task("b"), task("z", *deps), task("a")]
        graph = build_graph(tasks)
        assert critical_path(graph, durations_of(tasks)) == (["b", "z"], 120.0)
    tasks = [task("m"), task("c")]
    assert critical_path(build_graph(tasks), durations_of(tasks)) == (["c"], 60.0)


def test_unknown_dependencies_are_all_listed() -> None:
    tasks = [task("a", "ghost"), task("b", "a", "other-ws.t1"), task("c", "ghost")]
    with pytest.raises(UnknownDependency) as err:
        build_graph(tasks)
    assert err.value.missing == (("a", "ghost"), ("b", "other-ws.t1"), ("c", "ghost"))
    assert "other-ws.t1" in str(err.value)
    with pytest.raises(UnknownDependency):
        execution_plan(tasks, "w", None, NOW)


def test_duplicate_task_ids_rejected() -> None:
    with pytest.raises(DuplicateTask) as err:
        build_graph([task("a"), task("b"), task("a"), task("b"), task("c")])
    assert err.value.task_ids == ("a", "b")


def test_three_cycle_reported_in_order() -> None:
    tasks = [task("b", "a"), task("c", "b"), task("a", "c"), task("root"), task("x", "root", "c")]
    graph = build_graph(tasks)
    assert find_cycle(graph) == ["a", "b", "c"]
    for call in (
        lambda: stages(graph),
        lambda: topological_order(graph),
        lambda: critical_path(graph, durations_of(tasks)),
        lambda: execution_plan(tasks, "w", None, NOW),
        lambda: dag_document(tasks, "w", NOW),
    ):
        with pytest.raises(DependencyCycle) as err:
            call()
        assert err.value.cycle == ["a", "b", "c"]
    assert "a -> b -> c -> a" in str(err.value)
    assert isinstance(err.value, DagError) and isinstance(err.value, ValueError)


def test_self_loop_is_a_cycle() -> None:
    graph = build_graph([task("solo", "solo"), task("other")])
    assert find_cycle(graph) == ["solo"]
    with pytest.raises(DependencyCycle) as err:
        stages(graph)
    assert err.value.cycle == ["solo"]


def test_empty_task_set() -> None:
    plan = execution_plan([], "w", 3, NOW)
    assert plan["stages"] == [] and plan["critical_path_tasks"] == []
    assert plan["critical_path_duration"] == plan["total_estimated_duration"] == 0
    assert dag_document([], "w", NOW)["nodes"] == []


def test_resources_are_summed_per_stage() -> None:
    tasks = [
        task("a", resource_requirements={"cpu_cores": 2, "filesystem_read": "shared"}),
        task("b", resource_requirements={"cpu_cores": 3, "git_repo_write": "shared"}),
        task("c", resource_requirements={"git_repo_write": "exclusive", "api_quota_openai": 10}),
        task("d", "a", resource_requirements={"filesystem_read": "shared"}),
    ]
    plan = execution_plan(tasks, "w", 2, NOW)
    assert plan["stages"][0]["resource_requirements"] == {
        "api_quota_openai": 10,
        "cpu_cores": 5,
        "filesystem_read": "shared",
        "git_repo_write": "exclusive",
    }
    assert plan["stages"][1]["resource_requirements"] == {"filesystem_read": "shared"}


@pytest.mark.parametrize(
    "bad",
    [
        [
            task("a", resource_requirements={"r": 1}),
            task("b", resource_requirements={"r": "shared"}),
        ],
        [
            task("a", resource_requirements={"r": "shared"}),
            task("b", resource_requirements={"r": 1}),
        ],
        [task("a", resource_requirements={"r": "sometimes"})],
    ],
)
def test_inconsistent_resources_rejected(bad: list[PlanTask]) -> None:
    with pytest.raises(DagError):
        execution_plan(bad, "w", None, NOW)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        execution_plan([task("a")], "w", 0, NOW)
    with pytest.raises(ValueError):
        task("a", duration=-1)
    with pytest.raises(ValueError):
        task("a", duration=float("nan"))


def test_plan_task_freezes_its_collections() -> None:
    t = PlanTask(
        "a",
        "A",
        "aider",
        dependencies=["b"],  # type: ignore[arg-type]
        resource_requirements={"cpu_cores": 1},
    )
    assert t.dependencies == ("b",)
    with pytest.raises(TypeError):
        t.resource_requirements["cpu_cores"] = 2  # type: ignore[index]
    assert hash(t) == hash(PlanTask("a", "A", "aider", dependencies=("b",)))


def test_dag_document(diamond: list[PlanTask]) -> None:
    doc = dag_document(diamond, "ws-1", NOW)
    assert doc["schema_url"] == "https://orch.dev/schemas/dag/v1.0.0.json"
    assert doc["nodes"][0] == {
        "task_id": "a",
        "name": "name a",
        "type": "custom",
        "status": "pending",
    }
    assert [n["task_id"] for n in doc["nodes"]] == ["a", "b", "c", "d"]
    assert doc["edges"] == [
        {"from": u, "to": v, "type": "depends_on"}
        for u, v in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    ]
    assert doc["topological_order"] == ["a", "b", "c", "d"]


def test_documents_do_not_depend_on_input_order(diamond: list[PlanTask]) -> None:
    shuffled = list(reversed(diamond))
    for p in (None, 1, 2):
        assert canonical(execution_plan(diamond, "w", p, NOW)) == canonical(
            execution_plan(shuffled, "w", p, NOW)
        )
    assert canonical(dag_document(diamond, "w", NOW)) == canonical(dag_document(shuffled, "w", NOW))


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collector_state_is_restored(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        execution_plan([task("a"), task("b", "a")], "w", None, NOW)
        with pytest.raises(DependencyCycle):
            execution_plan([task("a", "b"), task("b", "a")], "w", None, NOW)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_generate_layered_dag_is_seeded_and_exact() -> None:
    one = generate_layered_dag(500, 1500, seed=7)
    assert one == generate_layered_dag(500, 1500, seed=7)
    assert one != generate_layered_dag(500, 1500, seed=8)
    assert len(one) == 500 and len({t.task_id for t in one}) == 500
    assert sum(len(t.dependencies) for t in one) == 1500
    graph = build_graph(one)
    assert graph.number_of_edges() == 1500 and nx.is_directed_acyclic_graph(graph)
    dense = generate_layered_dag(20, 150, seed=1, n_layers=20)  # 190 possible: dense branch
    assert sum(len(t.dependencies) for t in dense) == 150
    with pytest.raises(ValueError):
        generate_layered_dag(10, 46, seed=1, n_layers=10)
    assert generate_layered_dag(0, 0, seed=1) == []


# --------------------------------------------------------------------------- properties

ID_PIECES = st.sampled_from(["a", "b", "x.y", "w-1", "T_9", "é", "a b", 'q"', "[z]"])


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 12, acyclic: bool = True) -> list[PlanTask]:
    """Tasks of a random graph; DAGs take edges i -> j with i < j over a shuffled labelling."""
    n = draw(st.integers(0, max_nodes))
    label = st.lists(ID_PIECES, min_size=1, max_size=3).map("".join)
    labels = draw(st.lists(label, min_size=n, max_size=n, unique=True))
    pair = st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, max(n - 1, 0)))
    pairs = draw(st.lists(pair, max_size=3 * n)) if n else []
    edges = {(min(i, j), max(i, j)) for i, j in pairs if i != j} if acyclic else set(pairs)
    durations = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
    deps: dict[int, list[str]] = {j: [] for j in range(n)}
    for i, j in edges:
        deps[j].append(labels[i])
    tasks = [task(labels[j], *deps[j], duration=float(durations[j])) for j in range(n)]
    return draw(st.permutations(tasks))


def reference(tasks: list[PlanTask]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(t.task_id for t in tasks)
    graph.add_edges_from((d, t.task_id) for t in tasks for d in t.dependencies)
    return graph


def assert_is_cycle(graph: nx.DiGraph, cycle: list[str]) -> None:
    assert cycle and len(set(cycle)) == len(cycle)
    for u, v in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        assert graph.has_edge(u, v), (u, v)


@settings(max_examples=300, deadline=None)
@given(graphs(acyclic=False))
def test_no_cycle_is_ever_accepted(tasks: list[PlanTask]) -> None:
    graph = build_graph(tasks)
    cycle = find_cycle(graph)
    assert (cycle is None) == nx.is_directed_acyclic_graph(reference(tasks))
    if cycle is None:
        stages(graph)
        return
    assert_is_cycle(graph, cycle)
    assert cycle[0] == min(cycle)
    with pytest.raises(DependencyCycle) as err:
        execution_plan(tasks, "w", None, NOW)
    assert err.value.cycle == cycle


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_order_and_stages_respect_every_edge(tasks: list[PlanTask]) -> None:
    graph = build_graph(tasks)
    order = topological_order(graph)
    assert sorted(order) == sorted(t.task_id for t in tasks)
    position = {v: i for i, v in enumerate(order)}
    assert all(position[u] < position[v] for u, v in graph.edges())

    gens = stages(graph)
    assert [v for gen in gens for v in gen] == order
    assert all(gen == sorted(gen) and gen for gen in gens)
    level = {v: k for k, gen in enumerate(gens) for v in gen}
    for v, k in level.items():
        prereqs = [level[u] for u in graph.predecessors(v)]
        assert all(p < k for p in prereqs)  # only depends on earlier stages
        assert k == 0 or k - 1 in prereqs  # and as early as possible
    assert gens == [sorted(g) for g in nx.topological_generations(reference(tasks))]


def brute_force_longest(graph: nx.DiGraph, durations: dict[str, float]) -> float:
    best = 0.0
    for source in graph:
        stack = [(source, durations[source])]
        while stack:
            node, total = stack.pop()
            best = max(best, total)
            stack.extend((n, total + durations[n]) for n in graph.successors(node))
    return best


@settings(max_examples=300, deadline=None)
@given(graphs(max_nodes=8))
def test_critical_path_is_the_longest_path(tasks: list[PlanTask]) -> None:
    graph = build_graph(tasks)
    durations = durations_of(tasks)
    path, length = critical_path(graph, durations)
    assert length == brute_force_longest(graph, durations)
    assert sum(durations[v] for v in path) == length
    assert all(graph.has_edge(u, v) for u, v in itertools.pairwise(path))
    assert bool(path) == bool(tasks)


def test_bottom_levels_of_the_diamond(diamond: list[PlanTask]) -> None:
    # d alone; b and c: their own time plus d's; a: 10 + the longer branch (c: 35).
    levels = bottom_levels(build_graph(diamond), durations_of(diamond))
    assert levels == {"a": 45.0, "b": 25.0, "c": 35.0, "d": 5.0}


@settings(max_examples=300, deadline=None)
@given(graphs(max_nodes=8))
def test_bottom_level_is_the_longest_chain_starting_at_each_task(tasks: list[PlanTask]) -> None:
    graph = build_graph(tasks)
    durations = durations_of(tasks)
    levels = bottom_levels(graph, durations)
    for v in graph:
        after = graph.subgraph(nx.descendants(graph, v) | {v})
        chains = [durations[v]] + [
            sum(durations[n] for n in p) for target in after if target != v
            for p in nx.all_simple_paths(after, v, target)]
        assert levels[v] == max(chains)
    assert max(levels.values(), default=0.0) == critical_path(graph, durations)[1]


def test_bottom_levels_refuse_a_cycle() -> None:
    graph = nx.DiGraph([("a", "b"), ("b", "a")])
    with pytest.raises(DependencyCycle):
        bottom_levels(graph, {"a": 1.0, "b": 1.0})


@settings(max_examples=200, deadline=None)
@given(graphs(), st.none() | st.integers(1, 5), st.randoms(use_true_random=False))
def test_plan_invariants(tasks: list[PlanTask], lanes: int | None, rnd: random.Random) -> None:
    plan = execution_plan(tasks, "w", lanes, NOW)
    durations = durations_of(tasks)
    assert plan["total_estimated_duration"] >= plan["critical_path_duration"]
    assert plan["total_estimated_duration"] == sum(
        s["estimated_duration_seconds"] for s in plan["stages"]
    )
    on_path = set(plan["critical_path_tasks"])
    for s in plan["stages"]:
        ds = [durations[v] for v in s["parallel_tasks"]]
        width = s["max_parallelism"]
        assert 1 <= width <= len(ds) and (lanes is None or width <= lanes)
        assert max(ds) <= s["estimated_duration_seconds"] <= sum(ds)
        assert s["estimated_duration_seconds"] >= sum(ds) / width
        assert s["critical_path"] == bool(on_path & set(s["parallel_tasks"]))
    shuffled = [
        task(t.task_id, *reversed(t.dependencies), duration=t.estimated_duration_seconds)
        for t in tasks
    ]
    rnd.shuffle(shuffled)
    assert canonical(plan) == canonical(execution_plan(shuffled, "w", lanes, NOW))
    doc = dag_document(tasks, "w", NOW)
    assert canonical(doc) == canonical(dag_document(shuffled, "w", NOW))
    assert doc["topological_order"] == [v for s in plan["stages"] for v in s["parallel_tasks"]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6), max_size=30), st.integers(1, 8))
def test_stage_duration_bounds(durations: list[float], lanes: int) -> None:
    estimate = stage_duration(durations, lanes)
    if not durations:
        assert estimate == 0
        return
    assert max(durations) <= estimate <= sum(durations) * (1 + 1e-12)
    # LPT is within 4/3 of the optimum, which is at least the average lane load.
    optimum_lower_bound = max(max(durations), sum(durations) / lanes)
    assert estimate <= optimum_lower_bound * 4 / 3 + max(durations) + 1e-6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dag_and_plan_equal_the_two_documents_made_apart(seed: int) -> None:
    import random

    from kernel.planning.dag import dag_and_plan, dag_document, execution_plan

    tasks = generate_layered_dag(400, 1200, seed=seed)
    random.Random(seed).shuffle(tasks)   # the input order must not matter either
    together = dag_and_plan(tasks, "ws", 3, "2026-01-01T00:00:00.000Z")
    apart = (dag_document(tasks, "ws", "2026-01-01T00:00:00.000Z"),
             execution_plan(list(reversed(tasks)), "ws", 3, "2026-01-01T00:00:00.000Z"))
    assert together == apart


def test_tasks_leasing_one_resource_exclusively_take_turns_in_the_estimate() -> None:
    """DAG-VIEW-003: two edits of one stage that both need git_repo_write exclusively run one
    after the other, so the stage takes their sum; a shared holder waits for them too; other
    resources and shared-only stages keep the LPT estimate."""
    edit = {"git_repo_write": "exclusive"}
    tasks = [task("a", duration=30, resource_requirements=edit),
             task("b", duration=20, resource_requirements=edit),
             task("c", duration=10, resource_requirements={"git_repo_write": "shared"}),
             task("d", duration=25, resource_requirements={"cpu_cores": 1})]
    plan = execution_plan(tasks, "ws", None, "2026-01-01T00:00:00Z")
    assert plan["stages"][0]["estimated_duration_seconds"] == 60     # 30 + 20, then 10
    reads = [task("a", duration=30, resource_requirements={"git_repo_read": "shared"}),
             task("b", duration=20, resource_requirements={"git_repo_read": "shared"})]
    plan = execution_plan(reads, "ws", None, "2026-01-01T00:00:00Z")
    assert plan["stages"][0]["estimated_duration_seconds"] == 30
    one_lane = execution_plan(tasks, "ws", 1, "2026-01-01T00:00:00Z")
    assert one_lane["stages"][0]["estimated_duration_seconds"] == 85   # the lane bound wins
