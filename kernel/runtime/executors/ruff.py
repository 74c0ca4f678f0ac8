"""The ``ruff`` executor (task type ``lint``): the command, plus the number of findings.

Public API:
    ``RuffExecutor``.

Stability Guarantees:
    Runs exactly like ``subprocess``; the attempt's details gain ``lint_errors`` (from ruff's
    "Found N errors" line, 0 on "All checks passed!") when the log has one.

Integration Points:
    The default executor of ``"type": "lint"`` tasks.

Dependencies:
    ``kernel.runtime.executors.base``, ``kernel.runtime.executors.local``.
"""

from __future__ import annotations

import re

from kernel.runtime.executors.base import ExecutionRequest
from kernel.runtime.executors.local import SubprocessExecutor, attempt_output

_FOUND = re.compile(r"Found (\d+) errors?")


class RuffExecutor(SubprocessExecutor):
    name = "ruff"

    def details(self, request: ExecutionRequest, exit_code: int | None) -> dict[str, object]:
        text = attempt_output(request)
        found = _FOUND.findall(text)
        if found:
            return {"lint_errors": int(found[-1])}
        if "All checks passed" in text:
            return {"lint_errors": 0}
        return {}
