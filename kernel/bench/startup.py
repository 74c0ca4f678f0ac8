"""startup: the wall clock of ``orch --version``, ``orch --help`` and ``orch status`` as typed.

Public API:
    ``figures(ctx) -> list[Figure]``; ``orch_argv() -> tuple[list[str], str]`` (how this
    installation's ``orch`` is started, and a note when it is not the console script);
    ``wall_medians(commands, repeat, cwd) -> dict[str, float]``.

Stability Guarantees:
    Each command is a fresh process started the way a user starts it: the ``orch`` console
    script beside this interpreter (``python -m kernel`` when there is none, and the note says
    so), in the environment of ``orch bench``, output captured. ``orch status`` runs in a
    freshly initialised project (``orch init``, nothing loaded). Reference: ``python -c pass``
    with the same interpreter, measured in the same rounds: the ratio is how many interpreter
    start-ups a command costs. The commands are run round-robin, ``repeat`` rounds (11; 3
    with ``--quick``) after one warm-up round that is not counted, and each figure is the
    median of its rounds in milliseconds. Goals: ``--version`` and ``--help`` <= 300 ms,
    ``status`` <= 600 ms (issue 12; on an idle machine). When bytecode caching is off
    (``PYTHONDONTWRITEBYTECODE``) every start compiles orch's modules again, and the note says
    so.

Integration Points:
    Registered as ``startup`` in ``kernel.bench.BENCHMARKS``; docs/PERFORMANCE.md ("Start-up")
    explains what each command imports. tests/test_cli_startup.py checks the structure (which
    modules ``--version`` imports), never these timings.

Dependencies:
    ``kernel.bench``, ``kernel.store.project``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kernel.bench import BenchContext, Figure, at_most, figure

NAME = "startup"
FAST_GOAL = at_most(300.0, "<= 300 ms")
STATUS_GOAL = at_most(600.0, "<= 600 ms")
REFERENCE = "python -c pass"


def orch_argv() -> tuple[list[str], str]:
    """The ``orch`` of this installation: its console script, else ``python -m kernel``."""
    script = Path(sys.executable).parent / "orch"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], ""
    return [sys.executable, "-m", "kernel"], "no orch console script beside the interpreter: " \
        "timed as python -m kernel; "


def wall_medians(commands: dict[str, list[str]], repeat: int, cwd: Path) -> dict[str, float]:
    """Median wall-clock seconds of each command over ``repeat`` round-robin rounds, after one
    warm-up round (the page cache, the bytecode files). A command that fails raises."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_no in range(repeat + 1):
        for name, argv in commands.items():
            start = time.perf_counter()
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[-300:]}")
            if round_no:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def figures(ctx: BenchContext) -> list[Figure]:
    from kernel.store.project import init_project

    repeat = 3 if ctx.quick else 11
    project = ctx.directory(NAME) / "project"
    project.mkdir()
    init_project(project)
    orch, how = orch_argv()
    commands = {REFERENCE: [sys.executable, "-c", "pass"],
                "orch --version": [*orch, "--version"],
                "orch --help": [*orch, "--help"],
                "orch status": [*orch, "status"]}
    ctx.say(f"{NAME}: {', '.join(commands)}, {repeat} rounds")
    medians = wall_medians(commands, repeat, project)
    reference_ms = medians.pop(REFERENCE) * 1000
    cache = ("bytecode caching off (PYTHONDONTWRITEBYTECODE): every start compiles orch's "
             "modules; " if sys.flags.dont_write_bytecode
             or os.environ.get("PYTHONDONTWRITEBYTECODE") else "")
    rows = []
    for name, seconds in medians.items():
        goal = STATUS_GOAL if name == "orch status" else FAST_GOAL
        note = (f"{how}{cache}median of {repeat} runs; reference: {REFERENCE} "
                f"({reference_ms:.0f} ms)" + ("; in a freshly initialised project"
                                              if name == "orch status" else ""))
        rows.append(figure(NAME, name, seconds * 1000, "ms", reference=reference_ms,
                           goal=goal, note=note))
    return rows
