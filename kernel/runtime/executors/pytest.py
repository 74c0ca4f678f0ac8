"""The ``pytest`` executor (task type ``pytest``): the command, plus the test counts it reports.

Public API:
    ``PytestExecutor``.

Stability Guarantees:
    Runs exactly like ``subprocess``; the attempt's details gain ``tests`` (counts of passed,
    failed, errors, skipped read from pytest's summary line) when the log has one.

Integration Points:
    The default executor of ``"type": "pytest"`` tasks.

Dependencies:
    ``kernel.runtime.executors.base``, ``kernel.runtime.executors.local``.
"""

from __future__ import annotations

import re

from kernel.runtime.executors.base import ExecutionRequest
from kernel.runtime.executors.local import SubprocessExecutor, attempt_output

_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


class PytestExecutor(SubprocessExecutor):
    name = "pytest"

    def details(self, request: ExecutionRequest, exit_code: int | None) -> dict[str, object]:
        text = attempt_output(request)
        lines = [ln for ln in text.splitlines() if _COUNT.search(ln)]
        if not lines:
            return {}
        counts = {("errors" if k.startswith("error") else k): int(n)
                  for n, k in _COUNT.findall(lines[-1])}
        return {"tests": counts}
