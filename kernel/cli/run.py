"""``orch run`` and ``orch worker``: run the loaded DAG.

Public API:
    ``COMMANDS``.

Stability Guarantees:
    ``orch run`` exits 0 when every task in scope completed, 1 otherwise (or when another
    ``orch run`` owns the database, or the workstream is unknown), 130 on Ctrl-C. ``--json``
    prints one JSON document at the end: the summary (``ok``, ``counts``, ``total``,
    ``elapsed_seconds``, ``workstreams``, ``unrunnable``, ``interrupted``, ``warnings``) with
    ``events`` (every event committed during the run) and ``notices``. ``--jsonl`` is the
    stream: one JSON event per line as they are committed, ``{"notice": ...}`` lines, and a
    last line ``{"summary": ...}``. ``orch worker`` runs until Ctrl-C (or, with
    ``--managed-by``, until its ``orch run`` asks it to stop or is gone); on a terminal it
    says ``joined as WORKER`` once registered, and at the end what it ran; ``--json`` prints
    one document at the end (``worker_id``, ``capabilities``, ``workstreams``,
    ``attempts`` by outcome, ``tasks``). A ``--capability`` not in the catalog is a usage
    error (``unknown_capability``, exit 2) naming the known ones.

Integration Points:
    ``kernel.runtime.runner``, ``kernel.runtime.worker``, ``kernel.runtime.progress``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.cli.common``,
    ``kernel.definitions.models``, ``kernel.runtime.progress``, ``kernel.runtime.runner``,
    ``kernel.runtime.worker``, ``kernel.store.db``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from kernel.base.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from kernel.base.words import plural
from kernel.cli.common import CliState, command, complete_workstreams, emit


@command("run")
@click.option("--workers", "-w", type=int, default=None,
              help="Local worker processes to start (default 2; 0: only workers that join "
                   "with `orch worker`). With --executor dask and no scheduler address: the "
                   "size of the LocalCluster (default: [executors.dask] workers, else the "
                   "number of CPUs).")
@click.option("--workstream", default=None, metavar="WS", shell_complete=complete_workstreams,
              help="Run only this workstream's tasks.")
@click.option("--forever", is_flag=True, help="Keep polling for new work instead of returning.")
@click.option("--no-worktrees", is_flag=True,
              help="Run in place even in a git repository (default: one worktree per "
                   "workstream).")
@click.option("--max-seconds", type=float, default=None,
              help="Stop (tasks are handed on) after this many seconds.")
@click.option("--jsonl", is_flag=True,
              help="Stream one JSON event per line as they are committed, then a "
                   "{\"summary\": ...} line (--json prints one document at the end).")
@click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
              help="Where commands run: local worker processes, or the workers of a Dask "
                   "cluster (default: orch.toml [run] executor, else local; "
                   "docs/operations/SCALING.md).")
@click.option("--scheduler-address", default=None, metavar="tcp://HOST:PORT",
              help="With --executor dask: the Dask scheduler to use (default: [executors.dask] "
                   "scheduler_address, else a LocalCluster on this machine).")
def run_cmd(state: CliState, workers: int | None, workstream: str | None, forever: bool,
            no_worktrees: bool, max_seconds: float | None, jsonl: bool, executor: str | None,
            scheduler_address: str | None) -> int:
    """Run the loaded tasks with workers until nothing more can run.

    Workers run on this machine, or stand for the workers of a Dask cluster with --executor
    dask (docs/operations/SCALING.md).
    """
    from kernel.runtime.progress import make_progress
    from kernel.runtime.runner import RunOptions, run

    if workers is not None and workers < 0:
        raise UsageError("usage", "--workers must be 0 or more", hint="e.g. --workers 4")
    if scheduler_address is not None:
        _check_address(scheduler_address)
        executor = executor or "dask"
        if executor != "dask":
            raise UsageError("usage", "--scheduler-address is for --executor dask",
                             hint="orch run --executor dask --scheduler-address "
                                  f"{scheduler_address}")
    if executor == "dask" and workers == 0:
        raise UsageError("usage", "--executor dask runs on the cluster's workers: --workers 0 "
                                  "would start none", hint="leave out --workers, or give the "
                                  "LocalCluster's size")
    if jsonl and state.json:
        raise UsageError("usage", "--json (one document) and --jsonl (a stream) exclude each "
                                  "other", hint="orch run --jsonl, or orch --json run")
    output = "jsonl" if jsonl else "json" if state.json else "text"
    summary = run(state.project(),
                  RunOptions(workers=2 if workers is None else workers, workstream=workstream,
                             forever=forever, worktrees=False if no_worktrees else None,
                             max_seconds=max_seconds, executor=executor,
                             scheduler_address=scheduler_address, cluster_workers=workers),
                  make_progress(output))
    if summary.interrupted and max_seconds is None:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.ok else EXIT_FAILED


def _check_address(address: str) -> None:
    import re

    if not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$", address):
        raise UsageError("usage", f"--scheduler-address {address!r} is not a Dask address",
                         hint="e.g. --scheduler-address tcp://10.0.0.5:8786")


def _check_capabilities(state: CliState, capabilities: tuple[str, ...]) -> None:
    """Each --capability is NAME or NAME@SEMVER and NAME is in the catalog (else exit 2)."""
    if not capabilities:
        return
    from kernel.definitions.models import semver_key  # pydantic models
    from kernel.store import db

    for cap in capabilities:
        name, _, version = cap.partition("@")
        if not name:
            raise UsageError("usage", f"--capability {cap!r} names no capability",
                             hint="e.g. --capability cap-aider-001@1.2.0")
        if version:
            try:
                semver_key(version)
            except ValueError:
                raise UsageError("usage", f"--capability {cap!r}: {version!r} is not a "
                                          "semantic version", hint="e.g. cap-aider-001@1.2.0"
                                 ) from None
    with state.project().open(readonly=True) as conn:
        known = [r["capability_id"] for r in
                 db.rows(conn, "SELECT capability_id FROM capability ORDER BY capability_id")]
    unknown = [c for c in capabilities if c.partition("@")[0] not in known]
    if unknown:
        raise UsageError(
            "unknown_capability",
            f"--capability {', '.join(unknown)}: not in the capability catalog",
            hint=("known: " + ", ".join(known) if known else "the catalog is empty")
            + "; `orch capabilities` lists them, capabilities/*.json defines them")


def _worker_summary(state: CliState, worker_id: str, offers: dict[str, str],
                    workstreams: tuple[str, ...]) -> dict[str, Any]:
    from kernel.store import db

    with state.project().open(readonly=True) as conn:
        attempts = db.rows(conn, "SELECT task_id, attempt_no, outcome FROM attempt "
                                 "WHERE worker_id = ? ORDER BY attempt_id", (worker_id,))
    outcomes: dict[str, int] = {}
    for a in attempts:
        outcomes[a["outcome"] or "open"] = outcomes.get(a["outcome"] or "open", 0) + 1
    return {"worker_id": worker_id, "capabilities": dict(sorted(offers.items())),
            "workstreams": list(workstreams) or None, "attempts": outcomes,
            "tasks": sorted({a["task_id"] for a in attempts})}


@command("worker")
@click.option("--capability", "capabilities", multiple=True,
              help="A capability this worker offers (NAME or NAME@VERSION); repeat. "
                   "Default: every capability of the catalog that this machine meets "
                   "(see `orch capabilities`).")
@click.option("--workstream", "workstreams", multiple=True, metavar="WS",
              shell_complete=complete_workstreams,
              help="Only take tasks of this workstream; repeat.")
@click.option("--name", default="", help="A display name.")
@click.option("--managed-by", default=None, hidden=True)
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option("--once", is_flag=True, help="Exit as soon as there is nothing to claim.")
def worker_cmd(state: CliState, capabilities: tuple[str, ...], workstreams: tuple[str, ...],
               name: str, managed_by: str | None, parent_pid: int | None, once: bool) -> int:
    """Join the kernel as a worker: claim and run tasks one at a time until Ctrl-C."""
    from kernel.runtime.worker import Worker, WorkerOptions, main

    _check_capabilities(state, capabilities)
    opts = WorkerOptions(capabilities=capabilities,
                         workstreams=list(workstreams) if workstreams else None,
                         scheduler_owner=managed_by, parent_pid=parent_pid, name=name,
                         once=once)
    joined: dict[str, Any] = {}

    def on_joined(worker: Worker) -> None:
        joined.update(worker_id=worker.worker_id, offers=worker.offers)
        if not state.json and managed_by is None and sys.stdout.isatty():
            offered = ", ".join(sorted(worker.offers)) or "no capabilities"
            if len(offered) > 50:   # one line: the count, `orch capabilities` has the names
                offered = plural(len(worker.offers), "capability", "capabilities")
            click.echo(f"joined as {worker.worker_id} ({offered}); Ctrl-C to leave")

    code = main(state.project(), opts, on_joined=on_joined)
    if managed_by is not None or "worker_id" not in joined:
        return code
    data = _worker_summary(state, joined["worker_id"], joined["offers"], workstreams)
    ran = ", ".join(f"{n} {o}" for o, n in data["attempts"].items())
    emit(state, data, f"worker {data['worker_id']} left: "
                      f"{plural(sum(data['attempts'].values()), 'attempt')}"
                      + (f" ({ran})" if ran else ""))
    return code


COMMANDS = [run_cmd, worker_cmd]
