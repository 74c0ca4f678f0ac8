"""``orch cancel | retry | skip`` (operator actions) and ``orch status | show | why`` (reads).

Public API:
    ``COMMANDS`` (``cancel``, ``retry``, ``skip``, ``status``, ``show``, ``why``);
    ``contract_lines(output) -> list[str]`` (an attempt's output contract as text).

Stability Guarantees:
    See ``kernel.cli``. ``cancel``/``retry``/``skip`` print ``OperatorReport.as_dict()`` with
    ``--json`` (``changed``, ``skipped``: the tasks not acted on, ``workstreams_changed``,
    ``workstreams_skipped``). ``cancel`` exits 0 even when every task was already finished;
    ``retry`` and ``skip`` act on the tasks they can, then exit 1 when any task named was not
    one they can act on (``cannot_act``: the document also holds ``error``, the text names
    each task and why on stderr). An unknown task or workstream exits 1 (``unknown_task`` /
    ``unknown_workstream``) with nothing changed; no TASK (and, for ``cancel``, no
    ``--workstream``) is a usage error, exit 2. ``status`` (filters ``--workstream``,
    ``--state``; ``--all`` adds workers that shut down), ``show`` and ``why`` print the
    dictionaries of ``kernel.observe.status`` with ``--json`` (``show``: each attempt with its
    whole ``output`` document, schemas/attempt-output.schema.json). Text output is for people
    and may change; piped, its tables are tab-separated (``kernel.cli.common.print_table``).

Integration Points:
    ``kernel.runtime.actions`` (writes: one short BEGIN IMMEDIATE transaction each, safe while
    ``orch run`` runs) and ``kernel.observe.status`` (reads, on a read-only connection).

Dependencies:
    apsw, click, rich; ``kernel.base.errors``, ``kernel.base.words``, ``kernel.cli.common``,
    ``kernel.definitions.executors``, ``kernel.definitions.offers``, ``kernel.observe.exports``,
    ``kernel.observe.status``, ``kernel.runtime.actions``, ``kernel.runtime.workstreams``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw
import click
from rich import box
from rich.table import Table
from rich.text import Text

from kernel.base.errors import EXIT_OK, OrchError, UsageError
from kernel.base.words import plural
from kernel.cli.common import (
    CliState,
    command,
    complete_tasks,
    complete_workstreams,
    emit,
    make_console,
    print_table,
)
from kernel.observe import status as kinspect
from kernel.runtime import actions as kop

_STATE_STYLE = {
    "completed": "green", "skipped": "dim green", "running": "cyan", "validating": "cyan",
    "queued": "blue",
    "retrying": "yellow", "failed": "bold red", "cancelled": "magenta",
}


_VERB_BASE = {"cancelled": "cancel", "reset": "retry", "skipped": "skip"}
_MAX_ROWS = 50  # task rows in the text of `orch status`; --json lists every task


def _require(task_ids: tuple[str, ...], name: str) -> None:
    if not task_ids:
        raise UsageError("usage", f"orch {name} needs at least one TASK id",
                         hint=f"orch {name} TASK [TASK...]; `orch status` lists the tasks")


def _write(state: CliState, action: Callable[[apsw.Connection], kop.OperatorReport],
           verb: str, *, strict: bool = False) -> int:
    """Run ``action``, print what changed. ``strict`` (skip, retry): a task it could not act
    on is an error (``cannot_act``, exit 1) naming each, after the others were acted on."""
    from kernel.observe.exports import export_after_change  # pydantic models: not for status

    project = state.project()
    with project.open() as conn:
        report = action(conn)
    exported = export_after_change(project) if report.changed or report.workstreams_changed \
        else None
    error = None
    if strict and report.skipped:
        error = OrchError(
            "cannot_act", f"cannot {_VERB_BASE.get(verb, verb)} "
            + "; ".join(f"{s['task_id']} ({s['reason']})" for s in report.skipped),
            hint="`orch why TASK` says what each task is waiting for")
    data = report.as_dict() | ({"error": error.as_dict()} if error else {})

    def text() -> None:
        for c in report.changed:
            click.echo(f"{verb} {c['task_id']} ({c['from_state']} -> {c['to_state']})")
        for w in report.workstreams_changed:
            click.echo(f"workstream {w['workstream_id']}: {w['from_state']} -> {w['to_state']}")
        for s in report.skipped:
            click.echo(f"{'error: cannot' if strict else 'not'} "
                       f"{_VERB_BASE.get(verb, verb)} {s['task_id']}: {s['reason']}",
                       err=strict)
        for w in report.workstreams_skipped:
            click.echo(f"workstream {w['workstream_id']} unchanged: {w['reason']}")
        if not (report.changed or report.workstreams_changed):
            click.echo("nothing changed")
        for note in report.notes:
            click.echo(f"note: {note}")
        for warning in exported.warnings if exported else ():
            click.echo(f"warning: {warning}", err=True)

    emit(state, data, text)
    return error.exit_code if error else EXIT_OK


@command("cancel")
@click.argument("task_ids", nargs=-1, metavar="[TASK]...", shell_complete=complete_tasks)
@click.option("--workstream", "workstream", default=None, metavar="WS",
              shell_complete=complete_workstreams,
              help="Cancel every unfinished task of this workstream, then the workstream.")
def cancel_cmd(state: CliState, task_ids: tuple[str, ...], workstream: str | None) -> int:
    """Cancel tasks (pending, queued, running, retrying or validating) or a whole workstream.

    A running task's worker kills its process group within about a second. Tasks already
    completed, failed or cancelled are reported as skipped. `orch retry TASK` revives a
    cancelled task.
    """
    if workstream is not None and task_ids:
        raise UsageError("usage", "give TASK ids or --workstream WS, not both",
                         hint="run orch cancel twice")
    if workstream is not None:
        def cancel_and_archive(conn: apsw.Connection) -> kop.OperatorReport:
            report = kop.cancel_workstream(conn, workstream)
            if report.workstreams_changed:
                # Cancelled workstreams are archived like failed ones (their worktree is kept).
                from kernel.runtime.workstreams import archive_workstream

                archive_workstream(conn, state.project().root, workstream)
            return report

        return _write(state, cancel_and_archive, "cancelled")
    if not task_ids:
        raise UsageError("usage", "orch cancel needs TASK ids or --workstream WS",
                         hint="orch cancel TASK [TASK...] | orch cancel --workstream WS")
    return _write(state, lambda c: kop.cancel_tasks(c, task_ids), "cancelled")


@command("retry")
@click.argument("task_ids", nargs=-1, metavar="TASK...", shell_complete=complete_tasks)
def retry_cmd(state: CliState, task_ids: tuple[str, ...]) -> int:
    """Give failed or cancelled tasks another chance: they go back to pending.

    Their error is cleared; a failed or cancelled workstream of theirs goes back to executing.
    Other tasks are reported as skipped.
    """
    _require(task_ids, "retry")
    return _write(state, lambda c: kop.retry_tasks(c, task_ids), "reset", strict=True)


@command("skip")
@click.argument("task_ids", nargs=-1, metavar="TASK...", shell_complete=complete_tasks)
def skip_cmd(state: CliState, task_ids: tuple[str, ...]) -> int:
    """Mark pending tasks completed without running them, unblocking their dependents.

    A failed or cancelled task is not skipped (`orch retry` runs it again). In a workstream that
    runs nothing more (failed, cancelled, or halted by a critical failure) the skip is recorded
    and a note says which `orch retry` revives the workstream.
    """
    _require(task_ids, "skip")
    return _write(state, lambda c: kop.skip_tasks(c, task_ids), "skipped", strict=True)


def _read(state: CliState, fn: Callable[[apsw.Connection], dict[str, Any]]) -> dict[str, Any]:
    with state.project().open(readonly=True) as conn:
        return fn(conn)


def _styled(value: str) -> Text:
    return Text(value, style=_STATE_STYLE.get(value, ""))


def _cut(value: Any, width: int = 60) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _workstream_table(data: dict[str, Any]) -> Table:
    # Skipped tasks are counted apart from the completed ones that ran.
    states = [s for s in kinspect.TASK_STATES if s in data["totals"]]
    states += [s for s in data["totals"] if s not in states]
    if data["skipped"]:
        states.insert(states.index("completed") + 1 if "completed" in states else 0, "skipped")

    def count(counts: dict[str, int], skipped: int, s: str, blank: str) -> str:
        n = skipped if s == "skipped" else counts.get(s, 0) - (skipped if s == "completed" else 0)
        return str(n) if n else blank

    table = Table(title=Text("Workstreams"), box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("workstream", overflow="fold")
    table.add_column("state")
    for s in states:
        table.add_column(s, justify="right")
    for ws in data["workstreams"]:
        table.add_row(Text(ws["workstream_id"]), _styled(ws["state"]),
                      *[count(ws["counts"], ws["skipped"], s, "") for s in states])
    table.add_row(Text("total", style="bold"), "",
                  *[count(data["totals"], data["skipped"], s, "0") for s in states])
    return table


def _task_table(title: str, tasks: list[dict[str, Any]]) -> Table:
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("task", "workstream", "state", "retries", "worker", "problem"):
        table.add_column(name, overflow="fold")
    for t in tasks[:_MAX_ROWS]:
        problem = ": ".join(str(x) for x in (t["failure_mode"], t["last_error"]) if x)
        table.add_row(Text(t["task_id"]), Text(t["workstream_id"]),
                      _styled("skipped" if t["skipped"] else t["state"]),
                      f"{t['retry_count']}/{t['max_retries']}",
                      Text(t["worker_id"] or ""), Text(_cut(problem)))
    return table


def _print_status(data: dict[str, Any], filtered: bool) -> None:
    console = make_console()
    if not data["workstreams"]:
        console.print("No workstreams loaded yet: write tasks/<workstream>/<task>.json and "
                      "run `orch load` (or try `orch demo`).", markup=False)
    else:
        print_table(console, _workstream_table(data))
        # Filtered: every task that matched; else the ones not completed, and the skipped.
        shown = data["tasks"] if filtered else [
            t for t in data["tasks"] if t["state"] != "completed" or t["skipped"]]
        title = "Tasks" if filtered else "Tasks not completed or skipped"
        if shown:
            print_table(console, _task_table(f"{title} ({len(shown)})", shown))
            if len(shown) > _MAX_ROWS:
                console.print(f"... and {len(shown) - _MAX_ROWS} more "
                              "(`orch --json status` lists every task)", markup=False)
        elif filtered:
            console.print("No task matches.")
        else:
            console.print("Every task is completed.")
    if data["workers"]:
        workers = Table(title=Text("Workers"), box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("worker", "state", "pid", "last heartbeat", "task"):
            workers.add_column(name, overflow="fold")
        for w in data["workers"]:
            # A Dask worker's proxy says where its tasks run (its name: dask:ADDRESS).
            where = f" ({w['name']})" if str(w.get("name") or "").startswith("dask:") else ""
            workers.add_row(Text(w["worker_id"] + where), _styled(w["state"]),
                            str(w["pid"] or ""), w["last_heartbeat_at"] or "",
                            Text(w["running_task_id"] or ""))
        print_table(console, workers)
    else:
        console.print("No live workers (`orch run` starts some; `--all` lists those that "
                      "shut down).", markup=False)


@command("status")
@click.option("--workstream", default=None, metavar="WS", shell_complete=complete_workstreams,
              help="Only this workstream and its tasks.")
@click.option("--state", "states", multiple=True, metavar="STATE",
              help="Only tasks in this state (pending, queued, running, retrying, validating, "
                   "completed, failed, cancelled, or skipped); repeat.")
@click.option("--all", "all_workers", is_flag=True,
              help="Also list workers that have shut down.")
def status_cmd(state: CliState, workstream: str | None, states: tuple[str, ...],
               all_workers: bool) -> int:
    """Show workstreams with their task counts by state, unfinished tasks and workers.

    Skipped tasks (completed by `orch skip` without running) are shown as skipped. Workers
    that have shut down are left out unless --all.
    """
    known = (*kinspect.TASK_STATES, "skipped")
    for s in states:
        if s not in known:
            raise UsageError("usage", f"--state {s!r} is not a task state",
                             hint="one of " + ", ".join(known))
    data = _read(state, lambda c: kinspect.status(c, workstream=workstream, states=states,
                                                  all_workers=all_workers))
    emit(state, data, lambda: _print_status(data, bool(states)))
    return EXIT_OK


_SHOW_FIELDS = ("workstream_id", "state", "type", "priority", "critical", "retry_count",
                "max_retries", "timeout_seconds", "worker_id", "command", "created_at",
                "queued_at", "started_at", "completed_at", "next_attempt_at", "failure_mode",
                "last_error", "source_file")


def _usage_text(meta: dict[str, Any]) -> str:
    tokens = meta.get("tokens_used")
    if tokens is None:
        text = "tokens unknown (not reported)"
    else:
        text = f"tokens {tokens:,}"
        split = meta.get("tokens") or {}
        if "sent" in split and "received" in split:
            text += f" ({split['sent']:,} sent, {split['received']:,} received)"
    cost = meta.get("cost")
    if cost is not None:
        text += ", cost $" + (f"{cost:.6f}".rstrip("0").rstrip(".") or "0")
    elif tokens is not None:
        text += ", cost unknown"
    who = " ".join(b for b in (meta.get("model") and f"model {meta['model']}",
                               meta.get("agent") and f"({meta['agent']})") if b)
    return text + (f"; {who}" if who else "")


def contract_lines(output: Any) -> list[str]:
    """An attempt's output contract (AIDER-INT-003) as lines for people: status and validation,
    files modified, diff summary, commit, tokens and cost with the model, error."""
    if not isinstance(output, dict) or "status" not in output:
        return []
    meta = output.get("metadata") or {}
    secs = meta.get("duration_seconds")
    lines = [f"result: {output['status']}, validation {output.get('validation_status') or '-'}"
             + (f", {secs:g} s" if isinstance(secs, int | float) else "")]
    files = output.get("files_modified") or []
    lines.append("files modified: " + (", ".join(files) if files else "none reported"))
    diff = (output.get("diff_summary") or "").strip()
    if diff:
        lines += ["diff: " + diff.splitlines()[0]] + [
            "      " + line for line in diff.splitlines()[1:]]
    if output.get("commit_message"):
        sha = meta.get("commit")
        subject = str(output["commit_message"]).strip().splitlines()[0]
        lines.append(f"commit: {_cut(subject, 72)}"
                     + (f" ({str(sha)[:12]})" if sha else ""))
    lines.append("usage: " + _usage_text(meta))
    if output.get("error"):
        lines.append(f"error: {_cut(output['error'], 200)}")
    return lines


def _agent_lines(definition: Any) -> list[str]:
    """An agent task's executor, prompt, files and budget (nothing for a command task)."""
    if not isinstance(definition, dict):
        return []
    from kernel.definitions.executors import AGENT_EXECUTORS, effective_executor

    execution = definition.get("execution") or {}
    executor = effective_executor(execution.get("executor"), definition.get("type"))
    if executor not in AGENT_EXECUTORS:
        return []
    ctx = definition.get("context_requirements") or {}
    agent = execution.get("agent") if executor == "agent" else "aider"
    prompt = str(execution.get("prompt") or definition.get("description") or "")
    lines = [f"{'agent:':<17} {agent} ({executor} executor)",
             f"{'prompt:':<17} {_cut(' '.join(prompt.split()), 100)}",
             f"{'edits:':<17} {', '.join(ctx.get('required_files') or []) or '-'}"]
    if ctx.get("optional_files"):
        lines.append(f"{'reads:':<17} {', '.join(ctx['optional_files'])}")
    if ctx.get("max_context_tokens") is not None:
        lines.append(f"{'token budget:':<17} {ctx['max_context_tokens']:,}")
    return lines


def _context_text(context: dict[str, Any]) -> str:
    """What an agent attempt was given: the estimate against the budget, files left out."""
    budget = context.get("max_tokens")
    text = f"context: about {context.get('total_tokens') or context['required_tokens']:,} tokens"
    text += f" of {budget:,}" if isinstance(budget, int) else ""
    if context.get("left_out_files"):
        text += f"; left out (over budget): {', '.join(context['left_out_files'])}"
    return text


def _print_show(data: dict[str, Any]) -> None:
    click.echo(f"task {data['task_id']}" + (f": {data['name']}" if data.get("name") else ""))
    for name in _SHOW_FIELDS:
        if data.get(name) not in (None, ""):
            click.echo(f"  {name + ':':<17} {data[name]}")
    deps = ", ".join(f"{d['task_id']} ({d['state']})" for d in data["dependencies"])
    dependents = ", ".join(f"{d['task_id']} ({d['state']})" for d in data["dependents"])
    click.echo(f"  {'dependencies:':<17} {deps or '-'}")
    click.echo(f"  {'dependents:':<17} {dependents or '-'}")
    if data["capabilities"]:
        click.echo(f"  {'capabilities:':<17} "
                   + ", ".join(c["capability_id"] for c in data["capabilities"]))
    if data["resources"]:
        click.echo(f"  {'resources:':<17} "
                   + ", ".join(f"{r['resource_id']} ({r['mode']})" for r in data["resources"]))
    for b in data["blocked_by"]:
        click.echo(f"  blocked: {b['reason']}")
    for line in _agent_lines(data.get("definition")):
        click.echo("  " + line)
    if data["attempts"]:
        click.echo("attempts:")
        for a in data["attempts"]:
            bits = [f"#{a['attempt_no']}", a.get("outcome") or "open",
                    f"worker {a['worker_id']}" if a.get("worker_id") else "",
                    f"exit {a['exit_code']}" if a.get("exit_code") is not None else "",
                    a.get("failure_mode") or "", f"{a['started_at']} .. {a['finished_at'] or ''}",
                    _cut(a.get("error_message"), 80)]
            click.echo("  " + "  ".join(b for b in bits if b))
            for line in contract_lines(a.get("output")):
                click.echo("      " + line)
            context = ((a.get("output") or {}).get("details") or {}).get("context") \
                if isinstance(a.get("output"), dict) else None
            if isinstance(context, dict) and context.get("required_tokens") is not None:
                click.echo("      " + _context_text(context))
    if data["leases"]:
        click.echo("leases held:")
        for lease in data["leases"]:
            click.echo(f"  {lease['resource_id']} ({lease['mode']} {lease['amount']:g}) "
                       f"until {lease['expires_at']}")
    if data["log_tail"] is not None:
        click.echo(f"log ({data['log_path']}, last {plural(len(data['log_tail']), 'line')}):")
        for line in data["log_tail"]:
            click.echo(f"  | {line}")


@command("show")
@click.argument("task_id", metavar="TASK", shell_complete=complete_tasks)
def show_cmd(state: CliState, task_id: str) -> int:
    """Show one task in full: definition, state, dependencies, attempts, leases and log tail.

    Each attempt shows its result: validation, files modified, diff summary, commit, tokens,
    cost, model and error (with --json, its whole output document)."""
    project = state.project()
    data = _read(state, lambda c: kinspect.show(c, task_id, project.logs_dir))
    emit(state, data, lambda: _print_show(data))
    return EXIT_OK


def _print_why(data: dict[str, Any]) -> None:
    for sentence in data["sentences"]:
        click.echo(sentence)
    for line in data.get("log_tail") or []:
        click.echo(f"  | {line}")


@command("why")
@click.argument("task_id", metavar="TASK", shell_complete=complete_tasks)
def why_cmd(state: CliState, task_id: str) -> int:
    """Explain in plain words why a task is in its state, and what would move it on."""
    from kernel.definitions import offers  # not on `orch status`'s path

    project = state.project()
    data = _read(state, lambda c: kinspect.why(
        c, task_id, project.logs_dir,
        local_offers=offers.local_offers(c, project.config, project.root)))
    emit(state, data, lambda: _print_why(data))
    return EXIT_OK


COMMANDS = [cancel_cmd, retry_cmd, skip_cmd, status_cmd, show_cmd, why_cmd]
