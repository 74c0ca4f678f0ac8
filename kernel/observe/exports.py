"""The ``.state/`` views: JSON files an agent reads to understand the whole state without code.
This module writes them, in the crash-safe order; ``kernel.observe.view_documents`` builds the
documents and ``kernel.observe.documents`` renders and writes each file.

Public API:
    ``export(conn, state_dir, *, full=True, now=None, cache=None, workers=None) ->
        ExportReport`` writes every view from one read snapshot of the database
        (STATE-OBS-001..006, DAG-VIEW-001..003, checkpoints); ``full=False`` skips the
        per-workstream files whose workstream did not change since the export that filled
        ``cache``; a full export without ``cache`` of ``PARALLEL_MIN_TASKS`` tasks or more
        plans its workstreams in ``workers`` processes (fork; default one per CPU).
    ``Exporter(db_path, state_dir, min_interval=0.25, budget=0.1)``: a background thread that
        exports after commits, coalesced: ``request()``, ``close()``.
    ``export_after_change(project)``: one best-effort export after a command changed state.
    ``read_view(state_dir, name) -> dict`` (an index, or current.json when the index is stale);
    ``last_exported_seq(path) -> int``; ``CURRENT``, ``TRANSITIONS``, ``EVENT_LINE_FIELDS``,
    ``STALE_AFTER_SECONDS``. The document models (``CurrentState``, ...) and
    ``VIEWS_SCHEMA_VERSION`` are in ``kernel.observe.view_models``.

Stability Guarantees:
    Files and their top-level keys are only added to. Every document carries ``schema_version``
    and ``schema_url``; keys are sorted and rows come in key order (task_id, workstream_id,
    worker_id, seq). The update order is STATE-OBS-003: ``current.json.tmp`` is written and
    fsynced, renamed over ``current.json``, and only then are the new events appended to
    ``transitions.jsonl``; the indices follow. The events file is append-only: an export appends
    exactly the events with a seq above the last complete line, so a process killed at any step
    loses nothing and duplicates nothing at the next export (a torn last line is cut off and
    written again; a leftover ``.tmp`` is replaced). The database wins: when the file's last
    line is not the database's event of that seq (events a power cut took from the database
    after the file had them, or a restore from an older backup), the file is moved aside to
    ``transitions.jsonl.diverged-{time}`` and written again from the database, with a warning.
    ``current.json`` holds ``last_event_seq``:
    the state it shows is the state after that event. Indices name their ``source_timestamp``
    (the ``timestamp`` of the current.json they were derived from); one older than current.json
    by more than ``STALE_AFTER_SECONDS`` is stale and ``read_view`` falls back to current.json.
    Exports only read the database, so they never block a writer.

Integration Points:
    ``orch run`` runs an ``Exporter`` beside its loop (``[views] export = false`` turns it off);
    ``orch export`` calls ``export``; ``orch load``, ``cancel``, ``retry`` and ``skip`` call
    ``export_after_change``; ``orch doctor --repair`` rebuilds the files with ``export``.
    ``kernel.planning.plan.workstream_plan`` makes the DAG and plan documents; the events of
    transitions.jsonl are read through ``kernel.store.eventlog`` (live and archived).

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.observe.documents``,
    ``kernel.observe.view_documents``, ``kernel.planning.plan``, ``kernel.store.db``,
    ``kernel.store.eventlog``, ``kernel.store.events``, ``kernel.store.schema``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import OrchError
from kernel.observe.documents import dumps, write_document
from kernel.observe.view_documents import (
    Snapshot,
    checkpoint_document,
    current_document,
    index_documents,
    read_snapshot,
)
from kernel.store import db, eventlog, schema
from kernel.store.events import EVENT_FIELDS

STALE_AFTER_SECONDS = 60.0
# A full export of this many tasks writes its workstreams' plan and DAG files in worker
# processes (one per CPU): planning 100k tasks over 10 workstreams is most of an export.
PARALLEL_MIN_TASKS = 20_000
CURRENT = "current.json"
TRANSITIONS = "transitions.jsonl"
# A line of transitions.jsonl is an event as `orch events --json` prints it.
EVENT_LINE_FIELDS = EVENT_FIELDS


# ------------------------------------------------------------------------------------------
# The events file (append-only)
# ------------------------------------------------------------------------------------------


def last_exported_seq(path: Path) -> int:
    """The seq of the last complete line of a transitions file (0 when empty or missing). A torn
    last line (a process died while appending) is cut off, so it is appended again whole."""
    if not path.exists():
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        chunk = min(size, 1 << 16)
        while True:
            fh.seek(size - chunk)
            tail = fh.read(chunk)
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                if cut < 0 and chunk < size:
                    chunk = min(size, chunk * 4)
                    continue
                keep = size - chunk + cut + 1 if cut >= 0 else 0
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
                if keep == 0:
                    return 0
                size = keep
                chunk = min(size, 1 << 16)
                continue
            lines = tail[:-1].rsplit(b"\n", 1)
            if len(lines) == 1 and chunk < size:
                chunk = min(size, chunk * 4)
                continue
            return int(json.loads(lines[-1])["seq"])


def _last_line(path: Path) -> str:
    """The last complete line of a file (after ``last_exported_seq`` cut a torn one)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        chunk = min(size, 1 << 16)
        while True:
            fh.seek(size - chunk)
            lines = fh.read(chunk).rstrip(b"\n").rsplit(b"\n", 1)
            if len(lines) == 2 or chunk == size:
                return lines[-1].decode("utf-8", errors="replace")
            chunk = min(size, chunk * 4)


def _set_aside_if_diverged(conn: apsw.Connection, path: Path, last_seq: int) -> Path | None:
    """The file is a copy of the event log's prefix; when its last line is not the database's
    event of that seq (or that seq is not in the database), the database wins: the file is
    renamed to ``transitions.jsonl.diverged-{UTC time}`` (kept as evidence) and written again.
    Returns the new name, or None when the file agrees (or is empty)."""
    exported = last_exported_seq(path)
    if exported == 0:
        return None
    if exported <= last_seq:
        event = next(eventlog.iter_events(conn, eventlog.archive_dir(path.parent),
                                          since_seq=exported - 1, with_source=False), None)
        if event is not None and event["seq"] == exported and \
                dumps(event) == _last_line(path):
            return None
    aside = path.with_name(f"{path.name}.diverged-{clock.now_iso().replace(':', '')}")
    path.rename(aside)
    return aside


def _append_events(conn: apsw.Connection, path: Path, up_to: int) -> int:
    """Append the events after the file's last seq, up to ``up_to``; returns how many. They
    come from the live table, and from ``.state/archive/events/`` when the file is rebuilt
    after `orch audit rotate` moved its beginning there."""
    after = last_exported_seq(path)
    if after >= up_to:
        return 0
    count = 0
    with open(path, "a", encoding="utf-8") as fh:
        batch: list[str] = []
        for event in eventlog.iter_events(conn, eventlog.archive_dir(path.parent),
                                          since_seq=after, with_source=False):
            if event["seq"] > up_to:
                break
            batch.append(dumps(event) + "\n")
            if len(batch) >= 4096:
                fh.write("".join(batch))
                count += len(batch)
                batch = []
        fh.write("".join(batch))
        count += len(batch)
        fh.flush()
        os.fsync(fh.fileno())
    return count


@dataclass
class ExportReport:
    timestamp: str
    last_event_seq: int
    tasks: int
    events_appended: int
    files_written: list[str] = field(default_factory=list)
    workstreams_skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    #: seconds per step: snapshot, current (current.json), events, indices, workstreams
    #: (DAG, plan and checkpoint files)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "last_event_seq": self.last_event_seq,
                "tasks": self.tasks, "events_appended": self.events_appended,
                "files_written": self.files_written,
                "workstreams_skipped": self.workstreams_skipped,
                "seconds": round(self.seconds, 3), "warnings": self.warnings,
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


def export(conn: apsw.Connection, state_dir: Path, *, full: bool = True,
           now: str | None = None, cache: dict[str, Any] | None = None,
           workers: int | None = None) -> ExportReport:
    """Write every view from one read snapshot. ``cache`` (workstream -> fingerprint) is read and
    updated: with ``full=False``, a workstream whose fingerprint is unchanged keeps its DAG, plan
    and checkpoint files. ``workers``: processes that write the plan and DAG files of a full
    export with no ``cache`` given (None: one per CPU from ``PARALLEL_MIN_TASKS`` tasks and two
    workstreams; 1: this process); the files are the same either way."""
    started = time.perf_counter()
    state_dir.mkdir(parents=True, exist_ok=True)
    if cache is not None:  # the caller keeps the plans for its next export: plan them here
        workers = 1
    cache = cache if cache is not None else {}
    with _views_lock(state_dir):
        report = _export_locked(conn, state_dir, full, now or clock.now_iso(), cache, workers)
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _views_lock(state_dir: Path) -> Iterator[None]:
    """One exporter at a time per project (``orch run`` and a command run beside it would
    otherwise both append the same events)."""
    with open(state_dir / ".views.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _export_locked(conn: apsw.Connection, state_dir: Path, full: bool, stamp: str,
                   cache: dict[str, Any], workers: int | None = 1) -> ExportReport:
    # The snapshot is read in one short read transaction; files are written after it, so a
    # slow disk never keeps the WAL from being checkpointed. Events up to the snapshot's seq
    # never change, and the DAG documents are read in a snapshot of their own.
    clock_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        nonlocal clock_start
        now = time.perf_counter()
        timings[step] = now - clock_start
        clock_start = now

    with db.read_tx(conn):
        snap = read_snapshot(conn, stamp)
    report = ExportReport(stamp, snap.last_seq, len(snap.tasks), 0, timings=timings)
    lap("snapshot")
    # STATE-OBS-003: current.json first (tmp, fsync, rename), then the events.
    write_document(state_dir / CURRENT, current_document(snap))
    report.files_written.append(CURRENT)
    lap("current")
    transitions = state_dir / TRANSITIONS
    moved = _set_aside_if_diverged(conn, transitions, snap.last_seq)
    if moved is not None:
        report.warnings.append(
            f"{TRANSITIONS} no longer matched the database's event log (events lost by a power "
            f"cut, or a restore from an older backup): it was moved to {moved.name} and written "
            "again from the database")
    report.events_appended = _append_events(conn, transitions, snap.last_seq)
    report.files_written.append(TRANSITIONS)
    lap("events")
    for name, doc in index_documents(snap, clock.now_iso()).items():
        write_document(state_dir / name, doc)
        report.files_written.append(name)
    lap("indices")
    # Each workstream's plan is read in a snapshot of its own (kernel.planning.plan), and its files
    # are written after that snapshot ends: no read transaction is held across file writes.
    _export_workstreams(conn, state_dir, snap, full, cache, report, workers)
    lap("workstreams")
    return report


@dataclass
class _Planned:
    fingerprint: str
    dag: dict[str, Any] | None
    plan: dict[str, Any] | None
    states: dict[str, str]
    checkpoint: str = ""


def _export_workstreams(conn: apsw.Connection, state_dir: Path, snap: Snapshot, full: bool,
                        cache: dict[str, Any], report: ExportReport, workers: int | None) -> None:
    checkpoints = state_dir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    states_by_ws: dict[str, dict[str, str]] = {}
    for tid, wsid, state, _ in snap.tasks:
        states_by_ws.setdefault(wsid, {})[tid] = state
    done = _plans_in_parallel(conn, state_dir, snap, states_by_ws, workers) if full else {}
    for ws in snap.workstreams:
        wsid = ws["workstream_id"]
        fingerprint = snap.fingerprints.get(wsid, "0")
        states = states_by_ws.get(wsid, {})
        written = len(report.files_written)
        if wsid in done:  # its plan and DAG files were written by a worker process
            files, warnings = done[wsid]
            report.files_written += files
            report.warnings += warnings
            known = _Planned(fingerprint, None, None, states)
        else:
            known = _refresh_plan(conn, state_dir, snap.timestamp, wsid, fingerprint, states,
                                  None if full else cache.get(wsid), report)
        checkpoint = checkpoint_document(snap, ws)
        key = dumps({k: v for k, v in checkpoint.items()
                     if k not in ("timestamp", "last_event_seq")})
        if key != known.checkpoint:
            write_document(checkpoints / f"{wsid}_latest.json", checkpoint)
            report.files_written.append(f"checkpoints/{wsid}_latest.json")
            known.checkpoint = key
        if len(report.files_written) == written:
            report.workstreams_skipped.append(wsid)
        cache[wsid] = known
    for wsid in set(cache) - {ws["workstream_id"] for ws in snap.workstreams}:
        del cache[wsid]


def _refresh_plan(conn: apsw.Connection, state_dir: Path, timestamp: str, wsid: str,
                  fingerprint: str, states: dict[str, str], known: _Planned | None,
                  report: ExportReport) -> _Planned:
    """A workstream's plan file (when its definitions changed since ``known``) and its DAG file
    (when the statuses changed)."""
    from kernel.planning.plan import workstream_plan  # networkx: loaded only when exporting

    if known is None or known.fingerprint != fingerprint:
        try:
            dag_doc, plan_doc = workstream_plan(conn, wsid, timestamp)
        except OrchError as exc:   # a cycle written behind the loader's back: say so
            report.warnings.append(f"workstream {wsid!r}: no DAG or plan view: {exc}")
            known = _Planned(fingerprint, None, None, states)
        else:
            known = _Planned(fingerprint, dag_doc, plan_doc, {})
            write_document(state_dir / f"execution_plan_{wsid}.json", plan_doc)
            report.files_written.append(f"execution_plan_{wsid}.json")
    # The plan holds no task state; the DAG does: refresh its statuses when they changed.
    if known.dag is not None and known.states != states:
        dag_doc = copy.copy(known.dag)
        dag_doc["generated_at"] = timestamp
        dag_doc["nodes"] = [{**node, "status": states[node["task_id"]]}
                            for node in known.dag["nodes"]]
        write_document(state_dir / f"dag_{wsid}.json", dag_doc)
        report.files_written.append(f"dag_{wsid}.json")
        known.states = states
    return known


def _plans_in_parallel(conn: apsw.Connection, state_dir: Path, snap: Snapshot,
                       states_by_ws: dict[str, dict[str, str]],
                       workers: int | None) -> dict[str, tuple[list[str], list[str]]]:
    """For a full export: every workstream's plan and DAG files written by worker processes
    (fork), each reading its own snapshot as ``_refresh_plan`` does in this process; returns
    workstream -> (files written, warnings). Empty when one process is enough: ``workers`` 1,
    fewer than two workstreams, or (``workers`` None) fewer than ``PARALLEL_MIN_TASKS`` tasks."""
    wsids = [ws["workstream_id"] for ws in snap.workstreams]
    if workers is None:
        workers = (os.cpu_count() or 1) if len(snap.tasks) >= PARALLEL_MIN_TASKS else 1
    workers = min(workers, len(wsids))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return {}
    db_path = conn.db_filename("main")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {wsid: pool.submit(_refresh_plan_in_child, db_path, state_dir, snap.timestamp,
                                     wsid, snap.fingerprints.get(wsid, "0"),
                                     states_by_ws.get(wsid, {})) for wsid in wsids}
        return {wsid: future.result() for wsid, future in futures.items()}


def _refresh_plan_in_child(db_path: str, state_dir: Path, timestamp: str, wsid: str,
                           fingerprint: str, states: dict[str, str]) -> tuple[
                               list[str], list[str]]:
    conn = schema.connect(Path(db_path), readonly=True)
    try:
        report = ExportReport(timestamp, 0, 0, 0)
        _refresh_plan(conn, state_dir, timestamp, wsid, fingerprint, states, None, report)
        return report.files_written, report.warnings
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------
# Reading views back
# ------------------------------------------------------------------------------------------


def read_view(state_dir: Path, name: str) -> dict[str, Any]:
    """An index (``by_status.json``, ...) when it is fresh, else ``current.json`` itself, so a
    reader never acts on a stale index (STATE-OBS-006). The result names what was read in
    ``_read_from``."""
    current_path = state_dir / CURRENT
    current = json.loads(current_path.read_text(encoding="utf-8"))
    if name == CURRENT:
        return {**current, "_read_from": CURRENT}
    path = state_dir / name
    if path.exists():
        index = json.loads(path.read_text(encoding="utf-8"))
        lag = clock.epoch(current["timestamp"]) - clock.epoch(index["source_timestamp"])
        if lag <= STALE_AFTER_SECONDS:
            return {**index, "_read_from": name}
    return {**current, "_read_from": CURRENT}


# ------------------------------------------------------------------------------------------
# Exporting while a run goes on
# ------------------------------------------------------------------------------------------


class Exporter:
    """Exports in a background thread with its own read connection, after commits, coalesced:
    requests that arrive during an export are served by one export after it, at most one per
    ``min_interval`` seconds, and never more often than keeps exporting within ``budget`` (a
    fraction) of the wall time, so a run of 100,000 tasks spends at most about 10% on views
    whatever their size. ``close()`` does a last export, so the files end up exact."""

    def __init__(self, db_path: Path, state_dir: Path, *, min_interval: float = 0.25,
                 budget: float = 0.1) -> None:
        self.db_path = db_path
        self.state_dir = state_dir
        self.min_interval = min_interval
        self.budget = budget
        self.cache: dict[str, Any] = {}
        self.exports = 0
        self.seconds = 0.0
        self.errors: list[str] = []
        self._wanted = threading.Event()
        self._stop = False
        self._stopped = threading.Event()   # ends a pause at once
        self._exported_version: int | None = None   # data_version before the last export
        self._thread = threading.Thread(target=self._loop, name="orch-exporter", daemon=True)
        self._conn: apsw.Connection | None = None

    def start(self) -> Exporter:
        self._conn = schema.connect(self.db_path, readonly=True)
        self._wanted.set()
        self._thread.start()
        return self

    def request(self) -> None:
        self._wanted.set()

    def _export_once(self) -> float:
        assert self._conn is not None
        self._exported_version = int(self._conn.pragma("data_version"))
        report = export(self._conn, self.state_dir, full=False, cache=self.cache)
        self.exports += 1
        self.seconds += report.seconds
        return report.seconds

    def _loop(self) -> None:
        while not self._stop:
            if not self._wanted.wait(timeout=0.5):
                continue
            if self._stop:    # woken by close(): its own last export decides, not this loop
                break
            self._wanted.clear()
            try:
                took = self._export_once()
            except Exception as exc:   # a view is a convenience: never stop the run for it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                took = self.min_interval
            pause = max(self.min_interval, took * (1 - self.budget) / self.budget)
            self._stopped.wait(pause)

    def close(self) -> None:
        """Stop the thread and export a last time, unless nothing was committed since the
        last export began (its files are then exact already)."""
        self._stop = True
        self._stopped.set()
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._conn is not None:
            try:
                if self._exported_version != int(self._conn.pragma("data_version")):
                    self._export_once()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._conn.close()
            self._conn = None


def export_after_change(project: Any) -> ExportReport | None:
    """After a command changed state: export once, unless ``[views] export = false``. A failure
    is returned as a warning in the report, never raised: the change itself is committed."""
    if not project.config.views.export:
        return None
    with project.open(readonly=True) as conn:
        try:
            return export(conn, project.state_dir)
        except (OSError, apsw.Error) as exc:
            return ExportReport(clock.now_iso(), 0, 0, 0,
                                warnings=[f"views not updated: {exc}"])
