"""A worker process: registers, heartbeats, claims one task at a time, runs it, reports.

Public API:
    ``WorkerOptions``; ``Worker(project, options)`` with ``register()``, ``run_forever()``,
    ``run_one(claim)``, ``stop()``; ``main(...)`` (what ``orch worker`` and a forked worker
    run); ``managed_main(argv)`` (a worker ``orch run`` spawns); ``worker_env(claim,
    root)``; ``CLAIM_LOG_ENV``.

Stability Guarantees:
    A worker runs at most one task at a time (the SQL index on ``task.worker_id`` enforces it).
    It heartbeats every ``workers.heartbeat_seconds`` from a thread with its own connection, so a
    long command never makes it look dead; each heartbeat renews its leases. It polls its task's
    row while the command runs and kills the process group within 0.1 s when the task is
    cancelled or handed on. A worker started by ``orch run`` finishes its task and exits when
    that ``orch run`` is gone, so a restarted scheduler never meets two runs of one task.
    Linked to a kernel (``WorkerOptions.link``: the socket pair of the ``orch run`` that
    started it, or the kernel's socket an ``orch worker`` found), a worker writes no claim and
    no report: it sends its reports and receives its claims (``kernel.runtime.channel``);
    without a kernel, or once its link broke, it writes them itself with the same fenced
    functions (``kernel.runtime.claims``). Its registration, heartbeats and shutdown are always
    its own transactions.

Integration Points:
    ``orch run --workers N`` forks N of these from itself, or starts them as ``python -m
    kernel --root DIR worker --managed-by ...`` (``kernel.runtime.runner``; ``managed_main``
    without the command line); ``orch worker`` joins by hand.
    Claims and outcomes go through ``kernel.runtime.claims``; rules
    through ``kernel.runtime.rules``; commands through ``kernel.runtime.executors``.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.faults``,
    ``kernel.base.files``, ``kernel.base.processes``, ``kernel.definitions.executors``,
    ``kernel.definitions.fit``, ``kernel.definitions.offers``, ``kernel.observe.exports``,
    ``kernel.runtime.attempts``, ``kernel.runtime.changes``, ``kernel.runtime.channel``,
    ``kernel.runtime.claims``, ``kernel.runtime.cluster``, ``kernel.runtime.context``,
    ``kernel.runtime.executors``, ``kernel.runtime.executors.base``,
    ``kernel.runtime.executors.dask``, ``kernel.runtime.health``, ``kernel.runtime.leases``,
    ``kernel.runtime.rules``, ``kernel.runtime.worktree``, ``kernel.store.db``,
    ``kernel.store.machines``, ``kernel.store.project``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import apsw

from kernel import __version__
from kernel.base import clock, faults
from kernel.base.files import open_private, private_dir
from kernel.base.processes import become_subreaper, pid_alive
from kernel.definitions import offers
from kernel.definitions.executors import AGENT_EXECUTORS, effective_executor
from kernel.definitions.offers import Assessment
from kernel.runtime import attempts, claims, leases
from kernel.runtime.changes import tree_lock
from kernel.runtime.channel import KernelLink, connect, from_fd
from kernel.runtime.executors import ExecutionRequest, ExecutionResult, Executor, executor_for
from kernel.runtime.executors.base import WorkerLost
from kernel.runtime.rules import run_rules
from kernel.runtime.worktree import Commit
from kernel.store import db
from kernel.store.machines import shipped, states_allowing, terminal_states, transition_in_tx
from kernel.store.project import Project

#: Set (``orch bench`` sets it): every claim a worker waits for is timed and appended to this
#: file, one ``seconds<TAB>claimed(0|1)<TAB>call`` line per call in one ``O_APPEND`` write (read
#: by ``kernel.bench.shim.read_claim_log``). ``call``: ``claim_next`` and ``finish_and_claim``
#: for a worker that claims itself; ``report`` (a report sent to the kernel until its reply,
#: which carries the next claim) and ``wait`` (from the moment a linked worker waits for work
#: until a claim arrives) for a worker linked to its ``orch run``.
CLAIM_LOG_ENV = "ORCH_BENCH_CLAIM_LOG"


def _log_claim(path: str | None, seconds: float, claimed: bool, call: str) -> None:
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{seconds:.6f}\t{int(claimed)}\t{call}\n".encode())
    finally:
        os.close(fd)


@dataclass
class WorkerOptions:
    capabilities: Sequence[str] = ()          # empty: every capability of the catalog
    workstreams: Sequence[str] | None = None   # None: all
    scheduler_owner: str | None = None
    parent_pid: int | None = None              # exit after the task when this pid is gone
    name: str = ""
    once: bool = False                         # exit when nothing is claimable (tests)
    idle_exit_seconds: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    export_views: bool = True                  # when not managed by an `orch run`
    link: Any = None                           # a socket to its `orch run` (kernel.runtime.channel)
    #: (scheduler address, Dask worker address): this worker stands for that Dask worker, and
    #: its tasks' commands run there (kernel.runtime.executors.dask).
    dask: tuple[str, str] | None = None


def new_worker_id() -> str:
    return f"w-{socket.gethostname().split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def worker_env(claim: claims.Claim, root: Path, cwd: Path,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The task's environment: ``base`` (default: this process's environment) plus ORCH_*."""
    env = dict(os.environ if base is None else base)
    env.update({
        "ORCH_ROOT": str(root), "ORCH_TASK_ID": claim.task_id,
        "ORCH_WORKSTREAM_ID": claim.workstream_id, "ORCH_ATTEMPT": str(claim.attempt_no),
        "ORCH_GENERATION": str(claim.generation), "ORCH_WORKER_ID": claim.worker_id,
        "ORCH_WORKTREE": str(cwd),
    })
    return env


class Worker:
    def __init__(self, project: Project, options: WorkerOptions | None = None,
                 worker_id: str | None = None) -> None:
        self.project = project
        self.options = options or WorkerOptions()
        self.config = project.config
        self.worker_id = worker_id or new_worker_id()
        self.hostname = socket.gethostname()
        self.conn = project.connect()
        self._stop = threading.Event()     # hard stop: kill the running task, hand it on
        self._drain = threading.Event()    # finish the running task, then exit
        self._closing = threading.Event()  # ends the heartbeat thread
        self._hb_thread: threading.Thread | None = None
        self._offers: dict[str, str] = {}
        self.current: claims.Claim | None = None
        self.declared_dead = False
        self.next_claim: claims.Claim | None = None   # claimed in the finishing transaction
        self._exporter: Any = None
        self.link = KernelLink(self.options.link) if self.options.link is not None else None
        # Read once: copying os.environ item by item costs ~0.1 ms, on every task.
        self._base_env = dict(os.environ)
        self._claim_log = os.environ.get(CLAIM_LOG_ENV)
        self._limits: dict[str, float] = {}
        self.session: Any = None         # kernel.runtime.cluster.Session, for a Dask worker
        self.task_host = self.hostname   # where its tasks' process groups live
        self.dask_advertised: set[str] = set()
        if self.options.dask is not None:
            from kernel.runtime.cluster import Session

            self.session = Session(*self.options.dask,
                                   timeout=self.config.executors.dask.connect_timeout_seconds)
            self.task_host = self.session.host

    # ------------------------------------------------------------------ lifecycle

    @property
    def offers(self) -> dict[str, str]:
        """The capabilities this worker offers (id -> version), once registered."""
        return dict(self._offers)

    @property
    def heartbeat(self) -> float:
        return self.config.workers.heartbeat_seconds

    @property
    def lease_ttl(self) -> float:
        return leases.ttl_for(self.config.workers)

    def _assess(self) -> list[Assessment]:
        """What this worker meets of the catalog: on this machine, or on its Dask worker."""
        if self.options.capabilities:
            return []
        rows = offers.catalog_rows(self.conn)
        if self.session is None:
            return offers.assess(rows, self.config, self.project.root)
        from kernel.runtime.executors.dask import assess_on_worker

        assessed = self.session.call(assess_on_worker, rows, self.config,
                                     str(self.project.root))
        # A Dask worker started with a capability's id among its resources (`dask worker
        # --resources "cap-gpu=1"`) offers that capability, as `orch worker --capability` does.
        info = self.session.info(fresh=True)
        declared = set(info.resources) if info is not None else set()
        return [dataclasses.replace(a, missing=()) if a.capability_id in declared else a
                for a in assessed]

    def _dask_limits(self) -> dict[str, float]:
        """What its Dask worker advertises of every resource some worker of the cluster
        advertises (0 where it has none): ``worker_resource`` rows (sql/0009)."""
        cluster = self.session.cluster_workers()
        self.dask_advertised = {r for w in cluster.values() for r in w.resources}
        mine = cluster[self.session.worker].resources if self.session.worker in cluster else {}
        return {r: float(mine.get(r, 0.0)) for r in sorted(self.dask_advertised)}

    def register(self) -> None:
        assessed = self._assess()   # before the lock
        self._limits = self._dask_limits() if self.session is not None else {}
        # The state machines (parsed from their YAML once per process) are read inside write
        # transactions (claims, shutdown): parse them now, not while holding the write lock.
        shipped()
        with db.write_tx(self.conn):
            stamp = clock.now_iso()  # under the write lock: events stay in time order
            unmet = {a.capability_id: list(a.missing) for a in assessed if not a.met}
            if self.options.capabilities:
                rows = []
                for cap in self.options.capabilities:
                    name, _, version = cap.partition("@")
                    found = db.scalar(self.conn, "SELECT version FROM capability "
                                                 "WHERE capability_id = ?", (name,))
                    rows.append((name, version or found or "0.0.0"))
            else:  # what this machine meets of the catalog (docs/execution_model/WORKERS.md)
                rows = [(a.capability_id, a.version) for a in assessed if a.met]
            self.conn.execute(
                "INSERT INTO worker (worker_id, name, pid, hostname, version, "
                "heartbeat_interval_seconds, last_heartbeat_at, registered_at, updated_at, "
                "scheduler_owner, workstreams, executor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.worker_id, self.options.name or self.worker_id, os.getpid(),
                 self.hostname, __version__, self.heartbeat, stamp, stamp, stamp,
                 self.options.scheduler_owner,
                 json.dumps(list(self.options.workstreams))
                 if self.options.workstreams is not None else None,
                 "dask" if self.session is not None else "subprocess"))
            self.conn.executemany("INSERT INTO worker_capability VALUES (?, ?, ?)",
                                  [(self.worker_id, c, v) for c, v in rows])
            self.conn.executemany("INSERT INTO worker_resource VALUES (?, ?, ?)",
                                  [(self.worker_id, r, a) for r, a in self._limits.items()])
            transition_in_tx(self.conn, "worker", self.worker_id, "idle", "registration_complete",
                             {"at": stamp, "capabilities": sorted(c for c, _ in rows),
                              **({"not_offered": unmet} if unmet else {})})
        self._offers = dict(rows)
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                           name="orch-heartbeat")
        self._hb_thread.start()
        if self.options.scheduler_owner is None and self.config.views.export \
                and self.options.export_views:
            # Without an `orch run` to export after commits, a worker joined by hand keeps the
            # .state views current itself (STATE-OBS-001 holds whoever commits).
            from kernel.observe.exports import Exporter

            self._exporter = Exporter(
                self.project.db_path, self.project.state_dir,
                min_interval=self.config.views.export_min_interval_seconds).start()

    def stop(self) -> None:
        """Kill the running task (it is handed on) and exit."""
        self._drain.set()
        self._stop.set()

    def drain(self) -> None:
        """Finish the running task, then exit; a second call stops at once."""
        if self._drain.is_set():
            self._stop.set()
        self._drain.set()

    def shutdown(self, trigger: str = "shutdown_requested") -> None:
        self._drain.set()
        self._closing.set()
        stamp = clock.now_iso()
        try:
            with db.write_tx(self.conn):
                state = db.scalar(self.conn, "SELECT state FROM worker WHERE worker_id = ?",
                                  (self.worker_id,))
                if state in states_allowing("worker", "shutdown_requested"):
                    running = db.scalar(self.conn, "SELECT task_id FROM task WHERE worker_id = ?",
                                        (self.worker_id,))
                    if running:
                        self._hand_on_stopped_in_tx(running)
                    transition_in_tx(self.conn, "worker", self.worker_id, "shutdown", trigger,
                                     {"at": stamp}, stopped_at=stamp, exit_code=0)
        finally:
            if self._hb_thread is not None:
                self._hb_thread.join(timeout=2)
            self.conn.close()
            if self._exporter is not None:
                self._exporter.close()   # a last export: the views end exact

    def _hand_on_stopped_in_tx(self, task_id: str) -> None:
        """The worker was stopped while running ``task_id``: back to the queue, no retry
        counted (trigger ``operator_interrupted``)."""
        attempts.hand_on_in_tx(
            self.conn, task_id, time.time(), failure_mode=None,
            reason="interrupted by the operator: the worker was stopped while running the task",
            backoff=attempts.retry_backoff(self.config.workers), interrupted=True)

    def _heartbeat_loop(self) -> None:
        with self.project.open() as conn:
            while not self._closing.wait(self.heartbeat):
                if self.session is not None and not self._dask_beat():
                    continue
                try:
                    with db.write_tx(conn):
                        alive = self._beat_in_tx(conn, time.time())
                except apsw.BusyError:
                    continue
                if not alive:
                    return

    def _dask_beat(self) -> bool:
        """A Dask worker's kernel heartbeat follows the scheduler's view of it: no beat while
        the scheduler has not seen it lately (the kernel then finds it unresponsive); once it
        left the cluster, an idle proxy exits (a running task finds out by itself)."""
        if not self.session.present():
            self._drain.set()
            return False
        return bool(self.session.beat_ok(self.heartbeat))

    def _beat_in_tx(self, conn: apsw.Connection, now: float) -> bool:
        """One heartbeat: renew the worker's leases, recover from unresponsive. False when
        the kernel declared the worker lost (it stops at once; its task was handed on)."""
        stamp = clock.iso(now)
        state = db.scalar(conn, "SELECT state FROM worker WHERE worker_id = ?",
                          (self.worker_id,))
        if state in terminal_states("worker"):
            self.declared_dead = True
            self._stop.set()
            self._drain.set()
            return False
        conn.execute("UPDATE worker SET last_heartbeat_at = ? WHERE worker_id = ?",
                     (stamp, self.worker_id))
        leases.renew_in_tx(conn, self.worker_id, now, self.lease_ttl)
        if state == "unresponsive":
            has_task = self.current is not None
            transition_in_tx(conn, "worker", self.worker_id, "busy" if has_task else "idle",
                             "health_check_recovered", {"at": stamp})
        return True

    def _parent_gone(self) -> bool:
        if self.link is not None and self.link.broken and self.options.parent_pid is not None:
            return True
        pid = self.options.parent_pid
        return pid is not None and (os.getppid() != pid or not pid_alive(pid))

    def _stopping(self) -> bool:
        """No new claim now (a stop, a drain, --once, or no parent any more)."""
        return (self.options.once or self.declared_dead or self._stop.is_set()
                or self._drain.is_set() or self._parent_gone())

    def should_exit(self) -> bool:
        if self._drain.is_set() or self._parent_gone():
            return True
        flag = db.scalar(self.conn, "SELECT stop_requested FROM worker WHERE worker_id = ?",
                         (self.worker_id,))
        return bool(flag)

    # ------------------------------------------------------------------ the loop

    def run_forever(self) -> int:
        """Run tasks until asked to stop: sent by the kernel while linked to it; claimed in
        the worker's own transactions otherwise, and by a worker that joined by hand once its
        kernel is gone."""
        try:
            if self.link is not None:
                self._serve_link(self.link)
            if not self.should_exit():
                self._claim_loop()
        finally:
            if self.link is not None:
                self.link.close()
            if self.session is not None:
                self.session.close()
            if self.declared_dead:
                self.conn.close()
                if self._exporter is not None:
                    self._exporter.close()
            else:
                self.shutdown()
        return 0

    def _claim_loop(self) -> None:
        last_version = None
        idle_since = time.monotonic()
        next_try = 0.0
        while not self.should_exit():
            version = self.conn.pragma("data_version")
            now_m = time.monotonic()
            if version != last_version or now_m >= next_try:
                last_version = version
                next_try = now_m + 0.5
                started = time.perf_counter()
                try:
                    claim = claims.claim_next(self.conn, self.worker_id, time.time,
                                              lease_ttl=self.lease_ttl, offers=self._offers,
                                              limits=self._limits)
                except apsw.BusyError:
                    claim = None
                _log_claim(self._claim_log, time.perf_counter() - started,
                           claim is not None, "claim_next")
                if claim is not None:
                    while claim is not None:   # the next claim may come with the finish
                        self.next_claim = None
                        self.run_one(claim)
                        if self._exporter is not None:
                            self._exporter.request()
                        claim, self.next_claim = self.next_claim, None
                    idle_since = time.monotonic()
                    last_version = None
                    continue
                if self.options.once:
                    break
            if (self.options.idle_exit_seconds is not None
                    and time.monotonic() - idle_since > self.options.idle_exit_seconds):
                break
            time.sleep(0.005)

    def _serve_link(self, link: KernelLink) -> None:
        """While linked to a kernel (``orch run``): it sends the claims and commits the
        reports (``kernel.runtime.dispatch``); the worker only runs tasks. Returns when the
        worker should exit or the link broke."""
        link.hello(self.worker_id)
        while not self.should_exit() and not link.broken:
            # A claim waited for while idle is not timed (CLAIM_LOG_ENV): the wait is mostly
            # for work to exist, not for the kernel.
            claim = link.wait_claim(0.25)
            while claim is not None:   # the next claim comes with the report
                self.next_claim = None
                self.run_one(claim)
                claim, self.next_claim = self.next_claim, None

    def _commit(self, claim: claims.Claim,
                details: Mapping[str, Any]) -> tuple[Commit | None, str | None]:
        """Commit the task's changes on the workstream branch: (what was committed, or None
        when nothing changed; an error message when the commit failed).

        Tasks finishing at once in one worktree share one change detection and at most one
        commit (``kernel.runtime.worktree.commit_finished``): a task that changed nothing
        never waits for a commit. How changes are attributed: "Commits and attribution" in
        docs/execution_model/WORKERS.md.
        """
        from kernel.base.errors import OrchError
        from kernel.runtime.changes import holder_id, tree_holders
        from kernel.runtime.worktree import Finished, commit_finished

        assert claim.worktree_path
        locks = self.project.state_dir / "locks"
        task = Finished(claim.task_id, commit_message(claim, details), holder_id())
        try:
            return commit_finished(Path(claim.worktree_path), task,
                                   lambda: tree_holders(locks, claim.workstream_id)), None
        except OrchError as exc:
            return None, f"the command succeeded but its changes could not be committed: " \
                         f"{exc.message}"

    def _should_stop(self, claim: claims.Claim, conn: apsw.Connection) -> str | None:
        if self.declared_dead:
            return "the worker was declared lost"
        if self._stop.is_set():
            return "the worker was stopped"
        return claims.is_current(conn, claim)

    def _execute(self, claim: claims.Claim, request: ExecutionRequest) -> ExecutionResult:
        """Run the executor; an error inside it fails the attempt (outcome ``error``, not
        retried) instead of killing the worker."""
        try:
            return self._executor(claim).run(
                request,
                on_start=lambda pgid: self._started(claim, pgid),
                should_stop=lambda: self._should_stop(claim, self.conn))
        except (apsw.Error, KeyboardInterrupt):
            raise
        except WorkerLost as exc:
            self._lost(str(exc))
            return ExecutionResult("error", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - any executor failure is the task's, not ours
            return ExecutionResult("error", error=f"the {claim.type or 'task'} executor "
                                                  f"failed: {type(exc).__name__}: {exc}")

    def _executor(self, claim: claims.Claim) -> Executor:
        """The task's executor; for a Dask worker, run there (kernel.runtime.executors.dask)."""
        if self.session is None:
            return executor_for(claim.definition)
        from kernel.definitions.fit import task_requests
        from kernel.runtime.executors.dask import DaskExecutor, dask_resources

        inner = effective_executor((claim.definition.get("execution") or {}).get("executor"),
                                   claim.type)
        return DaskExecutor(self.session, inner, self.config.executors.dask.setup_command,
                            dask_resources(task_requests(self.conn, claim.task_id),
                                           self.dask_advertised))

    def _lost(self, reason: str) -> None:
        """Its Dask worker left the cluster mid-task: hand the task on as a lost worker's
        (``worker_lost``, a new generation), exactly as the kernel does for a local worker
        that died, and stop."""
        from kernel.runtime.context import TickContext
        from kernel.runtime.health import lose_worker_in_tx

        ctx = TickContext(root=self.project.root, config=self.config, workstreams=None,
                          worktrees=False)
        with db.write_tx(self.conn):
            lose_worker_in_tx(self.conn, time.time(), ctx, self.worker_id, "shutdown",
                              "worker_crashed", "Worker-Crashed", reason, None)
        self.declared_dead = True
        self._stop.set()
        self._drain.set()

    def _started(self, claim: claims.Claim, pgid: int) -> None:
        """Record the task's process group (with the kernel's next commit, when linked)."""
        def direct() -> None:
            claims.record_process(self.conn, claim, pgid, self.task_host)

        if self.link is None:
            direct()
        else:
            self.link.started(claim.attempt_id, pgid, self.task_host, direct)

    def _send(self, claim: claims.Claim, msg: dict[str, Any],
              direct: Callable[[], str]) -> str:
        """A report: to the kernel, which commits it (and the next claim, when the worker
        asked for more) with the others; written by ``direct()`` without a kernel."""
        if self.link is None:
            return direct()
        more = not self._stopping()
        sent = time.perf_counter()
        state, self.next_claim = self.link.report(
            {**msg, "attempt_id": claim.attempt_id, "more": more}, direct)
        if more and state != "validating":
            _log_claim(self._claim_log, time.perf_counter() - sent,
                       self.next_claim is not None, "report")
        return state

    def run_one(self, claim: claims.Claim) -> str:
        """Run one claimed task to its end: the pre-execution rules, the command, the commit of
        its changes, the report (with the next claim, when the worker goes on), the
        post-execution rules. The task's new state, "stale" or "handed_on".

        All of it holds the working tree's lock (``kernel.runtime.changes.tree_lock``): shared
        for a command, exclusive for an agent, so an agent is judged on its own changes."""
        self.current = claim
        place = self._workplace(claim)
        agent = effective_executor((claim.definition.get("execution") or {}).get("executor"),
                                   claim.type) in AGENT_EXECUTORS
        try:
            with tree_lock(self.project.state_dir / "locks",
                           claim.workstream_id if claim.worktree_path else "root", agent,
                           lambda: self._should_stop(claim, self.conn),
                           register=claim.worktree_path is not None) as stopped:
                if claim.pre_rules and stopped is None:
                    refused = self._pre_rules(claim, place)
                    if refused is not None:
                        return refused
                result = (ExecutionResult("cancelled", error=stopped) if stopped is not None
                          else self._execute(claim, self._request(claim, place)))
                faults.point("before_finish")
                if self.declared_dead:
                    return "stale"
                return self._report(claim, place, result)
        finally:
            self.current = None

    def _workplace(self, claim: claims.Claim) -> _Workplace:
        root = self.project.root
        base = Path(claim.worktree_path) if claim.worktree_path else root
        workdir = (claim.definition.get("execution") or {}).get("working_directory") or "."
        env = {**worker_env(claim, root, base, self._base_env), **self.options.extra_env}
        return _Workplace(base, (base / workdir).resolve(), env)

    def _pre_rules(self, claim: claims.Claim, place: _Workplace) -> str | None:
        """Run the pre-execution rules; the task's new state when one failed (it never
        starts), else None."""
        report = run_rules(claim.pre_rules, place.cwd, self.config.rules, env=place.env,
                           stop_at_first_failure=True)
        if report.passed:
            return None
        bad = report.failed[0]
        return self._send(claim, {"op": "refused", "rule": bad.rule, "reason": bad.reason,
                                  "rules": report.as_dict()},
                          lambda: claims.fail_before_start(
                              self.conn, claim, time.time(), rule=bad.rule, reason=bad.reason,
                              rules=report.as_dict()))

    def _request(self, claim: claims.Claim, place: _Workplace) -> ExecutionRequest:
        """What the executor runs; the prompt is written to its file when the command names
        ``{prompt_file}``."""
        w = self.config.workers
        execution = claim.definition.get("execution") or {}
        prompt = execution.get("prompt") or ""
        prompt_file = self.project.state_dir / "prompts" / \
            f"{claim.task_id}-{claim.attempt_no}.txt"
        if "{prompt_file}" in (claim.command or ""):
            private_dir(prompt_file.parent)
            with open_private(prompt_file, "w") as fh:
                fh.write(prompt)
        return ExecutionRequest(
            task_id=claim.task_id, workstream_id=claim.workstream_id,
            attempt_no=claim.attempt_no, command=claim.command or "",
            shell=bool(execution.get("shell")), cwd=place.cwd, env=place.env,
            timeout_seconds=claim.timeout_seconds,
            log_path=self.project.logs_dir / f"{claim.task_id}.log",
            placeholders={"prompt": prompt, "prompt_file": str(prompt_file),
                          "task_id": claim.task_id, "workstream_id": claim.workstream_id,
                          "attempt": str(claim.attempt_no), "root": str(self.project.root),
                          "worktree": str(place.base)},
            kill_grace_seconds=w.kill_grace_seconds, definition=claim.definition,
            log_cap_bytes=w.max_log_bytes_per_attempt)

    def _report(self, claim: claims.Claim, place: _Workplace, result: ExecutionResult) -> str:
        """Report the command's result (and run the post-execution rules when it passed).

        A command's change is committed before its rules run; an agent's (a result with
        ``undo``) only once its rules passed, and undone when they fail."""
        reason = None
        if result.outcome == "cancelled":
            reason = self._should_stop(claim, self.conn) or "stopped"
            if self._stop.is_set() and claims.is_current(self.conn, claim) is None:
                # We were asked to stop mid-task: hand the task on, it will run again.
                with db.write_tx(self.conn):
                    self._hand_on_stopped_in_tx(claim.task_id)
                    attempts.worker_idle_in_tx(self.conn, self.worker_id, clock.now_iso(),
                                               claim.task_id)
                return "handed_on"
        deferred = result.undo is not None and bool(claim.post_rules)
        if result.outcome == "succeeded" and claims.is_current(self.conn, claim) is not None:
            _undo(result)          # the task was cancelled or handed on meanwhile
        elif result.outcome == "succeeded" and claim.worktree_path and not deferred:
            result = self._committed(claim, result)
        state = self._finish(claim, result, reason)
        if state != "validating":
            if deferred and state == "stale":
                _undo(result)      # handed on or cancelled meanwhile: nothing of it stays
            return state
        started = time.monotonic()
        report = run_rules(claim.post_rules, place.cwd, self.config.rules, env=place.env)
        passed, summary = report.passed, report.summary()
        if deferred and passed and claim.worktree_path:
            result = self._committed(claim, result)
            if result.outcome != "succeeded":
                passed, summary = False, result.error or "the commit failed"
        elif deferred and not passed:
            summary += _undo(result)
        duration = result.duration_seconds + time.monotonic() - started
        return self._send(claim, {"op": "validated", "passed": passed, "summary": summary,
                                  "rules": report.as_dict(), "duration": duration,
                                  "details": dict(result.details)},
                          lambda: claims.finish_validation(
                              self.conn, claim, time.time(), passed=passed, summary=summary,
                              rules=report.as_dict(), duration=duration,
                              details=dict(result.details)))

    def _committed(self, claim: claims.Claim, result: ExecutionResult) -> ExecutionResult:
        """The task's changes become one commit on the workstream's branch, described in the
        result's details (files, summary, message, sha); a commit that fails turns the result
        into an error (and an agent's change is undone)."""
        commit, commit_error = self._commit(claim, result.details)
        if commit_error:
            return ExecutionResult("error", exit_code=result.exit_code,
                                   error=commit_error + _undo(result),
                                   duration_seconds=result.duration_seconds,
                                   details=result.details)
        if commit is None:
            return result
        return dataclasses.replace(result, details={
            **result.details, "files_modified": list(commit.files),
            "diff_summary": commit.summary, "commit_message": commit.message,
            "commit": commit.sha})

    def _finish(self, claim: claims.Claim, result: ExecutionResult, reason: str | None) -> str:
        backoff = attempts.retry_backoff(self.config.workers)
        if self.link is not None:
            return self._send(claim, {
                "op": "finished", "outcome": result.outcome, "exit_code": result.exit_code,
                "error": result.error, "duration": result.duration_seconds,
                "details": dict(result.details), "cancel_reason": reason},
                lambda: claims.finish_execution(
                    self.conn, claim, time.time(), outcome=result.outcome,
                    exit_code=result.exit_code, error=result.error,
                    duration=result.duration_seconds, details=dict(result.details),
                    backoff=backoff, cancel_reason=reason))
        if result.outcome != "cancelled" and not self._stopping():
            # Finishing and claiming the next task share one transaction.
            started = time.perf_counter()
            state, self.next_claim = claims.finish_and_claim(
                self.conn, claim, time.time(), outcome=result.outcome,
                exit_code=result.exit_code, error=result.error,
                duration=result.duration_seconds, details=dict(result.details),
                backoff=backoff, lease_ttl=self.lease_ttl, offers=self._offers)
            if state != "validating":
                _log_claim(self._claim_log, time.perf_counter() - started,
                           self.next_claim is not None, "finish_and_claim")
            return state
        return claims.finish_execution(
            self.conn, claim, time.time(), outcome=result.outcome,
            exit_code=result.exit_code, error=result.error,
            duration=result.duration_seconds, details=dict(result.details),
            backoff=backoff, cancel_reason=reason)


def commit_message(claim: claims.Claim, details: Mapping[str, Any]) -> str:
    """The commit's message: the agent's own (its report file), else ``orch: TASK: NAME``;
    an agent's commit carries trailers naming the agent, its model and the attempt."""
    subject = f"orch: {claim.task_id}: {claim.definition.get('name', '')}".rstrip(": ")
    message = str(details.get("commit_message") or subject)
    if details.get("agent"):
        trailers = [f"Orch-Task: {claim.workstream_id}/{claim.task_id} attempt "
                    f"{claim.attempt_no}", f"Orch-Agent: {details['agent']}"]
        if details.get("model"):
            trailers.append(f"Orch-Model: {details['model']}")
        message += "\n\n" + "\n".join(trailers)
    return message


def _undo(result: ExecutionResult) -> str:
    """Undo an agent's change (``result.undo``); what to add to the error when it could not
    be undone."""
    from kernel.base.errors import OrchError

    if result.undo is None:
        return ""
    try:
        result.undo()
    except OrchError as exc:
        return f" (its changes could not be undone: {exc.message})"
    return " (its changes were undone)"


class _Workplace(NamedTuple):
    """Where a task runs: the worktree (or the project root), the working directory, and the
    environment."""

    base: Path
    cwd: Path
    env: dict[str, str]


def main(project: Project, options: WorkerOptions, worker_id: str | None = None,
         on_joined: Callable[[Worker], None] | None = None) -> int:
    """Register a worker and run it until it is asked to stop; ``on_joined(worker)`` is called
    once it is registered (``orch worker`` says so)."""
    if options.link is None and options.parent_pid is None and not options.once:
        # Joined by hand: report to the running `orch run`, if there is one
        # (kernel.runtime.channel); without one, claim and report in its own transactions.
        options = dataclasses.replace(options, link=connect(project.db_path))
    worker = Worker(project, options, worker_id)

    def on_signal(signum: int, frame: Any) -> None:
        # First signal: finish the running task, then exit. Second: kill it (handed on).
        worker.drain()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Processes a task starts that escape its process group are re-parented to this worker,
    # which ends them with the attempt (kernel.base.processes).
    become_subreaper()
    worker.register()
    if on_joined is not None:
        on_joined(worker)
    return worker.run_forever()


def managed_main(argv: list[str]) -> int | None:
    """``python -m kernel --root DIR worker --managed-by OWNER --parent-pid PID --name NAME
    [--link-fd FD] [--workstream WS]... [--dask-scheduler ADDR --dask-worker ADDR]`` (``argv``
    without ``worker``): a worker started by
    ``orch run`` when it does not fork one (``kernel.runtime.runner.spawn_worker``), with the
    runtime only, not the command line (click, its command table). None for any other
    argument: then the command line runs it as ``orch worker``. It reads and validates
    ``orch.toml`` itself, as ``orch worker`` does. With ``--link-fd`` it reports to its
    ``orch run`` through that socket (``kernel.runtime.channel``)."""
    import argparse
    import gc

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in ("--root", "--managed-by", "--parent-pid", "--name", "--link-fd",
                   "--dask-scheduler", "--dask-worker"):
        parser.add_argument(option)
    parser.add_argument("--workstream", action="append", default=None)
    args, rest = parser.parse_known_args(argv)
    if rest or None in (args.root, args.managed_by, args.parent_pid) \
            or not args.parent_pid.isdigit() or not (args.link_fd or "0").isdigit() \
            or (args.dask_scheduler is None) != (args.dask_worker is None):
        return None
    gc.freeze()   # the imports are permanent: the collector skips them, at exit too
    return main(Project(Path(args.root).resolve()), WorkerOptions(
        workstreams=args.workstream, scheduler_owner=args.managed_by,
        parent_pid=int(args.parent_pid), name=args.name or "",
        link=from_fd(int(args.link_fd)) if args.link_fd else None,
        dask=(args.dask_scheduler, args.dask_worker) if args.dask_worker else None))
