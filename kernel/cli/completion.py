"""``orch completion bash|zsh|fish``: shell completion, with task and workstream ids.

Public API:
    ``COMMANDS`` (``completion``); ``COMPLETE_VAR`` (``_ORCH_COMPLETE``, click's completion
    protocol variable). The ids are completed by ``kernel.cli.common.complete_tasks`` and
    ``complete_workstreams``.

Stability Guarantees:
    The script is click's own (``click.shell_completion``): ``eval "$(orch completion bash)"``
    in ``~/.bashrc``, ``eval "$(orch completion zsh)"`` in ``~/.zshrc``, ``orch completion fish
    | source`` in fish. With ``--json``: ``{"shell", "script", "install"}``.

Integration Points:
    click's ``_ORCH_COMPLETE`` protocol, answered by click's ``main`` in ``kernel.cli.run()``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli``, ``kernel.cli.common``.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from kernel.base.errors import EXIT_OK, UsageError
from kernel.cli.common import CliState, command, emit

COMPLETE_VAR = "_ORCH_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
_INSTALL = {
    "bash": 'eval "$(orch completion bash)"   # in ~/.bashrc',
    "zsh": 'eval "$(orch completion zsh)"    # in ~/.zshrc',
    "fish": "orch completion fish | source   # in ~/.config/fish/config.fish",
}
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
