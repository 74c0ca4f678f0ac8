"""The set-based state moves, as named SQL: the statements that move many tasks at once.

Public API:
    ``QUEUE_READY`` (pending → queued for the ``queueable_task`` view; ``:at``, and the optional
    conditions ``QUEUE_AFTER_TASK`` (``:done``) and ``QUEUE_IN_WORKSTREAMS`` (``:ws``, a JSON
    array), joined with WHERE and AND, closed with ``QUEUE_END``); ``REQUEUE_DUE`` (retrying →
    queued once the backoff elapsed; ``:at``).

Stability Guarantees:
    These are the only statements outside ``kernel.store.machines`` that change a task's state
    (tests/test_layers.py enforces it). They move rows by ``UPDATE ... SET state``, so the same
    guard and event triggers check and record every row as for a single transition, with
    ``transition_trigger`` and ``transition_metadata`` (``at``, ``caused_by``) filled in.
    Which tasks may move is never restated here: it is read from the SQL views
    (``queueable_task``, ``open_workstream``), the one home of those rules.

Integration Points:
    ``kernel.runtime.attempts`` runs them inside the caller's write transaction (the scheduler's
    tick, and a completing worker's fast path). Like procrastinate's ``queries.sql``: one place
    to read what the kernel does to many rows at once.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

# The event a queued task owes its turn to: the completion of its dependency that completed
# last (NULL for a task without dependencies).
_LAST_DEPENDENCY_COMPLETION = (
    "(SELECT MAX(e.seq) FROM task_dependency d JOIN event e ON e.task_id = d.depends_on "
    "AND e.to_state = 'completed' AND e.event_type = 'task_state_transition' "
    "WHERE d.task_id = task.task_id)")

QUEUE_READY = (
    "UPDATE task SET state = 'queued', transition_trigger = 'scheduler_assigned', "
    "transition_metadata = json_object('at', :at, 'caused_by', "
    f"{_LAST_DEPENDENCY_COMPLETION}), queued_at = :at "
    "WHERE task_id IN (SELECT q.task_id FROM queueable_task q")

#: Only the dependents of ``:done`` in its own workstream (another workstream may still need its
#: worktree; the tick queues those once it exists). A condition on ``q``, as is the next one:
#: ``kernel.runtime.attempts.queue_ready_in_tx`` joins them with WHERE and AND. Driven by the
#: dependency index: a task without dependents costs one index probe, not a scan of its
#: workstream's tasks (~3 ms per completion at 3,000 tasks).
QUEUE_AFTER_TASK = (
    "q.task_id IN (SELECT d.task_id FROM task_dependency d WHERE d.depends_on = :done) "
    "AND q.workstream_id = (SELECT workstream_id FROM task WHERE task_id = :done)")

QUEUE_IN_WORKSTREAMS = "q.workstream_id IN (SELECT value FROM json_each(:ws))"

QUEUE_END = ")"

#: ``caused_by`` is the event that put the task into retrying.
REQUEUE_DUE = (
    "UPDATE task SET state = 'queued', transition_trigger = 'retry_delay_elapsed', "
    "transition_metadata = json_object('at', :at, 'caused_by', "
    "(SELECT MAX(e.seq) FROM event e WHERE e.task_id = task.task_id "
    "AND e.to_state = 'retrying')), queued_at = :at, next_attempt_at = NULL "
    "WHERE state = 'retrying' AND (next_attempt_at IS NULL OR next_attempt_at <= :at) "
    "AND workstream_id IN (SELECT workstream_id FROM open_workstream)")
