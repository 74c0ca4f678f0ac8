"""What `orch run` shows while it runs: JSON lines with --json, a live display on a terminal,
and only the summary when piped."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from kernel.runtime.progress import LiveProgress, QuietProgress, make_progress
from kernel.runtime.runner import RunOptions, run
from kernel.store.project import Project
from tests.conftest import orch
from tests.e2e import make_project, sleep_cmd, task


def _project(root: Path) -> Path:
    return make_project(root, [task("a", command=sleep_cmd(0.3)),
                               task("b", deps=["a"], command=sleep_cmd(0.3)),
                               task("c", deps=["a"], executor="noop")])


def test_json_run_streams_every_event_then_the_summary(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    proc = orch("--root", str(root), "--json", "run", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    events, summary = lines[:-1], lines[-1]["summary"]
    assert summary["ok"] and summary["counts"] == {"completed": 3} and summary["total"] == 3
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    completed = {e["task_id"] for e in events if e["event"] == "task_completed"}
    assert completed == {"a", "b", "c"}


def test_piped_run_prints_only_the_summary(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    proc = orch("--root", str(root), "run", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "all tasks completed: 3 completed (3 tasks, " + \
        proc.stdout.split("(3 tasks, ")[1].split("\n")[0]
    assert "workstream ws: completed" in proc.stdout
    assert isinstance(make_progress(False, tty=False), QuietProgress)


def test_the_live_display_shows_counts_running_tasks_and_an_eta(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    live = LiveProgress()
    out = io.StringIO()
    live.console = Console(file=out, force_terminal=True, width=100)
    summary = run(Project(root), RunOptions(workers=2), live)
    assert summary.ok
    text = out.getvalue()
    assert "ETA from the plan" in text and "running" in text
    assert "all tasks completed: 3 completed" in text
