"""``orch new``: write a new task file, the smallest one that says what the task does.

Public API:
    ``COMMANDS`` (``new``).

Stability Guarantees:
    See ``kernel.cli``. Prints the new file's path (relative to the project root); ``--json``
    prints ``{"path", "task", "warnings"}`` (``task``: the document written; ``warnings``:
    problems of ``orch validate`` about it, such as an agent not configured). Exit 1 when a
    task of that id exists (nothing is overwritten) or the file would not validate (nothing is
    left behind); exit 2 for options that do not fit together. What is written, and how a
    command is kept exactly as given: ``kernel.definitions.newtask``.

Integration Points:
    ``kernel.definitions.newtask.write_new_task``; docs/writing-tasks.md.

Dependencies:
    click; ``kernel.cli.common``, ``kernel.definitions.newtask``.
"""

from __future__ import annotations

import click

from kernel.cli.common import CliState, command, emit
from kernel.definitions.newtask import NewTask, parse_target, write_new_task


@command("new")
@click.argument("target", metavar="WS/TASK")
@click.option("--cmd", "command_", metavar="CMD", default=None,
              help="The command to run, as you would type it into a shell.")
@click.option("--after", multiple=True, metavar="TASK",
              help="A task that must complete first (repeatable).")
@click.option("--agent", default=None, metavar="NAME",
              help="Run an agent instead of a command: aider, or an [agents.NAME] of orch.toml.")
@click.option("--prompt", default=None, metavar="TEXT", help="The agent's instructions.")
@click.option("--file", "files", multiple=True, metavar="PATH",
              help="A file the agent works on, relative to the project root (repeatable).")
@click.option("--yaml", "as_yaml", is_flag=True, help="Write TASK.yaml instead of TASK.json.")
def new_cmd(state: CliState, target: str, command_: str | None, after: tuple[str, ...],
            agent: str | None, prompt: str | None, files: tuple[str, ...],
            as_yaml: bool) -> int:
    """Write a new task file tasks/WS/TASK.json and print its path.

    The file holds only what the task needs: its id and workstream come from the path, and
    a command with shell syntax gets "shell": true so it runs exactly as typed. Never
    overwrites a task; the file is checked like `orch validate` checks it.

    Example: orch new build/test --cmd 'pytest -q' --after compile
    """
    ws, task = parse_target(target)
    spec = NewTask(ws, task, command_, after, agent, prompt, files, as_yaml)
    path, document, warnings = write_new_task(state.project(), spec)

    def text() -> None:
        click.echo(path)
        for p in warnings:
            click.echo(f"warning: {p.path + ': ' if p.path else ''}{p.message} [{p.code}]",
                       err=True)

    emit(state, {"path": path, "task": document,
                 "warnings": [p.as_dict() for p in warnings]}, text)
    return 0


COMMANDS = [new_cmd]
