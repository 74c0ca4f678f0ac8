"""Shared plumbing of the ``orch`` commands: the ``--json`` switch, output and errors.

Public API:
    ``CliState`` (``root``, ``json``, ``db_path``: the database of the project last resolved by
    ``project()``); ``command(name, **kw)`` (a ``click.command`` that also takes ``--json`` and
    passes a ``CliState`` as ``state``); ``emit(state, data, text)``; ``emit_error(err, json)``;
    ``make_console()`` and ``print_table(console, table)`` (text for people: rich on a
    terminal; piped, tab-separated, whole ids, no trailing spaces); ``complete_tasks``,
    ``complete_workstreams`` (click ``shell_complete`` callbacks: the ids in the project's
    database starting with what was typed; ``--root`` is read from the line being completed;
    they never raise, and complete nothing without a readable database);
    ``LazyGroup`` (a ``click.Group`` whose commands are named by ``"module:attribute"`` with
    their short help, and imported only when one runs or its own help is asked;
    ``load_command(name)``, ``load_all()``).

Stability Guarantees:
    JSON goes to stdout as one document, ``sort_keys`` and two-space indent; text for people may
    change between versions (parse ``--json`` instead). This module imports only click and the
    standard library at module level (every ``orch`` command, ``--version`` included, pays for
    what it imports): the project layer is imported by ``CliState.project()``.

Integration Points:
    Every module of ``kernel.cli``.

Dependencies:
    click, rich; ``kernel.base.errors``, ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from gettext import gettext as _
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from kernel.base.errors import OrchError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from kernel.store.project import Project

_PIPE_WIDTH = 10_000  # a line longer than this is still written whole (soft wrap)


@dataclass
class CliState:
    root: str | None = None
    json: bool = False
    # The database of the last project a command resolved: an SQLite error that reaches
    # ``kernel.cli.run`` names this file.
    db_path: Path | None = None

    def project(self) -> Project:
        from kernel.store.project import Project, find_root

        project = Project(Path(self.root).resolve() if self.root else find_root())
        self.db_path = project.db_path
        return project

    def root_or_cwd(self) -> Path:
        """For `orch init`: --root, else the current directory (never a parent project)."""
        return Path(self.root).resolve() if self.root else Path.cwd()


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., int | None]], click.Command]:
    def decorate(fn: Callable[..., int | None]) -> click.Command:
        def wrapper(json_: bool, **params: Any) -> int | None:
            ctx = click.get_current_context()
            state: CliState = ctx.find_object(CliState) or CliState()
            if json_:
                state.json = True
            return fn(state=state, **params)

        wrapper.__doc__ = fn.__doc__
        wrapper.__name__ = fn.__name__
        # Options declared on fn with @click.option sit in __click_params__; keep them.
        wrapper.__click_params__ = list(getattr(fn, "__click_params__", []))  # type: ignore[attr-defined]
        decorated = click.option(
            "--json", "json_", is_flag=True, help="Print one JSON document."
        )(wrapper)
        return click.command(name, **kwargs)(decorated)

    return decorate


class LazyGroup(click.Group):
    """A group that lists its commands, with their short help, without importing them.

    ``lazy_commands`` maps a command name to ``("module:attribute", short_help)``, the short
    help being the real command's ``get_short_help_str()`` untruncated (a test keeps the two
    equal). The module is imported when the command runs, when its own ``--help`` is asked, or
    by ``load_all()``; ``orch --help`` truncates the stored short help exactly as click
    truncates the real one, so the listing is the same.
    """

    def __init__(self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]] | None = None,
                 examples: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, tuple[str, str]] = dict(lazy_commands or {})
        self.examples: dict[str, str] = dict(examples or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(self.load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        # An unknown name (a typo): import every command first, so that click's error (and
        # its "Did you mean" from the loaded commands) is what an eager group would print.
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            self.load_all()
        return super().resolve_command(ctx, args)

    def load_command(self, name: str) -> click.Command:
        """Import the command ``name`` from its ``"module:attribute"``."""
        module_name, _, attribute = self.lazy_commands[name][0].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attribute} is not a click command")
        self._add_example(command, name)
        return command

    def _add_example(self, command: click.Command, path: str) -> None:
        """The command's example (``examples[path]``) as the last line of its --help."""
        example = self.examples.get(path)
        written = f"{command.help or ''}\n{command.epilog or ''}"
        if example and "Example:" not in written:   # one example, not two
            command.epilog = f"Example: {example}"
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                self._add_example(sub, f"{path} {sub_name}")

    def load_all(self) -> dict[str, click.Command]:
        """Every command, imported: name -> command."""
        for name in self.lazy_commands:
            if name not in self.commands:
                self.add_command(self.load_command(name), name)
        return dict(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own format_commands, with a stand-in holding the stored short help for each
        # command not imported yet (the same truncation, nothing imported).
        commands: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name,
                                                               help=self.lazy_commands[name][1])
            if not command.hidden:
                commands.append((name, command))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            rows = [(name, command.get_short_help_str(limit)) for name, command in commands]
            with formatter.section(_("Commands")):
                formatter.write_dl(rows)


_MAX_COMPLETIONS = 200


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
                                        .replace("_", "\\_") + "%", _MAX_COMPLETIONS))
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


def make_console() -> Console:
    """The console for text output: rich on a terminal; piped, no colour and no width limit
    (nothing is cut or wrapped for a program reading it)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, color_system=None, width=_PIPE_WIDTH, soft_wrap=True)


def _plain(cell: Any) -> str:
    from rich.text import Text

    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell).plain
    else:
        text = "" if cell is None else str(cell)
    return " ".join(text.split())


def print_table(console: Console, table: Table) -> None:
    """The one place tables are printed: on a terminal the rich table; otherwise (piped, a
    file) tab-separated lines, the title, the header, then one line per row, each cell whole
    (never truncated) and no trailing spaces."""
    if console.is_terminal:
        console.print(table)
        return
    lines = [_plain(table.title)] if table.title else []
    columns = table.columns
    lines.append("\t".join(_plain(c.header) for c in columns))
    for row in zip(*(list(c.cells) for c in columns), strict=True):
        lines.append("\t".join(_plain(cell) for cell in row))
    console.file.write("".join(line.rstrip() + "\n" for line in lines))
    console.file.flush()


def emit(state: CliState, data: Any, text: str | Callable[[], None]) -> None:
    if state.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif callable(text):
        text()
    else:
        click.echo(text)


def emit_error(err: OrchError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"error": err.as_dict()}, indent=2, sort_keys=True))
    else:
        click.echo(f"error: {err}", err=True)
