"""Read-only questions about the project's state: status, one task in full, and why.

Public API:
    ``status(conn, *, workstream=None, states=(), all_workers=False) -> dict`` (workstreams
    with task counts by state and skipped tasks, the tasks, the live workers, totals);
    ``show(conn, task_id, logs_dir) -> dict`` (one task: columns, parsed definition,
    dependencies, dependents, capabilities, resources, attempts, held leases, blocked_by, log
    tail); ``why(conn, task_id, logs_dir, *, archive_dir=None, local_offers=None) -> dict``
    (``{"task_id", "state", "sentences", "events", "log_tail"}``: plain-English sentences
    explaining the current state);
    ``log_tail(path, lines) -> list[str]``; ``TASK_STATES``.

Stability Guarantees:
    Nothing here writes; every function reads in one snapshot (``db.read_tx``, or the caller's
    transaction). Keys of the returned dictionaries are only added, never renamed. The wording
    of ``why`` sentences is for people and may change; an unknown task raises ``OrchError``
    with code ``unknown_task`` (exit 1).

Integration Points:
    ``orch status | show | why`` (``kernel.cli.operator``). Reads the ``ready_task``,
    ``blocked_task``, ``stuck_task``, ``worker_health`` views and the audit log, live and
    archived (``.state/archive/events``), through ``kernel.store.eventlog.read_events``; task
    logs are ``<logs_dir>/<task_id>.log`` (or an attempt's ``log_path``).

Dependencies:
    apsw; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.definitions.fit``,
    ``kernel.store.db``, ``kernel.store.eventlog``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apsw

from kernel.base.errors import OrchError
from kernel.base.words import plural as _plural
from kernel.store import db, eventlog

# The task machine's states in lifecycle order (for counts and tables).
TASK_STATES = ("pending", "queued", "running", "retrying", "validating", "completed", "failed",
               "cancelled")
SHOW_LOG_LINES = 40
WHY_LOG_LINES = 10
_TAIL_BYTES = 256 * 1024
_HIDDEN_COLUMNS = ("definition", "transition_trigger", "transition_metadata")


def _ordered_counts(counts: dict[str, int]) -> dict[str, int]:
    known = [s for s in TASK_STATES if s in counts]
    return {s: counts[s] for s in [*known, *sorted(set(counts) - set(known))]}


# A completed task that never ran: `orch skip` records its last transition (to completed)
# with this trigger, in the event log (the task row keeps no trigger once it is applied).
SKIP_TRIGGER = "operator_skip"
_SKIPPED_SQL = (
    "(t.state = 'completed' AND (SELECT e.trigger FROM event e WHERE e.task_id = t.task_id "
    "AND e.entity_type = 'task' AND e.to_state IS NOT NULL ORDER BY e.seq DESC LIMIT 1) "
    f"= '{SKIP_TRIGGER}')")
_TERMINAL_WORKER_SQL = ("(SELECT ms.state FROM machine_state ms "
                        "WHERE ms.machine = 'worker' AND ms.terminal = 1)")


def status(conn: apsw.Connection, *, workstream: str | None = None,
           states: tuple[str, ...] = (), all_workers: bool = False) -> dict[str, Any]:
    """Every workstream (state, task counts, ``skipped``: how many of its completed tasks
    were skipped), the tasks (each with ``skipped``), the workers and totals. ``workstream``
    keeps one workstream (an unknown one raises ``unknown_workstream``); ``states`` keeps the
    tasks in those states (``skipped`` counts as a state here); workers that shut down are
    left out unless ``all_workers``."""
    scope, params = ("WHERE workstream_id = ?", (workstream,)) if workstream else ("", ())
    with db.snapshot(conn):
        workstreams = db.rows(
            conn, f"SELECT workstream_id, state FROM workstream {scope} ORDER BY workstream_id",
            params)
        if workstream and not workstreams:
            raise OrchError("unknown_workstream", f"no workstream {workstream!r}",
                            hint="`orch status` lists them; `orch load` imports tasks/")
        counts: dict[str, dict[str, int]] = {}
        for r in db.rows(conn, "SELECT workstream_id, state, tasks FROM task_state_count"):
            counts.setdefault(r["workstream_id"], {})[r["state"]] = r["tasks"]
        tasks = db.rows(
            conn,
            "SELECT task_id, workstream_id, state, retry_count, max_retries, worker_id, "
            "started_at, completed_at, failure_mode, last_error, "
            f"{_SKIPPED_SQL} AS skipped FROM task t {scope} ORDER BY workstream_id, task_id",
            params)
        workers = db.rows(
            conn,
            "SELECT worker_id, state, pid, last_heartbeat_at, running_task_id, "
            "(SELECT w.name FROM worker w WHERE w.worker_id = h.worker_id) AS name "
            "FROM worker_health h "
            + ("" if all_workers else f"WHERE state NOT IN {_TERMINAL_WORKER_SQL} ")
            + "ORDER BY worker_id")
    skipped: dict[str, int] = {}
    for t in tasks:
        t["skipped"] = bool(t["skipped"])
        skipped[t["workstream_id"]] = skipped.get(t["workstream_id"], 0) + t["skipped"]
    totals: dict[str, int] = {}
    for ws in workstreams:
        ws["counts"] = _ordered_counts(counts.get(ws["workstream_id"], {}))
        ws["skipped"] = skipped.get(ws["workstream_id"], 0)
        for state, n in ws["counts"].items():
            totals[state] = totals.get(state, 0) + n
    if states:
        tasks = [t for t in tasks if ("skipped" if t["skipped"] else t["state"]) in states]
    return {"workstreams": workstreams, "tasks": tasks, "workers": workers,
            "totals": _ordered_counts(totals), "skipped": sum(skipped.values())}


def log_tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (its last 256 KiB at most are read)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - _TAIL_BYTES))
        data = f.read()
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > _TAIL_BYTES and text:
        text = text[1:]  # the first line read is probably cut
    return text[-lines:] if lines > 0 else []


def _json(value: Any) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _task_row(conn: apsw.Connection, task_id: str) -> dict[str, Any]:
    found = db.row(conn, "SELECT * FROM task WHERE task_id = ?", (task_id,))
    if found is None:
        raise OrchError("unknown_task", f"unknown task: {task_id}",
                        hint="`orch status` lists the tasks of this project")
    return found


def _attempts(conn: apsw.Connection, task_id: str) -> list[dict[str, Any]]:
    found = db.rows(conn, "SELECT * FROM attempt WHERE task_id = ? ORDER BY attempt_no",
                    (task_id,))
    for attempt in found:
        attempt["output"] = _json(attempt.get("output"))
    return found


def _log_file(logs_dir: Path | None, task_id: str,
              attempt: dict[str, Any] | None = None) -> Path | None:
    candidates: list[Path] = []
    if attempt is not None and attempt.get("log_path"):
        candidates.append(Path(attempt["log_path"]))
    if logs_dir is not None:
        candidates.append(Path(logs_dir) / f"{task_id}.log")
    return next((p for p in candidates if p.is_file()), None)


def show(conn: apsw.Connection, task_id: str, logs_dir: Path | None) -> dict[str, Any]:
    """One task in full: its columns at the top level, plus ``definition`` (parsed),
    ``dependencies`` / ``dependents`` ({task_id, state}), ``capabilities``, ``resources``,
    ``attempts`` (output parsed), ``leases`` (held), ``blocked_by`` (blocked_task rows),
    ``log_path`` and ``log_tail`` (its last 40 lines, or None without a log)."""
    with db.snapshot(conn):
        task = _task_row(conn, task_id)
        result = {k: v for k, v in task.items() if k not in _HIDDEN_COLUMNS}
        result["definition"] = _json(task.get("definition"))
        result["dependencies"] = db.rows(
            conn,
            "SELECT p.task_id, p.state FROM task_dependency d JOIN task p "
            "ON p.task_id = d.depends_on WHERE d.task_id = ? ORDER BY p.task_id", (task_id,))
        result["dependents"] = db.rows(
            conn,
            "SELECT t.task_id, t.state FROM task_dependency d JOIN task t "
            "ON t.task_id = d.task_id WHERE d.depends_on = ? ORDER BY t.task_id", (task_id,))
        result["capabilities"] = db.rows(
            conn, "SELECT capability_id, min_version FROM task_capability WHERE task_id = ? "
                  "ORDER BY capability_id", (task_id,))
        result["resources"] = db.rows(
            conn, "SELECT resource_id, mode, amount FROM task_resource WHERE task_id = ? "
                  "ORDER BY resource_id", (task_id,))
        result["attempts"] = _attempts(conn, task_id)
        result["leases"] = db.rows(
            conn, "SELECT * FROM lease WHERE task_id = ? AND released_at IS NULL "
                  "ORDER BY lease_id", (task_id,))
        result["blocked_by"] = db.rows(
            conn, "SELECT blocked_by, blocked_by_state, needs_operator, reason "
                  "FROM blocked_task WHERE task_id = ? ORDER BY blocked_by", (task_id,))
    last = result["attempts"][-1] if result["attempts"] else None
    path = _log_file(logs_dir, task_id, last)
    result["log_path"] = str(path) if path else None
    result["log_tail"] = log_tail(path, SHOW_LOG_LINES) if path else None
    return result


# ------------------------------------------------------------------------------------ why


def _clock(stamp: str | None) -> str:
    """``10:15:03 UTC`` from an ISO timestamp (the date is left out)."""
    if not stamp or "T" not in stamp:
        return stamp or "?"
    return stamp.split("T", 1)[1][:8] + " UTC"


def _seconds(value: Any) -> str:
    number = float(value)
    return f"{number:g}"


def _failed_rules(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The failed results of a rules report
    (``kernel.runtime.rules.RulesReport.as_dict()``), which the
    kernel puts in the metadata of validation failures as ``rules``."""
    rules = meta.get("rules")
    if isinstance(rules, dict) and isinstance(rules.get("results"), list):
        return [r for r in rules["results"] if isinstance(r, dict) and not r.get("passed")]
    return []


def _rules(meta: dict[str, Any]) -> list[str]:
    failed = _failed_rules(meta)
    if failed:
        return [str(r.get("rule")) for r in failed]
    rules = meta.get("rules")
    if isinstance(rules, list):
        return [str(r.get("rule") or r.get("name") or r) if isinstance(r, dict) else str(r)
                for r in rules]
    if meta.get("rule"):
        return [str(meta["rule"])]
    return []


def _rule_details(meta: dict[str, Any]) -> str:
    """``: <reason>`` of the failed rules (with the exit code when the reason lacks it), when
    the metadata carries them."""
    failed = _failed_rules(meta)
    parts = []
    for r in failed:
        text = str(r.get("reason") or "").strip()
        code = r.get("exit_code")
        if code is not None and str(code) not in text:
            text = f"{text} (exit code {code})".strip()
        if text:
            parts.append(text if len(failed) == 1 else f"{r.get('rule')}: {text}")
    return (": " + "; ".join(parts)) if parts else ""


def _rule_output(meta: dict[str, Any], lines: int = 5) -> list[str]:
    """Sentences quoting the end of each failed rule's output."""
    out = []
    for r in _failed_rules(meta):
        tail = [ln for ln in str(r.get("output_tail") or "").splitlines() if ln.strip()]
        if tail:
            out.append(f"Rule {r.get('rule')} printed (last {_plural(len(tail[-lines:]), 'line')}"
                       f"): {' / '.join(tail[-lines:])}")
    return out


_VALIDATION_PREFIX = "post-execution validation failed: "


def _by(meta: dict[str, Any]) -> str:
    return f" by {meta['operator']}" if meta.get("operator") else ""


_LEAVES_ATTEMPT = {"execution_failed", "task_timeout", "worker_lost"}


def _attempt_sentence(n: int, attempt: dict[str, Any] | None, event: dict[str, Any],
                      task: dict[str, Any]) -> str:
    """One sentence on how attempt ``n`` ended, from its attempt row and the event that moved
    the task out of running / validating."""
    meta = event["metadata"]
    attempt = attempt or {}
    worker = attempt.get("worker_id") or meta.get("worker_id")
    on = f" on worker {worker}" if worker else ""
    mode = attempt.get("failure_mode") or meta.get("failure_mode")
    exit_code = attempt.get("exit_code")
    if exit_code is None:
        exit_code = meta.get("exit_code")
    error = attempt.get("error_message") or meta.get("error") or meta.get("error_message")
    trigger = event["trigger"]
    if trigger == "task_timeout":
        limit = meta.get("timeout_seconds") or task.get("timeout_seconds")
        after = f" after {_seconds(limit)} s" if limit is not None else ""
        text = f"Attempt {n}{on} timed out{after} ({mode or 'Task-Timeout'})"
    elif trigger == "worker_lost":
        text = (f"Attempt {n}{on} was lost: the worker died or stopped responding"
                + (f" ({mode})" if mode else ""))
    elif trigger == "validation_failed":
        rules = _rules(meta)
        which = f" (rule {', '.join(rules)})" if rules else ""
        text = f"Attempt {n}{on} ran but failed validation{which}"
    else:
        code = f" with exit code {exit_code}" if exit_code is not None else ""
        text = f"Attempt {n}{on} failed{code}" + (f" ({mode})" if mode else "")
        if error and exit_code is None:
            text += f": {error}"
    retry_count = meta.get("retry_count", task["retry_count"])
    if event["to_state"] == "retrying":
        when = meta.get("next_attempt_at")
        if when is None and task["state"] == "retrying" and retry_count == task["retry_count"]:
            when = task.get("next_attempt_at")
        at = f" scheduled for {_clock(when)}" if when else " scheduled"
        text += f"; retry {retry_count} of {task['max_retries']}{at}"
    elif event["to_state"] == "failed" and trigger != "validation_failed":
        if task["max_retries"] and retry_count >= task["max_retries"]:
            text += f"; no retries left ({retry_count} of {task['max_retries']} used)"
        elif task["max_retries"]:
            text += "; not retried (the failure is not retryable)"
    return text + "."


def _history(task: dict[str, Any], events: list[dict[str, Any]],
             attempts: dict[int, dict[str, Any]]) -> tuple[list[str], int]:
    """Sentences on past attempts and operator actions, and how many attempts started."""
    sentences: list[str] = []
    started = 0
    tid = task["task_id"]
    for event in events:
        to_state, trigger, meta = event["to_state"], event["trigger"], event["metadata"]
        if to_state == "running":
            started += 1
        elif event["from_state"] in ("running", "validating") and (
                trigger in _LEAVES_ATTEMPT or trigger == "validation_failed"):
            sentences.append(_attempt_sentence(max(started, 1), attempts.get(started), event,
                                               task))
        elif trigger == "operator_reset":
            sentences.append(f"{tid} was reset to pending{_by(meta)} at {event['timestamp']} "
                             f"(`orch retry`); it was {event['from_state']}.")
        elif trigger == "user_cancelled" and event is not events[-1]:
            sentences.append(f"{tid} was cancelled{_by(meta)} at {event['timestamp']} "
                             f"(from {event['from_state']}).")
    return sentences, started


def _last_event_into(events: list[dict[str, Any]], state: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e["to_state"] == state), None)


def _halt_sentence(conn: apsw.Connection, tid: str, ws: str) -> str | None:
    """Why a pending task of a workstream that may not start work waits, or None."""
    ws_state = db.scalar(conn, "SELECT state FROM workstream WHERE workstream_id = ?", (ws,))
    if db.scalar(conn, "SELECT 1 FROM open_workstream WHERE workstream_id = ?", (ws,)):
        return None
    failed = [r[0] for r in conn.execute(
        "SELECT task_id FROM task WHERE workstream_id = ? AND state IN ('failed', 'cancelled') "
        "ORDER BY critical DESC, task_id", (ws,))]
    critical = [r[0] for r in conn.execute(
        "SELECT task_id FROM task WHERE workstream_id = ? AND state = 'failed' AND critical = 1 "
        "ORDER BY task_id", (ws,))]
    why = (f"critical task {', '.join(critical)} failed" if critical
           else f"it is {ws_state}")
    fix = f"; run `orch retry {' '.join((critical or failed)[:5])}` to go on" \
        if (critical or failed) else ""
    return (f"{tid} is pending and nothing more of its workstream {ws} runs: {why}{fix}.")


def _pending_sentences(conn: apsw.Connection, tid: str, ws: str) -> list[str]:
    stuck = db.rows(conn, "SELECT DISTINCT root_task_id, root_state FROM stuck_task "
                          "WHERE task_id = ? ORDER BY root_task_id", (tid,))
    blocked = db.rows(conn, "SELECT blocked_by, blocked_by_state, needs_operator "
                            "FROM blocked_task WHERE task_id = ? ORDER BY blocked_by", (tid,))
    if stuck:
        direct = {b["blocked_by"] for b in blocked}
        causes = [f"{'dependency' if s['root_task_id'] in direct else 'upstream task'} "
                  f"{s['root_task_id']} {s['root_state']}" for s in stuck]
        roots = " ".join(s["root_task_id"] for s in stuck)
        return [f"{tid} is pending and cannot run until an operator acts: "
                f"{'; '.join(causes)}; run `orch retry {roots}` to run "
                f"{'it' if len(stuck) == 1 else 'them'} again."]
    halted = _halt_sentence(conn, tid, ws)
    if blocked:
        waits = ", ".join(f"{b['blocked_by']} ({b['blocked_by_state']})" for b in blocked)
        word = "dependency" if len(blocked) == 1 else "dependencies"
        return [f"{tid} is pending: it waits for {word} {waits}.", *([halted] if halted else [])]
    if halted:
        return [halted]
    return [f"{tid} is pending: its dependencies are completed (or it has none), so the "
            "scheduler queues it on its next tick (is `orch run` running?)."]


def _queued_sentence(conn: apsw.Connection, tid: str,
                     local_offers: dict[str, str] | None = None) -> str:
    from kernel.definitions import fit  # pydantic models: not on `orch status`'s path

    caps = [r["capability_id"] for r in db.rows(
        conn, "SELECT capability_id FROM task_capability WHERE task_id = ? "
              "ORDER BY capability_id", (tid,))]
    resources = [r["resource_id"] for r in db.rows(
        conn, "SELECT resource_id FROM task_resource WHERE task_id = ? ORDER BY resource_id",
        (tid,))]
    blocked = fit.unrunnable(conn, [tid])
    if not blocked and not fit.live_offers(conn):
        # No worker now: would a worker started here (or with the whole catalog) run it?
        here = fit.catalog_offers(conn) if local_offers is None else local_offers
        blocked = fit.unrunnable(conn, [tid], offers=[here])
        if blocked:
            blocked[0]["reason"] = blocked[0]["reason"].replace(
                "no registered worker offers", "a worker started with the catalog "
                "(capabilities/registry.yaml) would lack" if local_offers is None else
                "no worker offers it, and one started on this machine would lack")
    if blocked and "advertises enough" in blocked[0]["reason"]:
        return (f"{tid} is queued but no worker can run it: {blocked[0]['reason']}; start a "
                "Dask worker that advertises enough (`dask worker ADDRESS --resources "
                "\"NAME=AMOUNT\"`, docs/operations/SCALING.md), or lower the task's "
                "resource_requirements and `orch load` it again.")
    if blocked:
        return (f"{tid} is queued but no worker can run it: {blocked[0]['reason']}; start "
                "`orch worker --capability NAME@VERSION` with what it needs, or change the "
                "task's worker_requirements and `orch load` it again.")
    text = f"{tid} is queued: its dependencies completed; it waits for a worker"
    if caps:
        text += f" with capabilities [{', '.join(caps)}]"
    if resources:
        text += f" and the resources [{', '.join(resources)}]"
    if not fit.live_offers(conn):
        text += "; no worker is running (start `orch run` or `orch worker`)"
    elif not db.scalar(conn, "SELECT 1 FROM ready_task WHERE task_id = ?", (tid,)):
        text += "; its workstream runs nothing new now"
    return text + "."


def _failed_sentence(task: dict[str, Any], event: dict[str, Any] | None, attempts: int) -> str:
    tid = task["task_id"]
    meta = event["metadata"] if event else {}
    trigger = event["trigger"] if event else None
    if trigger == "validation_failed":
        rules = _rules(meta)
        if len(rules) == 1:
            return f"{tid} failed: validation rule {rules[0]} failed{_rule_details(meta)}."
        if rules:
            return (f"{tid} failed: validation rules {', '.join(rules)} failed"
                    f"{_rule_details(meta)}.")
        detail = task.get("last_error") or meta.get("error")
        if detail and detail.startswith(_VALIDATION_PREFIX):
            detail = detail[len(_VALIDATION_PREFIX):]
        return f"{tid} failed: post-execution validation failed" + (
            f": {detail}." if detail else ".")
    mode = task.get("failure_mode") or meta.get("failure_mode")
    detail = task.get("last_error") or meta.get("error") or meta.get("error_message")
    why = {"task_timeout": "its last attempt timed out",
           "worker_lost": "its worker was lost during its last attempt",
           "execution_failed": "its command failed"}.get(trigger or "", "it failed")
    if trigger == "execution_failed" and meta.get("phase") == "pre_execution":
        why = (f"pre-execution rule {meta.get('rule') or '?'} failed, so its command never "
               "ran")
    text = f"{tid} failed after {_plural(attempts, 'attempt')}: {why}"
    if mode or detail:
        text += " (" + ": ".join(str(x) for x in (mode, detail) if x) + ")"
    if event:
        text += f" at {event['timestamp']}"
    return text + "."


def _state_sentences(conn: apsw.Connection, task: dict[str, Any],
                     events: list[dict[str, Any]], started: int,
                     local_offers: dict[str, str] | None = None) -> list[str]:
    tid, state = task["task_id"], task["state"]
    last = _last_event_into(events, state)
    meta = last["metadata"] if last else {}
    if state == "pending":
        return _pending_sentences(conn, tid, task["workstream_id"])
    if state == "queued":
        return [_queued_sentence(conn, tid, local_offers)]
    if state == "running":
        limit = task.get("timeout_seconds")
        extra = f", timeout {_seconds(limit)} s" if limit is not None else ""
        return [f"{tid} is running on worker {task['worker_id']} since {task['started_at']} "
                f"(attempt {max(started, 1)}{extra})."]
    if state == "retrying":
        when = task.get("next_attempt_at")
        at = f"; the next attempt starts not before {_clock(when)}" if when else ""
        return [f"{tid} is retrying: retry {task['retry_count']} of {task['max_retries']}{at}."]
    if state == "validating":
        return [f"{tid} is validating: its command exited 0 and the post-execution rules "
                "are running."]
    if state == "completed":
        if last and last["trigger"] == "operator_skip":
            return [f"{tid} was skipped{_by(meta)} at {last['timestamp']} (`orch skip`): it did "
                    "not run, and its dependents may proceed."]
        return [f"{tid} completed at {task['completed_at']} after "
                f"{_plural(started, 'attempt')}."]
    if state == "failed":
        return [_failed_sentence(task, last, started)]
    if state == "cancelled":
        when = last["timestamp"] if last else task.get("completed_at")
        text = f"{tid} was cancelled{_by(meta)} at {when}"
        if meta.get("reason") == "workstream_cancelled":
            text += f", with its workstream {task['workstream_id']}"
        if last and last["from_state"]:
            text += f" (it was {last['from_state']})"
        return [text + "."]
    return [f"{tid} is {state}."]


def why(conn: apsw.Connection, task_id: str, logs_dir: Path | None, *,
        archive_dir: Path | None = None,
        local_offers: dict[str, str] | None = None) -> dict[str, Any]:
    """Why a task is in its state: ``sentences`` in plain English (the current state first,
    then the history of its attempts and operator actions, then what to do), its ``events``,
    and for a failed task the ``log_tail`` of its last attempt (else None).

    Events moved out of the live log by ``orch audit rotate`` are read from ``archive_dir``
    (default: ``archive/events`` beside ``logs_dir``, i.e. ``.state/archive/events``).
    ``local_offers``: what a worker started on this machine would offer
    (``kernel.definitions.offers.local_offers``), for a queued task when no worker is live
    (default: the whole catalog)."""
    if archive_dir is None and logs_dir is not None:
        archive_dir = eventlog.archive_dir(Path(logs_dir).parent)
    with db.snapshot(conn):
        task = _task_row(conn, task_id)
        events = eventlog.read_events(conn, archive_dir, task_id=task_id, with_source=False)
        attempt_rows = _attempts(conn, task_id)
        attempts = {a["attempt_no"]: a for a in attempt_rows}
        history, started = _history(task, events, attempts)
        started = max(started, len(attempt_rows))
        sentences = _state_sentences(conn, task, events, started, local_offers) + history
        state = task["state"]
        failed_event = _last_event_into(events, "failed") if state == "failed" else None
        if failed_event is not None:
            sentences += _rule_output(failed_event["metadata"])
        if state in ("failed", "cancelled"):
            waiting = [r["task_id"] for r in db.rows(
                conn, "SELECT DISTINCT task_id FROM stuck_task WHERE root_task_id = ? "
                      "ORDER BY task_id", (task_id,))]
            sentences.append(f"Run `orch retry {task_id}` to run it again.")
            if waiting:
                shown = ", ".join(waiting[:10]) + (
                    f" and {len(waiting) - 10} more" if len(waiting) > 10 else "")
                sentences.append(f"{_plural(len(waiting), 'pending task')} cannot run until "
                                 f"then: {shown}.")
        ws_state = db.scalar(conn, "SELECT state FROM workstream WHERE workstream_id = ?",
                             (task["workstream_id"],))
    if ws_state in ("failed", "cancelled") and state not in ("completed", "failed",
                                                             "cancelled", "pending"):
        sentences.append(f"Its workstream {task['workstream_id']} is {ws_state}; "
                         f"`orch retry` of one of its failed tasks revives it.")
    tail = None
    if state == "failed":
        path = _log_file(logs_dir, task_id, attempt_rows[-1] if attempt_rows else None)
        if path is not None:
            tail = log_tail(path, WHY_LOG_LINES)
            if tail:
                sentences.append(f"The last {_plural(len(tail), 'line')} of its log "
                                 f"({path}) follow.")
    return {"task_id": task_id, "state": state, "sentences": sentences, "events": events,
            "log_tail": tail}
