"""``orch run``: own the database, start the workers, tick until nothing more can run.

Public API:
    ``RunOptions``, ``RunSummary``, ``run(project, options, progress=None) -> RunSummary``;
    ``spawn_worker(project, owner, ..., link=None)``; ``fork_workers(..., links=None)``,
    ``can_fork()``, ``ForkedWorker``, ``StartGate``; ``SPAWN_ENV``, ``DIRECT_ENV``.

Stability Guarantees:
    Exactly one ``orch run`` owns a database (``scheduler_lock``); a second one exits with the
    holder's pid, host and start time, unless the holder is dead (same host) or its lock expired.
    Workers are separate processes in their own sessions: Ctrl-C reaches only ``orch run``,
    which asks them to stop (their running tasks are handed on) and waits for them. The run is
    the one writer of claims and outcomes: each worker it starts gets a link (a socket pair,
    ``kernel.runtime.channel``), and between ticks the run group-commits their reports with
    the next claims (``kernel.runtime.dispatch``); it listens on a local socket for workers
    that join by hand. ``DIRECT_ENV`` set: no links, the workers write themselves. The next
    tick comes when another process commits (``PRAGMA data_version``), a link closes, no worker
    has a task after a batch of reports, and at least every ``run.tick_seconds``. Exit status:
    0 when every task in scope completed, else 1. A missing,
    empty, damaged (``PRAGMA quick_check``) or foreign database is refused before the scheduler
    lock is written: ``DatabaseUnavailable``, exit 3, no task started. A database file removed
    or replaced while the run runs (``.state/`` deleted) stops it at the next tick with
    ``database_missing`` (exit 3): it never commits into a file nobody can open again.
    Start-up: once the lock is held, the run forks its workers from itself when that is safe
    (one thread, no open SQLite connection: its own is closed around the forks; not when
    ``SPAWN_ENV`` is set), all at once: they carry the modules and the configuration the
    run already imported and validated, and wait at a start gate (a pipe) until the
    display has started, so ``--json`` streams their registrations. Otherwise, and for a
    worker that replaces a dead one, it starts ``python -m kernel --root DIR worker
    --managed-by ...`` (``spawn_worker``; ``kernel/__main__.py`` runs it without the command
    line; that worker reads and validates ``orch.toml`` itself). Exit: the last
    views export is skipped when nothing was committed since the previous one began.

Integration Points:
    ``kernel.cli.run`` wraps it; ``kernel.runtime.progress`` renders it;
    ``kernel.runtime.scheduler.tick`` does the work; a worker runs
    ``kernel.runtime.worker.main`` (forked) or ``managed_main`` (spawned), with the run's
    owner and pid (``--managed-by OWNER --parent-pid PID``). docs/PERFORMANCE.md, "Start-up".

Dependencies:
    apsw; ``kernel.base.errors``, ``kernel.base.faults``, ``kernel.base.files``,
    ``kernel.base.words``, ``kernel.observe.exports``, ``kernel.observe.metrics_history``,
    ``kernel.runtime.channel``, ``kernel.runtime.cluster``, ``kernel.runtime.dispatch``,
    ``kernel.runtime.health``, ``kernel.runtime.lock``, ``kernel.runtime.scheduler``,
    ``kernel.runtime.worker``, ``kernel.runtime.worktree``, ``kernel.store.db``,
    ``kernel.store.machines``, ``kernel.store.project``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import apsw

from kernel.base import faults
from kernel.base.errors import DatabaseUnavailable, OrchError
from kernel.base.files import open_private
from kernel.base.words import plural
from kernel.runtime import channel, health, lock, scheduler
from kernel.runtime.channel import socket_pair
from kernel.runtime.dispatch import Dispatcher
from kernel.store import db
from kernel.store.machines import claimed_states, in_list_sql, terminal_sql
from kernel.store.project import Project

if TYPE_CHECKING:   # imported once the workers are on their way (set_up)
    from kernel.observe.exports import Exporter
    from kernel.observe.metrics_history import MetricsTicker


@dataclass
class RunOptions:
    workers: int = 2
    workstream: str | None = None
    forever: bool = False
    worktrees: bool | None = None      # None: orch.toml [run] worktrees, if a git repository
    max_seconds: float | None = None   # stop after this long (tests, demos)
    executor: str | None = None        # "local" or "dask"; None: orch.toml [run] executor
    scheduler_address: str | None = None   # dask: None: [executors.dask], else a LocalCluster
    cluster_workers: int | None = None     # dask: the LocalCluster's size (None: config, CPUs)


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

    def notice(self, text: str) -> None:
        """A line for the person at the terminal (e.g. what Ctrl-C does now)."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def finish(self, summary: RunSummary) -> None: ...


class ForkedWorker:
    """A worker forked from ``orch run`` (``fork_workers``), with the part of ``Popen`` the run
    uses: ``pid``, ``poll()``, ``wait()``, ``terminate()``, ``kill()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:   # reaped elsewhere: its exit code is lost
                self.returncode = -signal.SIGKILL
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self) -> int:
        code = self._reap(0)
        assert code is not None
        return code

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


Child = subprocess.Popen[bytes] | ForkedWorker


# Set: workers are spawned, never forked. (orch bench's instrumentation works with forked
# workers: kernel.bench.shim resets its counts in a forked child and writes them when the
# worker's main returns; claims are timed by the workers themselves, CLAIM_LOG_ENV.)
SPAWN_ENV = ("ORCH_SPAWN_WORKERS",)
DIRECT_ENV = channel.DIRECT_ENV


def can_fork() -> bool:
    """Forking is safe only from a process with one thread and no open SQLite connection (a
    child would inherit SQLite's record of locks it does not hold), and not when ``SPAWN_ENV``
    asks for spawned workers: else ``spawn_worker``."""
    return (hasattr(os, "fork") and threading.active_count() == 1
            and not apsw.connections() and not any(os.environ.get(v) for v in SPAWN_ENV))


class StartGate:
    """Forked workers wait at this gate (a pipe) and register only once it opens: after the
    run has started its display, so ``--json`` streams every worker's events."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def wait_in_child(self) -> None:
        os.close(self.write_fd)
        while os.read(self.read_fd, 1):
            pass   # opened: the parent closed its end (or died)
        os.close(self.read_fd)

    def open(self) -> None:
        for fd in (self.write_fd, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.write_fd = self.read_fd = -1


def fork_workers(project: Project, owner: str, first_index: int, count: int,
                 workstreams: list[str] | None, logs: list[IO[bytes]],
                 gate: StartGate, children: dict[str, Child],
                 links: list[socket.socket] | None = None) -> None:
    """``count`` workers forked from this process (see ``can_fork``), each in its own session,
    stdin and stdout on /dev/null, stderr to its log: they run ``kernel.runtime.worker.main``
    with the modules and the validated configuration this process already holds, once the
    gate opens. Each is added to ``children`` as it is forked. The children of a worker and its
    parent-pid check are those of a worker started with ``spawn_worker``. With ``links`` (a
    list the kernel's ends are appended to), each worker gets a link to this process
    (``kernel.runtime.channel``) and closes every other one it inherited."""
    from kernel.runtime import worker  # the warm parent: imported once, not once per worker
    from kernel.store.machines import shipped

    shipped()   # the state machines' YAML, parsed once here rather than in every worker

    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    for offset in range(count):
        kernel_end, worker_end = socket_pair() if links is not None else (None, None)
        pid = os.fork()
        if pid == 0:   # pragma: no cover - the child never returns
            for other in [*(links or []), kernel_end]:
                if other is not None:
                    other.close()
            _forked_child(worker, project, worker.WorkerOptions(
                workstreams=workstreams, scheduler_owner=owner, parent_pid=parent,
                name=f"{owner}-w{first_index + offset}", link=worker_end), logs[offset], gate)
        children[f"pid:{pid}"] = ForkedWorker(pid)
        if links is not None and kernel_end is not None and worker_end is not None:
            worker_end.close()
            links.append(kernel_end)


def _forked_child(module: Any, project: Project, options: Any, log: IO[bytes],
                  gate: StartGate) -> None:
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)   # the worker installs its own after the gate
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log.fileno(), 2)
        os.close(null)
        gate.wait_in_child()
        code = module.main(project, options)
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def spawn_worker(project: Project, owner: str, index: int, workstreams: list[str] | None,
                 log: IO[bytes] | None = None, link: socket.socket | None = None,
                 dask: tuple[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a managed worker (``kernel.runtime.worker.managed_main``); with ``link`` (the
    worker's end of a ``socket_pair``) it reports to this process instead of writing; with
    ``dask`` (scheduler address, Dask worker address) it stands for that Dask worker."""
    args = [sys.executable, "-m", "kernel", "--root", str(project.root), "worker",
            "--managed-by", owner, "--parent-pid", str(os.getpid()),
            "--name", f"dask:{dask[1]}" if dask else f"{owner}-w{index}"]
    if link is not None:
        args += ["--link-fd", str(link.fileno())]
    if dask is not None:
        args += ["--dask-scheduler", dask[0], "--dask-worker", dask[1]]
    for ws in workstreams or []:
        args += ["--workstream", ws]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=log or subprocess.DEVNULL, start_new_session=True,
                            pass_fds=(link.fileno(),) if link is not None else ())


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
    """Own the database, start the workers and tick until nothing more can run (or Ctrl-C).

    Ctrl-C (or SIGTERM) at any moment, set-up included, ends in the "interrupted" summary:
    workers finish their running tasks (up to ``kill_grace_seconds + 5`` s); a second Ctrl-C
    stops them at once, and their tasks go back to the queue as interrupted by the operator.
    """
    project.require_db()
    if threading.current_thread() is threading.main_thread():
        # `kill PID` stops a run the way Ctrl-C does: workers finish or hand on their tasks.
        signal.signal(signal.SIGTERM, _interrupt)
    loop = _RunLoop(project, options, progress or Progress(), clock_fn)
    try:
        loop.set_up()
        while loop.step():
            pass
    except KeyboardInterrupt:
        loop.interrupted = True
    finally:
        loop.tear_down()
    return loop.summarise()


class _RunLoop:
    """The state of one ``orch run``: set-up, one turn of the loop, tear-down, the summary."""

    def __init__(self, project: Project, options: RunOptions, progress: Progress,
                 clock_fn: Callable[[], float]) -> None:
        self.project, self.options, self.progress, self.clock = (project, options, progress,
                                                                  clock_fn)
        self.config = project.config
        self.owner = f"run-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started = time.monotonic()
        self.scope = [options.workstream] if options.workstream else None
        self.conn: Any = None
        self.locked = False
        self.file_id: tuple[int, int] | None = None
        self.children: dict[str, Child] = {}
        self.removed: list[Child] = []   # dead since the last tick
        self.gate: StartGate | None = None
        self.logs: list[IO[bytes]] = []
        self.interrupted = False
        self.report = scheduler.TickReport()
        self.exporter: Exporter | None = None
        self.warnings: list[str] = []
        self.ctx = scheduler.TickContext(root=project.root, config=self.config,
                                         workstreams=self.scope, worktrees=False)
        self.metrics: MetricsTicker | None = None
        self.last_version = -1
        self.next_lock = 0.0
        self.restarts_left = 2 * options.workers
        self.spawned = 0
        # The kernel's ends of its workers' links; None: the workers write themselves.
        self.links: list[socket.socket] | None = \
            None if os.environ.get(DIRECT_ENV) else []
        self.dispatcher: Dispatcher | None = None
        # --executor dask: the cluster, and the proxy worker standing for each Dask worker.
        self.dask = (options.executor or self.config.run.executor) == "dask"
        self.cluster: Any = None
        self.proxies: dict[str, str] = {}       # Dask worker address -> key in children
        self.proxy_starts: dict[str, int] = {}  # Dask worker address -> proxies started
        self.next_look = 0.0

    # ---------------------------------------------------------------- set-up

    def set_up(self) -> None:
        # quick_check first: a damaged file is refused before the scheduler lock is written.
        self.conn = self.project.connect(verify=True)
        self.file_id = _file_id(self.project.db_path)
        lock.acquire_lock(self.conn, self.owner, self.clock())
        self.locked = True
        if self.scope and db.scalar(self.conn, "SELECT 1 FROM workstream WHERE "
                                               "workstream_id = ?", (self.scope[0],)) is None:
            raise OrchError("unknown_workstream", f"no workstream {self.scope[0]!r}",
                            hint="`orch status` lists them; `orch load` imports tasks/")
        use_worktrees = self.config.run.worktrees if self.options.worktrees is None \
            else self.options.worktrees
        if use_worktrees:
            from kernel.runtime.worktree import is_git_repo

            use_worktrees = is_git_repo(self.project.root)
        self.ctx.worktrees = use_worktrees
        scheduler.compute_bottom_levels(self.conn, self.scope)
        for found in scheduler.warn_deprecated_capabilities(self.conn, self.scope):
            replaced = (f"; use {found['deprecated_by']} instead" if found["deprecated_by"]
                        else "")
            self.warnings.append(
                f"capability {found['capability_id']} is deprecated{replaced} "
                f"(needed by {', '.join(found['tasks'][:3])}"
                f"{' and more' if len(found['tasks']) > 3 else ''})")
        faults.point("run_setup")
        self.project.logs_dir.mkdir(parents=True, exist_ok=True)
        if self.dask:
            self._start_cluster()
        self._fork_workers()   # before any thread starts; they wait at the gate
        try:
            self.progress.start(self.conn, self.options)
        finally:
            self._open_gate()
        while not self.dask and self.spawned < self.options.workers:
            self._spawn()
        if self.dask:
            self._reconcile_dask()
        if self.dispatcher is not None:
            # Workers that join by hand (`orch worker`) connect here (kernel.runtime.channel).
            server = channel.listen(self.project.db_path)
            if server is not None:
                self.dispatcher.listen(server)
        # What the workers do not wait for: the views and the metrics.
        from kernel.observe.metrics_history import MetricsTicker

        self.metrics = MetricsTicker(self.config.views.metrics_interval_seconds)
        if self.config.views.export:
            from kernel.observe.exports import Exporter

            self.exporter = Exporter(
                self.project.db_path, self.project.state_dir,
                min_interval=self.config.views.export_min_interval_seconds).start()

    def _open_log(self) -> IO[bytes]:
        self.spawned += 1
        log: IO[bytes] = open_private(  # noqa: SIM115 - closed in tear_down
            self.project.logs_dir / f"worker-{self.spawned}.log", "ab")
        self.logs.append(log)
        return log

    def _fork_workers(self) -> None:
        """The first workers are forked from this process when that is safe (``can_fork``):
        no interpreter start and no imports of their own. The connection is closed around the
        forks (a child must not inherit it) and opened again."""
        conn, self.conn = self.conn, None
        conn.close()   # if it raises, tear_down must not use the closed connection
        try:
            if self.options.workers and not self.dask and can_fork():
                # What the imports made is permanent from now on: the collector never scans it
                # again, neither during the run nor at exit (~0.2 s less), and the forked
                # workers share its pages.
                gc.freeze()
                first = self.spawned + 1
                logs = [self._open_log() for _ in range(self.options.workers)]
                self.gate = StartGate()
                fork_workers(self.project, self.owner, first, len(logs), self.scope, logs,
                             self.gate, self.children, self.links)
        finally:
            self.conn = self.project.connect()
            if self.links is not None:
                self.dispatcher = Dispatcher(self.conn, self.config.workers)
                for end in self.links:
                    self.dispatcher.add(end)

    def _open_gate(self) -> None:
        if self.gate is not None:
            self.gate.open()
            self.gate = None

    def _spawn(self, dask_worker: str | None = None) -> str:
        kernel_end, worker_end = socket_pair() if self.dispatcher else (None, None)
        try:
            proc = spawn_worker(self.project, self.owner, self.spawned + 1, self.scope,
                                self._open_log(), link=worker_end,
                                dask=(self.cluster.address, dask_worker) if dask_worker
                                else None)
        finally:
            if worker_end is not None:
                worker_end.close()
        if self.dispatcher is not None and kernel_end is not None:
            self.dispatcher.add(kernel_end)
        self.children[f"pid:{proc.pid}"] = proc
        return f"pid:{proc.pid}"

    def _start_cluster(self) -> None:
        """Connect to the Dask scheduler, or start a LocalCluster (``kernel.runtime.cluster``);
        the run then has one worker per Dask worker."""
        from kernel.runtime.cluster import Cluster

        self.cluster = Cluster(self.config.executors.dask, self.options.scheduler_address,
                               self.options.cluster_workers).start()
        self.options.workers = len(self.cluster.workers())
        where = "a LocalCluster on this machine" if self.cluster.local is not None \
            else "the Dask scheduler"
        self.progress.notice(f"dask: {plural(self.options.workers, 'worker')} of {where} at "
                             f"{self.cluster.address}; each runs its tasks' commands")

    def _reconcile_dask(self) -> None:
        """One proxy worker per Dask worker: a new Dask worker (one a nanny restarted, one
        that joined) gets one; a proxy that died is started again, at most 3 times per Dask
        worker. A proxy whose Dask worker left the cluster exits by itself."""
        if time.monotonic() < self.next_look:
            return
        self.next_look = time.monotonic() + 0.5
        for address in self.cluster.workers():
            if self.proxies.get(address) in self.children:
                continue
            if self.proxy_starts.get(address, 0) >= 3:
                continue
            self.proxy_starts[address] = self.proxy_starts.get(address, 0) + 1
            self.proxies[address] = self._spawn(address)

    # ---------------------------------------------------------------- one turn

    def step(self) -> bool:
        """One tick and its bookkeeping; False when the run is over."""
        now = self.clock()
        if _file_id(self.project.db_path) != self.file_id:
            # `.state/` removed (or the file replaced) under the run: what it would commit from
            # now on would go to a file nobody can open again.
            raise DatabaseUnavailable(
                "database_missing", "the database file was removed or replaced while orch run "
                "ran", file=str(self.project.db_path),
                hint="restore a backup (`orch restore BACKUP`) or run `orch init`, then "
                     "`orch load` and `orch run` again")
        # With the children removed since the last tick: one may have died after that tick's
        # poll, and its exit code would be lost.
        self.ctx.exited = _exited_children(self.conn, [*self.children.values(), *self.removed])
        self.removed = []
        self.ctx.wait_for_workers = self.options.workers == 0 or self.restarts_left > 0 or \
            self.dask or any(p.poll() is None for p in self.children.values())
        self.ctx.workers_starting = _starting(self.conn, self.owner, self.children.values())
        self.report = scheduler.tick(self.conn, now, self.ctx)
        self.progress.update(self.conn, self.report)
        if self.metrics is not None and self.metrics.due(now):
            from kernel.observe.metrics_history import write_metrics

            write_metrics(self.conn, self.project.state_dir, now)
        _keep_wal_small(self.conn, self.project, self.config.database.busy_timeout_ms)
        self._replace_dead_workers()
        if time.monotonic() >= self.next_lock:
            if not lock.renew_lock(self.conn, self.owner, now):
                raise OrchError("scheduler_lock_lost",
                                "another `orch run` took over this database",
                                hint="only one `orch run` may own a database", exit_code=1)
            self.next_lock = time.monotonic() + lock.LOCK_TTL_SECONDS / 3
        if self.report.done and not self.options.forever:
            return False
        if self.options.max_seconds is not None and \
                time.monotonic() - self.started > self.options.max_seconds:
            self.interrupted = True
            return False
        if self.dispatcher is None:
            version = _wait_for_change(self.conn, self.last_version,
                                       self.config.run.tick_seconds)
        else:
            version = self._dispatch_until_tick(self.dispatcher)
        if self.exporter is not None and version != self.last_version:
            self.exporter.request()
        self.last_version = version
        return True

    def _dispatch_until_tick(self, dispatcher: Dispatcher) -> int:
        """Group-commit the workers' reports and claims (``kernel.runtime.dispatch``) until the
        next tick is due: ``run.tick_seconds``, another process committed, a worker's link
        closed, or no worker has a task left after a report (the run may be over).
        Returns ``PRAGMA data_version``."""
        dispatcher.poke()    # the tick may have queued work
        deadline = time.monotonic() + self.config.run.tick_seconds
        while True:
            turn = dispatcher.pump(max(0.0, min(deadline - time.monotonic(), 0.05)))
            if turn.committed and self.exporter is not None:
                self.exporter.request()
            version = int(self.conn.pragma("data_version"))
            if version != self.last_version:
                dispatcher.poke()          # an operator or a worker wrote: tick soon
                time.sleep(MIN_TICK_GAP_SECONDS)
                return version
            if turn.closed or (turn.reports and not dispatcher.busy()) \
                    or time.monotonic() >= deadline:
                return version

    def _replace_dead_workers(self) -> None:
        """A worker that died is replaced (a few times), so a crash does not stall the run."""
        for key, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[key]
                self.removed.append(proc)
                if self.restarts_left > 0 and not self.report.done and not self.dask:
                    self.restarts_left -= 1
                    self._spawn()
        if self.dask and (self.options.forever or not self.report.done):
            self._reconcile_dask()   # a Dask worker that joined may run what nothing could

    # ---------------------------------------------------------------- tear-down

    def tear_down(self) -> None:
        self._open_gate()
        conn = self.conn
        if conn is None:
            for proc in self.children.values():   # set-up failed between the forks
                proc.kill()
                proc.wait()
            if self.cluster is not None:
                self.cluster.close()
            return
        # The signal may have landed inside a transaction (KeyboardInterrupt is raised wherever
        # the loop was): end it, or the stop request and the final health check cannot write.
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        hurry = _SecondSignal().install()
        if self.dispatcher is not None:
            # Workers still running a task report it themselves from now on.
            if self.dispatcher.server is not None:
                channel.unlisten(self.project.db_path)
            self.dispatcher.close()
        try:
            if self.interrupted and self.children:
                running = _running_tasks(conn, self.owner)
                grace = self.config.workers.kill_grace_seconds + 5
                if running:
                    self.progress.notice(
                        f"stopping: waiting up to {grace:g} s for {running} running "
                        f"{'task' if running == 1 else 'tasks'} (Ctrl-C again to stop them now)")
            stopped = _stop_children(conn, self.owner, self.children,
                                     self.config.workers.kill_grace_seconds + 5, hurry)
            # Workers killed because the operator stopped the run are not crashes.
            self.ctx.interrupted_by_operator = self.interrupted or stopped
            self.ctx.worktrees = False
            self.ctx.exited = _exited_children(conn, [*self.children.values(), *self.removed])
            final = scheduler.TickReport()
            health.check_workers(conn, self.clock(), self.ctx, final)
            if self.locked:
                lock.release_lock(conn, self.owner)
            try:
                from kernel.observe.metrics_history import write_metrics

                write_metrics(conn, self.project.state_dir, self.clock())
            except (OSError, apsw.Error) as exc:   # never hide how the run ended
                self.warnings.append(f"metrics.json not written: {exc}")
        finally:
            hurry.restore()
            if self.cluster is not None:
                self.cluster.close()
            for log in self.logs:
                log.close()
            if self.exporter is not None:
                self.exporter.close()   # a last export: the views end exact
                self.warnings.extend(f"the .state views were not updated: {e}"
                                     for e in dict.fromkeys(self.exporter.errors))

    def summarise(self) -> RunSummary:
        conn = self.conn
        if conn is None:
            return RunSummary(counts={}, total=0, elapsed_seconds=time.monotonic() - self.started,
                              workstreams={}, interrupted=True, owner=self.owner)
        counts, _, _ = scheduler.progress_counts(conn, self.ctx)
        ws_states = dict(conn.execute(
            "SELECT workstream_id, state FROM workstream" +
            (" WHERE workstream_id = ?" if self.scope else ""), tuple(self.scope or ())))
        # Unrunnable tasks as the last tick saw them, while the workers were registered: after
        # the workers stop, "no worker offers it" can no longer be told from "no worker".
        queued = {r[0] for r in conn.execute("SELECT task_id FROM task WHERE state = 'queued'")}
        unrunnable = [u for u in self.report.unrunnable if u["task_id"] in queued]
        self.progress.update(conn, self.report)   # what was committed after the last tick
        conn.close()
        summary = RunSummary(counts=counts, total=sum(counts.values()),
                             elapsed_seconds=time.monotonic() - self.started,
                             workstreams=ws_states, unrunnable=unrunnable,
                             interrupted=self.interrupted, owner=self.owner,
                             warnings=self.warnings)
        self.progress.finish(summary)
        return summary


class _SecondSignal:
    """During tear-down a Ctrl-C (or SIGTERM) no longer raises: it asks to stop the workers
    now instead of waiting for their tasks."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> _SecondSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _file_id(path: Any) -> tuple[int, int] | None:
    """The database file's identity (device, inode); None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _running_tasks(conn: Any, owner: str) -> int:
    return int(db.scalar(
        conn, "SELECT COUNT(*) FROM task t JOIN attempt a ON a.task_id = t.task_id "
              "AND a.generation = t.generation AND a.finished_at IS NULL "
              "JOIN worker w ON w.worker_id = a.worker_id "
              f"WHERE t.state IN {in_list_sql(claimed_states())} AND w.scheduler_owner = ?",
        (owner,)) or 0)


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
            db.checkpoint(conn, "TRUNCATE")
    except apsw.BusyError:
        pass
    finally:
        conn.set_busy_timeout(busy_timeout_ms)


def _starting(conn: Any, owner: str, children: Any) -> int:
    """How many of the run's live worker processes have not registered yet."""
    alive = [p.pid for p in children if p.poll() is None]
    if not alive:
        return 0
    registered = db.scalar(conn, "SELECT COUNT(DISTINCT pid) FROM worker WHERE "
                                 "scheduler_owner = ? AND pid IN (SELECT value FROM json_each(?))",
                           (owner, json.dumps(alive)))
    return len(alive) - int(registered or 0)


def _exited_children(conn: Any, children: list[Child]) -> dict[str, int]:
    out: dict[str, int] = {}
    for proc in children:
        code = proc.poll()
        if code is None:
            continue
        wid = db.scalar(conn, "SELECT worker_id FROM worker WHERE pid = ? AND state NOT IN "
                              f"{terminal_sql('worker')} ORDER BY registered_at DESC LIMIT 1",
                        (proc.pid,))
        if wid:
            out[wid] = code
    return out


def _stop_children(conn: Any, owner: str, children: dict[str, Child],
                   wait: float, hurry: _SecondSignal) -> bool:
    """Ask the run's workers to stop after their task and wait for them; past ``wait`` seconds
    or on a second Ctrl-C, kill them. True if any worker had to be killed."""
    if not children:
        return False
    try:
        with db.write_tx(conn):
            conn.execute("UPDATE worker SET stop_requested = 1 WHERE scheduler_owner = ? "
                         f"AND state NOT IN {terminal_sql('worker')}", (owner,))
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
    # are killed, and the final health check hands their tasks on.
    killed = False
    while any(p.poll() is None for p in children.values()):
        if hurry.event.is_set() or time.monotonic() >= deadline:
            for proc in children.values():
                if proc.poll() is None:
                    proc.kill()
                    killed = True
            for proc in children.values():
                proc.wait()
            break
        time.sleep(0.005)
    return killed


def summary_text(summary: RunSummary) -> str:
    order = ("completed", "failed", "cancelled", "running", "validating", "retrying", "queued",
             "pending")
    parts = [f"{summary.counts[s]} {s}" for s in order if summary.counts.get(s)]
    head = "all tasks completed" if summary.ok else (
        "interrupted" if summary.interrupted else "not every task completed")
    if summary.total == 0 and not summary.interrupted:
        head = "nothing to run: no tasks loaded in scope (`orch load` imports tasks/)"
        lines = [f"{head} ({summary.elapsed_seconds:.1f} s)"]
    else:
        lines = [f"{head}: {', '.join(parts) or 'none finished'} "
                 f"({plural(summary.total, 'task')}, {summary.elapsed_seconds:.1f} s)"]
    for ws, state in sorted(summary.workstreams.items()):
        lines.append(f"  workstream {ws}: {state}")
    for item in summary.unrunnable:
        lines.append(f"  {item['task_id']} cannot run: {item['reason']}")
    for warning in summary.warnings:
        lines.append(f"  warning: {warning}")
    if not summary.ok:
        lines.append("next: `orch status`, `orch why TASK`, `orch retry TASK`")
    return "\n".join(lines)
