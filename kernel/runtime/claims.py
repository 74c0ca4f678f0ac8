"""Claims and outcomes: the transactions a worker makes around one attempt of one task.

Public API:
    ``Claim``; ``claim_next(conn, worker_id, now, lease_ttl) -> Claim | None``;
    ``record_process(conn, claim, pgid, hostname)``; ``fail_before_start``;
    ``finish_execution``; ``finish_validation``; ``hand_on_in_tx(conn, task_id, now, ...)``
    (worker lost, or the run interrupted by its operator); ``backoff_delay``;
    ``queue_ready_in_tx(conn, now, ...)``; ``requeue_due_in_tx``; ``is_current(conn, claim)``;
    ``worker_idle_in_tx``; ``capable(offers, needs)`` / ``missing_capabilities``;
    ``unrunnable(conn, task_ids)`` (queued tasks no worker can ever run, with the reason);
    ``live_offers``, ``catalog_offers``, ``worker_offers``.

Stability Guarantees:
    A claim is one ``BEGIN IMMEDIATE`` transaction: the task goes queued → running with a new
    ``generation`` (the fencing token), an attempt row is opened, every resource is leased (all
    or nothing) and the worker goes idle → busy. Every later report is a compare-and-set on
    (state, generation): a result from a stale claim — the task was cancelled, or handed on
    after its worker was declared lost — changes nothing and is logged as a
    ``stale_result_rejected`` event. A task without post-execution rules finishes in one more
    transaction (running → validating → completed, dependents queued, worker idle): two write
    transactions per task.

Integration Points:
    ``kernel.runtime.worker`` calls these; ``kernel.runtime.scheduler.tick`` calls
    ``queue_ready_in_tx``, ``hand_on_in_tx`` and the retry timer; ``orch why`` and ``orch
    run``'s summary call ``unrunnable``. Queueing reads the ``queueable_task`` view and claims the
    ``open_workstream`` view (sql/0005_trust.sql): the one definition of "ready".
    Transitions go through ``kernel.store.machines.transition_in_tx`` so the SQL triggers check
    them and write the events.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.config``, ``kernel.definitions.fit``,
    ``kernel.runtime.leases``, ``kernel.store.db``, ``kernel.store.events``,
    ``kernel.store.machines``, ``kernel.store.queries``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.config import WorkersConfig
from kernel.definitions.fit import capable, worker_offers
from kernel.runtime import leases
from kernel.store import db, events, queries
from kernel.store.machines import claimed_states, in_list_sql, transition_in_tx

#: How many queued tasks a claim looks at before giving up for this round, in pages.
CLAIM_WINDOW = 64
CLAIM_PAGE = 8


@dataclass(frozen=True)
class Claim:
    task_id: str
    workstream_id: str
    worker_id: str
    generation: int
    attempt_id: int
    attempt_no: int
    type: str
    command: str | None
    definition: dict[str, Any]
    timeout_seconds: float | None
    retry_count: int
    max_retries: int
    retry_delay_seconds: float
    worktree_path: str | None
    resources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def post_rules(self) -> list[str]:
        return list((self.definition.get("validation_rules") or {}).get("post_execution") or [])

    @property
    def pre_rules(self) -> list[str]:
        return list((self.definition.get("validation_rules") or {}).get("pre_execution") or [])


_CANDIDATES = f"""
SELECT t.task_id, t.workstream_id, t.generation, t.type, t.command, t.definition,
       t.timeout_seconds, t.retry_count, t.max_retries, t.retry_delay_seconds,
       w.worktree_path, w.max_parallelism,
       (SELECT json_group_array(json_array(c.capability_id, c.min_version))
          FROM task_capability c WHERE c.task_id = t.task_id) AS needs,
       EXISTS (SELECT 1 FROM task_resource r WHERE r.task_id = t.task_id) AS has_resources
  FROM task t JOIN workstream w ON w.workstream_id = t.workstream_id
 WHERE t.state = 'queued'
   AND t.workstream_id IN (SELECT workstream_id FROM open_workstream)
 ORDER BY t.priority DESC, t.bottom_level DESC, t.queued_at, t.task_id
 LIMIT {CLAIM_PAGE} OFFSET ?
"""


def claim_next(conn: apsw.Connection, worker_id: str, now: float | Callable[[], float], *,
               lease_ttl: float, offers: dict[str, str] | None = None) -> Claim | None:
    """Claim the best queued task this worker can run now, or return None.

    ``now`` may be a clock (e.g. ``time.time``): it is then read once the write lock is held,
    so a claim is never stamped earlier than the commit that made its task ready.
    """
    with db.write_tx(conn):
        return _claim_in_tx(conn, worker_id, now() if callable(now) else now,
                            lease_ttl=lease_ttl, offers=offers)


def _claim_in_tx(conn: apsw.Connection, worker_id: str, now: float, *, lease_ttl: float,
                 offers: dict[str, str] | None) -> Claim | None:
    me = db.row(conn, "SELECT state, version, stop_requested, workstreams FROM worker "
                      "WHERE worker_id = ?", (worker_id,))
    if me is None or me["state"] != "idle" or me["stop_requested"]:
        return None
    offers = worker_offers(conn, worker_id) if offers is None else offers
    scope = set(json.loads(me["workstreams"])) if me["workstreams"] else None
    running_by_ws: dict[str, int] | None = None
    stamp = clock.iso(now)
    for cand in _candidates(conn):
        if scope is not None and cand["workstream_id"] not in scope:
            continue
        if not capable(offers, json.loads(cand["needs"])):
            continue
        if cand["max_parallelism"] is not None:
            if running_by_ws is None:
                running_by_ws = dict(conn.execute(
                    "SELECT workstream_id, COUNT(*) FROM task "
                    f"WHERE state IN {in_list_sql(claimed_states())} GROUP BY workstream_id"))
            if running_by_ws.get(cand["workstream_id"], 0) >= cand["max_parallelism"]:
                continue
        claim = _try_claim_in_tx(conn, worker_id, cand, now, stamp, lease_ttl)
        if claim is not None:
            return claim
    return None


def _candidates(conn: apsw.Connection) -> Iterator[dict[str, Any]]:
    for offset in range(0, CLAIM_WINDOW, CLAIM_PAGE):
        page = db.rows(conn, _CANDIDATES, (offset,))
        yield from page
        if len(page) < CLAIM_PAGE:
            return


def _try_claim_in_tx(conn: apsw.Connection, worker_id: str, cand: dict[str, Any], now: float,
               stamp: str, lease_ttl: float) -> Claim | None:
    task_id, generation = cand["task_id"], cand["generation"] + 1
    attempt_no = int(db.scalar(conn, "SELECT COUNT(*) FROM attempt WHERE task_id = ?",
                               (task_id,)) or 0) + 1
    conn.execute("SAVEPOINT claim")
    try:
        conn.execute(
            "INSERT INTO attempt (task_id, attempt_no, worker_id, generation, started_at) "
            "VALUES (?, ?, ?, ?, ?)", (task_id, attempt_no, worker_id, generation, stamp))
        attempt_id = conn.last_insert_rowid()
        held: list[leases.Lease] = []
        if cand["has_resources"]:
            held = leases.acquire_all_in_tx(conn, task_id, owner=worker_id, generation=generation,
                                            attempt_id=attempt_id, now=now, ttl=lease_ttl)
        meta: dict[str, Any] = {"at": stamp, "attempt": attempt_no}
        if held:
            meta["resources"] = {h.resource_id: (h.mode if h.mode != "units" else h.amount)
                                 for h in held}
        ok = transition_in_tx(conn, "task", task_id, "running", "worker_started", meta,
                              expect={"state": "queued", "generation": cand["generation"]},
                              worker_id=worker_id, generation=generation,
                              started_at=("sql", "COALESCE(started_at, ?)", stamp))
        if not ok:
            raise _Lost()
        transition_in_tx(conn, "worker", worker_id, "busy", "task_assigned",
                         {"at": stamp, "task_id": task_id})
    except (leases.LeaseUnavailable, _Lost):
        conn.execute("ROLLBACK TO claim")
        conn.execute("RELEASE claim")
        return None
    conn.execute("RELEASE claim")
    return Claim(
        task_id=task_id, workstream_id=cand["workstream_id"], worker_id=worker_id,
        generation=generation, attempt_id=attempt_id, attempt_no=attempt_no, type=cand["type"],
        command=cand["command"], definition=json.loads(cand["definition"]),
        timeout_seconds=cand["timeout_seconds"], retry_count=cand["retry_count"],
        max_retries=cand["max_retries"], retry_delay_seconds=cand["retry_delay_seconds"],
        worktree_path=cand["worktree_path"],
        resources=[{"resource_id": h.resource_id, "mode": h.mode, "amount": h.amount}
                   for h in held])


class _Lost(Exception):
    pass


def record_process(conn: apsw.Connection, claim: Claim, pgid: int, hostname: str) -> None:
    with db.write_tx(conn):
        conn.execute("UPDATE attempt SET pgid = ?, hostname = ? WHERE attempt_id = ?",
                     (pgid, hostname, claim.attempt_id))


def is_current(conn: apsw.Connection, claim: Claim) -> str | None:
    """None while the claim still holds; else why it does not (cancelled, handed on, ...)."""
    found = conn.execute("SELECT state, generation FROM task WHERE task_id = ?",
                         (claim.task_id,)).fetchone()
    if found is None:
        return "the task was removed"
    state, generation = found
    if generation != claim.generation:
        return "the task was handed to another worker"
    if state not in claimed_states():
        return f"the task was {state}"
    return None


def retry_backoff(workers: WorkersConfig) -> dict[str, float]:
    """The ``backoff`` argument of the outcome functions, from ``[workers]`` in ``orch.toml``:
    ``{"cap": retry_backoff_cap_seconds, "jitter": retry_jitter}``."""
    return {"cap": workers.retry_backoff_cap_seconds, "jitter": workers.retry_jitter}


#: What a ``backoff`` without a key uses: the defaults of ``orch.toml``.
_DEFAULT_BACKOFF = retry_backoff(WorkersConfig())


def backoff_delay(retry_delay: float, retries_before: int, *, cap: float, jitter: float,
                  rng: random.Random | None = None) -> float:
    """``retry_delay × 2^retries_before``, plus up to ``jitter`` of it at random, capped."""
    base = retry_delay * (2 ** min(retries_before, 64))   # capped: no overflow at any count
    spread = base * jitter * (rng or random).random()
    return min(cap, base + spread)


def _reject_stale_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, what: str) -> None:
    now_state = conn.execute("SELECT state, generation FROM task WHERE task_id = ?",
                             (claim.task_id,)).fetchone()
    events.emit_event_in_tx(
        conn, "stale_result_rejected", entity_id=claim.task_id, task_id=claim.task_id,
        workstream_id=claim.workstream_id, trigger="fencing", at=stamp,
        caused_by=events.last_seq_in_tx(conn, task_id=claim.task_id),
        metadata={"worker_id": claim.worker_id, "generation": claim.generation,
                  "current_generation": now_state[1] if now_state else None,
                  "current_state": now_state[0] if now_state else None, "result": what})
    # Close the attempt if nobody did; one closed already (cancel, hand-on) keeps its record.
    conn.execute("UPDATE attempt SET finished_at = COALESCE(finished_at, MAX(started_at, ?)), "
                 "outcome = COALESCE(outcome, 'lost') WHERE attempt_id = ?",
                 (stamp, claim.attempt_id))


def worker_idle_in_tx(conn: apsw.Connection, worker_id: str, stamp: str, task_id: str) -> None:
    state = db.scalar(conn, "SELECT state FROM worker WHERE worker_id = ?", (worker_id,))
    if state == "busy":
        transition_in_tx(conn, "worker", worker_id, "idle", "task_completed",
                         {"at": stamp, "task_id": task_id})


def _close_attempt_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, outcome: str, *,
                   exit_code: int | None = None, failure_mode: str | None = None,
                   error_type: str | None = None, error: str | None = None,
                   output: dict[str, Any] | None = None) -> None:
    conn.execute(
        "UPDATE attempt SET finished_at = MAX(started_at, ?), outcome = ?, exit_code = ?, "
        "failure_mode = ?, error_type = ?, error_message = ?, output = ?, log_path = ? "
        "WHERE attempt_id = ?",
        (stamp, outcome, exit_code, failure_mode, error_type, error,
         json.dumps(output, sort_keys=True) if output is not None else None,
         f".state/logs/{claim.task_id}.log", claim.attempt_id))


def queue_ready_in_tx(conn: apsw.Connection, now: float, *, after_task: str | None = None,
                workstreams: list[str] | None = None) -> int:
    """pending → queued for every task of the ``queueable_task`` view (one statement).

    With ``after_task``, only its dependents in its workstream (the completing worker's fast
    path); with
    ``workstreams``, only tasks of those. Each ``task_queued`` event names, in ``caused_by``,
    the completion event of the dependency that completed last.
    """
    stamp = clock.iso(now)
    sql = queries.QUEUE_READY
    params: dict[str, Any] = {"at": stamp}
    if after_task is not None:
        sql += queries.QUEUE_AFTER_TASK
        params["done"] = after_task
    if workstreams is not None:
        sql += queries.QUEUE_IN_WORKSTREAMS
        params["ws"] = json.dumps(workstreams)
    conn.execute(sql + queries.QUEUE_END, params)
    return conn.changes()


def _output(status: str, validation: str, duration: float, error: str | None,
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status, "files_modified": [], "diff_summary": "",
                           "validation_status": validation, "commit_message": None,
                           "error": error,
                           "metadata": {"tokens_used": None,
                                        "duration_seconds": round(duration, 3)}}
    if details:
        out["details"] = details
    return out


def _fail_or_retry_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, now: float, *,
                   trigger: str, failure_mode: str, error: str, retryable: bool,
                   from_state: str, backoff: dict[str, float],
                   extra: dict[str, Any]) -> str:
    meta = {"at": stamp, "failure_mode": failure_mode, "error": error, **extra}
    expect = {"state": from_state, "generation": claim.generation}
    retries = int(db.scalar(conn, "SELECT retry_count FROM task WHERE task_id = ?",
                            (claim.task_id,)) or 0)
    clear = {"worker_id": None} if from_state == "running" else {}
    if retryable and retries < claim.max_retries:
        delay = backoff_delay(claim.retry_delay_seconds, retries,
                              cap=backoff.get("cap", _DEFAULT_BACKOFF["cap"]),
                              jitter=backoff.get("jitter", _DEFAULT_BACKOFF["jitter"]))
        next_at = clock.iso(now + delay)
        meta.update(next_attempt_at=next_at, delay_seconds=round(delay, 3),
                    retry=retries + 1, max_retries=claim.max_retries)
        ok = transition_in_tx(conn, "task", claim.task_id, "retrying", trigger, meta, expect=expect,
                              retry_count=("sql", "retry_count + 1"), next_attempt_at=next_at,
                              last_error=error, failure_mode=failure_mode, **clear)
        return "retrying" if ok else "stale"
    ok = transition_in_tx(conn, "task", claim.task_id, "failed", trigger, meta, expect=expect,
                          last_error=error, failure_mode=failure_mode, completed_at=stamp, **clear)
    return "failed" if ok else "stale"


def fail_before_start(conn: apsw.Connection, claim: Claim, now: float, *, rule: str,
                      reason: str, rules: dict[str, Any]) -> str:
    """A pre-execution rule failed: the command never runs; the task fails (no retry)."""
    stamp = clock.iso(now)
    error = f"pre-execution rule {rule} failed: {reason}"
    with db.write_tx(conn):
        state = _fail_or_retry_in_tx(conn, claim, stamp, now, trigger="execution_failed",
                                     failure_mode="Validation-Failed", error=error, retryable=False,
                                     from_state="running", backoff={},
                                     extra={"rule": rule, "phase": "pre_execution", "rules": rules})
        if state == "stale":
            _reject_stale_in_tx(conn, claim, stamp, "pre-execution rules failed")
        else:
            _close_attempt_in_tx(conn, claim, stamp, "not_started",
                                 failure_mode="Validation-Failed",
                                 error_type="pre_execution_rule_failed", error=error,
                                 output=_output("failure", "failed", 0.0, error))
        worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
    return state


def finish_execution(conn: apsw.Connection, claim: Claim, now: float, *, outcome: str,
                     exit_code: int | None, error: str | None, duration: float,
                     details: dict[str, Any] | None = None, backoff: dict[str, float],
                     cancel_reason: str | None = None) -> str:
    """Report the command's result. Returns the task's new state, or "stale"."""
    with db.write_tx(conn):
        return _finish_execution_in_tx(conn, claim, now, outcome=outcome, exit_code=exit_code,
                                       error=error, duration=duration, details=details,
                                       backoff=backoff, cancel_reason=cancel_reason)


def finish_and_claim(conn: apsw.Connection, claim: Claim, now: float, *, outcome: str,
                     exit_code: int | None, error: str | None, duration: float,
                     details: dict[str, Any] | None = None, backoff: dict[str, float],
                     lease_ttl: float, offers: dict[str, str] | None = None,
                     ) -> tuple[str, Claim | None]:
    """``finish_execution`` and, when that leaves the worker idle, ``claim_next`` in the same
    transaction: one write transaction per task instead of two, and a dependent that the
    finished task made ready starts without waiting for anyone (the claim is stamped a moment
    later than the finish: the clock is read again)."""
    with db.write_tx(conn):
        state = _finish_execution_in_tx(conn, claim, now, outcome=outcome, exit_code=exit_code,
                                        error=error, duration=duration, details=details,
                                        backoff=backoff, cancel_reason=None)
        if state == "validating":
            return state, None
        return state, _claim_in_tx(conn, claim.worker_id, max(now, time.time()),
                                   lease_ttl=lease_ttl, offers=offers)


def _finish_execution_in_tx(conn: apsw.Connection, claim: Claim, now: float, *, outcome: str,
                      exit_code: int | None, error: str | None, duration: float,
                      details: dict[str, Any] | None, backoff: dict[str, float],
                      cancel_reason: str | None) -> str:
    stamp = clock.iso(now)
    expect = {"state": "running", "generation": claim.generation}
    if outcome == "succeeded":
        ok = transition_in_tx(conn, "task", claim.task_id, "validating", "execution_completed",
                              {"at": stamp, "exit_code": exit_code,
                               "duration_seconds": round(duration, 3)},
                              expect=expect, worker_id=None)
        if not ok:
            _reject_stale_in_tx(conn, claim, stamp, "succeeded")
            worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
            return "stale"
        if claim.post_rules:
            return "validating"
        _complete_in_tx(conn, claim, stamp, now, duration, details, rules=None)
        return "completed"
    if outcome == "cancelled":
        # The claim was lost (cancelled by an operator or handed on): nothing to report.
        _reject_stale_in_tx(conn, claim, stamp, f"killed: {cancel_reason}")
        worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
        return "stale"
    if outcome == "timeout":
        mode, trigger, retryable = "Task-Timeout", "task_timeout", True
    elif outcome == "error":
        mode, trigger, retryable = "Task-Failed", "execution_failed", False
    else:
        mode, trigger, retryable = "Task-Failed", "execution_failed", True
    message = error or f"exit code {exit_code}"
    state = _fail_or_retry_in_tx(conn, claim, stamp, now, trigger=trigger, failure_mode=mode,
                                 error=message, retryable=retryable, from_state="running",
                                 backoff=backoff,
                                 extra={"exit_code": exit_code,
                                  "duration_seconds": round(duration, 3),
                                  **({"timeout_seconds": claim.timeout_seconds}
                                     if outcome == "timeout" else {})})
    if state == "stale":
        _reject_stale_in_tx(conn, claim, stamp, outcome)
    else:
        _close_attempt_in_tx(conn, claim, stamp, "timeout" if outcome == "timeout" else "failed",
                             exit_code=exit_code, failure_mode=mode,
                             error_type="timeout" if outcome == "timeout" else
                             ("start_failed" if outcome == "error" else "exit_code"),
                             error=message,
                             output=_output("failure", "pending", duration, message, details))
    worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
    return state


def _complete_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, now: float, duration: float,
              details: dict[str, Any] | None, rules: dict[str, Any] | None) -> None:
    meta: dict[str, Any] = {"at": stamp}
    if rules is not None:
        meta["rules"] = rules
    transition_in_tx(conn, "task", claim.task_id, "completed", "validation_passed", meta,
                     completed_at=stamp, last_error=None, failure_mode=None)
    _close_attempt_in_tx(conn, claim, stamp, "succeeded", exit_code=0,
                         output=_output("success", "passed", duration, None, details))
    queue_ready_in_tx(conn, now, after_task=claim.task_id)
    worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)


def finish_validation(conn: apsw.Connection, claim: Claim, now: float, *, passed: bool,
                      summary: str, rules: dict[str, Any], duration: float,
                      details: dict[str, Any] | None = None) -> str:
    """Report the post-execution rules: validating → completed, or failed (no retry)."""
    stamp = clock.iso(now)
    with db.write_tx(conn):
        current = conn.execute("SELECT state, generation FROM task WHERE task_id = ?",
                               (claim.task_id,)).fetchone()
        if current is None or tuple(current) != ("validating", claim.generation):
            _reject_stale_in_tx(conn, claim, stamp, "validated")
            worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
            return "stale"
        if passed:
            _complete_in_tx(conn, claim, stamp, now, duration, details, rules)
            return "completed"
        error = f"post-execution validation failed: {summary}"
        transition_in_tx(conn, "task", claim.task_id, "failed", "validation_failed",
                         {"at": stamp, "failure_mode": "Validation-Failed", "error": error,
                          "rules": rules},
                         last_error=error, failure_mode="Validation-Failed", completed_at=stamp)
        _close_attempt_in_tx(conn, claim, stamp, "validation_failed", exit_code=0,
                             failure_mode="Validation-Failed", error_type="validation_failed",
                             error=error,
                             output=_output("failure", "failed", duration, error, details))
        worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
        return "failed"


def hand_on_in_tx(conn: apsw.Connection, task_id: str, now: float, *,
                  failure_mode: str | None, reason: str, backoff: dict[str, float],
                  caused_by: int | None = None, interrupted: bool = False) -> str | None:
    """The task's worker is lost: close its attempt and retry or fail it (trigger
    ``worker_lost``, the attempt counts). With ``interrupted`` the operator stopped the run:
    the task goes back to the queue (trigger ``operator_interrupted``) and no retry is counted.

    Call inside a write transaction. ``caused_by``: the seq of the event that lost the worker.
    """
    task = db.row(conn, "SELECT task_id, workstream_id, state, generation, retry_count, "
                        "max_retries, retry_delay_seconds, worker_id FROM task WHERE task_id = ?",
                  (task_id,))
    if task is None or task["state"] not in claimed_states():
        return None
    attempt = db.row(conn, "SELECT attempt_id, attempt_no, worker_id FROM attempt "
                           "WHERE task_id = ? AND finished_at IS NULL "
                           "ORDER BY attempt_no DESC LIMIT 1", (task_id,))
    stamp = clock.iso(now)
    claim = Claim(task_id=task_id, workstream_id=task["workstream_id"],
                  worker_id=task["worker_id"] or (attempt or {}).get("worker_id") or "",
                  generation=task["generation"],
                  attempt_id=attempt["attempt_id"] if attempt else 0,
                  attempt_no=attempt["attempt_no"] if attempt else 0, type="", command=None,
                  definition={}, timeout_seconds=None, retry_count=task["retry_count"],
                  max_retries=task["max_retries"],
                  retry_delay_seconds=task["retry_delay_seconds"], worktree_path=None)
    if interrupted:
        clear = {"worker_id": None} if task["state"] == "running" else {}
        transition_in_tx(conn, "task", task_id, "queued", "operator_interrupted",
                         {"at": stamp, "reason": reason, "interrupted_worker": claim.worker_id,
                          "caused_by": caused_by},
                         expect={"state": task["state"], "generation": task["generation"]},
                         queued_at=stamp, **clear)
        if attempt:
            _close_attempt_in_tx(conn, claim, stamp, "lost", error_type="interrupted",
                                 error=reason, output=_output("failure", "pending", 0.0, reason))
        return "queued"
    state = _fail_or_retry_in_tx(conn, claim, stamp, now, trigger="worker_lost",
                                 failure_mode=failure_mode or "Worker-Crashed", error=reason,
                                 retryable=True, from_state=task["state"], backoff=backoff,
                                 extra={"lost_worker": claim.worker_id, "caused_by": caused_by})
    if attempt:
        _close_attempt_in_tx(conn, claim, stamp, "lost", failure_mode=failure_mode,
                             error_type="worker_lost", error=reason,
                             output=_output("failure", "pending", 0.0, reason))
    return state


def requeue_due_in_tx(conn: apsw.Connection, now: float) -> int:
    """retrying → queued for every task whose backoff delay has elapsed (one statement), in
    workstreams that may still start work (``open_workstream``). ``caused_by`` is the event
    that put the task into retrying."""
    stamp = clock.iso(now)
    conn.execute(queries.REQUEUE_DUE, {"at": stamp})
    return conn.changes()
