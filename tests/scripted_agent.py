"""A scripted agent CLI for the tests of the generic ``agent`` executor: a real program that
edits files as its script says, like an agent would.

Usage: ``python scripted_agent.py SCRIPT.json --message-file PROMPT [--model M] [FILE ...]``.
The script is a list of steps, one per attempt (``$ORCH_ATTEMPT``, the last step repeats).
A step may hold ``write`` ({path: content}, relative to the working directory), ``delete``
([paths]), ``say`` (text printed on stdout), ``report`` (a JSON object written to
``$ORCH_AGENT_REPORT``), ``sleep`` (seconds, before exiting) and ``exit`` (the exit code).
Every start is appended as one JSON line to ``SCRIPT.json.calls``: the argv, the environment's
variable names, the message it read — an absent file proves the agent never started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("script")
    parser.add_argument("--message-file", required=True)
    parser.add_argument("--model")
    parser.add_argument("files", nargs="*")
    args = parser.parse_intermixed_args()
    steps = json.loads(Path(args.script).read_text())
    attempt = int(os.environ.get("ORCH_ATTEMPT", "1"))
    step = steps[min(attempt, len(steps)) - 1]
    message = Path(args.message_file).read_text()
    with open(args.script + ".calls", "a") as fh:
        fh.write(json.dumps({"argv": sys.argv[1:], "env": sorted(os.environ),
                             "message": message, "cwd": os.getcwd(),
                             "pgid": os.getpgid(0)}) + "\n")
    for path, content in (step.get("write") or {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    for path in step.get("delete") or []:
        Path(path).unlink()
    if step.get("say"):
        print(step["say"], flush=True)
    if "report" in step:
        Path(os.environ["ORCH_AGENT_REPORT"]).write_text(json.dumps(step["report"]))
    time.sleep(float(step.get("sleep", 0)))
    return int(step.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main())
