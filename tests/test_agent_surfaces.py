"""`orch ready | next | prime` (the agent surfaces) on real projects: `orch init`, task files,
`orch load`, real `orch run`s, the real CLI in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kernel.base.tokens import estimate_tokens, text_tokens
from kernel.runtime.executors import aider
from tests.conftest import orch, orch_json
from tests.e2e import make_project, py, query, run, start_run, stop, task, wait_for


def t(task_id: str, *, deps: tuple[str, ...] = (), priority: int = 0, duration: float = 1,
      **kw: Any) -> dict[str, Any]:
    doc = task(task_id, deps=deps, priority=priority, **kw)
    doc["execution"]["estimated_duration_seconds"] = duration
    return doc


def cli(root: Path, *args: str) -> tuple[int, Any]:
    return orch_json("--root", str(root), *args)


# Priority and critical path disagree: `urgent` has the highest priority and the shortest path;
# among the priority-0 tasks `long` heads the longest remaining path (5 + 30 + 30 s) although
# `short` and `alone` are no shorter on their own.
DAG = [
    t("urgent", priority=5, duration=1),
    t("long", duration=5), t("l2", deps=("long",), duration=30),
    t("l3", deps=("l2",), duration=30),
    t("short", duration=5), t("after_short", deps=("short",), duration=1),
    t("alone", duration=20),
    t("other_ws", ws="ws2", duration=2),
]


@pytest.fixture
def dag(tmp_path: Path) -> Path:
    return make_project(tmp_path / "p", DAG)


def test_ready_orders_by_priority_then_remaining_critical_path(dag: Path) -> None:
    code, out = cli(dag, "ready")
    assert code == 0
    order = [r["task_id"] for r in out["tasks"]]
    assert order == ["urgent", "long", "alone", "short", "other_ws"]
    by_id = {r["task_id"]: r for r in out["tasks"]}
    assert by_id["long"]["remaining_path_seconds"] == 65
    assert by_id["short"]["remaining_path_seconds"] == 6
    assert (by_id["long"]["unblocks"], by_id["long"]["unblocks_directly"]) == (2, ["l2"])
    assert by_id["alone"]["unblocks"] == 0
    assert [r["rank"] for r in out["tasks"]] == [1, 2, 3, 4, 5]
    assert all(r["state"] == "pending" and "no dependencies" in r["reason"]
               for r in out["tasks"])
    assert out["total"] == 5 and out["reason"] is None
    # "ready" is the ready_task view, nothing else.
    view = {r["task_id"] for r in query(dag, "SELECT task_id FROM ready_task")}
    assert set(order) == view

    code, out = cli(dag, "ready", "--workstream", "ws", "--limit", "2")
    assert code == 0
    assert [r["task_id"] for r in out["tasks"]] == ["urgent", "long"]
    assert (out["shown"], out["total"]) == (2, 4)
    text = orch("--root", str(dag), "ready", "--limit", "2").stdout
    assert "1. urgent" in text and "2. long" in text and "… 3 more" in text


def test_ready_is_the_order_a_single_worker_claims_in(dag: Path) -> None:
    _, out = cli(dag, "ready")
    expected = [r["task_id"] for r in out["tasks"]]
    assert run(dag, workers=1).returncode == 0
    started = [e["task_id"] for e in query(
        dag, "SELECT task_id FROM event WHERE event = 'task_started' ORDER BY seq")]
    assert [s for s in started if s in expected] == expected


def test_ready_after_a_completed_dependency_names_it(dag: Path) -> None:
    assert orch("--root", str(dag), "skip", "long").returncode == 0
    _, out = cli(dag, "ready", "--workstream", "ws")
    l2 = next(r for r in out["tasks"] if r["task_id"] == "l2")
    assert l2["dependencies"] == ["long"] and "long completed" in l2["reason"]
    assert l2["remaining_path_seconds"] == 60 and out["tasks"][1]["task_id"] == "l2"


def test_next_picks_the_critical_path_among_equal_priorities_and_says_why(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [d for d in DAG if d["task_id"] != "urgent"])
    code, out = cli(root, "next", "--workstream", "ws")
    assert code == 0
    assert out["task"]["task_id"] == "long"
    assert out["task"]["critical_path"] == ["long", "l2", "l3"]
    assert out["task"]["unblocks"] == 2
    reason = out["reason"]
    assert "its remaining path: long → l2 → l3 (65 s)" in reason
    assert "2 unfinished tasks depend on it (1 directly: l2)" in reason
    assert "longest remaining path" in reason and "priority 0" in reason
    assert out["then"] == ["alone", "short"]

    code, out = cli(root, "next", "--workstream", "ws2")
    assert out["task"]["task_id"] == "other_ws" and "only ready task" in out["reason"]


def test_next_names_the_highest_priority(dag: Path) -> None:
    code, out = cli(dag, "next")
    assert code == 0 and out["task"]["task_id"] == "urgent"
    assert "highest priority (5; the next highest among the ready tasks is 0)" in out["reason"]
    assert "no unfinished task depends on it" in out["reason"]
    text = orch("--root", str(dag), "next").stdout
    assert text.startswith("Next: urgent") and "highest priority" in text


# ------------------------------------------------------------------ nothing ready


def test_nothing_loaded(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [], load=False)
    code, out = cli(root, "next")
    assert code == 0 and out["task"] is None
    assert "nothing is loaded" in out["reason"] and "orch load" in out["reason"]
    code, out = cli(root, "ready")
    assert code == 0 and out["tasks"] == [] and "nothing is loaded" in out["reason"]
    proc = orch("--root", str(root), "next")
    assert proc.returncode == 0 and "Nothing is ready: nothing is loaded" in proc.stdout


def test_all_done(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [t("a"), t("b", deps=("a",))])
    assert run(root).returncode == 0
    code, out = cli(root, "next")
    assert code == 0 and out["task"] is None
    assert out["reason"] == "nothing is ready: all 2 tasks are completed."


def test_blocked_by_a_failure_names_it_and_the_command(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [
        t("ok"), t("bad", command=py("import sys; sys.exit(3)")),
        t("b", deps=("bad",)), t("c", deps=("b", "ok"))])
    assert run(root).returncode == 1
    code, out = cli(root, "next")
    assert code == 0 and out["task"] is None
    assert out["blocking"] == [{"task_id": "bad", "state": "failed", "waiting": 2}]
    assert "failed task bad blocks 2 pending tasks" in out["reason"]
    assert "`orch retry bad`" in out["reason"]
    # Retried, it is ready again (pending, dependencies: none).
    assert orch("--root", str(root), "retry", "bad").returncode == 0
    _, out = cli(root, "next")
    assert out["task"]["task_id"] == "bad" and out["task"]["unblocks"] == 2


def test_nothing_left_to_run_names_the_failed_tasks(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [t("ok"), t("bad", command=py("raise SystemExit(2)"))])
    assert run(root).returncode == 1
    _, out = cli(root, "next")
    assert out["task"] is None
    assert out["reason"].startswith("nothing is left to run: 1 completed, 1 failed")
    assert "bad" in out["reason"]


def test_running_tasks_hold_up_their_dependents(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    wait = py("import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)",
              str(gate))
    root = make_project(tmp_path / "p", [t("slow", command=wait), t("then", deps=("slow",))])
    proc = start_run(root, workers=1)
    try:
        wait_for(lambda: query(root, "SELECT 1 FROM task WHERE task_id = 'slow' "
                                     "AND state = 'running'"), message="slow running")
        code, out = cli(root, "next")
        assert code == 0 and out["task"] is None
        assert [f["task_id"] for f in out["in_flight"]] == ["slow"]
        assert out["in_flight"][0]["worker_id"]
        assert "1 task in flight: slow (running on worker" in out["reason"]
        _, brief = cli(root, "prime")
        assert [f["task_id"] for f in brief["in_flight"]["items"]] == ["slow"]
    finally:
        gate.write_text("go")
        code, _, err = stop(proc)
    assert code == 0, err


# ------------------------------------------------------------------------ prime


def agent_task(task_id: str, deps: tuple[str, ...]) -> dict[str, Any]:
    doc = t(task_id, deps=deps, executor="aider", description="Make the parser strict.\n"
            "Keep the public API.", post=("tests_passing",))
    doc["type"] = "aider"
    doc["execution"]["prompt"] = "Edit src/parser.py:\n- refuse trailing commas\n- add a test"
    doc["context_requirements"] = {"max_context_tokens": 4000,
                                   "required_files": ["src/parser.py"],
                                   "optional_files": ["README.md"]}
    doc["critical"] = True
    return doc


def test_prime_task_shows_the_task_and_its_dependencies_outcomes(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    (root / "src" / "parser.py").write_text("x = 1\n")
    (root / "README.md").write_text("readme\n")
    make_project(root, [
        t("make", command=py("open('made.txt', 'w').write('x')")),
        t("boom", command=py("import sys; print('boom on stderr', file=sys.stderr); "
                             "sys.exit(4)")),
        agent_task("edit", ("make", "boom")),
        t("final", deps=("edit",))],
        toml_extra='\n[rules]\ntests_passing = "python -m pytest -q tests/unit"\n')
    assert run(root).returncode == 1
    proc = orch("--root", str(root), "prime", "--task", "edit")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("# Task edit: edit\n")
    for expected in ("type aider; executor aider; state pending; priority 0; critical",
                     "timeout 20 s per attempt; retries 0 used of 0",
                     "## Description\nMake the parser strict.\nKeep the public API.",
                     "## Prompt\nEdit src/parser.py:\n- refuse trailing commas\n- add a test",
                     "Context budget: 4000 tokens.",
                     "- required (editable): src/parser.py",
                     "- optional (read-only): README.md",
                     "- excluded: **/node_modules/**",
                     "- after the run: tests_passing (`python -m pytest -q tests/unit`)",
                     "- make: completed (attempt 1: succeeded)",
                     "- boom: failed (attempt 1: failed)",
                     "## What depends on it\n1 task depends on it, 1 directly.\n- final (pending)"):
        assert expected in text, expected
    assert text_tokens(text) <= 2000

    code, doc = cli(root, "prime", "--task", "edit")
    assert code == 0 and doc["kind"] == "task" and doc["task"]["task_id"] == "edit"
    deps = {d["task_id"]: d for d in doc["dependencies"]["items"]}
    assert deps["make"]["state"] == "completed" and deps["make"]["outcome"] == "succeeded"
    assert isinstance(deps["make"]["files_modified"], list)
    assert deps["make"]["error"] is None
    assert deps["boom"]["state"] == "failed" and deps["boom"]["error"]
    assert "exit" in deps["boom"]["error"] or "4" in deps["boom"]["error"]
    assert [r["rule"] for r in doc["rules"]["items"]] == ["tests_passing"]
    assert doc["rules"]["items"][0]["command"] == "python -m pytest -q tests/unit"
    assert doc["cut"] == [] and doc["estimated_tokens"] <= doc["max_tokens"] == 2000

    # The project brief names the failure, its mode and the commands to act.
    _, brief = cli(root, "prime")
    failures = brief["failures"]["items"]
    assert [f["task_id"] for f in failures] == ["boom"]
    assert failures[0]["failure_mode"] and failures[0]["blocks"] == 2
    text = orch("--root", str(root), "prime").stdout
    assert "`orch why boom`, then `orch retry boom`" in text
    assert "## Recent failures" in text and "## Workstreams" in text


def many_tasks(n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        ws = f"ws{i % 3}"
        deps = (f"t{i - 3:03d}",) if i >= 3 and i % 2 else ()
        if i >= 9 and i % 5 == 0:
            deps = (*deps, f"t{i - 9:03d}")
        docs.append(t(f"t{i:03d}", ws=ws, deps=deps, priority=i % 4, duration=1 + i % 7))
    return docs


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 tasks in 3 workstreams, loaded (the tests only read it)."""
    return make_project(tmp_path_factory.mktemp("big") / "p", many_tasks(150))


@pytest.mark.parametrize("budget", [120, 300, 1000, 2000])
def test_prime_fits_its_budget_and_says_what_was_cut(big: Path, budget: int) -> None:
    proc = orch("--root", str(big), "prime", "--max-tokens", str(budget))
    assert proc.returncode == 0, proc.stderr
    assert text_tokens(proc.stdout) <= budget
    assert "ready tasks: `orch ready`" in proc.stdout
    code, doc = cli(big, "prime", "--max-tokens", str(budget))
    assert code == 0
    printed = orch("--root", str(big), "--json", "prime", "--max-tokens", str(budget)).stdout
    assert text_tokens(printed) <= budget
    assert doc["estimated_tokens"] <= budget and doc["cut"]
    assert any("ready tasks: `orch ready`" in note for note in doc["cut"])


def test_prime_shows_more_with_a_larger_budget(big: Path) -> None:
    shown = [cli(big, "prime", "--max-tokens", str(n))[1].get("ready", {}).get("shown", 0)
             for n in (300, 1000, 3000)]
    assert shown == sorted(shown) and shown[0] < shown[-1]
    default = orch("--root", str(big), "prime").stdout
    assert text_tokens(default) <= 2000 and "… " in default


def test_prime_task_cuts_a_long_prompt_and_keeps_the_head(tmp_path: Path) -> None:
    doc = t("long_prompt")
    doc["execution"]["prompt"] = "\n".join(f"step {i}: change line {i} of the file"
                                           for i in range(400))
    root = make_project(tmp_path / "p", [doc])
    proc = orch("--root", str(root), "prime", "--task", "long_prompt", "--max-tokens", "300")
    assert proc.returncode == 0, proc.stderr
    assert text_tokens(proc.stdout) <= 300
    assert proc.stdout.startswith("# Task long_prompt")
    assert "step 0: change line 0" in proc.stdout
    assert "more lines of the prompt: `orch show long_prompt --json`" in proc.stdout


def test_prime_too_small_a_budget_names_the_minimum(big: Path) -> None:
    code, out = cli(big, "prime", "--max-tokens", "5")
    assert code == 2 and out["error"]["code"] == "max_tokens_too_small"
    need = int(out["error"]["hint"].split()[2])
    assert need > 5
    code, out = cli(big, "prime", "--max-tokens", str(need))
    assert code == 0 and out["estimated_tokens"] <= need


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", ["0", "-1", "-2000"])
def test_max_tokens_below_one_is_a_usage_error(dag: Path, value: str) -> None:
    code, out = cli(dag, "prime", "--max-tokens", value)
    assert code == 2 and out["error"]["code"] == "invalid_max_tokens"
    assert "--max-tokens" in out["error"]["message"] and value in out["error"]["message"]
    proc = orch("--root", str(dag), "prime", "--task", "long", "--max-tokens", value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_max_tokens_not_a_number_and_huge(dag: Path) -> None:
    code, out = cli(dag, "prime", "--max-tokens", "lots")
    assert code == 2 and "max-tokens" in out["error"]["message"]
    code, out = cli(dag, "prime", "--max-tokens", str(10**30))
    assert code == 0 and out["cut"] == [] and out["max_tokens"] == 10**30
    assert out["ready"]["shown"] == out["ready"]["total"] == 5


def test_unknown_task_and_workstream_and_bad_limit(dag: Path) -> None:
    code, out = cli(dag, "prime", "--task", "nope")
    assert code == 1 and out["error"]["code"] == "unknown_task"
    assert "orch ready" in out["error"]["hint"]
    proc = orch("--root", str(dag), "prime", "--task", "nope")
    assert proc.returncode == 1 and "unknown task: nope" in proc.stderr
    for command in ("ready", "next"):
        code, out = cli(dag, command, "--workstream", "nope")
        assert code == 1 and out["error"]["code"] == "unknown_workstream"
        assert "ws, ws2" in out["error"]["hint"]
    for value in ("0", "-3"):
        code, out = cli(dag, "ready", "--limit", value)
        assert code == 2 and out["error"]["code"] == "invalid_limit"


def test_the_token_estimate_has_one_home() -> None:
    assert aider.estimate_tokens is estimate_tokens
    assert [estimate_tokens(n) for n in (0, 1, 3, 4)] == [0, 1, 1, 2]
    assert text_tokens("é") == 1 and text_tokens("abcd") == 2
    assert json.dumps([1]) and aider.BYTES_PER_TOKEN == 3


def test_unblocks_counts_every_transitive_dependent(big: Path) -> None:
    """The counts of `orch ready` against a plain search of the graph of the task files."""
    import networkx as nx

    graph = nx.DiGraph()
    for doc in many_tasks(150):
        graph.add_node(doc["task_id"])
        graph.add_edges_from((dep, doc["task_id"]) for dep in doc["dependencies"])
    _, out = cli(big, "ready")
    assert out["total"] == len(out["tasks"]) > 50
    assert {r["task_id"]: r["unblocks"] for r in out["tasks"]} == {
        r["task_id"]: len(nx.descendants(graph, r["task_id"])) for r in out["tasks"]}
    assert any(r["unblocks"] > 1 for r in out["tasks"])
