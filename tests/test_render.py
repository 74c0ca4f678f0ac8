"""Tests for kernel/planning/render.py: every node and edge drawn, critical path styled, ids
escaped."""

from __future__ import annotations

import io
import itertools
import json
import re

import pytest
from rich.console import Console

from kernel.planning.dag import PlanTask, dag_document, execution_plan
from kernel.planning.generate import generate_layered_dag
from kernel.planning.render import (
    format_duration,
    join_middle,
    plan_dot,
    plan_mermaid,
    plan_table,
)

NOW = "2025-01-01T00:00:00.000Z"
WEIRD = ["api.v2-build", 'say "hi"', "back\\slash", "a#b<c>", "[bold]x[/bold]", "plain"]


def task(task_id: str, *deps: str, duration: float = 60.0) -> PlanTask:
    return PlanTask(
        task_id, task_id, "custom", dependencies=deps, estimated_duration_seconds=duration
    )


@pytest.fixture
def weird_tasks() -> list[PlanTask]:
    a, b, c, d, e, f = WEIRD
    return [
        task(a, duration=100),
        task(b, a, duration=70),
        task(c, a),
        task(d, b, c),
        task(e, duration=1),
        task(f, d, e),
    ]


@pytest.fixture
def docs(weird_tasks: list[PlanTask]) -> tuple[dict, dict]:
    return dag_document(weird_tasks, "ws-1", NOW), execution_plan(weird_tasks, "ws-1", 2, NOW)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 0.4, 45, 60, 150, 3600, 3725, 90061)] == [
        "0s",
        "0s",
        "45s",
        "1m 0s",
        "2m 30s",
        "1h 0m",
        "1h 2m",
        "1d 1h",
    ]


def test_join_middle_keeps_both_ends() -> None:
    items = [f"task-{i:03d}" for i in range(100)]
    text = join_middle(items, 60)
    assert len(text) <= 60
    assert text.startswith("task-000 → ") and text.endswith(" → task-099")
    hidden = int(re.search(r"\(\+(\d+)\)", text).group(1))  # type: ignore[union-attr]
    assert hidden + text.count("task-") == 100
    assert join_middle(["a", "b"], 1) == "a → b"
    assert join_middle(["a", "b", "c"], 80) == "a → b → c"


def test_mermaid_draws_everything_and_escapes(docs: tuple[dict, dict]) -> None:
    dag, plan = docs
    text = plan_mermaid(dag, plan)
    assert text.startswith("flowchart TD\n")
    node_ids = dict(re.findall(r'^    (n\d+)\["(.*)"\]$', text, re.M))
    assert len(node_ids) == len(dag["nodes"])
    labels = set(node_ids.values())
    assert "api.v2-build" in labels and "plain" in labels
    assert "say #quot;hi#quot;" in labels and "a#35;b#lt;c#gt;" in labels
    by_label = {label: short for short, label in node_ids.items()}
    escaped = {
        t: t.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for t in WEIRD
    }
    drawn = re.findall(r"^    (n\d+) --> (n\d+)$", text, re.M)
    expected = [(by_label[escaped[e["from"]]], by_label[escaped[e["to"]]]) for e in dag["edges"]]
    assert drawn == expected
    # Critical path: a -> b -> d -> f (100 + 70 + 60 + 60).
    assert plan["critical_path_tasks"] == [WEIRD[0], WEIRD[1], WEIRD[3], WEIRD[5]]
    assert "classDef critical" in text
    critical_nodes = re.search(r"^    class (\S+) critical$", text, re.M).group(1)  # type: ignore[union-attr]
    assert critical_nodes.split(",") == [by_label[escaped[t]] for t in plan["critical_path_tasks"]]
    styled = re.search(r"^    linkStyle (\S+) ", text, re.M).group(1)  # type: ignore[union-attr]
    hot = set(itertools.pairwise(plan["critical_path_tasks"]))
    assert sorted(int(i) for i in styled.split(",")) == [
        i for i, e in enumerate(dag["edges"]) if (e["from"], e["to"]) in hot
    ]


def test_mermaid_without_plan_has_no_highlight(docs: tuple[dict, dict]) -> None:
    text = plan_mermaid(docs[0])
    assert "linkStyle" not in text and "\n    class " not in text


def dot_unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def test_dot_draws_everything_and_escapes(docs: tuple[dict, dict]) -> None:
    dag, plan = docs
    text = plan_dot(dag, plan)
    assert text.startswith('digraph "dag ws-1" {') and text.rstrip().endswith("}")
    quoted = r'"(?:[^"\\]|\\.)*"'
    nodes = re.findall(rf"^    ({quoted}) \[label=", text, re.M)
    assert [dot_unquote(n) for n in nodes] == [n["task_id"] for n in dag["nodes"]]
    assert '"say \\"hi\\""' in text and '"back\\\\slash"' in text
    edges = re.findall(rf"^    ({quoted}) -> ({quoted})(.*);$", text, re.M)
    assert [(dot_unquote(u), dot_unquote(v)) for u, v, _ in edges] == [
        (e["from"], e["to"]) for e in dag["edges"]
    ]
    path = plan["critical_path_tasks"]
    hot = {(dot_unquote(u), dot_unquote(v)) for u, v, attrs in edges if "bold" in attrs}
    assert hot == set(itertools.pairwise(path))
    assert text.count("rank=same") == len(plan["stages"])


def render_80(plan: dict) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None)
    assert plan_table(plan, console) is None
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_table_fits_80_columns_and_shows_the_plan(docs: tuple[dict, dict]) -> None:
    plan = docs[1]
    for text in (plan_table(plan), render_80(plan)):
        assert text is not None
        assert max(len(line) for line in text.splitlines()) <= 80
        assert f"{len(plan['stages'])} stages" in text
        assert "[bold]x[/bold]" in text  # ids are not rich markup
        assert 'Critical path: api.v2-build → say "hi" → a#b<c> → plain' in text
        assert "Critical path duration:   4m 50s" in text
        assert "Total estimated duration:" in text


def test_table_truncates_big_plans() -> None:
    tasks = generate_layered_dag(3000, 9000, seed=3)
    plan = execution_plan(tasks, "big", 8, NOW)
    text = plan_table(plan)
    assert text is not None
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "more" in text and "… (+" in text
    assert f"{len(plan['stages'])} stages, 3000 tasks" in text


def test_renderers_accept_json_round_trip(docs: tuple[dict, dict]) -> None:
    dag, plan = (json.loads(json.dumps(d)) for d in docs)
    assert plan_mermaid(dag, plan) == plan_mermaid(*docs)
    assert plan_dot(dag, plan) == plan_dot(*docs)
    assert plan_table(plan) == plan_table(docs[1])
