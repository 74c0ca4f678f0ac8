"""Claims and outcomes: the transactions a worker makes around one attempt of one task.

Public API:
    ``Claim`` (from ``kernel.runtime.attempts``); ``claim_next(conn, worker_id, now, *,
    lease_ttl, offers=None) -> Claim | None``; ``record_process(conn, claim, pgid, hostname)``;
    ``is_current(conn, claim)`` (None while the claim holds, else why not);
    ``fail_before_start`` (a pre-execution rule failed); ``finish_execution``;
    ``finish_and_claim`` (the finish and the next claim in one transaction);
    ``finish_validation``; each write also as ``..._in_tx`` inside the caller's transaction
    (``claim_in_tx``, ``record_process_in_tx(conn, attempt_id, pgid, hostname)``,
    ``fail_before_start_in_tx``, ``finish_execution_in_tx``, ``finish_validation_in_tx``: what
    the kernel's group commit runs, ``kernel.runtime.dispatch``); ``CLAIM_WINDOW``,
    ``CLAIM_PAGE``.

Stability Guarantees:
    A claim is one ``BEGIN IMMEDIATE`` transaction: the task goes queued → running with a new
    ``generation`` (the fencing token), an attempt row is opened, every resource is leased (all
    or nothing) and the worker goes idle → busy. Every later report is a compare-and-set on
    (state, generation): a result from a stale claim — the task was cancelled, or handed on
    after its worker was declared lost — changes nothing and is logged as a
    ``stale_result_rejected`` event. A task without post-execution rules finishes in one more
    transaction (running → validating → completed, dependents queued, worker idle); in the
    kernel's group commit, claims and finishes of many tasks share one transaction.

Integration Points:
    ``kernel.runtime.dispatch`` (the kernel's group commit) runs the ``_in_tx`` forms;
    ``kernel.runtime.worker`` calls the others when it has no kernel to report to. Claims read
    the ``open_workstream`` view (sql/0005_trust.sql); what a worker can run is
    ``kernel.definitions.fit``. The bookkeeping inside each transaction (closing the attempt,
    retrying, queueing the dependents) is ``kernel.runtime.attempts``; transitions go through
    ``kernel.store.machines.transition_in_tx`` so the SQL triggers check them and write the
    events.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.definitions.fit``, ``kernel.runtime.attempts``,
    ``kernel.runtime.leases``, ``kernel.store.db``, ``kernel.store.machines``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw

from kernel.base import clock
from kernel.definitions.fit import (
    capable,
    fits_resources,
    task_requests,
    worker_limits,
    worker_offers,
)
from kernel.runtime import leases
from kernel.runtime.attempts import (
    Claim,
    close_attempt_in_tx,
    fail_or_retry_in_tx,
    queue_ready_in_tx,
    reject_stale_in_tx,
    result_document,
    worker_idle_in_tx,
)
from kernel.store import db
from kernel.store.machines import claimed_states, in_list_sql, transition_in_tx

__all__ = ["CLAIM_PAGE", "CLAIM_WINDOW", "Claim", "claim_in_tx", "claim_next",
           "fail_before_start", "fail_before_start_in_tx", "finish_and_claim",
           "finish_execution", "finish_execution_in_tx", "finish_validation",
           "finish_validation_in_tx", "is_current", "record_process", "record_process_in_tx"]

#: How many queued tasks a claim looks at before giving up for this round, in pages.
CLAIM_WINDOW = 64
CLAIM_PAGE = 8

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
               lease_ttl: float, offers: dict[str, str] | None = None,
               limits: dict[str, float] | None = None) -> Claim | None:
    """Claim the best queued task this worker can run now, or return None.

    ``now`` may be a clock (e.g. ``time.time``): it is then read once the write lock is held,
    so a claim is never stamped earlier than the commit that made its task ready.
    """
    with db.write_tx(conn):
        return claim_in_tx(conn, worker_id, now() if callable(now) else now,
                            lease_ttl=lease_ttl, offers=offers, limits=limits)


def claim_in_tx(conn: apsw.Connection, worker_id: str, now: float, *, lease_ttl: float,
                offers: dict[str, str] | None,
                limits: dict[str, float] | None = None) -> Claim | None:
    """``claim_next`` inside the caller's write transaction. ``offers`` and ``limits`` (what
    the worker advertises of each resource) are read from the worker's rows when None."""
    me = db.row(conn, "SELECT state, version, stop_requested, workstreams FROM worker "
                      "WHERE worker_id = ?", (worker_id,))
    if me is None or me["state"] != "idle" or me["stop_requested"]:
        return None
    offers = worker_offers(conn, worker_id) if offers is None else offers
    limits = worker_limits(conn, worker_id) if limits is None else limits
    scope = set(json.loads(me["workstreams"])) if me["workstreams"] else None
    running_by_ws: dict[str, int] | None = None
    stamp = clock.iso(now)
    for cand in _candidates(conn):
        if scope is not None and cand["workstream_id"] not in scope:
            continue
        if not capable(offers, json.loads(cand["needs"])):
            continue
        if limits and cand["has_resources"] and \
                not fits_resources(limits, task_requests(conn, cand["task_id"])):
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
            held = leases.acquire_all_in_tx(conn, task_id, owner=worker_id,
                                            generation=generation, attempt_id=attempt_id,
                                            now=now, ttl=lease_ttl)
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
        record_process_in_tx(conn, claim.attempt_id, pgid, hostname)


def record_process_in_tx(conn: apsw.Connection, attempt_id: int, pgid: int,
                         hostname: str) -> None:
    """The attempt's process group (what a lost worker's task has killed)."""
    conn.execute("UPDATE attempt SET pgid = ?, hostname = ? WHERE attempt_id = ?",
                 (pgid, hostname, attempt_id))


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


def fail_before_start(conn: apsw.Connection, claim: Claim, now: float, *, rule: str,
                      reason: str, rules: dict[str, Any]) -> str:
    """A pre-execution rule failed: the command never runs; the task fails (no retry)."""
    with db.write_tx(conn):
        return fail_before_start_in_tx(conn, claim, now, rule=rule, reason=reason, rules=rules)


def fail_before_start_in_tx(conn: apsw.Connection, claim: Claim, now: float, *, rule: str,
                            reason: str, rules: dict[str, Any]) -> str:
    """``fail_before_start`` inside the caller's write transaction."""
    stamp = clock.iso(now)
    error = f"pre-execution rule {rule} failed: {reason}"
    state = fail_or_retry_in_tx(conn, claim, stamp, now, trigger="execution_failed",
                                failure_mode="Validation-Failed", error=error,
                                retryable=False, from_state="running", backoff={},
                                extra={"rule": rule, "phase": "pre_execution",
                                       "rules": rules})
    if state == "stale":
        reject_stale_in_tx(conn, claim, stamp, "pre-execution rules failed")
    else:
        close_attempt_in_tx(conn, claim, stamp, "not_started",
                            failure_mode="Validation-Failed",
                            error_type="pre_execution_rule_failed", error=error,
                            output=result_document("failure", "failed", 0.0, error))
    worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
    return state


def finish_execution(conn: apsw.Connection, claim: Claim, now: float, *, outcome: str,
                     exit_code: int | None, error: str | None, duration: float,
                     details: dict[str, Any] | None = None, backoff: dict[str, float],
                     cancel_reason: str | None = None) -> str:
    """Report the command's result. Returns the task's new state, or "stale"."""
    with db.write_tx(conn):
        return finish_execution_in_tx(conn, claim, now, outcome=outcome, exit_code=exit_code,
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
        state = finish_execution_in_tx(conn, claim, now, outcome=outcome, exit_code=exit_code,
                                       error=error, duration=duration, details=details,
                                       backoff=backoff, cancel_reason=None)
        if state == "validating":
            return state, None
        return state, claim_in_tx(conn, claim.worker_id, max(now, time.time()),
                                  lease_ttl=lease_ttl, offers=offers)


def finish_execution_in_tx(conn: apsw.Connection, claim: Claim, now: float, *, outcome: str,
                           exit_code: int | None, error: str | None, duration: float,
                           details: dict[str, Any] | None, backoff: dict[str, float],
                           cancel_reason: str | None) -> str:
    """``finish_execution`` inside the caller's write transaction."""
    stamp = clock.iso(now)
    if outcome == "succeeded":
        return _succeeded_in_tx(conn, claim, stamp, now, exit_code=exit_code, duration=duration,
                                details=details)
    if outcome == "cancelled":
        # The claim was lost (cancelled by an operator or handed on): nothing to report.
        reject_stale_in_tx(conn, claim, stamp, f"killed: {cancel_reason}")
        worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
        return "stale"
    state = _failed_in_tx(conn, claim, stamp, now, outcome=outcome, exit_code=exit_code,
                          error=error, duration=duration, details=details, backoff=backoff)
    worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
    return state


def _succeeded_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, now: float, *,
                     exit_code: int | None, duration: float,
                     details: dict[str, Any] | None) -> str:
    """running → validating; then, without post-execution rules, completed at once."""
    ok = transition_in_tx(conn, "task", claim.task_id, "validating", "execution_completed",
                          {"at": stamp, "exit_code": exit_code,
                           "duration_seconds": round(duration, 3)},
                          expect={"state": "running", "generation": claim.generation},
                          worker_id=None)
    if not ok:
        reject_stale_in_tx(conn, claim, stamp, "succeeded")
        worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
        return "stale"
    if claim.post_rules:
        return "validating"
    _complete_in_tx(conn, claim, stamp, now, duration, details, rules=None)
    return "completed"


# outcome -> (failure mode, trigger, retryable, the attempt's outcome, its error_type)
_FAILURES = {
    "timeout": ("Task-Timeout", "task_timeout", True, "timeout", "timeout"),
    "error": ("Task-Failed", "execution_failed", False, "failed", "start_failed"),
    "failed": ("Task-Failed", "execution_failed", True, "failed", "exit_code"),
}


def _failed_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, now: float, *,
                  outcome: str, exit_code: int | None, error: str | None, duration: float,
                  details: dict[str, Any] | None, backoff: dict[str, float]) -> str:
    """The command failed, timed out or could not start: retrying or failed (or "stale").
    An executor may name the failure itself (``details["failure"]``: mode, error_type,
    metadata, retryable — default false, trigger — default execution_failed), e.g.
    Context-Overflow before an agent starts (trigger and event ``context_overflow``)."""
    mode, trigger, retryable, attempt_outcome, error_type = _FAILURES.get(
        outcome, _FAILURES["failed"])
    message = error or f"exit code {exit_code}"
    extra: dict[str, Any] = {"exit_code": exit_code, "duration_seconds": round(duration, 3)}
    named = (details or {}).get("failure")
    if isinstance(named, dict) and named.get("mode"):
        mode, trigger = str(named["mode"]), str(named.get("trigger") or "execution_failed")
        retryable = named.get("retryable") is True
        error_type = str(named.get("error_type") or "failed")
        extra.update(dict(named.get("metadata") or {}))
    if outcome == "timeout":
        extra["timeout_seconds"] = claim.timeout_seconds
    state = fail_or_retry_in_tx(conn, claim, stamp, now, trigger=trigger, failure_mode=mode,
                                error=message, retryable=retryable, from_state="running",
                                backoff=backoff, extra=extra)
    if state == "stale":
        reject_stale_in_tx(conn, claim, stamp, outcome)
    else:
        close_attempt_in_tx(conn, claim, stamp, attempt_outcome, exit_code=exit_code,
                            failure_mode=mode, error_type=error_type, error=message,
                            output=result_document("failure", "pending", duration, message,
                                                   details))
    return state


def _complete_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, now: float,
                    duration: float, details: dict[str, Any] | None,
                    rules: dict[str, Any] | None) -> None:
    meta: dict[str, Any] = {"at": stamp}
    if rules is not None:
        meta["rules"] = rules
    transition_in_tx(conn, "task", claim.task_id, "completed", "validation_passed", meta,
                     completed_at=stamp, last_error=None, failure_mode=None)
    close_attempt_in_tx(conn, claim, stamp, "succeeded", exit_code=0,
                        output=result_document("success", "passed", duration, None, details))
    queue_ready_in_tx(conn, now, after_task=claim.task_id)
    worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)


def finish_validation(conn: apsw.Connection, claim: Claim, now: float, *, passed: bool,
                      summary: str, rules: dict[str, Any], duration: float,
                      details: dict[str, Any] | None = None) -> str:
    """Report the post-execution rules: validating → completed, or failed (no retry)."""
    with db.write_tx(conn):
        return finish_validation_in_tx(conn, claim, now, passed=passed, summary=summary,
                                       rules=rules, duration=duration, details=details)


def finish_validation_in_tx(conn: apsw.Connection, claim: Claim, now: float, *, passed: bool,
                            summary: str, rules: dict[str, Any], duration: float,
                            details: dict[str, Any] | None = None) -> str:
    """``finish_validation`` inside the caller's write transaction."""
    stamp = clock.iso(now)
    current = conn.execute("SELECT state, generation FROM task WHERE task_id = ?",
                           (claim.task_id,)).fetchone()
    if current is None or tuple(current) != ("validating", claim.generation):
        reject_stale_in_tx(conn, claim, stamp, "validated")
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
    close_attempt_in_tx(conn, claim, stamp, "validation_failed", exit_code=0,
                        failure_mode="Validation-Failed", error_type="validation_failed",
                        error=error,
                        output=result_document("failure", "failed", duration, error,
                                               details))
    worker_idle_in_tx(conn, claim.worker_id, stamp, claim.task_id)
    return "failed"
