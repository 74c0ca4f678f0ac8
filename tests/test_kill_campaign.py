"""A small kill campaign (tools/kill_campaign.py) in the test suite: workers and `orch run`
SIGKILLed at random moments, some inside the process-group window, and then every promise
checked: all tasks completed, no two executions of a task overlapped (a flock per task proves
it even for killed executions), every re-execution explained by a lost attempt, `orch doctor`
clean, integrity ok, seq gapless, transitions.jsonl equal to the event table, replay equal to
the final state. The full campaign (>= 50 kills over >= 500 tasks) is run by hand; its last
figures are in docs/operations/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("worktrees", [False, True])
def test_a_small_kill_campaign_finds_nothing_wrong(tmp_path: Path, worktrees: bool) -> None:
    args = [sys.executable, str(REPO / "tools" / "kill_campaign.py"), "--tasks", "40",
            "--kills", "6", "--workers", "3", "--seed", "7" if worktrees else "11",
            "--keep", str(tmp_path), "--json", "--max-seconds", "400"]
    if worktrees:
        args.append("--worktrees")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["problems"] == [], json.dumps(result, indent=2) + proc.stderr[-3000:]
    assert proc.returncode == 0
    assert result["kills"] == 6 and result["tasks"] == 40
    assert result["overlaps"] == 0
