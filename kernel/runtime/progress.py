"""Live progress of ``orch run``: a rich display on a terminal, JSON lines, or nothing.

Public API:
    ``make_progress(json_stream, tty) -> Progress``; ``LiveProgress``, ``JsonProgress``.

Stability Guarantees:
    On a terminal: counts by state, the running tasks with their elapsed time against their
    timeout, and an ETA from the plan (the longest remaining chain of estimated durations, or
    the remaining estimated work divided by the workers, whichever is longer). Piped: quiet
    until the summary. With ``--json``: one JSON event per line as they are committed, then one
    line ``{"summary": ...}``.

Integration Points:
    ``kernel.runtime.runner.run`` calls ``start``, ``update`` after each tick and ``finish``.

Dependencies:
    rich; ``kernel.base.clock``, ``kernel.observe.audit``, ``kernel.runtime.context``,
    ``kernel.runtime.runner``, ``kernel.store.db``, ``kernel.store.machines``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from kernel.base import clock
from kernel.runtime.context import TickReport
from kernel.runtime.runner import Progress, RunOptions, RunSummary, summary_text
from kernel.store import db
from kernel.store.machines import claimed_states, in_list_sql, shipped, terminal_sql


class JsonProgress(Progress):
    def __init__(self) -> None:
        self.last = 0

    def start(self, conn: Any, options: RunOptions) -> None:
        self.last = int(db.scalar(conn, "SELECT COALESCE(MAX(seq), 0) FROM event") or 0)

    def update(self, conn: Any, report: TickReport) -> None:
        from kernel.observe.audit import list_events

        for event in list_events(conn, since=self.last):
            sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
            self.last = event["seq"]
        sys.stdout.flush()

    def notice(self, text: str) -> None:
        sys.stdout.write(json.dumps({"notice": text}, sort_keys=True) + "\n")
        sys.stdout.flush()

    def finish(self, summary: RunSummary) -> None:
        sys.stdout.write(json.dumps({"summary": summary.as_dict()}, sort_keys=True) + "\n")
        sys.stdout.flush()


class LiveProgress(Progress):
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.live: Any = None
        self.workers = 1
        self.shown = 0.0

    def start(self, conn: Any, options: RunOptions) -> None:
        from rich.live import Live

        self.workers = max(1, options.workers)
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def update(self, conn: Any, report: TickReport) -> None:
        if self.live is None or time.monotonic() - self.shown < 0.12:
            return
        self.shown = time.monotonic()
        self.live.update(self._render(conn, report))

    def _render(self, conn: Any, report: TickReport) -> Any:
        from rich.table import Table
        from rich.text import Text

        counts = report.counts
        order = shipped()["task"].state_names   # the machine's order: pending ... cancelled
        head = Text("  ".join(f"{s} {counts.get(s, 0)}" for s in order if counts.get(s)))
        table = Table(box=None, show_header=True, header_style="bold")
        for col in ("running", "worker", "elapsed", "timeout"):
            table.add_column(col)
        now = time.time()
        for r in db.rows(conn, "SELECT t.task_id, t.worker_id, t.timeout_seconds, a.started_at "
                               "FROM task t JOIN attempt a ON a.task_id = t.task_id AND "
                               "a.generation = t.generation WHERE t.state IN "
                               f"{in_list_sql(claimed_states())} ORDER BY a.started_at LIMIT 12"):
            elapsed = now - clock.epoch(r["started_at"])
            table.add_row(r["task_id"], r["worker_id"] or "(validating)", f"{elapsed:.1f} s",
                          f"{r['timeout_seconds']:g} s" if r["timeout_seconds"] else "-")
        left = db.row(conn, "SELECT MAX(bottom_level) AS chain, "
                            "SUM(estimated_duration_seconds) AS work FROM task "
                            f"WHERE state NOT IN {terminal_sql('task')}")
        eta = max(left["chain"] or 0, (left["work"] or 0) / self.workers) if left else 0
        from rich.console import Group

        return Group(head, table, Text(f"ETA from the plan: ~{eta:.0f} s", style="dim"))

    def notice(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def finish(self, summary: RunSummary) -> None:
        if self.live is not None:
            self.live.stop()
        self.console.print(summary_text(summary), markup=False, highlight=False)


class QuietProgress(Progress):
    def finish(self, summary: RunSummary) -> None:
        sys.stdout.write(summary_text(summary) + "\n")


def make_progress(json_stream: bool, tty: bool | None = None) -> Progress:
    if json_stream:
        return JsonProgress()
    if tty is None:
        tty = sys.stdout.isatty()
    return LiveProgress() if tty else QuietProgress()
