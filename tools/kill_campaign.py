"""A kill campaign: SIGKILL workers and `orch run` at random moments while a DAG of real
subprocess tasks runs, restart, and check that the one SQLite file never lied.

    python tools/kill_campaign.py [--tasks 500] [--kills 50] [--workers 4] [--worktrees]
                                  [--window-share 0.3] [--seed N] [--keep DIR] [--json]

Each task's command appends ``start`` and ``end`` lines (task, fencing generation, pid, time)
to a ledger, and holds an exclusive ``flock`` on a per-task lock file for as long as it runs. A
lock is released the moment its holder dies, so an execution that finds the lock taken proves
two executions of one task overlapped, even when one of them was killed: it writes an
``overlap`` line. A share of the kills (``--window-share``) aims at a worker inside the
process-group window (its attempt is open but ``attempt.pgid`` is not committed yet; the
workers run with ``ORCH_FAULTS=after_spawn:sleep=0.3`` to make that window wide).

Afterwards it checks: every task completed; no overlap line; every re-execution explained by a
lost attempt; `orch doctor` exits 0; ``PRAGMA integrity_check`` is ok; ``seq`` is gapless;
``.state/transitions.jsonl`` holds exactly the event table; ``orch replay`` at the end equals
the final state. Exit 0 when everything holds, 1 otherwise. The test suite runs a small
version (tests/test_kill_campaign.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = sys.executable
ORCH = str(Path(sys.executable).parent / "orch")

LEDGER_SCRIPT = """\
import fcntl, os, sys, time
ledger, locks, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
tid, gen = os.environ["ORCH_TASK_ID"], os.environ["ORCH_GENERATION"]
def note(what):
    with open(ledger, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{what} {tid} {gen} {os.getpid()} {time.time():.6f}\\n")
held = open(os.path.join(locks, tid + ".lock"), "a")
try:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    note("overlap")
    fcntl.flock(held, fcntl.LOCK_EX)
note("start")
time.sleep(seconds)
note("end")
"""

TOML = """\
[workers]
heartbeat_seconds = 0.2
unresponsive_after_missed = 3
shutdown_after_unresponsive_seconds = 1
kill_grace_seconds = 0.3
retry_jitter = 0

[run]
tick_seconds = 0.05
worktrees = {worktrees}
"""


def _orch(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCH, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=timeout)


def build(root: Path, n: int, rng: random.Random, worktrees: bool,
          seconds: tuple[float, float] = (0.02, 0.3)) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "orch.toml").write_text(TOML.format(worktrees="true" if worktrees else "false"))
    if worktrees:
        for cmd in (["git", "init", "-q", "-b", "main"],
                    ["git", "-c", "user.email=campaign@example.invalid", "-c",
                     "user.name=campaign", "commit", "-q", "--allow-empty", "-m", "start"]):
            subprocess.run(cmd, cwd=root, check=True)
    _orch(root, "init").check_returncode()
    script = root / "ledger_task.py"
    script.write_text(LEDGER_SCRIPT)
    locks = root / "locks"
    locks.mkdir()
    workstreams = max(1, n // 100)
    for i in range(n):
        ws = f"ws{i % workstreams}"
        same = [j for j in range(max(0, i - 12), i) if j % workstreams == i % workstreams]
        deps = [f"t{j:04d}" for j in rng.sample(same, min(len(same), rng.randint(0, 2)))]
        duration = round(rng.uniform(*seconds), 3)
        command = " ".join(shlex.quote(a) for a in (
            PY, str(script), str(root / "ledger.txt"), str(locks), str(duration)))
        doc = {"schema_version": "2.0.0", "task_id": f"t{i:04d}", "workstream_id": ws,
               "name": f"t{i:04d}", "type": "custom", "dependencies": deps,
               "execution": {"command": command, "timeout_seconds": 60, "max_retries": 20,
                             "retry_delay_seconds": 0.05, "estimated_duration_seconds": 1}}
        path = root / "tasks" / ws / f"t{i:04d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    _orch(root, "load").check_returncode()


def _rows(root: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{root / '.state' / 'kernel.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _start(root: Path, workers: int) -> subprocess.Popen[str]:
    env = {**os.environ, "ORCH_FAULTS": "after_spawn:sleep=0.3"}
    return subprocess.Popen([ORCH, "--root", str(root), "run", "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)


def campaign(root: Path, kills: int, workers: int, window_share: float,
             rng: random.Random, deadline: float) -> dict[str, Any]:
    counts = {"worker": 0, "worker_in_window": 0, "run": 0, "both": 0, "restarts": 0}
    proc = _start(root, workers)
    done = 0
    while done < kills and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.1, 0.8))
        if proc.poll() is not None:
            if proc.returncode == 0:
                break   # everything completed before the campaign ended
            proc = _start(root, workers)
            counts["restarts"] += 1
            continue
        # Aim at running work: wait (a little) until some worker is busy.
        busy: list[int] = []
        window: list[int] = []
        wait_until = time.monotonic() + 10
        while not busy and time.monotonic() < wait_until and proc.poll() is None:
            busy = [int(p) for (p,) in _rows(root, "SELECT pid FROM worker "
                                                   "WHERE state = 'busy'")]
            window = [int(p) for (p,) in _rows(
                root, "SELECT w.pid FROM attempt a JOIN worker w ON w.worker_id = a.worker_id "
                      "WHERE a.finished_at IS NULL AND a.pgid IS NULL AND w.state = 'busy'")]
            if not busy:
                time.sleep(0.02)
        if not busy:
            continue
        roll = rng.random()
        if window and roll < window_share:
            _kill(rng.choice(window))
            counts["worker_in_window"] += 1
        elif roll < 0.7:
            _kill(rng.choice(busy))
            counts["worker"] += 1
        elif roll < 0.85:
            _kill(proc.pid)
            counts["run"] += 1
        else:
            _kill(rng.choice(busy))
            _kill(proc.pid)
            counts["both"] += 1
        done += 1
        if proc.poll() is None and _dead(proc.pid):
            proc.wait()
        if proc.poll() is not None:
            proc.wait()
            proc = _start(root, workers)
            counts["restarts"] += 1
    # Let it finish: restart `orch run` until it ends with everything done.
    for _ in range(20):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            break
        if proc.returncode == 0:
            break
        proc = _start(root, workers)
        counts["restarts"] += 1
    counts["kills"] = done
    return counts


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def read_ledger(root: Path) -> tuple[list[str], dict[str, int]]:
    """The ledger's ``overlap`` lines, and how many times each task started."""
    lines = (root / "ledger.txt").read_text().splitlines() \
        if (root / "ledger.txt").exists() else []
    overlaps = [ln for ln in lines if ln.startswith("overlap")]
    starts: dict[str, int] = {}
    for ln in lines:
        what, tid, *_ = ln.split()
        if what == "start":
            starts[tid] = starts.get(tid, 0) + 1
    return overlaps, starts


def check_store(root: Path, problems: list[str]) -> dict[str, Any]:
    """What must hold of any database, whatever happened to it: `orch doctor` exits 0 (the
    invariants, ``log_agrees_with_tables`` among them), integrity ok, seq gapless, after
    `orch export` ``transitions.jsonl`` holds exactly the event table and ``current.json`` the
    state of every task, and `orch replay` at the last event equals that state. Appends to
    ``problems``; returns the task states and the event count."""
    states = dict(_rows(root, "SELECT task_id, state FROM task"))
    doctor = _orch(root, "--json", "doctor")
    if doctor.returncode != 0:
        problems.append(f"orch doctor exit {doctor.returncode}: {doctor.stdout[-2000:]}")
    integrity = _rows(root, "PRAGMA integrity_check")
    if integrity != [("ok",)]:
        problems.append(f"integrity_check: {integrity}")
    seq_count, seq_max, seq_min = _rows(root, "SELECT COUNT(*), MAX(seq), MIN(seq) FROM event")[0]
    if seq_count and seq_count != seq_max - seq_min + 1:
        problems.append(f"seq not gapless: {seq_count} events, seq {seq_min}..{seq_max}")
    export = _orch(root, "export")
    if export.returncode != 0:
        problems.append(f"orch export exit {export.returncode}: {export.stderr[-500:]}")
        return {"states": states, "events": seq_count}
    log = root / ".state" / "transitions.jsonl"
    exported = [json.loads(x)["seq"] for x in
                (log.read_text().splitlines() if log.exists() else []) if x]
    if seq_count and exported != list(range(seq_min, seq_max + 1)):
        problems.append(f"transitions.jsonl holds {len(exported)} events, the table {seq_count}")
    current = json.loads((root / ".state" / "current.json").read_text())
    viewed = {t["task_id"]: t["state"] for t in current["tasks"]}
    if viewed != states:
        problems.append(f"current.json differs from the task table for "
                        f"{sorted(t for t in states if viewed.get(t) != states[t])[:10]}")
    if seq_count:
        at = _rows(root, "SELECT MAX(timestamp) FROM event")[0][0]
        replay = _orch(root, "--json", "replay", "--at", at)
        if replay.returncode != 0:
            problems.append(f"orch replay exit {replay.returncode}: {replay.stderr[-500:]}")
        else:
            doc = json.loads(replay.stdout)
            replayed = {t: v["state"] for t, v in doc.get("tasks", {}).items()}
            if replayed != states:
                diff = sorted(t for t in states if replayed.get(t) != states[t])
                problems.append(f"replay differs from the final state for {diff[:10]}")
    return {"states": states, "events": seq_count}


def check(root: Path) -> dict[str, Any]:
    problems: list[str] = []
    store = check_store(root, problems)
    states = store["states"]
    not_done = sorted(t for t, s in states.items() if s != "completed")
    if not_done:
        problems.append(f"{len(not_done)} tasks not completed: {not_done[:10]}")
    overlaps, starts = read_ledger(root)
    if overlaps:
        problems.append(f"{len(overlaps)} overlapping executions: {overlaps[:5]}")
    lost = dict(_rows(root, "SELECT task_id, COUNT(*) FROM attempt WHERE outcome = 'lost' "
                            "GROUP BY task_id"))
    unexplained = sorted(t for t, n in starts.items() if n > 1 + lost.get(t, 0))
    if unexplained:
        problems.append(f"re-executions without a lost attempt: {unexplained[:10]}")
    stale = _rows(root, "SELECT COUNT(*) FROM event WHERE event = 'stale_result_rejected'")[0][0]
    return {"tasks": len(states), "executions": sum(starts.values()),
            "re_executions": sum(n - 1 for n in starts.values()),
            "lost_attempts": sum(lost.values()), "overlaps": len(overlaps),
            "stale_results_rejected": stale, "events": store["events"], "problems": problems}



def print_result(result: dict, as_json: bool, ok: str) -> None:
    """A campaign's verdict: one JSON document, or ``key: value`` lines, each problem (the
    entries of ``result["problems"]``) on a ``PROBLEM:`` line of its own, then ``ok`` or
    FAILED."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    for key in sorted(result):
        if key != "problems":
            print(f"{key}: {result[key]}")
    for p in result["problems"]:
        print(f"PROBLEM: {p}")
    print(ok if not result["problems"] else "FAILED")

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worktrees", action="store_true")
    parser.add_argument("--window-share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="project directory to keep")
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    base = args.keep or Path(tempfile.mkdtemp(prefix="orch-kill-campaign-"))
    root = base / "project"
    started = time.monotonic()
    build(root, args.tasks, rng, args.worktrees)
    counts = campaign(root, args.kills, args.workers, args.window_share, rng,
                      started + args.max_seconds)
    result = {"seed": seed, "project": str(root), "worktrees": args.worktrees, **counts,
              **check(root), "seconds": round(time.monotonic() - started, 1)}
    print_result(result, args.json, "OK: the database never lied")
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
