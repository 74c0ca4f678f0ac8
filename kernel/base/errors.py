"""Errors the kernel reports to people and agents, with the exit codes of the command line.

Public API:
    ``OrchError(code, message, *, file=None, line=None, hint=None, exit_code=1)`` and its
    ``as_dict()``; subclasses ``UsageError`` (exit 2), ``DatabaseUnavailable`` (exit 3),
    ``IllegalTransition`` (exit 1); the ``EXIT_*`` constants.

Stability Guarantees:
    Error ``code`` strings and exit codes are part of the command-line contract: codes are only
    added, never renamed.

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
        if exit_code is not None:
            self.exit_code = exit_code

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
