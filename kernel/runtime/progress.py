"""Live progress of ``orch run``: a rich display on a terminal, JSON, or only the summary.

Public API:
    ``make_progress(output, tty) -> Progress`` (``output``: ``"text"``, ``"json"`` or
    ``"jsonl"``); ``LiveProgress``, ``QuietProgress``, ``JsonDocumentProgress``,
    ``JsonLinesProgress``; ``eta(conn, workers, workstream) -> Eta``; ``new_failures(conn,
    after_attempt_id, seen) -> list[dict]``.

Stability Guarantees:
    On a terminal: counts by state, the run's elapsed time, the running tasks with their
    elapsed time against their timeout, and an ETA from history (the mean duration of the
    task's own succeeded attempts, else of every succeeded attempt in the database, spread over
    the workers); with no history at all it says "no estimates yet", never a made-up figure.
    Each failed attempt is printed above the live region as it happens (task, outcome, a
    one-line reason, and whether a retry follows); the live region is cleared at the end and
    the summary printed in its place. Piped: quiet until the summary (failures still printed as
    they happen). ``--json``: one JSON document at the end, the summary's fields plus
    ``events`` (every event committed during the run) and ``notices``. ``--jsonl``: one JSON
    event per line as they are committed, ``{"notice": ...}`` lines, then one line
    ``{"summary": ...}``.

Integration Points:
    ``kernel.runtime.runner.run`` calls ``start``, ``update`` after each tick, ``notice`` and
    ``finish``; ``orch run`` (``kernel.cli.run``) picks the kind.

Dependencies:
    rich; ``kernel.base.clock``, ``kernel.base.words``, ``kernel.observe.audit``,
    ``kernel.observe.status``, ``kernel.runtime.context``, ``kernel.runtime.runner``,
    ``kernel.store.db``, ``kernel.store.machines``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.base import clock
from kernel.base.words import plural
from kernel.runtime.context import TickReport
from kernel.runtime.runner import Progress, RunOptions, RunSummary, summary_text
from kernel.store import db
from kernel.store.machines import claimed_states, in_list_sql, shipped, terminal_sql

_REASON_WIDTH = 100
_LOG_MARKER = "===="   # the lines a worker writes into a task's log around each attempt
# Seconds, from the attempts that succeeded: a task's own history, and everyone's.
_HISTORY_SQL = ("(julianday(a.finished_at) - julianday(a.started_at)) * 86400.0")


def _one_line(text: Any, width: int = _REASON_WIDTH) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


@dataclass(frozen=True)
class Eta:
    seconds: float | None   # None: no history to estimate from
    left: int               # unfinished tasks in scope
    unknown: int = 0        # of them, without any history

    def text(self) -> str:
        if self.left == 0:
            return "ETA: nothing left"
        if self.seconds is None:
            return f"ETA: no estimates yet ({plural(self.left, 'task')} left, no history)"
        return f"ETA ~{self.seconds:.0f} s from history ({plural(self.left, 'task')} left)"


def eta(conn: Any, workers: int, workstream: str | None = None) -> Eta:
    """The remaining work from history: each unfinished task's mean succeeded duration (its
    own, else every task's), less what its running attempt has already spent, over the
    workers."""
    overall = db.scalar(conn, f"SELECT AVG({_HISTORY_SQL}) FROM attempt a "
                              "WHERE a.outcome = 'succeeded' AND a.finished_at IS NOT NULL")
    rows = db.rows(conn, f"""
        SELECT t.task_id, (SELECT AVG({_HISTORY_SQL}) FROM attempt a WHERE a.task_id = t.task_id
                           AND a.outcome = 'succeeded' AND a.finished_at IS NOT NULL) AS own,
               (SELECT a.started_at FROM attempt a WHERE a.task_id = t.task_id
                AND a.generation = t.generation AND a.finished_at IS NULL) AS started_at
        FROM task t WHERE t.state NOT IN {terminal_sql('task')}
        AND (? IS NULL OR t.workstream_id = ?)""", (workstream, workstream))
    if not rows:
        return Eta(0.0, 0)
    now, work, unknown = time.time(), 0.0, 0
    for r in rows:
        mean = r["own"] if r["own"] is not None else overall
        if mean is None:
            unknown += 1
            continue
        spent = now - clock.epoch(r["started_at"]) if r["started_at"] else 0.0
        work += max(0.0, float(mean) - spent)
    if unknown == len(rows):
        return Eta(None, len(rows), unknown)
    return Eta(work / max(1, workers), len(rows), unknown)


def new_failures(conn: Any, after_attempt_id: int, seen: set[int]) -> list[dict[str, Any]]:
    """Attempts (with id above ``after_attempt_id``, not in ``seen``) that ended other than
    succeeded, oldest first, each with its task's state now; adds them to ``seen``."""
    found = db.rows(conn, """
        SELECT a.attempt_id, a.task_id, a.attempt_no, a.outcome, a.exit_code, a.failure_mode,
               a.error_message, a.log_path, t.state, t.retry_count, t.max_retries
        FROM attempt a JOIN task t ON t.task_id = a.task_id
        WHERE a.attempt_id > ? AND a.finished_at IS NOT NULL AND a.outcome <> 'succeeded'
        ORDER BY a.attempt_id""", (after_attempt_id,))
    fresh = [f for f in found if f["attempt_id"] not in seen]
    seen.update(f["attempt_id"] for f in fresh)
    root = Path(conn.filename).resolve().parent.parent   # <root>/.state/kernel.db
    for f in fresh:
        f["last_output"] = _last_output(root / f["log_path"]) if f["log_path"] else ""
    return fresh


def _last_output(path: Path) -> str:
    """The last line the task printed (its log's attempt markers left out), or ""."""
    from kernel.observe.status import log_tail

    try:
        lines = log_tail(path, 40)
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines)
                 if line.strip() and not line.startswith(_LOG_MARKER)), "")


def failure_line(f: dict[str, Any]) -> str:
    """One line for a failed attempt: task, outcome, reason, and what happens next."""
    bits = [f["failure_mode"], f"exit {f['exit_code']}" if f["exit_code"] is not None else ""]
    reason = _one_line(f["error_message"]) or ", ".join(b for b in bits if b) or "no reason given"
    if f.get("last_output"):
        reason = _one_line(f"{reason}: {f['last_output']}")
    return f"✗ {f['task_id']} {f['outcome']} (attempt {f['attempt_no']}): {reason} -> {f['state']}"


def _max_attempt(conn: Any) -> int:
    return int(db.scalar(conn, "SELECT COALESCE(MAX(attempt_id), 0) FROM attempt") or 0)


class JsonLinesProgress(Progress):
    """``--jsonl``: one event per line as they are committed, then ``{"summary": ...}``."""

    def __init__(self) -> None:
        self.last = 0

    def start(self, conn: Any, options: RunOptions) -> None:
        self.last = int(db.scalar(conn, "SELECT COALESCE(MAX(seq), 0) FROM event") or 0)

    def _new_events(self, conn: Any) -> list[dict[str, Any]]:
        from kernel.observe.audit import list_events

        found = list_events(conn, since=self.last)
        if found:
            self.last = found[-1]["seq"]
        return found

    def update(self, conn: Any, report: TickReport) -> None:
        for event in self._new_events(conn):
            sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
        sys.stdout.flush()

    def notice(self, text: str) -> None:
        sys.stdout.write(json.dumps({"notice": text}, sort_keys=True) + "\n")
        sys.stdout.flush()

    def finish(self, summary: RunSummary) -> None:
        sys.stdout.write(json.dumps({"summary": summary.as_dict()}, sort_keys=True) + "\n")
        sys.stdout.flush()


class JsonDocumentProgress(JsonLinesProgress):
    """``--json``: nothing until the end, then one document: the summary's fields, ``events``
    (committed during the run) and ``notices``."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.notices: list[str] = []

    def update(self, conn: Any, report: TickReport) -> None:
        self.events.extend(self._new_events(conn))

    def notice(self, text: str) -> None:
        self.notices.append(text)

    def finish(self, summary: RunSummary) -> None:
        document = {**summary.as_dict(), "events": self.events, "notices": self.notices}
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()


class QuietProgress(Progress):
    """Piped: each failed attempt as one line when it happens, then the summary."""

    def __init__(self) -> None:
        self.after = 0
        self.seen: set[int] = set()

    def start(self, conn: Any, options: RunOptions) -> None:
        self.after = _max_attempt(conn)

    def update(self, conn: Any, report: TickReport) -> None:
        for f in new_failures(conn, self.after, self.seen):
            sys.stdout.write(failure_line(f) + "\n")
        sys.stdout.flush()

    def finish(self, summary: RunSummary) -> None:
        sys.stdout.write(summary_text(summary) + "\n")
        sys.stdout.flush()


class LiveProgress(Progress):
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        self.live: Any = None
        self.workers = 1
        self.workstream: str | None = None
        self.shown = 0.0
        self.began = time.monotonic()
        self.after = 0
        self.seen: set[int] = set()

    def start(self, conn: Any, options: RunOptions) -> None:
        from rich.live import Live

        self.workers = max(1, options.workers)
        self.workstream = options.workstream
        self.began = time.monotonic()
        self.after = _max_attempt(conn)
        # transient: the live region is erased when the run ends; the summary takes its place.
        self.live = Live(console=self.console, refresh_per_second=8, transient=True)
        self.live.start()

    def update(self, conn: Any, report: TickReport) -> None:
        if self.live is None:
            return
        for f in new_failures(conn, self.after, self.seen):  # printed above the live region
            self.console.print(failure_line(f), markup=False, style="red")
        if time.monotonic() - self.shown < 0.12:
            return
        self.shown = time.monotonic()
        self.live.update(self._render(conn, report))

    def _render(self, conn: Any, report: TickReport) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        counts = report.counts
        order = shipped()["task"].state_names   # the machine's order: pending ... cancelled
        elapsed = time.monotonic() - self.began
        head = Text(f"elapsed {elapsed:.1f} s   "
                    + "  ".join(f"{s} {counts.get(s, 0)}" for s in order if counts.get(s)))
        table = Table(box=None, show_header=True, header_style="bold")
        for col in ("running", "worker", "elapsed", "timeout"):
            table.add_column(col, no_wrap=True)
        now = time.time()
        for r in db.rows(conn, "SELECT t.task_id, t.worker_id, t.timeout_seconds, a.started_at "
                               "FROM task t JOIN attempt a ON a.task_id = t.task_id AND "
                               "a.generation = t.generation WHERE t.state IN "
                               f"{in_list_sql(claimed_states())} ORDER BY a.started_at LIMIT 12"):
            spent = now - clock.epoch(r["started_at"])
            table.add_row(r["task_id"], r["worker_id"] or "(validating)", f"{spent:.1f} s",
                          f"{r['timeout_seconds']:g} s" if r["timeout_seconds"] else "-")
        estimate = eta(conn, self.workers, self.workstream)
        return Group(head, table, Text(estimate.text(), style="dim"))

    def notice(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def finish(self, summary: RunSummary) -> None:
        if self.live is not None:
            self.live.stop()
        self.console.print(summary_text(summary), markup=False, highlight=False)


def make_progress(output: str | bool = "text", tty: bool | None = None) -> Progress:
    """``output``: ``"json"`` (one document), ``"jsonl"`` (a stream) or ``"text"`` (live on a
    terminal, else quiet); ``False`` is ``"text"`` and ``True`` ``"jsonl"`` (the older form)."""
    if isinstance(output, bool):
        output = "jsonl" if output else "text"
    if output == "json":
        return JsonDocumentProgress()
    if output == "jsonl":
        return JsonLinesProgress()
    if tty is None:
        tty = sys.stdout.isatty()
    return LiveProgress() if tty else QuietProgress()
