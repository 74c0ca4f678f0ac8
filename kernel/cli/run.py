"""``orch run`` and ``orch worker``: run the loaded DAG.

Public API:
    ``COMMANDS``.

Stability Guarantees:
    ``orch run`` exits 0 when every task in scope completed, 1 otherwise (or when another
    ``orch run`` owns the database), 130 on Ctrl-C. ``--json`` streams one event per line and
    ends with a ``{"summary": ...}`` line. ``orch worker`` runs until Ctrl-C (or, with
    ``--managed-by``, until its ``orch run`` asks it to stop or is gone).

Integration Points:
    ``kernel.runtime.runner``, ``kernel.runtime.worker``, ``kernel.runtime.progress``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.definitions.models``,
    ``kernel.runtime.progress``, ``kernel.runtime.runner``, ``kernel.runtime.worker``.
"""

from __future__ import annotations

import click

from kernel.base.errors import EXIT_FAILED, EXIT_OK, UsageError
from kernel.cli.common import CliState, command


@command("run")
@click.option("--workers", "-w", type=int, default=2, show_default=True,
              help="Local worker processes to start (0: only workers that join with "
                   "`orch worker`).")
@click.option("--workstream", default=None, help="Run only this workstream's tasks.")
@click.option("--forever", is_flag=True, help="Keep polling for new work instead of returning.")
@click.option("--no-worktrees", is_flag=True,
              help="Run in place even in a git repository (default: one worktree per "
                   "workstream).")
@click.option("--max-seconds", type=float, default=None,
              help="Stop (tasks are handed on) after this many seconds.")
def run_cmd(state: CliState, workers: int, workstream: str | None, forever: bool,
            no_worktrees: bool, max_seconds: float | None) -> int:
    """Run the loaded tasks with workers until nothing more can run."""
    from kernel.runtime.progress import make_progress
    from kernel.runtime.runner import RunOptions, run

    if workers < 0:
        raise UsageError("usage", "--workers must be 0 or more", hint="e.g. --workers 4")
    summary = run(state.project(),
                  RunOptions(workers=workers, workstream=workstream, forever=forever,
                             worktrees=False if no_worktrees else None,
                             max_seconds=max_seconds),
                  make_progress(state.json))
    if summary.interrupted and max_seconds is None:
        return 130
    return EXIT_OK if summary.ok else EXIT_FAILED


@command("worker")
@click.option("--capability", "capabilities", multiple=True,
              help="A capability this worker offers (NAME or NAME@VERSION); repeat. "
                   "Default: every capability of the catalog that this machine meets "
                   "(see `orch capabilities`).")
@click.option("--workstream", "workstreams", multiple=True,
              help="Only take tasks of this workstream; repeat.")
@click.option("--name", default="", help="A display name.")
@click.option("--managed-by", default=None, hidden=True)
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option("--once", is_flag=True, help="Exit as soon as there is nothing to claim.")
def worker_cmd(state: CliState, capabilities: tuple[str, ...], workstreams: tuple[str, ...],
               name: str, managed_by: str | None, parent_pid: int | None, once: bool) -> int:
    """Join the kernel as a worker: claim and run tasks one at a time until Ctrl-C."""
    from kernel.runtime.worker import WorkerOptions, main

    for cap in capabilities:
        name, _, version = cap.partition("@")
        if not name:
            raise UsageError("usage", f"--capability {cap!r} names no capability",
                             hint="e.g. --capability cap-aider-001@1.2.0")
        if version:
            from kernel.definitions.models import semver_key  # pydantic models

            try:
                semver_key(version)
            except ValueError:
                raise UsageError("usage", f"--capability {cap!r}: {version!r} is not a "
                                          "semantic version", hint="e.g. cap-aider-001@1.2.0"
                                 ) from None
    opts = WorkerOptions(capabilities=capabilities,
                         workstreams=list(workstreams) if workstreams else None,
                         scheduler_owner=managed_by, parent_pid=parent_pid, name=name,
                         once=once)
    return main(state.project(), opts)


COMMANDS = [run_cmd, worker_cmd]
