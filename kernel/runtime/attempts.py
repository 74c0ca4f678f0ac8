"""An attempt's bookkeeping inside the caller's write transaction: the claim record, closing
an attempt, failing or retrying a task, handing a lost worker's task on, and the queue moves.

Public API:
    ``Claim`` (what a worker holds while it runs a task: the fencing generation, the attempt,
    the definition); ``retry_backoff(workers) -> dict`` (the ``backoff`` argument, from
    ``[workers]``); ``backoff_delay(retry_delay, retries_before, *, cap, jitter, rng=None)``;
    ``fail_or_retry_in_tx(conn, claim, stamp, now, *, trigger, failure_mode, error, retryable,
    from_state, backoff, extra) -> str`` (retrying, failed, or "stale");
    ``close_attempt_in_tx(conn, claim, stamp, outcome, ...)``; ``result_document(status,
    validation, duration, error, details=None)`` (an attempt's ``output``, the AIDER-INT-003
    contract filled from the executor's ``details``; ``OUTPUT_SCHEMA_VERSION``);
    ``reject_stale_in_tx(conn, claim, stamp, what)`` (a report on a claim that no longer
    holds); ``worker_idle_in_tx(conn, worker_id, stamp, task_id)``; ``hand_on_in_tx(conn,
    task_id, now, *, failure_mode, reason, backoff, caused_by=None, interrupted=False)`` (worker
    lost, or the run interrupted by its operator); ``queue_ready_in_tx(conn, now, *,
    after_task=None, workstreams=None) -> int`` and ``requeue_due_in_tx(conn, now) -> int``
    (the set-based moves into the queue).

Stability Guarantees:
    Every function here runs inside the caller's write transaction and never opens one. Every
    report on a running or validating task is a compare-and-set on (state, generation): a
    result from a stale claim changes nothing and is logged as a ``stale_result_rejected``
    event. A retry waits ``retry_delay × 2^retries`` plus up to ``jitter`` of it, never more
    than ``cap``. Transitions go through ``kernel.store.machines.transition_in_tx`` so the SQL
    triggers check them and write the events.

Integration Points:
    ``kernel.runtime.claims`` (the worker's transactions) is built on these; the scheduler's
    tick queues, re-queues and hands on with them (``kernel.runtime.scheduler``,
    ``kernel.runtime.health``); a stopping worker hands its task on. Queueing reads the
    ``queueable_task`` view and the ``open_workstream`` view (sql/0005_trust.sql): the one
    definition of "ready" (``kernel.store.queries``).

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.config``, ``kernel.store.db``,
    ``kernel.store.events``, ``kernel.store.machines``, ``kernel.store.queries``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.config import WorkersConfig
from kernel.store import db, events, queries
from kernel.store.machines import claimed_states, transition_in_tx


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


# --------------------------------------------------------------------------- retries

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


def fail_or_retry_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, now: float, *,
                        trigger: str, failure_mode: str, error: str, retryable: bool,
                        from_state: str, backoff: dict[str, float],
                        extra: dict[str, Any]) -> str:
    """``from_state`` → retrying (with a retry left and ``retryable``) or failed; "stale" when
    the claim no longer holds."""
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
        ok = transition_in_tx(conn, "task", claim.task_id, "retrying", trigger, meta,
                              expect=expect, retry_count=("sql", "retry_count + 1"),
                              next_attempt_at=next_at, last_error=error,
                              failure_mode=failure_mode, **clear)
        return "retrying" if ok else "stale"
    ok = transition_in_tx(conn, "task", claim.task_id, "failed", trigger, meta, expect=expect,
                          last_error=error, failure_mode=failure_mode, completed_at=stamp,
                          **clear)
    return "failed" if ok else "stale"


# --------------------------------------------------------------------------- the attempt row

#: The version of the output documents written here: ``ATTEMPT_OUTPUT_SCHEMA_VERSION`` of
#: ``kernel.definitions.fields`` (not imported: it would load pydantic on the worker's path;
#: tests/test_output_contract.py checks that both agree). Model and JSON Schema:
#: ``AttemptOutput``, schemas/attempt-output.schema.json.
OUTPUT_SCHEMA_VERSION = "1.1.0"


def _count(value: Any) -> int | None:
    """A token count as reported: a non-negative int (never a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _usage(details: dict[str, Any]) -> dict[str, Any]:
    """The metadata keys of the contract found in ``details``: ``tokens_used`` (or the sum of
    ``tokens``), ``tokens``, ``cost``, ``model``, ``agent``, ``commit``; a value of the wrong
    type is left out (it stays in ``details``)."""
    out: dict[str, Any] = {}
    tokens = details.get("tokens")
    if isinstance(tokens, dict):
        sent, received = _count(tokens.get("sent")), _count(tokens.get("received"))
        if sent is not None and received is not None:
            out["tokens"] = {"sent": sent, "received": received}
    used = _count(details.get("tokens_used"))
    if used is None and "tokens" in out:
        used = out["tokens"]["sent"] + out["tokens"]["received"]
    out["tokens_used"] = used
    cost = details.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < float("inf"):
        out["cost"] = round(float(cost), 6)
    for key in ("model", "agent", "commit"):
        if _text(details.get(key)):
            out[key] = details[key]
    return out


def _files(value: Any) -> list[str]:
    """``files_modified`` as reported, sorted and without duplicates (strings only)."""
    if not isinstance(value, list | tuple):
        return []
    return sorted({f for f in value if isinstance(f, str) and f})


def result_document(status: str, validation: str, duration: float, error: str | None,
                    details: dict[str, Any] | None = None) -> dict[str, Any]:
    """An attempt's ``output`` (AIDER-INT-003, schema ``OUTPUT_SCHEMA_VERSION``).

    The contract fields come from the executor's and worker's ``details``: ``files_modified``
    (sorted, unique), ``diff_summary``, ``commit_message``, and into ``metadata``
    ``tokens_used`` (None: not reported, which readers count as unknown, never zero),
    ``tokens`` ({sent, received}), ``cost`` (USD), ``model``, ``agent``, ``commit``, next to
    ``duration_seconds``. ``details`` itself is kept whole, as the executor reported it: the
    contract fields are the checked copies to read (a value of the wrong type is only there).
    """
    given = details or {}
    out: dict[str, Any] = {
        "schema_version": OUTPUT_SCHEMA_VERSION, "status": status,
        "files_modified": _files(given.get("files_modified")),
        "diff_summary": given.get("diff_summary") if isinstance(
            given.get("diff_summary"), str) else "",
        "validation_status": validation, "commit_message": _text(given.get("commit_message")),
        "error": error,
        "metadata": {**_usage(given), "duration_seconds": round(max(duration, 0.0), 3)}}
    if details:
        out["details"] = details
    return out


def close_attempt_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, outcome: str, *,
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


def reject_stale_in_tx(conn: apsw.Connection, claim: Claim, stamp: str, what: str) -> None:
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


# --------------------------------------------------------------------------- handing on

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
    claim = _claim_of(task, attempt)
    if interrupted:
        _requeue_interrupted_in_tx(conn, claim, task["state"], stamp, reason, caused_by)
        if attempt:
            close_attempt_in_tx(conn, claim, stamp, "lost", error_type="interrupted",
                                error=reason,
                                output=result_document("failure", "pending", 0.0, reason))
        return "queued"
    state = fail_or_retry_in_tx(conn, claim, stamp, now, trigger="worker_lost",
                                failure_mode=failure_mode or "Worker-Crashed", error=reason,
                                retryable=True, from_state=task["state"], backoff=backoff,
                                extra={"lost_worker": claim.worker_id, "caused_by": caused_by})
    if attempt:
        close_attempt_in_tx(conn, claim, stamp, "lost", failure_mode=failure_mode,
                            error_type="worker_lost", error=reason,
                            output=result_document("failure", "pending", 0.0, reason))
    return state


def _claim_of(task: dict[str, Any], attempt: dict[str, Any] | None) -> Claim:
    """The claim a lost worker held on ``task`` (its open ``attempt``, if any)."""
    return Claim(task_id=task["task_id"], workstream_id=task["workstream_id"],
                 worker_id=task["worker_id"] or (attempt or {}).get("worker_id") or "",
                 generation=task["generation"],
                 attempt_id=attempt["attempt_id"] if attempt else 0,
                 attempt_no=attempt["attempt_no"] if attempt else 0, type="", command=None,
                 definition={}, timeout_seconds=None, retry_count=task["retry_count"],
                 max_retries=task["max_retries"],
                 retry_delay_seconds=task["retry_delay_seconds"], worktree_path=None)


def _requeue_interrupted_in_tx(conn: apsw.Connection, claim: Claim, state: str, stamp: str,
                               reason: str, caused_by: int | None) -> None:
    clear = {"worker_id": None} if state == "running" else {}
    transition_in_tx(conn, "task", claim.task_id, "queued", "operator_interrupted",
                     {"at": stamp, "reason": reason, "interrupted_worker": claim.worker_id,
                      "caused_by": caused_by},
                     expect={"state": state, "generation": claim.generation},
                     queued_at=stamp, **clear)


# --------------------------------------------------------------------------- the queue

def queue_ready_in_tx(conn: apsw.Connection, now: float, *, after_task: str | None = None,
                      workstreams: list[str] | None = None) -> int:
    """pending → queued for every task of the ``queueable_task`` view (one statement).

    With ``after_task``, only its dependents in its workstream (the completing worker's fast
    path); with ``workstreams``, only tasks of those. Each ``task_queued`` event names, in
    ``caused_by``, the completion event of the dependency that completed last.
    """
    stamp = clock.iso(now)
    params: dict[str, Any] = {"at": stamp}
    conditions = []
    if after_task is not None:
        if conn.execute("SELECT 1 FROM task_dependency WHERE depends_on = ? LIMIT 1",
                        (after_task,)).fetchone() is None:
            return 0   # nothing depends on it: one index probe instead of the view
        conditions.append(queries.QUEUE_AFTER_TASK)
        params["done"] = after_task
    if workstreams is not None:
        conditions.append(queries.QUEUE_IN_WORKSTREAMS)
        params["ws"] = json.dumps(workstreams)
    sql = queries.QUEUE_READY + "".join(
        f" {'WHERE' if i == 0 else 'AND'} {c}" for i, c in enumerate(conditions))
    conn.execute(sql + queries.QUEUE_END, params)
    return conn.changes()


def requeue_due_in_tx(conn: apsw.Connection, now: float) -> int:
    """retrying → queued for every task whose backoff delay has elapsed (one statement), in
    workstreams that may still start work (``open_workstream``). ``caused_by`` is the event
    that put the task into retrying."""
    stamp = clock.iso(now)
    conn.execute(queries.REQUEUE_DUE, {"at": stamp})
    return conn.changes()
