"""A storage-fault campaign: real `orch` commands run over an SQLite VFS that fails a chosen
read, write, sync, lock or truncate call (kernel/bench/faultvfs.py), one random fault per
round; after each, the database must be sound and a plain `orch run` must finish the work.

    python tools/fault_campaign.py [--rounds 40] [--seed N] [--keep DIR] [--json]

Each round copies a project of the kill campaign (tools/kill_campaign.py: ledger tasks that
prove no task ran twice at once), picks a command (`orch load` of a new task, `cancel`,
`skip`, `retry`, `export`, `status`, `backup`, or `run --workers 2`) and a fault
(``KIND:ERROR:nth=N[:times=0]:file=F`` for ``ORCH_VFS_FAULTS``), and runs the command over the
faulty VFS. The command must end in exit 0 (the fault was retried or never reached), or exit
1 or 3 with a JSON error that has a message and a hint and is not ``database_error`` (orch's
"this is a bug"), and never print a traceback. Then, without the fault, the kill campaign's
checks (``check``: `orch doctor` with its invariants, integrity, gapless seq, the views after
`orch export` equal to the tables, `orch replay`; every task completed after a clean
`orch run`, no overlap in the ledger, every re-execution explained by a lost attempt) must
find nothing. Exit 0 when every round passed. tests/test_faults.py holds the fixed scenarios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.bench.faultvfs import ALLOWED, KINDS  # noqa: E402
from tools.kill_campaign import _orch, _rows, build, check  # noqa: E402

PY = sys.executable
COMMANDS = ["load", "cancel", "skip", "retry", "export", "status", "backup", "run"]


def _args(command: str, root: Path, rng: random.Random, tasks: int) -> list[str]:
    picks = [f"t{rng.randrange(tasks):04d}" for _ in range(rng.randint(1, 3))]
    if command == "load":
        doc = {"schema_version": "2.0.0", "task_id": "extra", "workstream_id": "ws0",
               "name": "extra", "type": "custom", "execution": {"command": "true"}}
        (root / "tasks" / "ws0" / "extra.json").write_text(json.dumps(doc))
        return ["load"]
    if command in ("cancel", "skip", "retry"):
        return [command, *picks]
    if command == "backup":
        return ["backup", str(root.parent / "round.bak")]
    if command == "run":
        return ["run", "--workers", "2"]
    return [command]


def _fault(command: str, rng: random.Random) -> str:
    kind = rng.choice(KINDS)
    error = rng.choice(ALLOWED[kind])
    nth = rng.randint(1, 150 if command == "run" else 6)
    times = "0" if rng.random() < 0.25 else "1"
    where = rng.choice(["db", "wal", "any", "any"])
    return f"{kind}:{error}:nth={nth}:times={times}:file={where}"


def _last_document(stdout: str) -> dict[str, Any] | None:
    lines = stdout.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                found: dict[str, Any] = json.loads("\n".join(lines[i:]))
                return found
            except json.JSONDecodeError:
                continue
    return None


def one_round(template: Path, base: Path, n: int, rng: random.Random,
              tasks: int) -> dict[str, Any]:
    root = base / f"round-{n}" / "project"
    (template / "ledger.txt").unlink(missing_ok=True)   # the tasks write the template's ledger
    shutil.copytree(template, root, symlinks=True)
    (root / "ledger.txt").unlink(missing_ok=True)
    (root / "ledger.txt").symlink_to(template / "ledger.txt")
    command = rng.choice(COMMANDS)
    fault = _fault(command, rng)
    report = root.parent / "injected.txt"
    env = {**os.environ, "ORCH_VFS_FAULTS": fault, "ORCH_VFS_REPORT": str(report)}
    proc = subprocess.run([PY, "-m", "kernel.bench.faultvfs", "--root", str(root), "--json",
                           *_args(command, root, rng, tasks)], capture_output=True, text=True,
                          timeout=600, env=env)
    problems: list[str] = []
    if "Traceback" in proc.stdout + proc.stderr:
        problems.append(f"a traceback: {proc.stderr[-1500:]}")
    doc = _last_document(proc.stdout)
    error = (doc or {}).get("error") if proc.returncode else None
    if proc.returncode not in (0, 1, 3):
        problems.append(f"exit {proc.returncode}")
    elif proc.returncode and not (error and error.get("message") and error.get("hint")
                                  and error.get("code") != "database_error"):
        problems.append(f"exit {proc.returncode} without a clear error: {proc.stdout[-800:]}")
    injected = sum(int(x) for x in report.read_text().split()) if report.exists() else 0
    cancelled = [t for (t,) in _rows(root, "SELECT task_id FROM task WHERE state = 'cancelled'")]
    if cancelled:   # what the round's `orch cancel` applied: given another chance
        _orch(root, "retry", *cancelled).check_returncode()
    drained = _orch(root, "run", "--workers", "2")
    if drained.returncode != 0:
        problems.append(f"the clean `orch run` after the fault exit {drained.returncode}: "
                        f"{drained.stderr[-800:]}")
    verdict = check(root)
    problems += verdict["problems"]
    if not problems:
        shutil.rmtree(root.parent)
    return {"round": n, "command": command, "fault": fault, "exit": proc.returncode,
            "error": (error or {}).get("code"), "injected": injected, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="directory to keep")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    base = args.keep or Path(tempfile.mkdtemp(prefix="orch-fault-campaign-"))
    started = time.monotonic()
    template = base / "template"
    build(template, args.tasks, rng, False)
    rounds = [one_round(template, base, n, rng, args.tasks) for n in range(args.rounds)]
    failed = [r for r in rounds if r["problems"]]
    exits: dict[str, int] = {}
    for r in rounds:
        key = f"exit {r['exit']}" + (f" {r['error']}" if r["error"] else "")
        exits[key] = exits.get(key, 0) + 1
    result = {"seed": seed, "rounds": len(rounds),
              "rounds_with_a_fault_injected": sum(1 for r in rounds if r["injected"]),
              "faults_injected": sum(r["injected"] for r in rounds), "outcomes": exits,
              "failed": failed, "seconds": round(time.monotonic() - started, 1)}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key in sorted(result):
            if key != "failed":
                print(f"{key}: {result[key]}")
        for r in failed:
            print(f"PROBLEM in round {r['round']} ({r['command']} under {r['fault']}): "
                  f"{r['problems']}")
        print("OK: every fault ended clearly and left a sound database" if not failed
              else "FAILED")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
