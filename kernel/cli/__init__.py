"""The ``orch`` command line: thin click wrappers over the kernel library.

Public API:
    ``main()`` (the console script), ``run(argv) -> int`` (the same, returning the exit code),
    ``cli`` (the click group). Commands live one group per module: ``kernel.cli.core`` (init,
    doctor), ``kernel.cli.events`` (events).

Stability Guarantees:
    Command names, options, ``--json`` output shapes and exit codes are a contract (DESIGN.md):
    0 ok, 1 the work or a check failed, 2 usage error, 3 the database is locked beyond its
    timeout, missing, empty, damaged, not orch's, not accessible or too new (any SQLite error
    that reaches ``run`` is one of these, via ``kernel.db.error_for``: never a traceback).
    Every command takes ``--json`` (before or after the command name) and then prints exactly
    one JSON document on stdout, errors included as
    ``{"error": {"code", "message", "file", "line", "hint"}}``.

Integration Points:
    Installed as ``orch`` by pyproject.toml; ``--root DIR`` picks the project (default: the
    nearest parent holding ``.state/``, else the current directory).

Dependencies:
    apsw, click; ``kernel.base.errors``, ``kernel.cli.audit``, ``kernel.cli.backup``,
    ``kernel.cli.bench``, ``kernel.cli.common``, ``kernel.cli.core``,
    ``kernel.cli.definitions``, ``kernel.cli.demo``, ``kernel.cli.events``,
    ``kernel.cli.metrics``, ``kernel.cli.operator``, ``kernel.cli.plan``, ``kernel.cli.run``,
    ``kernel.cli.views``, ``kernel.store.db``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import apsw
import click

from kernel import __version__
from kernel.base.errors import EXIT_FAILED, EXIT_USAGE, OrchError
from kernel.cli.common import CliState, emit_error
from kernel.store.db import error_for


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Project root (default: the nearest parent holding .state/, else the current dir).",
)
@click.option("--json", "json_", is_flag=True, help="Print one JSON document (all commands).")
@click.version_option(__version__, prog_name="orch")
@click.pass_context
def cli(ctx: click.Context, root: str | None, json_: bool) -> None:
    """orch: run AI coding-agent work as a DAG of tasks, with all state in one SQLite file."""
    state = ctx.ensure_object(CliState)  # run() passes its own, to name the file on errors
    state.root, state.json = root, json_


def _register() -> None:
    from kernel.cli import (
        audit,
        backup,
        bench,
        core,
        definitions,
        demo,
        events,
        metrics,
        operator,
        plan,
        run,
        views,
    )

    modules = (core, definitions, plan, run, operator, events, views, audit, metrics, backup,
               bench, demo)
    for module in modules:
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def run(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in args
    state = CliState()
    try:
        result = cli.main(args=args, prog_name="orch", standalone_mode=False, obj=state)
    except click.exceptions.NoArgsIsHelpError as exc:  # `orch` alone: help, not an error
        click.echo(exc.ctx.get_help() if exc.ctx else "")
        return 0
    except click.ClickException as exc:
        code = EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
        emit_error(
            OrchError("usage" if code == EXIT_USAGE else "error", exc.format_message(),
                      hint="see `orch --help`", exit_code=code),
            want_json,
        )
        return code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except OrchError as exc:
        emit_error(exc, want_json)
        return exc.exit_code
    except apsw.Error as exc:
        # Whatever command met it (a damaged page read by `orch status`, a full disk...): an
        # exit-3 error naming the file, never a traceback.
        err = error_for(exc, state.db_path or Path(".state/kernel.db"))
        emit_error(err, want_json)
        return err.exit_code
    except BrokenPipeError:
        return EXIT_FAILED
    return int(result or 0)


def main() -> None:
    sys.exit(run())
