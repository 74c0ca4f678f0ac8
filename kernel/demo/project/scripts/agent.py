"""Scripted stand-ins for a coding agent: the edits the tasks in tasks/word-count/ make.

Each step says what it does, takes a moment (as an agent would), and is idempotent: run twice,
it leaves the file as it is. orch runs them in the workstream's git worktree and commits what
they changed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# How long a step "thinks" (DEMO_THINK_SECONDS overrides it; 0 for no pause).
THINK_SECONDS = float(os.environ.get("DEMO_THINK_SECONDS", "@THINK_SECONDS@"))


def say(message: str) -> None:
    task = os.environ.get("ORCH_TASK_ID", "-")
    attempt = os.environ.get("ORCH_ATTEMPT", "-")
    print(f"[{task} attempt {attempt}] {message}", flush=True)


def think(what: str) -> None:
    say(what)
    time.sleep(THINK_SECONDS)


def write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
    say(f"wrote {path}")


def append(path: str, block: str) -> None:
    text = Path(path).read_text(encoding="utf-8")
    if block.strip() in text:
        say(f"{path} already has it")
        return
    Path(path).write_text(text.rstrip("\n") + "\n" + block, encoding="utf-8")
    say(f"edited {path}")


def replace(path: str, old: str, new: str) -> None:
    text = Path(path).read_text(encoding="utf-8")
    if new in text:
        say(f"{path} already has it")
        return
    if old not in text:
        sys.exit(f"{path} does not contain {old!r}: cannot edit it")
    Path(path).write_text(text.replace(old, new, 1), encoding="utf-8")
    say(f"edited {path}")
