"""Errors the kernel reports to people and agents, with the exit codes of the command line.

Public API:
    ``OrchError(code, message, *, file=None, line=None, hint=None, exit_code=None)`` and its
    ``as_dict()``; subclasses ``UsageError`` (exit 2), ``DatabaseUnavailable`` (exit 3),
    ``IllegalTransition`` (exit 1); the ``EXIT_*`` constants; ``EXIT_MEANINGS`` (exit code ->
    what it means); ``ERROR_CODES`` (error code -> ``(exit code, what it means)``: the one
    table of the command line's errors, rendered into docs/CLI.md); ``exit_code_for(code)``.

Stability Guarantees:
    Error ``code`` strings and exit codes are part of the command-line contract: codes are only
    added, never renamed. One exit code per error code: a code listed in ``ERROR_CODES`` always
    exits with the table's code, whichever class raised it and whatever ``exit_code`` it was
    given (tests/test_cli_contract.py checks that every code the kernel raises is listed).

Integration Points:
    ``kernel.cli`` turns any ``OrchError`` into a message (or ``{"error": {...}}`` with
    ``--json``) and its exit code.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # the work failed or a check failed
EXIT_USAGE = 2  # the command was used wrongly
EXIT_DATABASE = 3  # the database is locked beyond its timeout, unreadable, or too new
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_MEANINGS: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_FAILED: "the work failed, a check failed, or an id, file or archive is not what the "
                 "command needs",
    EXIT_USAGE: "usage error: an unknown option, a missing argument, a value out of range",
    EXIT_DATABASE: "the database is locked beyond its timeout, unreadable, damaged, not orch's, "
                   "not accessible, or newer than this orch",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C",
}

_F, _U, _D = EXIT_FAILED, EXIT_USAGE, EXIT_DATABASE
# Every error code the kernel raises: code -> (exit code, what it means). Keep it sorted.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "address_unavailable": (_F, "the address for `orch metrics --serve` is in use"),
    "api_key_missing": (_F, "an agent task needs an API key that is not set"),
    "archive_mismatch": (_F, "an audit archive does not match its recorded counts or checksum"),
    "archive_month_mismatch": (_F, "an audit archive holds events of another month"),
    "archive_too_new": (_F, "an audit archive was written by a newer orch"),
    "archive_unreadable": (_F, "an audit archive cannot be read"),
    "backup_check_failed": (_F, "the backup written failed its integrity check"),
    "backup_damaged": (_F, "the backup file is damaged (integrity_check fails)"),
    "backup_foreign": (_F, "the backup file is not an orch database"),
    "backup_missing": (_F, "the backup file does not exist"),
    "backup_not_single_file": (_F, "the backup is not one self-contained file"),
    "backup_not_sqlite": (_F, "the backup file is not an SQLite database"),
    "backup_onto_source": (_U, "the backup destination is the database itself"),
    "backup_too_new": (_F, "the backup was written by a newer orch"),
    "bad_encoding": (_F, "a definition file is not UTF-8 text"),
    "bad_redact_pattern": (_U, "a --redact pattern is not a valid regular expression"),
    "bad_timestamp": (_U, "a timestamp option is not ISO-8601"),
    "browse_failed": (_F, "Datasette exited before it served, or with an error"),
    "cannot_act": (_F, "`orch skip` or `orch retry` could not act on some of the tasks named "
                       "(each is listed with its state and why)"),
    "cannot_revert": (_F, "edits an agent made outside its files could not be reverted"),
    "config_invalid": (_F, "orch.toml is invalid"),
    "dask_missing": (_F, "`--executor dask` needs the dask extra: pip install 'orch-kernel[dask]'"),
    "dask_unavailable": (_F, "the Dask scheduler could not be reached, or the cluster has no "
                             "workers"),
    "database_access_denied": (_D, "this user may not read or write the database"),
    "database_damaged": (_D, "the database file is broken (truncated, malformed, I/O error)"),
    "database_error": (_D, "another SQLite error reached the command line"),
    "database_in_use": (_F, "another process has the database open (restore refuses)"),
    "database_locked": (_D, "another writer held the database beyond the busy timeout"),
    "database_missing": (_D, "no database file where one was named, or its -wal is left alone"),
    "database_unreadable": (_D, "the file is not an SQLite database"),
    "demo_definitions_invalid": (_F, "the demo's generated tasks did not validate (a bug)"),
    "demo_dir_and_temp": (_U, "`orch demo --temp` and `--dir` exclude each other"),
    "demo_dir_not_empty": (_U, "`orch demo --keep DIR` names a directory that is not empty"),
    "demo_git_failed": (_F, "git failed while the demo built its project"),
    "demo_needs_aider": (_F, "`orch demo --agent aider` needs `aider` on PATH"),
    "demo_needs_git": (_F, "the demo needs git on PATH"),
    "dependency_cycle_detected": (_F, "the tasks' dependencies form a cycle"),
    "destination_exists": (_F, "the output file exists (nothing is overwritten)"),
    "destination_in_use": (_F, "the backup destination is an open database"),
    "destination_is_directory": (_U, "the output path is a directory"),
    "disk_full": (_D, "the disk filled up during a write; nothing was committed"),
    "duplicate_key": (_F, "a definition file repeats a key"),
    "empty_file": (_F, "a definition file is empty"),
    "error": (_F, "the command line could not do what was asked (e.g. a file it cannot open)"),
    "example_exists": (_F, "`orch init --example` would overwrite files that are there"),
    "example_git_failed": (_F, "git failed while `orch init --example` committed its files"),
    "file_too_large": (_F, "a definition file is larger than orch reads"),
    "file_unreadable": (_F, "a definition file cannot be read"),
    "git_failed": (_F, "a git command failed"),
    "illegal_transition": (_F, "the state machine refused the change"),
    "init_in_orch_source": (_F, "`orch init` in orch's own source checkout"),
    "internal": (_F, "orch met a state it should never reach (a bug: report it)"),
    "invalid_definition": (_F, "one definition document is invalid (every problem listed)"),
    "invalid_definitions": (_F, "the task, workstream or registry files have errors"),
    "invalid_limit": (_U, "--limit is out of range"),
    "invalid_max_tokens": (_U, "--max-tokens is out of range"),
    "invalid_workstream_id": (_F, "a workstream id cannot name a git branch or directory"),
    "json_syntax": (_F, "a definition file is not valid JSON"),
    "max_tokens_too_small": (_U, "--max-tokens cannot hold the smallest brief"),
    "migration_failed": (_F, "some task files cannot be migrated; nothing was written"),
    "not_a_regular_file": (_F, "a definition path is not a regular file"),
    "not_an_archive": (_F, "the file is not an orch audit archive"),
    "not_an_orch_database": (_D, "the file is another application's SQLite database"),
    "not_found": (_F, "a path given does not exist"),
    "not_initialised": (_F, "no orch project here (no .state/kernel.db, or an empty one): run "
                            "`orch init`, pass --root, or restore a backup"),
    "output_unwritable": (_F, "the --output file cannot be written"),
    "remote_address_refused": (_U, "`orch metrics --serve` refuses a non-loopback address "
                                   "without --allow-remote"),
    "restore_needs_force": (_F, "restore would replace a database: pass --force"),
    "restore_onto_itself": (_U, "the backup to restore is the database itself"),
    "retention_too_short": (_U, "--older-than is below the minimum retention"),
    "rotation_conflict": (_F, "an audit archive for that month exists with other events"),
    "rotation_incomplete": (_F, "an audit rotation was interrupted; run it again"),
    "scheduler_lock_lost": (_F, "this `orch run` lost the scheduler lock to another"),
    "scheduler_running": (_F, "another `orch run` owns the database (`orch worker` joins it)"),
    "schema_damaged": (_D, "the schema does not match its user_version"),
    "schema_too_new": (_D, "a newer orch wrote the database"),
    "sqlite_too_old": (_D, "the bundled SQLite library is too old"),
    "task_exists": (_F, "`orch new` names a task that has a file (nothing is overwritten)"),
    "toml_syntax": (_F, "orch.toml is not valid TOML"),
    "too_deep": (_F, "a definition file nests too deeply"),
    "unknown_capability": (_U, "`orch worker --capability` names a capability not in the "
                               "catalog"),
    "unknown_entity": (_F, "a state change names a task, workstream or worker that is not "
                           "there"),
    "unknown_failure_mode": (_F, "`orch failure-modes MODE` names no failure mode"),
    "unknown_requirement": (_U, "`orch compliance --only` matches no requirement ID"),
    "unknown_task": (_F, "no task with that id is loaded"),
    "unknown_workstream": (_F, "no workstream with that id is loaded"),
    "usage": (_U, "the command line was used wrongly"),
    "write_failed": (_F, "an output file could not be written"),
    "yaml_syntax": (_F, "a definition file is not valid YAML"),
}


def exit_code_for(code: str, default: int = EXIT_FAILED) -> int:
    """The exit code of the error ``code`` (``ERROR_CODES``), else ``default``."""
    entry = ERROR_CODES.get(code)
    return entry[0] if entry else default


class OrchError(Exception):
    """An error with everything a person needs to act on it."""

    exit_code = EXIT_FAILED

    def __init__(
        self,
        code: str,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        hint: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.file = file
        self.line = line
        self.hint = hint
        # The table wins: one exit code per error code, whoever raises it.
        fallback = exit_code if exit_code is not None else type(self).exit_code
        self.exit_code = exit_code_for(code, fallback)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        text = f"{where}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class UsageError(OrchError):
    exit_code = EXIT_USAGE


class DatabaseUnavailable(OrchError):
    """Locked beyond the busy timeout, unreadable, not ours, or newer than this code."""

    exit_code = EXIT_DATABASE


class IllegalTransition(OrchError):
    """A state change the state machine (enforced by SQL triggers) rejected."""

    exit_code = EXIT_FAILED
