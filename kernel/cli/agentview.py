"""``orch ready | next | prime``: the agent surfaces (what is ready, the task to do next and
why, a brief for an agent's context within a token budget).

Public API:
    ``COMMANDS`` (``ready``, ``next``, ``prime``).

Stability Guarantees:
    See ``kernel.cli``. With ``--json`` each prints the dictionary of
    ``kernel.observe.agent_brief`` (``ready``, ``next_task``, ``prime``) as one document.
    ``orch next`` exits 0 when nothing is ready, with ``{"task": null, "reason": ...}``. An
    unknown ``--workstream`` or ``--task`` exits 1 (``unknown_workstream`` /
    ``unknown_task``); ``--limit`` below 1, ``--max-tokens`` below 1 and a budget too small
    for the brief's head exit 2 (``invalid_limit``, ``invalid_max_tokens``,
    ``max_tokens_too_small``). Text output is for people and agents to read, and may change;
    ``orch prime`` prints Markdown.

Integration Points:
    ``kernel.observe.agent_brief`` on a read-only connection (safe while ``orch run`` runs);
    ``orch prime --task`` names the command of each validation rule from ``orch.toml``
    (``[rules]``). docs/operations/AGENT_SURFACES.md.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.observe.agent_brief``.
"""

from __future__ import annotations

from typing import Any

import click

from kernel.base.errors import EXIT_OK
from kernel.cli.common import CliState, command, complete_tasks, complete_workstreams, emit
from kernel.observe import agent_brief


def _print_ready(data: dict[str, Any]) -> None:
    if not data["tasks"]:
        click.echo(data["reason"][:1].upper() + data["reason"][1:])
        return
    click.echo(f"{data['total']} ready "
               f"{'task' if data['total'] == 1 else 'tasks'}, by {data['order']}:")
    for t in data["tasks"]:
        executor = f"/{t['executor']}" if t["executor"] else ""
        click.echo(f"{t['rank']:>3}. {t['task_id']}  ({t['workstream_id']}, {t['type']}"
                   f"{executor}, {t['state']})  priority {t['priority']}  path "
                   f"{t['remaining_path_seconds']:g} s  unblocks {t['unblocks']}")
        click.echo(f"     {t['name']}: {t['reason']}")
    if data["shown"] < data["total"]:
        click.echo(f"… {data['total'] - data['shown']} more (raise --limit, or leave it out)")


@command("ready")
@click.option("--workstream", "workstream", default=None, metavar="WS",
              shell_complete=complete_workstreams,
              help="Only this workstream's ready tasks.")
@click.option("--limit", type=int, default=None, metavar="N",
              help="At most N tasks (the first N of the order).")
def ready_cmd(state: CliState, workstream: str | None, limit: int | None) -> int:
    """List the ready work by priority, then critical path, with why each task is ready.

    Ready means the ready_task view: pending tasks whose dependencies completed in an open
    workstream (the scheduler queues them on its next tick) and queued tasks no worker has
    claimed yet.
    """
    agent_brief.check_limit(limit)
    with state.project().open(readonly=True) as conn:
        data = agent_brief.ready(conn, workstream=workstream, limit=limit)
    emit(state, data, lambda: _print_ready(data))
    return EXIT_OK


@command("next")
@click.option("--workstream", "workstream", default=None, metavar="WS",
              shell_complete=complete_workstreams,
              help="The next task of this workstream.")
def next_cmd(state: CliState, workstream: str | None) -> int:
    """Name the one task to do next and why; when nothing is ready, say why not."""
    with state.project().open(readonly=True) as conn:
        data = agent_brief.next_task(conn, workstream=workstream)
    task = data["task"]
    name = f" ({task['name']})" if task and task["name"] != task["task_id"] else ""
    text = data["reason"] if task is None else f"next: {task['task_id']}{name}\n{data['reason']}"
    emit(state, data, text[:1].upper() + text[1:])
    return EXIT_OK


@command("prime")
@click.option("--task", "task_id", default=None, metavar="TASK",
              shell_complete=complete_tasks,
              help="A brief of this task instead of the project.")
@click.option("--max-tokens", "max_tokens", type=int, default=agent_brief.DEFAULT_MAX_TOKENS,
              show_default=True, metavar="N",
              help="The most tokens the output may take, counted as 3 bytes each.")
def prime_cmd(state: CliState, task_id: str | None, max_tokens: int) -> int:
    """Print a compact brief of the project, or of one task, for an agent's context.

    The project: workstreams, what runs, what is ready next, recent failures and the command to
    act on each. A task (--task): its prompt, description, files, validation rules, the outcomes
    of its dependencies and what depends on it. The output never exceeds --max-tokens; the least
    important parts are cut first, and the brief says what was cut.
    """
    agent_brief.check_max_tokens(max_tokens)
    project = state.project()
    rules = project.config.rules.model_dump() if task_id is not None else None
    with project.open(readonly=True) as conn:
        data = agent_brief.prime(conn, task_id=task_id, max_tokens=max_tokens,
                                 as_json=state.json, rules=rules)
    emit(state, data, lambda: click.echo(data["text"]))
    return EXIT_OK


COMMANDS = [ready_cmd, next_cmd, prime_cmd]
