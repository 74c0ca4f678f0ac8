"""What one ``orch run`` knows between ticks, and what a tick did.

Public API:
    ``TickContext`` (the run's root, configuration, scope and what it remembers from tick to
    tick; ``backoff()``); ``TickReport`` (what one tick changed and counted);
    ``scope_sql(ctx, column="workstream_id") -> (sql, params)`` (the run's workstream scope as
    an SQL condition).

Stability Guarantees:
    Fields are only added. ``kernel.runtime.scheduler`` re-exports ``TickContext`` and
    ``TickReport``, where callers have always found them.

Integration Points:
    ``kernel.runtime.runner`` keeps one ``TickContext`` for the whole run; the tick's phases
    (``kernel.runtime.health``, ``kernel.runtime.workstreams``, ``kernel.runtime.scheduler``)
    read it and fill the ``TickReport``; ``kernel.runtime.progress`` shows the report.

Dependencies:
    ``kernel.base.config``, ``kernel.runtime.attempts``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.base.config import Config
from kernel.runtime import attempts


@dataclass
class TickContext:
    root: Path
    config: Config
    workstreams: list[str] | None = None          # scope; None: all
    worktrees: bool = False                        # run workstreams in git worktrees
    hostname: str = field(default_factory=socket.gethostname)
    exited: dict[str, int] = field(default_factory=dict)   # worker_id -> exit code (children)
    alive: Callable[[int], bool] | None = None
    reported_exhaustion: set[str] = field(default_factory=set)
    worktree_failures: dict[str, int] = field(default_factory=dict)
    #: Wait for workers when none is alive (``orch run --workers 0``: they join by hand).
    wait_for_workers: bool = True
    #: Workers the run started that have not registered yet (a Dask proxy takes a second or
    #: two): meanwhile no queued task is judged unrunnable, as one of them may offer what it
    #: needs.
    workers_starting: int = 0
    #: The operator stopped the run: workers that end now are not crashes, and their tasks are
    #: put back in the queue (trigger operator_interrupted) instead of failing an attempt.
    interrupted_by_operator: bool = False
    #: task_id -> reason already recorded as a task_unrunnable event in this run.
    reported_unrunnable: dict[str, str] = field(default_factory=dict)
    #: When the queued tasks were last scanned for what no worker can run (monotonic clock),
    #: and what that scan found: the scan is made only when nothing runs
    #: (kernel.runtime.scheduler).
    queue_scanned_at: float | None = None
    last_unrunnable: list[dict[str, Any]] = field(default_factory=list)

    def backoff(self) -> dict[str, float]:
        return attempts.retry_backoff(self.config.workers)


@dataclass
class TickReport:
    queued: int = 0
    requeued: int = 0
    workers_lost: list[str] = field(default_factory=list)
    workstreams: dict[str, str] = field(default_factory=dict)   # ws -> new state
    counts: dict[str, int] = field(default_factory=dict)
    done: bool = False
    unrunnable: list[dict[str, Any]] = field(default_factory=list)


def scope_sql(ctx: TickContext, column: str = "workstream_id") -> tuple[str, tuple[Any, ...]]:
    """``column IN (the run's workstreams)`` and its parameters; ``"1"`` when the run has no
    scope."""
    if ctx.workstreams is None:
        return "1", ()
    return f"{column} IN (SELECT value FROM json_each(?))", (json.dumps(ctx.workstreams),)
