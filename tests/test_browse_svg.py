"""The DAG picture (kernel.planning.svg): stages as columns, states as colours, the critical path
marked, tall stages collapsed; `orch plan --format svg [--output FILE]`; and a 1,000-task
workstream drawn by the CLI and by the DAG page of `orch browse` (times printed, not asserted)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

from kernel.planning.dag import PlanTask, dag_and_plan
from kernel.planning.generate import generate_layered_dag
from kernel.planning.svg import MAX_ROWS, STAGES_PER_PAGE, Links, plan_svg, stage_pages
from tests.browse_project import get, start_browse, stop_browse
from tests.conftest import orch
from tests.e2e import make_project, task

SVG = "{http://www.w3.org/2000/svg}"


def docs(tasks: list[PlanTask]) -> tuple[dict, dict]:
    return dag_and_plan(tasks, "ws", None, "2025-01-01T00:00:00.000Z")


def nodes(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {g.get("data-task-id", ""): g for g in root.iter(f"{SVG}g")
            if "node" in (g.get("class") or "").split()}


def diamond() -> list[PlanTask]:
    return [PlanTask("a", "a", "custom", "completed"),
            PlanTask("b", "b", "custom", "failed", ("a",), estimated_duration_seconds=300),
            PlanTask("c", "c", "custom", "running", ("a",)),
            PlanTask("d", "d <&>", "custom", "pending", ("b", "c"))]


def test_nodes_carry_their_state_and_the_critical_path_is_marked() -> None:
    dag_doc, plan_doc = docs(diamond())
    svg = plan_svg(dag_doc, plan_doc)
    found = nodes(svg)
    assert sorted(found) == ["a", "b", "c", "d"]
    assert {t: g.get("data-state") for t, g in found.items()} == {
        "a": "completed", "b": "failed", "c": "running", "d": "pending"}
    critical = sorted(t for t, g in found.items() if "critical" in g.get("class", ""))
    assert critical == sorted(plan_doc["critical_path_tasks"]) == ["a", "b", "d"]
    root = ET.fromstring(svg)
    hot = [p for p in root.iter(f"{SVG}path") if "critical" in (p.get("class") or "")]
    assert len(hot) == 2  # a -> b -> d
    assert "state-failed" in found["b"].get("class", "")
    # Without links it is a standalone picture: no anchors, nothing loaded from elsewhere.
    assert not list(root.iter(f"{SVG}a"))
    assert "href" not in svg and "<script" not in svg
    # One column per stage, in stage order, left to right.
    xs = {t: float(g.find(f"{SVG}rect").get("x")) for t, g in found.items()}  # type: ignore
    assert xs["a"] < xs["b"] == xs["c"] < xs["d"]
    assert "Legend" in svg


def test_links_go_to_the_task_row_and_its_timeline() -> None:
    dag_doc, plan_doc = docs(diamond())
    links = Links(task=lambda t: f"/kernel/task/{t}",
                  timeline=lambda t: f"/kernel/task_timeline?task_id={t}")
    root = ET.fromstring(plan_svg(dag_doc, plan_doc, links=links))
    hrefs = sorted(a.get("href", "") for a in root.iter(f"{SVG}a"))
    assert hrefs == sorted([f"/kernel/task/{t}" for t in "abcd"]
                           + [f"/kernel/task_timeline?task_id={t}" for t in "abcd"])


def test_a_tall_stage_collapses_and_keeps_its_critical_task() -> None:
    tasks = [PlanTask("root", "root", "custom")]
    tasks += [PlanTask(f"t{i:03d}", "", "custom", "pending", ("root",)) for i in range(100)]
    tasks += [PlanTask("t099", "", "custom", "pending", ("root",),
                       estimated_duration_seconds=999)][:0]
    long = PlanTask("z-long", "", "custom", "pending", ("root",), estimated_duration_seconds=500)
    dag_doc, plan_doc = docs([*tasks, long])
    svg = plan_svg(dag_doc, plan_doc, links=Links(task=str, timeline=str,
                                                  stage=lambda s: f"?stage={s}"))
    found = nodes(svg)
    assert len(found) == 1 + MAX_ROWS - 1
    assert "z-long" in found and "critical" in found["z-long"].get("class", "")
    root = ET.fromstring(svg)
    (more,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "more"]
    assert more.get("data-hidden") == str(101 - (MAX_ROWS - 1))
    assert more.find(f"{SVG}a").get("href") == "?stage=2"  # type: ignore[union-attr]
    whole = nodes(plan_svg(dag_doc, plan_doc, stages=(2, 2), wrap=True))
    assert len(whole) == 101


def test_a_thousand_task_workstream_is_paged_and_collapsed() -> None:
    tasks = generate_layered_dag(1000, 3000, seed=7, n_layers=30)
    dag_doc, plan_doc = docs(tasks)
    pages = stage_pages(plan_doc)
    started = time.perf_counter()
    first = plan_svg(dag_doc, plan_doc, stages=pages[0])
    page_seconds = time.perf_counter() - started
    started = time.perf_counter()
    whole = plan_svg(dag_doc, plan_doc)
    whole_seconds = time.perf_counter() - started
    n_stages = len(plan_doc["stages"])
    print(f"\n1,000 tasks, {n_stages} stages: page 1 drawn in {page_seconds:.3f} s "
          f"({len(first)} bytes), all stages in {whole_seconds:.3f} s ({len(whole)} bytes)")
    shown = nodes(first)
    assert 0 < len(shown) <= min(STAGES_PER_PAGE, n_stages) * MAX_ROWS
    assert set(plan_doc["critical_path_tasks"]) & set(nodes(whole)) == set(
        plan_doc["critical_path_tasks"])  # the whole path is always drawn
    assert len(nodes(whole)) <= n_stages * MAX_ROWS


def test_plan_format_svg_writes_the_picture(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a"), task("b", deps=["a"]), task("c", deps=["a"])])
    out = tmp_path / "ws.svg"
    proc = orch("--root", str(root), "plan", "--format", "svg", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    stdout = orch("--root", str(root), "plan", "ws", "--format", "svg", check=True).stdout
    assert out.read_text() == stdout
    assert sorted(nodes(stdout)) == ["a", "b", "c"]
    for args in (["--output", str(out)], ["--format", "json", "--output", str(out)]):
        bad = orch("--root", str(root), "plan", *args)
        assert bad.returncode == 2 and "--output writes a diagram" in bad.stderr + bad.stdout
    bad = orch("--root", str(root), "--json", "plan", "--format", "svg")
    assert bad.returncode == 2
    unwritable = orch("--root", str(root), "plan", "--format", "svg", "--output",
                      str(tmp_path / "missing" / "x.svg"))
    assert unwritable.returncode in (1, 2), unwritable.stderr
    assert "missing" in unwritable.stderr and "Traceback" not in unwritable.stderr


def test_a_thousand_task_workstream_from_the_cli_and_the_dag_page(tmp_path: Path) -> None:
    generated = generate_layered_dag(1000, 2500, seed=11, n_layers=30)
    tasks = [task(t.task_id, ws="big", deps=t.dependencies) for t in generated]
    root = make_project(tmp_path / "big", tasks)
    started = time.perf_counter()
    svg = orch("--root", str(root), "plan", "big", "--format", "svg", check=True).stdout
    cli_seconds = time.perf_counter() - started
    proc, url = start_browse(root)
    try:
        started = time.perf_counter()
        status, page = get(url + "-/dag/big")
        page_seconds = time.perf_counter() - started
        status2, page2 = get(url + "-/dag/big?page=2")
    finally:
        code, err = stop_browse(proc)
    print(f"\n1,000-task workstream: `orch plan --format svg` {cli_seconds:.2f} s "
          f"({len(svg)} bytes); the DAG page {page_seconds:.2f} s ({len(page)} bytes)")
    assert code == 0, err
    assert status == 200 and status2 == 200
    assert len(nodes(svg)) >= 1
    assert 'class="orch-pager"' in page and "stages 13–" in page
    assert "data-task-id" in page2
