"""``orch completion bash|zsh|fish``: shell completion, with task and workstream ids.

Public API:
    ``COMMANDS`` (``completion``); ``complete_tasks``, ``complete_workstreams`` (click
    ``shell_complete`` callbacks: the ids of the project's database that start with what was
    typed); ``COMPLETE_VAR`` (``_ORCH_COMPLETE``, click's completion protocol variable).

Stability Guarantees:
    The script is click's own (``click.shell_completion``): ``eval "$(orch completion bash)"``
    in ``~/.bashrc``, ``eval "$(orch completion zsh)"`` in ``~/.zshrc``, ``orch completion fish
    | source`` in fish. With ``--json``: ``{"shell", "script", "install"}``. The callbacks never
    raise: without a project, or with a database they cannot read, they complete nothing.

Integration Points:
    Every command taking a TASK or WS (``kernel.cli.operator``, ``kernel.cli.events``,
    ``kernel.cli.run``, ``kernel.cli.plan``, ...) names these callbacks; the callback reads
    ``--root`` from the command line being completed, else finds the project as every command
    does (``kernel.store.project.find_root``).

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli``, ``kernel.cli.common``, ``kernel.store.db``,
    ``kernel.store.project``.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.shell_completion import CompletionItem, get_completion_class

from kernel.base.errors import EXIT_OK, UsageError
from kernel.cli.common import CliState, command, emit

COMPLETE_VAR = "_ORCH_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
_INSTALL = {
    "bash": 'eval "$(orch completion bash)"   # in ~/.bashrc',
    "zsh": 'eval "$(orch completion zsh)"    # in ~/.zshrc',
    "fish": "orch completion fish | source   # in ~/.config/fish/config.fish",
}
_MAX_ITEMS = 200


def _ids(ctx: click.Context, sql: str, incomplete: str) -> list[CompletionItem]:
    try:
        from kernel.store import db
        from kernel.store.project import Project, find_root

        root = ctx.find_root().params.get("root")
        project = Project(Path(root).resolve() if root else find_root())
        if not project.db_path.is_file():
            return []
        with project.open(readonly=True) as conn:
            found = db.rows(conn, sql, (incomplete.replace("\\", "\\\\").replace("%", "\\%")
                                        .replace("_", "\\_") + "%", _MAX_ITEMS))
    except Exception:  # noqa: BLE001 - completion must never print a traceback into a shell
        return []
    return [CompletionItem(r["id"]) for r in found]


def complete_tasks(ctx: click.Context, param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    """The task ids starting with ``incomplete``."""
    return _ids(ctx, "SELECT task_id AS id FROM task WHERE task_id LIKE ? ESCAPE '\\' "
                     "ORDER BY task_id LIMIT ?", incomplete)


def complete_workstreams(ctx: click.Context, param: click.Parameter,
                         incomplete: str) -> list[CompletionItem]:
    """The workstream ids starting with ``incomplete``."""
    return _ids(ctx, "SELECT workstream_id AS id FROM workstream WHERE workstream_id LIKE ? "
                     "ESCAPE '\\' ORDER BY workstream_id LIMIT ?", incomplete)


@command("completion")
@click.argument("shell", metavar="bash|zsh|fish")
def completion_cmd(state: CliState, shell: str) -> int:
    """Print the shell completion script for bash, zsh or fish (commands, options, task ids).

    Task and workstream ids are completed from the project's database as you type.
    """
    if shell not in SHELLS:
        raise UsageError("usage", f"no completion for the shell {shell!r}",
                         hint="orch completion bash | zsh | fish")
    from kernel.cli import cli

    script = get_completion_class(shell)(cli, {}, "orch", COMPLETE_VAR).source()  # type: ignore[misc]
    emit(state, {"shell": shell, "script": script, "install": _INSTALL[shell]}, script.rstrip())
    return EXIT_OK


COMMANDS = [completion_cmd]
