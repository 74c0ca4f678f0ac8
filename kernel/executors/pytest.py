"""The ``pytest`` executor (task type ``pytest``): the command, plus the test counts it reports.

Public API:
    ``PytestExecutor``.

Stability Guarantees:
    Runs exactly like ``subprocess``; the attempt's details gain ``tests`` (counts of passed,
    failed, errors, skipped read from pytest's summary line) when the log has one.

Integration Points:
    The default executor of ``"type": "pytest"`` tasks.

Dependencies:
    ``kernel.executors.local``.
"""

from __future__ import annotations

import re

from kernel.executors.base import ExecutionRequest
from kernel.executors.local import SubprocessExecutor

_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def _tail(request: ExecutionRequest, size: int = 8192) -> str:
    try:
        with open(request.log_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class PytestExecutor(SubprocessExecutor):
    name = "pytest"

    def details(self, request: ExecutionRequest, exit_code: int | None) -> dict[str, object]:
        text = _tail(request).split(f"==== attempt {request.attempt_no} ended")[0]
        lines = [ln for ln in text.splitlines() if _COUNT.search(ln)]
        if not lines:
            return {}
        counts = {("errors" if k.startswith("error") else k): int(n)
                  for n, k in _COUNT.findall(lines[-1])}
        return {"tests": counts}
