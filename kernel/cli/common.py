"""Shared plumbing of the ``orch`` commands: the ``--json`` switch, output and errors.

Public API:
    ``CliState`` (``root``, ``json``, ``db_path``: the database of the project last resolved by
    ``project()``); ``command(name, **kw)`` (a ``click.command`` that also takes ``--json`` and
    passes a ``CliState`` as ``state``); ``emit(state, data, text)``; ``emit_error(err, json)``.

Stability Guarantees:
    JSON goes to stdout as one document, ``sort_keys`` and two-space indent; text for people may
    change between versions (parse ``--json`` instead).

Integration Points:
    Every module of ``kernel.cli``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.store.project``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from kernel.base.errors import OrchError
from kernel.store.project import Project, find_root


@dataclass
class CliState:
    root: str | None = None
    json: bool = False
    # The database of the last project a command resolved: an SQLite error that reaches
    # ``kernel.cli.run`` names this file.
    db_path: Path | None = None

    def project(self) -> Project:
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
