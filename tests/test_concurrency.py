"""A short concurrency campaign (tools/concurrency_campaign.py) in the test suite: 16 processes
at once (workers joining by hand, cancel, retry, skip, status, export, backup and plain sqlite3
readers) against one running `orch run` for 30 seconds; then no task ran twice at once (the
ledger's flock per task), no process printed a busy error or a traceback, every operator
command applied or refused with a reason, and `orch doctor`, gapless seq, the views and
`orch replay` agree with the database. The longer run's figures are in
docs/operations/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_sixteen_processes_against_one_run_find_nothing_wrong(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "concurrency_campaign.py"), "--seconds", "30",
         "--tasks", "200", "--seed", "18", "--keep", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["problems"] == [], json.dumps(result, indent=2) + proc.stderr[-3000:]
    assert proc.returncode == 0
    assert result["processes_at_once"] == 16 and result["overlaps"] == 0
    kinds = {"worker", "cancel", "retry", "skip", "status", "export", "backup", "reader", "run"}
    assert set(result["commands"]) == kinds, result["commands"]
    assert result["executions"] > 0 and result["sqlite3_reads"] > 0
    assert sum(result["outcomes"].values()) > 0
