"""A concurrency campaign: 16 processes at once against one running `orch run` (workers that
join by hand, cancel, retry, skip, status, export, backup and plain sqlite3 readers), then a
check that nothing was claimed twice, no SQLite busy error escaped and every command either
applied or refused with a reason.

    python tools/concurrency_campaign.py [--seconds 120] [--tasks 400] [--seed N] [--keep DIR]
                                         [--json]

The project is the kill campaign's (tools/kill_campaign.py): real subprocess tasks that write
``start``/``end`` lines to a ledger while holding a flock per task, so two executions of one
task at once leave an ``overlap`` line. `orch run --forever --workers 2` runs it; beside it, for
``--seconds``, 16 processes run at any moment, each looping on one kind of command:

    5 x `orch worker`  (long-lived; Ctrl-C at the end)
    2 x `orch cancel TASK...`, 2 x `orch retry TASK...`, 1 x `orch skip TASK...`
    2 x `orch status`, 1 x `orch export`, 1 x `orch backup DEST`
    2 x a plain sqlite3 reader (Python's sqlite3 module, not orch) counting states and events

Verdict (exit 0 when all hold): no ``overlap`` line in the ledger; no process's stderr (nor a
worker log) holds ``database is locked``, ``BusyError`` or ``Traceback``; every operator command
exited 0 with each task it named either changed or skipped with a reason, or exited 1 with a
JSON error that has a message; the workers and the run stopped cleanly; and after the run the
store checks of the kill campaign (``check_store``: `orch doctor`, integrity, gapless seq, the
views after `orch export` equal to the tables, `orch replay`) find nothing.
tests/test_concurrency.py runs a short version (16 processes, ~30 s).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.kill_campaign import (  # noqa: E402
    ORCH,
    _rows,
    build,
    check_store,
    print_result,
    read_ledger,
)

BAD = ("database is locked", "BusyError", "Traceback")
#: kind -> how many processes loop on it (16 in all)
MIX = {"worker": 5, "cancel": 2, "retry": 2, "skip": 1, "status": 2, "export": 1, "backup": 1,
       "reader": 2}
CONFIG = """\
[run]
tick_seconds = 0.05
worktrees = false
"""
READER = """\
import sqlite3, sys, time
db, until = sys.argv[1], float(sys.argv[2])
reads = 0
while time.time() < until:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.execute("SELECT state, COUNT(*) FROM task GROUP BY state").fetchall()
    conn.execute("SELECT MAX(seq), COUNT(*) FROM event").fetchone()
    conn.close()
    reads += 1
print(reads)
"""


class Tally:
    """What the processes did, and what went wrong, shared by the looping threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commands: dict[str, int] = {}
        self.outcomes: dict[str, int] = {"changed": 0, "skipped": 0, "refused": 0}
        self.problems: list[str] = []
        self.processes = 0
        self.reads = 0
        self.refusals: list[str] = []   # a sample of the reasons given

    def note(self, kind: str, problem: str | None = None, **counts: int) -> None:
        with self.lock:
            self.commands[kind] = self.commands.get(kind, 0) + 1
            self.processes += 1
            for key, value in counts.items():
                self.outcomes[key] = self.outcomes.get(key, 0) + value
            if problem:
                self.problems.append(problem)


def _bad_output(kind: str, text: str) -> str | None:
    found = [b for b in BAD if b in text]
    return f"{kind}: {found} in its output: {text[-800:]}" if found else None


def _operator(root: Path, kind: str, tasks: list[str], rng: random.Random,
              tally: Tally) -> None:
    named = rng.sample(tasks, rng.randint(1, 3))
    proc = subprocess.run([ORCH, "--root", str(root), "--json", kind, *named],
                          capture_output=True, text=True, timeout=120)
    problem = _bad_output(kind, proc.stdout + proc.stderr)
    counts = {"changed": 0, "skipped": 0, "refused": 0}
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        doc = None
    if doc is None:
        problem = problem or f"{kind} {named}: exit {proc.returncode}, no JSON: {proc.stderr}"
    elif proc.returncode == 0:
        changed = {c["task_id"] for c in doc.get("changed", [])}
        skipped = {s["task_id"] for s in doc.get("skipped", []) if s.get("reason")}
        if not set(named) <= changed | skipped:
            problem = problem or f"{kind} {named}: neither applied nor refused: {doc}"
        counts = {"changed": len(changed), "skipped": len(skipped), "refused": 0}
    elif proc.returncode == 1 and doc.get("error", {}).get("message"):
        counts["refused"] = 1
        if len(tally.refusals) < 5:
            tally.refusals.append(f"{kind} {named}: {doc['error']['message']}")
    else:
        problem = problem or f"{kind} {named}: exit {proc.returncode}: {proc.stdout[-800:]}"
    tally.note(kind, problem, **counts)


def _viewer(root: Path, kind: str, n: int, tally: Tally) -> None:
    args = {"status": ["--json", "status"], "export": ["export"],
            "backup": ["backup", str(root.parent / "backups" / f"b{threading.get_ident()}-{n}.db")]}
    proc = subprocess.run([ORCH, "--root", str(root), *args[kind]], capture_output=True,
                          text=True, timeout=120)
    problem = _bad_output(kind, proc.stdout + proc.stderr)
    if proc.returncode != 0:
        problem = problem or f"{kind}: exit {proc.returncode}: {proc.stderr[-800:]}"
    if kind == "backup":
        shutil.rmtree(root.parent / "backups", ignore_errors=True)
        (root.parent / "backups").mkdir(exist_ok=True)
    tally.note(kind, problem)


def _reader(root: Path, until: float, tally: Tally) -> None:
    proc = subprocess.run([sys.executable, "-c", READER, str(root / ".state" / "kernel.db"),
                           str(until)], capture_output=True, text=True, timeout=until - time.time()
                          + 120)
    problem = _bad_output("reader", proc.stderr)
    if proc.returncode != 0:
        problem = problem or f"reader: exit {proc.returncode}: {proc.stderr[-800:]}"
    with tally.lock:
        tally.reads += int(proc.stdout.strip() or 0)
    tally.note("reader", problem)


def _loop(root: Path, kind: str, tasks: list[str], seed: int, until: float,
          tally: Tally) -> None:
    rng = random.Random(seed)
    n = 0
    while time.time() < until:
        n += 1
        if kind in ("cancel", "retry", "skip"):
            _operator(root, kind, tasks, rng, tally)
        elif kind == "reader":
            _reader(root, until, tally)
        else:
            _viewer(root, kind, n, tally)
        time.sleep(rng.uniform(0.05, 0.3))


def _start_workers(root: Path, count: int, logs: Path) -> list[tuple[subprocess.Popen[bytes],
                                                                     Path]]:
    started = []
    for i in range(count):
        err = logs / f"joined-worker-{i}.err"
        with open(err, "wb") as f:
            started.append((subprocess.Popen(
                [ORCH, "--root", str(root), "worker", "--name", f"joined-{i}"],
                stdout=subprocess.DEVNULL, stderr=f, start_new_session=True), err))
    return started


def _stop(proc: subprocess.Popen[Any], kind: str, err: Path | str, tally: Tally) -> None:
    # SIGTERM stops both the way Ctrl-C does; SIGINT would be ignored when this campaign was
    # started in the background by a shell (its children inherit SIGINT ignored).
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        tally.problems.append(f"{kind} pid {proc.pid} did not stop within 60 s of SIGTERM")
    text = Path(err).read_text(errors="replace") if isinstance(err, Path) else err
    problem = _bad_output(f"{kind} pid {proc.pid}", text)
    if code not in (0, 1, 130, 143, -signal.SIGTERM):
        problem = problem or f"{kind} pid {proc.pid} exit {code}: {text[-800:]}"
    tally.note(kind, problem)


def campaign(root: Path, seconds: float, seed: int) -> Tally:
    tally = Tally()
    tasks = [t for (t,) in _rows(root, "SELECT task_id FROM task ORDER BY task_id")]
    logs = root.parent / "logs"
    logs.mkdir(exist_ok=True)
    (root.parent / "backups").mkdir(exist_ok=True)
    run_err = logs / "run.err"
    with open(run_err, "wb") as f:
        run = subprocess.Popen([ORCH, "--root", str(root), "run", "--forever", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    time.sleep(1.0)
    until = time.time() + seconds
    workers = _start_workers(root, MIX["worker"], logs)
    threads = [threading.Thread(target=_loop, args=(root, kind, tasks, seed * 100 + i, until,
                                                    tally))
               for i, kind in enumerate(k for k, n in MIX.items() if k != "worker"
                                        for _ in range(n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for proc, err in workers:
        _stop(proc, "worker", err, tally)
    _stop(run, "run", run_err, tally)
    for log in sorted((root / ".state" / "logs").glob("worker-*.log")):
        problem = _bad_output(f"log {log.name}", log.read_text(errors="replace"))
        if problem:
            tally.problems.append(problem)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="directory to keep")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    base = args.keep or Path(tempfile.mkdtemp(prefix="orch-concurrency-campaign-"))
    root = base / "project"
    started = time.monotonic()
    build(root, args.tasks, random.Random(seed), False, seconds=(0.3, 1.5))
    # The kill campaign's heartbeat settings declare a worker lost after ~1 s without a
    # heartbeat; 16 processes on a small machine stall longer than that. orch's defaults here.
    (root / "orch.toml").write_text(CONFIG)
    tally = campaign(root, args.seconds, seed)
    problems = list(tally.problems)
    overlaps, starts = read_ledger(root)
    if overlaps:
        problems.append(f"{len(overlaps)} overlapping executions (double claims): {overlaps[:5]}")
    store = check_store(root, problems)
    states: dict[str, int] = {}
    for state in store["states"].values():
        states[state] = states.get(state, 0) + 1
    result = {"seed": seed, "project": str(root), "processes_at_once": sum(MIX.values()),
              "processes_run": tally.processes, "commands": tally.commands,
              "outcomes": tally.outcomes, "refusals": tally.refusals, "sqlite3_reads": tally.reads,
              "executions": sum(starts.values()), "overlaps": len(overlaps),
              "events": store["events"], "final_states": states, "problems": problems,
              "campaign_seconds": args.seconds,
              "seconds": round(time.monotonic() - started, 1)}
    print_result(result, args.json, "OK: no double claim, no uncaught busy error")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
