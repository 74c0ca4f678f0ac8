"""Smoke-test the command line: python -m textstats README.md must print its counts.

The first attempt fails on purpose, the way a network hiccup or a flaky test does: it leaves a
marker in $ORCH_ROOT/@FLAKY_MARKER@ (outside the worktree, so it survives between attempts)
and exits 1. orch retries the task after its retry_delay_seconds; the next attempt finds the
marker and runs the real check. Delete the marker to see it fail once more.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def say(message: str) -> None:
    task = os.environ.get("ORCH_TASK_ID", "-")
    attempt = os.environ.get("ORCH_ATTEMPT", "-")
    print(f"[{task} attempt {attempt}] {message}", flush=True)


marker = Path(os.environ.get("ORCH_ROOT", ".")) / '@FLAKY_MARKER@'
if not marker.exists():
    time.sleep(0.5)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("the first attempt of smoke-test-cli failed here on purpose\n")
    say("connection reset by peer (a simulated transient failure): exit 1, orch will retry")
    sys.exit(1)

run = subprocess.run([sys.executable, "-m", "textstats", "README.md"],
                     capture_output=True, text=True, check=False)
say(f"python -m textstats README.md -> exit {run.returncode}: {run.stdout.strip()}")
if run.returncode != 0 or "README.md" not in run.stdout:
    sys.exit(run.stderr or "the command line did not print the counts")
