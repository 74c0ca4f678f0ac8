"""``orch run``: own the database, start the workers, tick until nothing more can run.

Public API:
    ``RunOptions``, ``RunSummary``, ``run(project, options, progress=None) -> RunSummary``;
    ``spawn_worker(project, owner, ...)``.

Stability Guarantees:
    Exactly one ``orch run`` owns a database (``scheduler_lock``); a second one exits with the
    holder's pid, host and start time, unless the holder is dead (same host) or its lock expired.
    Workers are separate processes in their own sessions: Ctrl-C reaches only ``orch run``,
    which asks them to stop (their running tasks are handed on) and waits for them. The loop
    wakes as soon as another process commits (``PRAGMA data_version``) and at least every
    ``run.tick_seconds``. Exit status: 0 when every task in scope completed, else 1.

Integration Points:
    ``kernel.cli.run`` wraps it; ``kernel.progress`` renders it; ``kernel.scheduler.tick`` does
    the work; workers run ``python -m kernel worker --managed-by OWNER --parent-pid PID``.

Dependencies:
    apsw; ``kernel.scheduler``, ``kernel.worktree``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import apsw

from kernel import db, scheduler
from kernel.errors import OrchError
from kernel.metrics import MetricsTicker, write_metrics
from kernel.project import Project
from kernel.views import Exporter


@dataclass
class RunOptions:
    workers: int = 2
    workstream: str | None = None
    forever: bool = False
    worktrees: bool | None = None      # None: orch.toml [run] worktrees, if a git repository
    max_seconds: float | None = None   # stop after this long (tests, demos)


@dataclass
class RunSummary:
    counts: dict[str, int]
    total: int
    elapsed_seconds: float
    workstreams: dict[str, str]
    unrunnable: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    owner: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.interrupted and self.counts.get("completed", 0) == self.total

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts, "total": self.total,
                "elapsed_seconds": round(self.elapsed_seconds, 3),
                "workstreams": self.workstreams, "unrunnable": self.unrunnable,
                "interrupted": self.interrupted, "warnings": self.warnings}


class Progress:
    """What the loop tells its display; the base class shows nothing."""

    def start(self, conn: Any, options: RunOptions) -> None: ...

    def update(self, conn: Any, report: scheduler.TickReport) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...


def spawn_worker(project: Project, owner: str, index: int, workstreams: list[str] | None,
                 log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "kernel", "--root", str(project.root), "worker",
            "--managed-by", owner, "--parent-pid", str(os.getpid()),
            "--name", f"{owner}-w{index}"]
    for ws in workstreams or []:
        args += ["--workstream", ws]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=log or subprocess.DEVNULL, start_new_session=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# Workers queue and claim ready work themselves, so a tick after every commit only competes
# with them for the write lock: ticks are at least this far apart, however busy the database.
MIN_TICK_GAP_SECONDS = 0.02


def _wait_for_change(conn: Any, last: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    time.sleep(min(MIN_TICK_GAP_SECONDS, timeout))
    while True:
        version = int(conn.pragma("data_version"))
        if version != last or time.monotonic() >= deadline:
            return version
        time.sleep(0.003)


def run(project: Project, options: RunOptions, progress: Progress | None = None,
        clock_fn: Callable[[], float] = time.time) -> RunSummary:
    progress = progress or Progress()
    project.require_db()
    if threading.current_thread() is threading.main_thread():
        # `kill PID` stops a run the way Ctrl-C does: workers finish or hand on their tasks.
        signal.signal(signal.SIGTERM, _interrupt)
    config = project.config
    conn = project.connect()
    owner = f"run-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    scheduler.acquire_lock(conn, owner, clock_fn())
    children: dict[str, subprocess.Popen[bytes]] = {}
    removed: list[subprocess.Popen[bytes]] = []   # dead since the last tick
    logs: list[IO[bytes]] = []
    interrupted = False
    report = scheduler.TickReport()
    exporter: Exporter | None = None
    warnings: list[str] = []
    try:
        if config.views.export:
            exporter = Exporter(project.db_path, project.state_dir,
                                min_interval=config.views.export_min_interval_seconds).start()
        scope = [options.workstream] if options.workstream else None
        if scope and db.scalar(conn, "SELECT 1 FROM workstream WHERE workstream_id = ?",
                               (options.workstream,)) is None:
            raise OrchError("unknown_workstream", f"no workstream {options.workstream!r}",
                            hint="`orch status` lists them; `orch load` imports tasks/",
                            exit_code=2)
        metrics_ticker = MetricsTicker(config.views.metrics_interval_seconds)
        use_worktrees = config.run.worktrees if options.worktrees is None else options.worktrees
        if use_worktrees:
            from kernel.worktree import is_git_repo

            use_worktrees = is_git_repo(project.root)
        ctx = scheduler.TickContext(root=project.root, config=config, workstreams=scope,
                                    worktrees=use_worktrees)
        scheduler.compute_bottom_levels(conn, scope)
        progress.start(conn, options)
        project.logs_dir.mkdir(parents=True, exist_ok=True)
        for i in range(options.workers):
            log: IO[bytes] = open(project.logs_dir / f"worker-{i + 1}.log", "ab")  # noqa: SIM115
            logs.append(log)
            proc = spawn_worker(project, owner, i + 1, scope, log)
            children[f"pid:{proc.pid}"] = proc
        last = -1
        next_lock = 0.0
        restarts_left = 2 * options.workers
        spawned = options.workers
        while True:
            now = clock_fn()
            # With the children removed since the last tick: one may have died after that
            # tick's poll, and its exit code would be lost.
            ctx.exited = _exited_children(conn, [*children.values(), *removed])
            removed = []
            ctx.wait_for_workers = options.workers == 0 or restarts_left > 0 or any(
                p.poll() is None for p in children.values())
            report = scheduler.tick(conn, now, ctx)
            progress.update(conn, report)
            if metrics_ticker.due(now):
                write_metrics(conn, project.state_dir, now)
            _keep_wal_small(conn, project, config.database.busy_timeout_ms)
            # A worker that died is replaced (a few times), so a crash does not stall the run.
            for key, proc in list(children.items()):
                if proc.poll() is not None:
                    del children[key]
                    removed.append(proc)
                    if restarts_left > 0 and not report.done:
                        restarts_left -= 1
                        spawned += 1
                        new = spawn_worker(project, owner, spawned, scope, logs[0])
                        children[f"pid:{new.pid}"] = new
            if time.monotonic() >= next_lock:
                if not scheduler.renew_lock(conn, owner, now):
                    raise OrchError("scheduler_lock_lost",
                                    "another `orch run` took over this database",
                                    hint="only one `orch run` may own a database", exit_code=1)
                next_lock = time.monotonic() + scheduler.LOCK_TTL_SECONDS / 3
            if report.done and not options.forever:
                break
            if options.max_seconds is not None and \
                    time.monotonic() - started > options.max_seconds:
                interrupted = True
                break
            version = _wait_for_change(conn, last, config.run.tick_seconds)
            if exporter is not None and version != last:
                exporter.request()
            last = version
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # The signal may have landed inside a transaction (KeyboardInterrupt is raised wherever
        # the loop was): end it, or the stop request and the final health check cannot write.
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        _stop_children(conn, owner, children, config.workers.kill_grace_seconds + 5)
        try:
            final_ctx = scheduler.TickContext(root=project.root, config=config,
                                              workstreams=[options.workstream]
                                              if options.workstream else None,
                                              worktrees=False)
            final_ctx.exited = _exited_children(conn, [*children.values(), *removed])
            scheduler.check_workers(conn, clock_fn(), final_ctx, scheduler.TickReport())
            scheduler.release_lock(conn, owner)
            try:
                write_metrics(conn, project.state_dir, clock_fn())
            except (OSError, apsw.Error) as exc:   # never hide how the run ended
                warnings.append(f"metrics.json not written: {exc}")
        finally:
            for log in logs:
                log.close()
            if exporter is not None:
                exporter.close()   # a last export: the views end exact
                warnings.extend(f"the .state views were not updated: {e}"
                                for e in dict.fromkeys(exporter.errors))
    counts, _, unrunnable = scheduler.progress_counts(conn, ctx)
    ws_states = dict(conn.execute(
        "SELECT workstream_id, state FROM workstream" +
        (" WHERE workstream_id = ?" if options.workstream else ""),
        (options.workstream,) if options.workstream else ()))
    conn.close()
    summary = RunSummary(counts=counts, total=sum(counts.values()),
                         elapsed_seconds=time.monotonic() - started, workstreams=ws_states,
                         unrunnable=unrunnable, interrupted=interrupted, owner=owner,
                         warnings=warnings)
    progress.finish(summary)
    return summary


# A busy run appends tens of MB a second to the WAL; SQLite's automatic checkpoints copy the
# frames back but can reset the file only when no reader uses it, and with the exporter, `orch
# status` or Datasette reading, that moment may never come. So the run restarts the WAL itself
# once it passes this size, waiting at most WAL_RESTART_WAIT_MS for readers (writers wait
# meanwhile), and tries again a moment later if they did not finish.
WAL_RESTART_BYTES = 16 * 1024 * 1024
WAL_RESTART_WAIT_MS = 250


def _keep_wal_small(conn: Any, project: Project, busy_timeout_ms: int) -> None:
    if db.wal_size(project.db_path) < WAL_RESTART_BYTES:
        return
    conn.set_busy_timeout(WAL_RESTART_WAIT_MS)
    try:
        # In the writers' queue, or the kernel's writers (who never use SQLite's busy handler
        # against each other) would starve the checkpoint.
        with db.writer_lock(conn, timeout=WAL_RESTART_WAIT_MS / 1000):
            db.checkpoint(conn, "RESTART")
    except apsw.BusyError:
        pass
    finally:
        conn.set_busy_timeout(busy_timeout_ms)


def _exited_children(conn: Any, children: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for proc in children:
        code = proc.poll()
        if code is None:
            continue
        wid = db.scalar(conn, "SELECT worker_id FROM worker WHERE pid = ? AND state <> "
                              "'shutdown' ORDER BY registered_at DESC LIMIT 1", (proc.pid,))
        if wid:
            out[wid] = code
    return out


def _stop_children(conn: Any, owner: str, children: dict[str, subprocess.Popen[bytes]],
                   wait: float) -> None:
    if not children:
        return
    try:
        with db.write_tx(conn):
            conn.execute("UPDATE worker SET stop_requested = 1 WHERE scheduler_owner = ? "
                         "AND state <> 'shutdown'", (owner,))
    except Exception:  # noqa: BLE001 - stopping must go on even if the database is busy
        pass
    deadline = time.monotonic() + wait
    for proc in children.values():
        if proc.poll() is None:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
    # Workers finish their running task first; past the deadline (or on a second Ctrl-C) they
    # are killed, and the final health check below hands their tasks on.
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            deadline = 0.0
            proc.kill()
            proc.wait()


def summary_text(summary: RunSummary) -> str:
    order = ("completed", "failed", "cancelled", "running", "validating", "retrying", "queued",
             "pending")
    parts = [f"{summary.counts[s]} {s}" for s in order if summary.counts.get(s)]
    head = "all tasks completed" if summary.ok else (
        "interrupted" if summary.interrupted else "not every task completed")
    lines = [f"{head}: {', '.join(parts) or 'no tasks'} ({summary.total} tasks, "
             f"{summary.elapsed_seconds:.1f} s)"]
    for ws, state in sorted(summary.workstreams.items()):
        lines.append(f"  workstream {ws}: {state}")
    for item in summary.unrunnable:
        lines.append(f"  {item['task_id']} cannot run: {item['reason']}")
    for warning in summary.warnings:
        lines.append(f"  warning: {warning}")
    if not summary.ok:
        lines.append("next: `orch status`, `orch why TASK`, `orch retry TASK`")
    return "\n".join(lines)
