"""What `orch run` shows while it runs: one JSON document with --json, JSON lines with --jsonl,
a live display on a terminal (failures as they happen, elapsed time, an ETA from history,
cleared at the end), and, piped, failures as they happen then the summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from kernel.runtime.progress import LiveProgress, QuietProgress, eta, make_progress
from kernel.runtime.runner import RunOptions, run
from kernel.store.project import Project
from tests.conftest import orch
from tests.e2e import make_project, py, sleep_cmd, task

FAILING = py("import sys; print('the widget is broken', file=sys.stderr); sys.exit(4)")


def _project(root: Path, *extra: dict) -> Path:
    return make_project(root, [task("a", command=sleep_cmd(0.3)),
                               task("b", deps=["a"], command=sleep_cmd(0.3)),
                               task("c", deps=["a"], executor="noop"), *extra])


def test_json_run_prints_one_document_the_summary_with_the_events(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    proc = orch("--root", str(root), "--json", "run", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)   # one document: json.loads fails on a stream
    assert doc["ok"] and doc["counts"] == {"completed": 3} and doc["total"] == 3
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert {e["task_id"] for e in doc["events"] if e["event"] == "task_completed"} == {
        "a", "b", "c"}
    # The events committed after the last tick (the workers' shutdown) are there too.
    assert doc["events"][-1]["event"] == "worker_shutdown"


def test_jsonl_run_streams_every_event_then_the_summary(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    proc = orch("--root", str(root), "run", "--workers", "2", "--jsonl")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    events, summary = lines[:-1], lines[-1]["summary"]
    assert summary["ok"] and summary["counts"] == {"completed": 3}
    assert {e["task_id"] for e in events if e.get("event") == "task_completed"} == {
        "a", "b", "c"}
    both = orch("--root", str(root), "--json", "run", "--jsonl")
    assert both.returncode == 2 and json.loads(both.stdout)["error"]["code"] == "usage"


def test_piped_run_prints_failures_as_they_happen_then_the_summary(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", task("bad", command=FAILING))
    proc = orch("--root", str(root), "run", "--workers", "2")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == ("✗ bad failed (attempt 1): exit code 4: the widget is broken "
                        "-> failed")
    assert lines[1].startswith("not every task completed: 3 completed, 1 failed (4 tasks, ")
    assert isinstance(make_progress("text", tty=False), QuietProgress)


def test_a_run_without_tasks_says_so(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [])
    proc = orch("--root", str(root), "run", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("nothing to run: no tasks loaded in scope")
    assert "all tasks completed" not in proc.stdout


def test_the_live_display_shows_failures_elapsed_and_clears_itself(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", task("bad", command=FAILING))
    live = LiveProgress()
    out = io.StringIO()
    live.console = Console(file=out, force_terminal=True, color_system=None, width=100)
    summary = run(Project(root), RunOptions(workers=2), live)
    assert not summary.ok
    text = out.getvalue()
    assert "elapsed" in text and "running" in text
    assert "✗ bad failed (attempt 1): exit code 4: the widget is broken -> failed" in text
    # The first run has no history: no made-up figure (60 s a task used to be assumed).
    assert "ETA: no estimates yet" in text
    # The live region is erased (cursor up + erase line) before the summary is printed.
    tail = text[text.rindex("\x1b[2K"):]
    assert "not every task completed: 3 completed, 1 failed" in tail
    assert "elapsed" not in tail


def test_the_eta_comes_from_history(tmp_path: Path) -> None:
    """No history: no figure. After ws1 ran, ws2's task (never run) is estimated from the
    mean of every succeeded attempt."""
    root = make_project(tmp_path / "p", [task("a", ws="ws1", command=sleep_cmd(0.3)),
                                         task("b", ws="ws2", command=sleep_cmd(0.3))])
    project = Project(root)
    with project.open(readonly=True) as conn:
        before = eta(conn, 2)
    assert before.seconds is None and before.left == 2
    assert before.text() == "ETA: no estimates yet (2 tasks left, no history)"
    assert run(project, RunOptions(workers=1, workstream="ws1"), QuietProgress()).ok
    with project.open(readonly=True) as conn:
        after = eta(conn, 1)
        mean = conn.execute(
            "SELECT AVG((julianday(finished_at) - julianday(started_at)) * 86400.0) "
            "FROM attempt WHERE outcome = 'succeeded'").fetchall()[0][0]
    assert after.left == 1 and after.seconds is not None and mean >= 0.3
    assert abs(after.seconds - mean) < 1e-6
    assert after.text() == f"ETA ~{mean:.0f} s from history (1 task left)"
