"""The ``orch`` command line: thin click wrappers over the kernel library.

Public API:
    ``main()`` (the console script), ``run(argv) -> int`` (the same, returning the exit code),
    ``cli`` (the click group, a ``kernel.cli.common.LazyGroup``), ``LAZY_COMMANDS`` (each
    command's name -> ``("module:attribute", short help)``). Commands live one group per
    module: ``kernel.cli.core`` (init, doctor), ``kernel.cli.events`` (events), ...; each
    module's ``COMMANDS`` lists its commands, and ``LAZY_COMMANDS`` names every one of them
    (tests/test_cli_startup.py keeps the two, and the short help lines, equal); ``EXAMPLES``
    (command, or ``"group sub"``, -> the one example ending its --help).

Stability Guarantees:
    Command names, options, ``--json`` output shapes and exit codes are a contract (DESIGN.md):
    0 ok, 1 the work or a check failed, 2 usage error, 3 the database is locked beyond its
    timeout, unreadable, damaged, not orch's, not accessible or too new (any SQLite error
    that reaches ``run`` is one of these, via ``kernel.db.error_for``: never a traceback), 130
    Ctrl-C. Each error code has one exit code (``kernel.base.errors.ERROR_CODES``, the table
    of docs/CLI.md). Every command takes ``--json`` (before or after the command name) and
    then prints exactly one JSON document on stdout, errors included as
    ``{"error": {"code", "message", "file", "line", "hint"}}``; ``orch --version`` and a group
    without its subcommand (``orch --json audit``) too. The streams are ``--jsonl`` (``orch
    run``, ``orch events``): one JSON object per line, errors as one ``{"error": ...}`` line.
    A ``database_locked`` error leaves ``.state/database_locked.pending`` for the next writer
    to record as an event (``kernel.store.lockrecord``).
    tests/test_cli_contract.py runs every command both ways.

Integration Points:
    Installed as ``orch`` by pyproject.toml; ``--root DIR`` picks the project (default: the
    nearest parent holding ``.state/``, else the current directory). Start-up: ``orch
    --version`` and ``orch --help`` import click and this package only; a command's module
    (and what it needs) is imported when that command runs (docs/PERFORMANCE.md, "Start-up").

Dependencies:
    apsw, click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.store.db``,
    ``kernel.store.lockrecord``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import apsw
import click

from kernel import __version__
from kernel.base.errors import EXIT_FAILED, EXIT_USAGE, OrchError
from kernel.cli.common import CliState, LazyGroup, emit_error

# name -> ("module:attribute", the command's short help as click makes it, untruncated).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("kernel.cli.core:init_cmd",
             "Create .state/kernel.db, tasks/, capabilities/ and a commented orch.toml."),
    "doctor": ("kernel.cli.core:doctor_cmd",
               "Check integrity, versions, the schema, invariants (as SQL queries), the log "
               "and the WAL."),
    "validate": ("kernel.cli.definitions:validate_cmd",
                 "Check task files, workstream files and the registries, reporting every "
                 "problem."),
    "load": ("kernel.cli.definitions:load_cmd",
             "Validate, then import the definitions into the database in one transaction."),
    "migrate-tasks": ("kernel.cli.definitions:migrate_tasks_cmd",
                      "Rewrite task files between schema versions, with a backup (all or "
                      "nothing)."),
    "new": ("kernel.cli.new:new_cmd",
            "Write a new task file tasks/WS/TASK.json and print its path."),
    "plan": ("kernel.cli.plan:plan_cmd",
             "Show the execution plan: stages of tasks that may run in parallel, the lanes each "
             "uses (max_parallelism), estimated durations and the critical path."),
    "run": ("kernel.cli.run:run_cmd",
            "Run the loaded tasks with workers until nothing more can run."),
    "worker": ("kernel.cli.run:worker_cmd",
               "Join the kernel as a worker: claim and run tasks one at a time until Ctrl-C."),
    "cancel": ("kernel.cli.operator:cancel_cmd",
               "Cancel tasks (pending, queued, running, retrying or validating) or a whole "
               "workstream."),
    "retry": ("kernel.cli.operator:retry_cmd",
              "Give failed or cancelled tasks another chance: they go back to pending."),
    "skip": ("kernel.cli.operator:skip_cmd",
             "Mark pending tasks completed without running them, unblocking their dependents."),
    "status": ("kernel.cli.operator:status_cmd",
               "Show workstreams with their task counts by state, unfinished tasks and "
               "workers."),
    "show": ("kernel.cli.operator:show_cmd",
             "Show one task in full: definition, state, dependencies, attempts, leases and log "
             "tail."),
    "why": ("kernel.cli.operator:why_cmd",
            "Explain in plain words why a task is in its state, and what would move it on."),
    "compliance": ("kernel.cli.compliance:compliance_cmd",
                   "Check every requirement ID of the specification against this project, its "
                   "state and orch's documentation: PASS, WARN, FAIL or N/A per ID, with file, "
                   "line and a fix."),
    "resources": ("kernel.cli.resources:resources_cmd",
                  "Show each resource's capacity, the tasks holding it now and the ready tasks "
                  "waiting."),
    "ready": ("kernel.cli.agentview:ready_cmd",
              "List the ready work by priority, then critical path, with why each task is "
              "ready."),
    "next": ("kernel.cli.agentview:next_cmd",
             "Name the one task to do next and why; when nothing is ready, say why not."),
    "prime": ("kernel.cli.agentview:prime_cmd",
              "Print a compact brief of the project, or of one task, for an agent's context."),
    "capabilities": ("kernel.cli.capabilities:capabilities_cmd",
                     "List the capability catalog: what this machine meets, and the live "
                     "workers offering each."),
    "failure-modes": ("kernel.cli.failuremodes:failure_modes_cmd",
                      "List the failure modes, or show one MODE with its related modes and "
                      "decision tree."),
    "index": ("kernel.cli.index:index_cmd",
              "Write .state/module_index.json: each kernel module's summary and docstring "
              "sections."),
    "events": ("kernel.cli.events:events_cmd",
               "Print the audit events (every accepted state transition, and more)."),
    "export": ("kernel.cli.views:export_cmd",
               "Rewrite the JSON views under .state/ from the database (current.json, the "
               "indices, DAG, plan and checkpoint files; transitions.jsonl gets the events it "
               "lacks)."),
    "replay": ("kernel.cli.audit:replay_cmd",
               "The state of every task, workstream and worker at TIMESTAMP, from the event log "
               "alone (archived events included)."),
    "audit": ("kernel.cli.audit:audit_group",
              "The audit log: compliance report, retention (rotate), archived events (query, "
              "verify)."),
    "metrics": ("kernel.cli.metrics:metrics_cmd",
                "Print the metrics (and write .state/metrics.json and a sample), or render, "
                "serve or list them."),
    "backup": ("kernel.cli.backup:backup_cmd",
               "Write a consistent copy of .state/kernel.db to DEST, safe while `orch run` "
               "runs."),
    "bundle": ("kernel.cli.backup:bundle_cmd",
               "Write one .tar.gz for a bug report, with secrets redacted."),
    "restore": ("kernel.cli.backup:restore_cmd",
                "Put the backup SRC in place of .state/kernel.db, then migrate it."),
    "bench": ("kernel.cli.bench:bench_cmd",
              "Run the benchmark suite and print its figures against references and goals."),
    "browse": ("kernel.cli.browse:browse_cmd",
               "Browse the history in Datasette on 127.0.0.1, read-only: every table "
               "described, canned queries, and a DAG picture per workstream, until Ctrl-C."),
    "demo": ("kernel.cli.demo:demo_cmd",
             "Run an example workstream end to end on a generated project, with live progress."),
    "completion": ("kernel.cli.completion:completion_cmd",
                   "Print the shell completion script for bash, zsh or fish (commands, options, "
                   "task ids)."),
}

# One example per command (and per subcommand, as "group sub"), shown at the end of its
# --help and in docs/CLI.md; tests/test_cli_contract.py requires one for every command.
EXAMPLES: dict[str, str] = {
    "init": "orch init --example",
    "doctor": "orch doctor --repair",
    "validate": "orch validate tasks/backend",
    "load": "orch load",
    "migrate-tasks": "orch migrate-tasks --from 1.0.0 --to 2.0.0 --dry-run",
    "plan": "orch plan backend --format mermaid",
    "run": "orch run --workers 4 --workstream backend",
    "worker": "orch worker --capability cap-aider-001 --workstream backend",
    "cancel": "orch cancel --workstream backend",
    "retry": "orch retry lint unit-tests",
    "skip": "orch skip flaky-smoke-test",
    "status": "orch status --workstream backend --state failed",
    "show": "orch show lint",
    "why": "orch why lint",
    "ready": "orch ready --limit 5",
    "next": "orch next",
    "prime": "orch prime --task lint --max-tokens 2000",
    "capabilities": "orch capabilities",
    "events": "orch events --workstream backend --severity error",
    "export": "orch export",
    "replay": "orch replay --at 2026-01-05T10:00:00Z",
    "audit": "orch audit report --since 2026-01-01",
    "audit report": "orch audit report --since 2026-01-01",
    "audit rotate": "orch audit rotate --older-than 90d --dry-run",
    "audit query": "orch audit query --event task_failed --from 2026-01-01",
    "audit verify": "orch audit verify",
    "metrics": "orch metrics --serve 127.0.0.1:9464",
    "backup": "orch backup .state/backups/before-upgrade.db",
    "bundle": "orch bundle bug-report.tar.gz",
    "restore": "orch restore .state/backups/kernel-20260101T120000Z.db --force",
    "bench": "orch bench --quick",
    "demo": "orch demo --dir orch-demo",
    "completion": 'eval "$(orch completion bash)"',
    "browse": "orch browse --port 8001 --open",
    "compliance": "orch compliance --only STATE-OBS",
    "resources": "orch resources --all",
    "failure-modes": "orch failure-modes Task-Timeout",
    "index": "orch index",
    "new": "orch new build/test --cmd 'pytest -q' --after compile",
}


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    state = ctx.ensure_object(CliState)
    if state.json:
        click.echo(json.dumps({"name": "orch", "version": __version__}, indent=2,
                              sort_keys=True))
    else:
        click.echo(f"orch, version {__version__}")
    ctx.exit()


@click.group(cls=LazyGroup, lazy_commands=LAZY_COMMANDS, examples=EXAMPLES,
             context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Example: orch --json status")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Project root (default: the nearest parent holding .state/, else the current dir).",
)
@click.option("--json", "json_", is_flag=True, help="Print one JSON document (all commands).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_version, help="Show the version and exit (with --json, as JSON).")
@click.pass_context
def cli(ctx: click.Context, root: str | None, json_: bool) -> None:
    """orch: run AI coding-agent work as a DAG of tasks, with all state in one SQLite file."""
    state = ctx.ensure_object(CliState)  # run() passes its own, to name the file on errors
    state.root, state.json = root, json_


def run(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Errors are JSON for --json and for the streams (--jsonl): one document, or one line.
    want_json = "--json" in args or "--jsonl" in args
    state = CliState(json="--json" in args)  # for what runs before --json is parsed
    try:
        result = cli.main(args=args, prog_name="orch", standalone_mode=False, obj=state)
    except click.exceptions.NoArgsIsHelpError as exc:  # `orch` alone: help, not an error
        _help(exc.ctx, state.json)
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
        _note_if_locked(exc, state, args)
        emit_error(exc, want_json)
        return exc.exit_code
    except apsw.Error as exc:
        # Whatever command met it (a damaged page read by `orch status`, a full disk...): an
        # exit-3 error naming the file, never a traceback.
        from kernel.store.db import error_for

        err = error_for(exc, state.db_path or Path(".state/kernel.db"))
        _note_if_locked(err, state, args)
        emit_error(err, want_json)
        return err.exit_code
    except BrokenPipeError:
        return EXIT_FAILED
    return int(result or 0)


def _help(ctx: click.Context | None, as_json: bool) -> None:
    """A group's help; with --json ``{"usage", "help", "commands": {name: short help}}``."""
    text = ctx.get_help() if ctx else ""
    if not as_json or ctx is None:
        click.echo(text)
        return
    group = ctx.command
    commands: dict[str, str] = {}
    if isinstance(group, click.Group):
        for name in group.list_commands(ctx):
            lazy = LAZY_COMMANDS.get(name) if group is cli else None
            sub = None if lazy else group.get_command(ctx, name)
            commands[name] = lazy[1] if lazy else (sub.get_short_help_str(10**6) if sub else "")
    click.echo(json.dumps({"usage": ctx.get_usage(), "help": text, "commands": commands},
                          indent=2, sort_keys=True))


def _note_if_locked(err: OrchError, state: CliState, args: list[str]) -> None:
    """Database-Locked: a command that gave up on the busy timeout leaves a note that the next
    command able to write records as a ``database_locked`` event (``kernel.store.lockrecord``)."""
    if err.code != "database_locked" or state.db_path is None:
        return
    from kernel.store.lockrecord import note_locked

    words = [a for i, a in enumerate(args)
             if not a.startswith("-") and (i == 0 or args[i - 1] != "--root")]
    note_locked(state.db_path, " ".join(words[:1]) or "orch")


def main() -> None:
    sys.exit(run())
