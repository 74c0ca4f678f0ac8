"""The in-process references of noop-throughput: the raw SQLite floor and the same-work ceiling.

Public API:
    ``Reference`` (``tasks``, ``wall_seconds``, ``cpu_seconds``, ``span_seconds``;
    ``tasks_per_second``, ``cpu_ms_per_task``); ``raw_floor(directory, n_tasks, tx_per_task)
    -> Reference``; ``same_work_ceiling(project, workers, batch) -> Reference``;
    ``CEILING_BATCH``.

Stability Guarantees:
    Both run in this process, on one connection, WAL with ``synchronous=NORMAL`` (orch's
    default durability), and are timed with ``time.perf_counter`` (wall) and
    ``time.process_time`` (CPU of this process) around the measured loop only.

    *Raw floor* (``raw_floor``): the task-row updates of one task (claim; running ->
    validating; validating -> completed) issued with apsw on a plain table with the task
    table's columns, without triggers, events, attempts, workers or scheduling, in
    ``tx_per_task`` write transactions per task (1 to 3; with 2 the claim is alone). What
    SQLite itself costs for the three row updates: no orch can get there while it audits.

    *Same-work ceiling* (``same_work_ceiling``): orch's own per-task SQL, group-committed, in
    one process, on the shipped schema, through the kernel's real functions (not a copy of
    their SQL, so it follows the kernel as it changes). On a loaded project (the same N noop
    tasks as the ``orch run`` it is compared with): ``workers`` worker rows are registered by
    ``kernel.runtime.worker.Worker.register`` (its heartbeat thread included, stopped by
    ``Worker.shutdown`` at the end); the scheduler's queue move
    (``kernel.runtime.attempts.queue_ready_in_tx``) queues the ready tasks and each worker
    claims its first task (``kernel.runtime.claims.claim_in_tx``); then, in ONE
    ``kernel.store.db.write_tx`` per batch of ``batch`` tasks, each worker in turn finishes
    its running task (``kernel.runtime.claims.finish_execution_in_tx``, outcome succeeded:
    running -> validating -> completed, the attempt closed, the dependents queued, the
    worker idle) and claims its next one, and the batch ends with the scheduler's queue
    move. Every transition goes through the triggers and writes its event, as in ``orch
    run``; nothing is executed (noop). The ceiling's rate is the completed tasks over the
    same span as orch's figure (first ``task_started`` to last ``task_completed`` event);
    ``wall_seconds`` is the whole loop (first queue move to last commit). It raises when a
    task is left unfinished.

Integration Points:
    ``kernel.bench.throughput`` (the ``vs same-work ceiling`` and ``vs raw SQLite floor``
    figures and their CPU per task). Uses ``kernel.runtime.claims.claim_in_tx`` and
    ``finish_execution_in_tx``, public aliases of the steps ``claim_next`` and
    ``finish_and_claim`` compose.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.bench.harness``, ``kernel.definitions.fit``,
    ``kernel.runtime.attempts``, ``kernel.runtime.claims``, ``kernel.runtime.worker``,
    ``kernel.store.db``, ``kernel.store.project``, ``kernel.store.schema``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.store import db, schema
from kernel.store.project import Project

#: Tasks per write transaction of the same-work ceiling (the issue's group commit measured 100).
CEILING_BATCH = 100


@dataclass
class Reference:
    tasks: int
    wall_seconds: float
    cpu_seconds: float
    span_seconds: float | None = None   # event span; None: the wall clock is the span

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / max(self.span_seconds or self.wall_seconds, 1e-6)

    @property
    def cpu_ms_per_task(self) -> float:
        return self.cpu_seconds * 1000 / max(self.tasks, 1)


# ----------------------------------------------------------------------------- the raw floor

def _task_columns(directory: Path) -> list[tuple[str, str]]:
    conn = schema.connect(directory / "kernel.db", create=True)
    try:
        return [(name, ctype or "") for _cid, name, ctype, *_ in
                conn.execute("PRAGMA table_info(task)")]
    finally:
        conn.close()


_FLOOR_UPDATES = [
    "UPDATE task SET state = 'running', worker_id = 'w-1', generation = generation + 1, "
    "started_at = ?1, updated_at = ?1, transition_trigger = 'worker_started' "
    "WHERE task_id = ?2 AND state = 'queued' AND generation = 0",
    "UPDATE task SET state = 'validating', worker_id = NULL, updated_at = ?1, "
    "transition_trigger = 'execution_completed' "
    "WHERE task_id = ?2 AND state = 'running' AND generation = 1",
    "UPDATE task SET state = 'completed', completed_at = ?1, updated_at = ?1, "
    "transition_trigger = 'validation_passed' "
    "WHERE task_id = ?2 AND state = 'validating'",
]


def _plain_task_table(conn: apsw.Connection, columns: list[tuple[str, str]],
                      ids: list[str]) -> None:
    conn.execute("CREATE TABLE task (" + ", ".join(f'"{c}" {t}' for c, t in columns)
                 + ", PRIMARY KEY (task_id))")
    stamp = clock.now_iso()
    with db.write_tx(conn):
        conn.executemany(
            "INSERT INTO task (task_id, workstream_id, name, description, type, critical, "
            "priority, state, retry_count, max_retries, retry_delay_seconds, "
            "estimated_duration_seconds, command, definition, generation, created_at, "
            "queued_at, updated_at, bottom_level) VALUES (?, 'bench', 'bench task', '', "
            "'custom', 0, 0, 'queued', 0, 0, 30, 1, 'true', '{}', 0, ?, ?, ?, 1)",
            [(t, stamp, stamp, stamp) for t in ids])


def raw_floor(directory: Path, n_tasks: int, tx_per_task: int = 1) -> Reference:
    """The bare task-row updates (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    columns = _task_columns(directory)
    conn = apsw.Connection(str(directory / "plain.db"))
    try:
        conn.set_busy_timeout(db.DEFAULT_BUSY_TIMEOUT_MS)
        conn.pragma("journal_mode", "wal")
        conn.pragma("synchronous", "NORMAL")
        conn.pragma("journal_size_limit", db.JOURNAL_SIZE_LIMIT)
        ids = [f"t-{i:06d}" for i in range(n_tasks)]
        _plain_task_table(conn, columns, ids)
        statements = _FLOOR_UPDATES
        tx_per_task = max(1, min(tx_per_task, len(statements)))
        groups = [statements[:1], statements[1:]] if tx_per_task == 2 else (
            [statements] if tx_per_task == 1 else [[sql] for sql in statements])
        cpu, start = time.process_time(), time.perf_counter()
        for task_id in ids:
            for group in groups:
                conn.execute("BEGIN IMMEDIATE")
                now = clock.now_iso()
                for sql in group:
                    conn.execute(sql, (now, task_id))
                conn.execute("COMMIT")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        done = db.scalar(conn, "SELECT count(*) FROM task WHERE state = 'completed'")
        if done != n_tasks:
            raise RuntimeError(f"the raw floor completed {done} of {n_tasks} rows")
    finally:
        conn.close()
    return Reference(n_tasks, wall, cpu)


# ----------------------------------------------------------------------- the same-work ceiling

def _register(project: Project, count: int) -> list[Any]:
    from kernel.runtime.worker import Worker, WorkerOptions

    workers = []
    for i in range(count):
        worker = Worker(project, WorkerOptions(scheduler_owner="bench-ceiling",
                                               name=f"bench-ceiling-w{i}"))
        worker.register()
        workers.append(worker)
    return workers


def _drain(conn: apsw.Connection, workers: list[Any], batch: int) -> int:
    """The measured loop: returns the tasks finished."""
    from kernel.definitions.fit import worker_offers
    from kernel.runtime import attempts, claims

    offers = {w.worker_id: worker_offers(conn, w.worker_id) for w in workers}
    ttl = {w.worker_id: w.lease_ttl for w in workers}
    with db.write_tx(conn):
        attempts.queue_ready_in_tx(conn, time.time())
        running = {w.worker_id: claims.claim_in_tx(conn, w.worker_id, time.time(),
                                                   lease_ttl=ttl[w.worker_id],
                                                   offers=offers[w.worker_id])
                   for w in workers}
    finished = 0
    while any(running.values()):
        with db.write_tx(conn):
            in_batch = 0
            while in_batch < batch and any(running.values()):
                for worker_id, claim in running.items():
                    if claim is None:
                        continue
                    state = claims.finish_execution_in_tx(
                        conn, claim, time.time(), outcome="succeeded", exit_code=0,
                        error=None, duration=0.0, details=None, backoff={},
                        cancel_reason=None)
                    if state != "completed":
                        raise RuntimeError(f"the same-work ceiling left {claim.task_id} "
                                           f"{state}")
                    in_batch += 1
                    running[worker_id] = claims.claim_in_tx(
                        conn, worker_id, time.time(), lease_ttl=ttl[worker_id],
                        offers=offers[worker_id])
            attempts.queue_ready_in_tx(conn, time.time())
        finished += in_batch
    return finished


def same_work_ceiling(project: Project, workers: int, batch: int = CEILING_BATCH) -> Reference:
    """orch's per-task SQL, group-committed, in one process (see the module docstring)."""
    from kernel.bench.harness import event_span

    registered = _register(project, workers)
    conn = project.connect()
    try:
        cpu, start = time.process_time(), time.perf_counter()
        finished = _drain(conn, registered, max(1, batch))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        left = int(db.scalar(conn, "SELECT count(*) FROM task WHERE state != 'completed'"))
    finally:
        conn.close()
        for worker in registered:
            worker.shutdown()
    if left:
        raise RuntimeError(f"the same-work ceiling left {left} task(s) unfinished")
    completed, first, last = event_span(project)
    span = max(last - first, 1e-3) if first is not None and last is not None else None
    return Reference(completed or finished, wall, cpu, span)
