"""subprocess: tasks that run a real command (``true``), against ``xargs -P``.

Public API:
    ``figures(ctx) -> list[Figure]``; ``XargsRun``; ``xargs_run(n_tasks, parallel) -> XargsRun
    | None``.

Stability Guarantees:
    2,000 (``--quick``: 60) independent tasks whose command is ``true`` (the default
    ``subprocess`` executor: no shell, own process group, output appended to the task's log),
    run by ``orch run --workers 8 --no-worktrees`` in a plain directory, started as a user
    starts it. Reference: ``xargs -P 8 -n 1 true`` fed the 2,000 task ids (one ``true``
    process per line; ``true`` ignores its argument), its wall clock from exec to exit and its
    CPU (``os.wait4``: xargs and every ``true``). Figures: end to end, tasks / the wall clock
    of ``orch run`` (exec to exit) against tasks / xargs's wall clock (goal: within 2x, a ratio
    >= 0.5); the same over orch's span (first ``task_started`` to last ``task_completed``,
    informational); the span and the wall clock; CPU per task of orch run and all its
    processes, against xargs's (informational).

    ``subprocess-git`` (``git_figures``): the same tasks in a git repository (``git init -b
    main``, ``.state/`` ignored, everything committed), run by ``orch run --workers 8`` as typed,
    so the workstream runs in its git worktree and each finished task goes through the
    worktree's group commit (kernel.runtime.worktree); its branch is merged at the end. Same
    xargs reference; goal: within 3x (a ratio >= 0.33).

Integration Points:
    Registered as ``subprocess`` and ``subprocess-git`` in ``kernel.bench.BENCHMARKS``.

Dependencies:
    ``kernel.bench``, ``kernel.bench.harness``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from kernel.bench import BenchContext, Figure, Goal, at_least, figure, unavailable
from kernel.bench.harness import RunResult, noop_project, orch_run, span_rows

NAME = "subprocess"
GOAL = at_least(0.5, ">= 0.50x reference (within 2x)", on="ratio")
GIT_NAME = "subprocess-git"
GIT_GOAL = at_least(1 / 3, ">= 0.33x reference (within 3x)", on="ratio")


@dataclass
class XargsRun:
    tasks: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / max(self.wall_seconds, 1e-6)

    @property
    def cpu_ms_per_task(self) -> float:
        return self.cpu_seconds * 1000 / max(self.tasks, 1)


def xargs_run(n_tasks: int, parallel: int) -> XargsRun | None:
    xargs = shutil.which("xargs")
    if xargs is None or shutil.which("true") is None:
        return None
    lines = "".join(f"t-{i}\n" for i in range(n_tasks)).encode()
    start = time.perf_counter()
    proc = subprocess.Popen([xargs, "-P", str(parallel), "-n", "1", "true"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None
        proc.stdin.write(lines)
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"xargs exited {proc.returncode}")
    return XargsRun(n_tasks, elapsed, usage.ru_utime + usage.ru_stime)


def figures(ctx: BenchContext) -> list[Figure]:
    s = ctx.sizes
    base = ctx.directory(NAME)
    ctx.say(f"{NAME}: {s.subprocess_tasks:,} tasks running `true`, "
            f"{s.subprocess_workers} workers")
    project = noop_project(base / "project", s.subprocess_tasks, executor=None,
                           command="true")
    return _against_xargs(ctx, NAME, GOAL, orch_run(ctx, project, s.subprocess_workers))


def git_figures(ctx: BenchContext) -> list[Figure]:
    s = ctx.sizes
    git = shutil.which("git")
    e2e = f"`true` tasks end to end, {s.subprocess_workers} workers vs xargs"
    if git is None:
        return [unavailable(GIT_NAME, e2e, "tasks/s", "git not found", goal=GIT_GOAL)]
    base = ctx.directory(GIT_NAME)
    ctx.say(f"{GIT_NAME}: {s.subprocess_tasks:,} tasks running `true` in a git worktree, "
            f"{s.subprocess_workers} workers")
    root = base / "project"
    root.mkdir(parents=True)
    subprocess.run([git, "init", "-q", "-b", "main", str(root)], check=True)
    project = noop_project(root, s.subprocess_tasks, executor=None, command="true")
    (root / ".gitignore").write_text(".state/\n", encoding="utf-8")
    subprocess.run([git, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([git, "-C", str(root), "-c", "user.name=orch bench", "-c",
                    "user.email=bench@orch.invalid", "commit", "-q", "-m", "bench"],
                   check=True)
    run = orch_run(ctx, project, s.subprocess_workers, worktrees=True)
    return _against_xargs(ctx, GIT_NAME, GIT_GOAL, run)


def _against_xargs(ctx: BenchContext, name: str, goal: Goal, run: RunResult) -> list[Figure]:
    s = ctx.sizes
    ctx.say(f"{name}: xargs -P {s.subprocess_workers}")
    xargs = xargs_run(s.subprocess_tasks, s.subprocess_workers)
    e2e = f"`true` tasks end to end, {s.subprocess_workers} workers vs xargs"
    spanned = f"`true` tasks over the span, {s.subprocess_workers} workers vs xargs"
    wall_rate = run.completed / run.proc.wall_seconds if run.completed else None
    prefix = run.incomplete_note()
    if xargs is None:
        rows = [unavailable(name, e2e, "tasks/s", "xargs or true not found", goal=goal),
                unavailable(name, spanned, "tasks/s", "xargs or true not found")]
        rows[0].value, rows[1].value = wall_rate, run.throughput
        return rows + span_rows(name, run)
    ref = f"reference: xargs -P {s.subprocess_workers} -n 1 true, {xargs.wall_seconds:.2f} s"
    return [
        figure(name, e2e, wall_rate, "tasks/s", reference=xargs.tasks_per_second, goal=goal,
               note=prefix + f"{run.completed:,} tasks / the wall clock of orch run, exec to "
                             f"exit ({run.proc.wall_seconds:.2f} s); {ref}, exec to exit"),
        figure(name, spanned, run.throughput, "tasks/s", reference=xargs.tasks_per_second,
               note=f"informational: {run.completed:,} tasks / the span (first task_started "
                    f"to last task_completed); {ref}"),
        *span_rows(name, run, cpu_reference=xargs.cpu_ms_per_task,
                   cpu_note=f"reference: xargs and its `true` processes, "
                            f"{xargs.cpu_seconds:.2f} s of CPU"),
    ]
