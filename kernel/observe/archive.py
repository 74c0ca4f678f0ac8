"""Audit retention (AUDIT-002): moving old events into monthly archive files, and verifying
the archives. The archive file format and the reader of live and archived events are
``kernel.store.eventlog``.

Public API:
    ``MIN_RETENTION_DAYS`` (90); ``check_retention(days, *, allow_short_retention=False)``;
    ``parse_older_than(text) -> float`` (days, from ``90d``, ``13w``, ``2160h``);
    ``plan_rotation(conn, *, older_than_days, now=None, allow_short_retention=False) ->
    RotationPlan``; ``write_archives(conn, plan, directory) -> list[ArchiveFile]`` (step 1:
    write, fsync, read back and compare); ``commit_rotation(conn, plan, files, *, now=None) ->
    int`` (step 2: one transaction: the ``audit_rotated`` event, the ``event_archive`` rows,
    the delete; returns the event's seq); ``rotate(conn, directory, *, older_than_days=90,
    now=None, dry_run=False, allow_short_retention=False) -> dict`` (both steps);
    ``verify(conn, directory) -> dict``; ``content_sha256(rows)``; ``file_sha256(path)``;
    ``missing_files(conn, directory)``; ``log_start(conn) -> dict`` (where the live log starts
    and whether a rotation record explains it; ``orch doctor`` and ``orch replay`` use it).

Stability Guarantees:
    Nothing younger than the cut is ever moved, and the cut is never less than
    ``MIN_RETENTION_DAYS`` ago unless ``allow_short_retention`` is passed (the rotation event
    then says so, with severity warning). Rotation moves a prefix of the log (by seq): the live
    table keeps a contiguous seq range, the archives hold every seq below it exactly once, and
    the newest event (at least the ``audit_rotated`` event) always stays live, so
    ``event_seq_gapless`` still passes. A rotation interrupted at any point loses nothing and,
    rerun, duplicates nothing (archives are keyed by seq; ``INSERT OR IGNORE``; a differing row
    with the same seq stops the rotation). The checksums follow ``CHECKSUM_FIELDS``
    (``kernel.store.eventlog``, documented in docs/operations/AUDIT_RETENTION.md). A rotation
    leaves only the archive files in their directory (no writer lock file beside them).

Integration Points:
    ``orch audit rotate | verify`` (``kernel.cli.audit``); ``kernel.observe.replay`` and
    ``orch doctor`` (``event_log_start_explained``) ask ``log_start``; ``kernel.observe.replay``
    asks ``missing_files``. Tables ``event_archive`` and ``event_rotation_marker`` and the
    delete guard ``event_append_only_delete`` are in sql/0003_audit.sql.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.base.identity``, ``kernel.store.db``, ``kernel.store.eventlog``,
    ``kernel.store.events``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import OrchError, UsageError
from kernel.base.files import fsync_path, private_dir
from kernel.base.identity import operator_name
from kernel.store import db, events
from kernel.store.eventlog import (
    CHECKSUM_FIELDS,
    archive_files,
    columns,
    live_first_seq,
    month_file,
    open_archive,
    open_archive_for_write,
    select_list,
)
from kernel.store.events import EVENT_FIELDS

MIN_RETENTION_DAYS = 90
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dwh]?)\s*$")
_UNIT_DAYS = {"": 1.0, "d": 1.0, "w": 7.0, "h": 1 / 24}


def parse_older_than(text: str) -> float:
    """``90d`` / ``13w`` / ``2160h`` / ``90`` (days) → days."""
    match = _DURATION.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise UsageError(
            "usage", f"--older-than {text!r} is not a positive duration",
            hint=f"write days, weeks or hours: e.g. {MIN_RETENTION_DAYS}d, 26w or 2400h")
    return float(match.group(1)) * _UNIT_DAYS[match.group(2)]


# ------------------------------------------------------------------------------- checksums


def _line(values: Sequence[Any]) -> bytes:
    return (json.dumps(list(values), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def content_sha256(rows: Iterable[Sequence[Any]]) -> tuple[str, int]:
    """(sha256 hex, count) of event rows given as value tuples in ``CHECKSUM_FIELDS`` order."""
    digest = hashlib.sha256()
    count = 0
    for values in rows:
        digest.update(_line(values))
        count += 1
    return digest.hexdigest(), count


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------- rotation


@dataclass(frozen=True)
class MonthBatch:
    month: str
    first_seq: int
    last_seq: int
    events: int

    @property
    def file(self) -> str:
        return month_file(self.month)


@dataclass(frozen=True)
class RotationPlan:
    """The events to move: seq ``first_seq`` .. ``last_seq`` (every one older than ``cut``)."""

    older_than_days: float
    cut: str
    now: str
    retention_override: bool
    first_seq: int | None = None
    last_seq: int | None = None
    events: int = 0
    months: tuple[MonthBatch, ...] = ()


@dataclass(frozen=True)
class ArchiveFile:
    """One archive file after step 1, as recorded in ``event_archive``."""

    file: str
    month: str
    first_seq: int
    last_seq: int
    events: int
    batch_sha256: str
    through_seq: int
    file_events: int
    file_content_sha256: str
    file_sha256: str
    file_bytes: int


def check_retention(older_than_days: float, *, allow_short_retention: bool = False) -> None:
    """Raise ``UsageError`` (exit 2) for a period that is not positive, or below
    ``MIN_RETENTION_DAYS`` without ``allow_short_retention``."""
    if older_than_days <= 0:
        raise UsageError("usage", "--older-than must be a positive duration",
                         hint=f"the retention period is at least {MIN_RETENTION_DAYS}d")
    if older_than_days < MIN_RETENTION_DAYS and not allow_short_retention:
        raise UsageError(
            "retention_too_short",
            f"--older-than {older_than_days:g}d is below the minimum retention of "
            f"{MIN_RETENTION_DAYS} days (AUDIT-002): events younger than that stay in the live "
            "log; nothing was changed",
            hint=f"use --older-than {MIN_RETENTION_DAYS}d or more; "
                 "--force-short-retention overrides it and is recorded in the audit_rotated "
                 "event (see docs/operations/AUDIT_RETENTION.md)")


def plan_rotation(conn: apsw.Connection, *, older_than_days: float, now: float | None = None,
                  allow_short_retention: bool = False) -> RotationPlan:
    """Which events a rotation would move: the longest prefix of the log (by seq) whose every
    event is older than ``now - older_than_days``. Raises ``UsageError`` (exit 2) below
    ``MIN_RETENTION_DAYS`` unless ``allow_short_retention``."""
    check_retention(older_than_days, allow_short_retention=allow_short_retention)
    moment = time.time() if now is None else now
    cut = clock.iso(moment - older_than_days * 86400)
    base = RotationPlan(older_than_days=older_than_days, cut=cut, now=clock.iso(moment),
                        retention_override=older_than_days < MIN_RETENTION_DAYS)
    with db.snapshot(conn):
        first = db.scalar(conn, "SELECT MIN(seq) FROM event")
        if first is None:
            return base
        young = db.scalar(conn, "SELECT MIN(seq) FROM event WHERE timestamp >= ?", (cut,))
        last = (int(young) - 1) if young is not None else int(
            db.scalar(conn, "SELECT MAX(seq) FROM event"))
        if last < first:
            return base
        months = tuple(MonthBatch(str(m), int(a), int(b), int(n)) for m, a, b, n in conn.execute(
            "SELECT substr(timestamp, 1, 7) AS month, MIN(seq), MAX(seq), COUNT(*) FROM event "
            "WHERE seq BETWEEN ? AND ? GROUP BY month ORDER BY month", (first, last)))
    return RotationPlan(older_than_days=older_than_days, cut=cut, now=base.now,
                        retention_override=base.retention_override, first_seq=int(first),
                        last_seq=last, events=sum(b.events for b in months), months=months)


def _live_batch(conn: apsw.Connection, plan: RotationPlan, batch: MonthBatch,
                columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    yield from conn.execute(
        f"SELECT {', '.join(columns)} FROM event WHERE seq BETWEEN ? AND ? "
        "AND substr(timestamp, 1, 7) = ? ORDER BY seq",
        (plan.first_seq, plan.last_seq, batch.month))


def write_archives(conn: apsw.Connection, plan: RotationPlan,
                   directory: Path) -> list[ArchiveFile]:
    """Step 1: copy the planned events into their month files (``INSERT OR IGNORE``: a rerun
    after an interruption adds nothing twice), fsync, then read each file back and compare
    count and checksum with the live rows. Nothing in the live database changes."""
    if plan.first_seq is None or plan.last_seq is None:
        return []
    directory = Path(directory)
    private_dir(directory)
    live_columns = columns(conn)
    kernel_schema = db.schema_version(conn)
    done: list[ArchiveFile] = []
    for batch in plan.months:
        path = directory / batch.file
        with open_archive_for_write(path, batch.month, kernel_schema) as arc:
            have = set(columns(arc))
            with db.write_tx(arc):
                for column in live_columns:  # a column a later migration added: add it too
                    if column not in have:
                        arc.execute(f"ALTER TABLE event ADD COLUMN {column} ANY")
                with db.snapshot(conn):
                    arc.executemany(
                        f"INSERT OR IGNORE INTO event ({', '.join(live_columns)}) "
                        f"VALUES ({', '.join('?' for _ in live_columns)})",
                        _live_batch(conn, plan, batch, live_columns))
        fsync_path(path)
        fsync_path(directory)
        done.append(_read_back(conn, plan, batch, path))
    return done


def _read_back(conn: apsw.Connection, plan: RotationPlan, batch: MonthBatch,
               path: Path) -> ArchiveFile:
    with db.snapshot(conn):
        live_sha, live_n = content_sha256(_live_batch(conn, plan, batch, CHECKSUM_FIELDS))
    with open_archive(path) as arc:
        select = select_list(arc)
        arch_sha, arch_n = content_sha256(arc.execute(
            f"SELECT {select} FROM event WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (plan.first_seq, plan.last_seq)))
        file_sha, file_n = content_sha256(arc.execute(
            f"SELECT {select} FROM event WHERE seq <= ? ORDER BY seq", (plan.last_seq,)))
    if (arch_sha, arch_n) != (live_sha, live_n) or live_n != batch.events:
        raise OrchError(
            "archive_mismatch",
            f"{path} does not hold exactly the {batch.events} events of {batch.month} "
            f"(seq {batch.first_seq}..{batch.last_seq}) that the live log holds: read back "
            f"{arch_n} events with a different checksum; nothing was deleted",
            file=str(path),
            hint="another database's archive, or a damaged file: move it aside and run "
                 "`orch audit rotate` again")
    return ArchiveFile(file=batch.file, month=batch.month, first_seq=batch.first_seq,
                       last_seq=batch.last_seq, events=batch.events, batch_sha256=live_sha,
                       through_seq=int(plan.last_seq or 0), file_events=file_n,
                       file_content_sha256=file_sha, file_sha256=file_sha256(path),
                       file_bytes=path.stat().st_size)


def commit_rotation(conn: apsw.Connection, plan: RotationPlan, files: Sequence[ArchiveFile],
                    *, now: float | None = None) -> int:
    """Step 2, one transaction: append the ``audit_rotated`` event first (so the newest event
    stays and seq stays gapless), record the archive files, delete the archived events while
    the rotation marker allows it, remove the marker. Returns the event's seq."""

    if plan.first_seq is None or plan.last_seq is None:
        raise ValueError("nothing to commit: the plan moves no events")
    stamp = clock.iso(time.time() if now is None else now)
    stamp = max(stamp, plan.now)
    meta = {
        "operator": operator_name(), "older_than_days": plan.older_than_days, "cut": plan.cut,
        "retention_override": plan.retention_override, "events": plan.events,
        "first_seq": plan.first_seq, "last_seq": plan.last_seq,
        "files": [asdict(f) for f in files],
    }
    with db.write_tx(conn):
        found = conn.execute(
            "SELECT COUNT(*), MIN(seq), MAX(seq), SUM(timestamp >= ?) FROM event "
            "WHERE seq BETWEEN ? AND ?", (plan.cut, plan.first_seq, plan.last_seq)).fetchone()
        assert found is not None  # an aggregate always returns one row
        n, first, last, young = found
        if (n, first, last) != (plan.events, plan.first_seq, plan.last_seq) or young:
            raise OrchError(
                "rotation_conflict",
                f"the live log no longer holds exactly the {plan.events} planned events "
                f"(seq {plan.first_seq}..{plan.last_seq}; found {n}): another rotation ran "
                "at the same time; nothing was deleted",
                hint="run `orch audit rotate` again")
        if sum(f.events for f in files) != plan.events or {f.month for f in files} != {
                b.month for b in plan.months}:
            raise OrchError("rotation_incomplete",
                            "the archive files do not cover every planned event; nothing was "
                            "deleted", hint="run `orch audit rotate` again")
        rotation_seq = events.emit_event_in_tx(
            conn, "audit_rotated", trigger="audit_rotate", at=stamp, metadata=meta,
            severity="warning" if plan.retention_override else None)
        conn.execute("INSERT INTO event_rotation_marker (marker_id, rotation_seq, last_seq, "
                     "started_at) VALUES (1, ?, ?, ?)", (rotation_seq, plan.last_seq, stamp))
        conn.executemany(
            "INSERT INTO event_archive (rotation_seq, file, month, first_seq, last_seq, events, "
            "batch_sha256, through_seq, file_events, file_content_sha256, file_sha256, "
            "file_bytes, rotated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(rotation_seq, f.file, f.month, f.first_seq, f.last_seq, f.events, f.batch_sha256,
              f.through_seq, f.file_events, f.file_content_sha256, f.file_sha256, f.file_bytes,
              stamp) for f in files])
        conn.execute("DELETE FROM event WHERE seq BETWEEN ? AND ?",
                     (plan.first_seq, plan.last_seq))
        if conn.changes() != plan.events:
            raise OrchError("rotation_conflict", "the delete did not remove exactly the "
                            "archived events; the rotation was rolled back",
                            hint="run `orch audit rotate` again")
        conn.execute("DELETE FROM event_rotation_marker")
    return int(rotation_seq)


def rotate(conn: apsw.Connection, directory: Path, *, older_than_days: float = MIN_RETENTION_DAYS,
           now: float | None = None, dry_run: bool = False,
           allow_short_retention: bool = False) -> dict[str, Any]:
    """Plan, write the archives (step 1) and commit (step 2). With ``dry_run`` only plan."""
    plan = plan_rotation(conn, older_than_days=older_than_days, now=now,
                         allow_short_retention=allow_short_retention)
    result: dict[str, Any] = {
        "dry_run": dry_run, "older_than_days": plan.older_than_days, "cut": plan.cut,
        "retention_override": plan.retention_override, "events": plan.events,
        "first_seq": plan.first_seq, "last_seq": plan.last_seq,
        "archive_dir": str(directory), "rotation_seq": None,
        "files": [{"file": b.file, "month": b.month, "first_seq": b.first_seq,
                   "last_seq": b.last_seq, "events": b.events} for b in plan.months],
    }
    if dry_run or not plan.events:
        return result
    files = write_archives(conn, plan, directory)
    result["rotation_seq"] = commit_rotation(conn, plan, files, now=now)
    result["files"] = [asdict(f) for f in files]
    return result


# ---------------------------------------------------------------------------------- reading


def _has_table(conn: apsw.Connection, name: str) -> bool:
    return bool(db.scalar(conn, "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?",
                          (name,)))


def missing_files(conn: apsw.Connection, directory: Path | None) -> list[str]:
    """Archive files that ``event_archive`` records but ``directory`` lacks (their events cannot
    be read)."""
    if not _has_table(conn, "event_archive"):
        return []
    present = {p.name for p in archive_files(directory).values()}
    return [str(r[0]) for r in conn.execute("SELECT DISTINCT file FROM event_archive ORDER BY file")
            if r[0] not in present]


def log_start(conn: apsw.Connection) -> dict[str, Any]:
    """Where the live log starts and whether rotations explain it: ``live_first_seq`` (None
    when the table is empty), ``rotated_through`` (the highest seq a rotation recorded as moved
    out of the live log: ``event_archive.through_seq``, or, when that table is gone, the
    ``last_seq`` of the ``audit_rotated`` events; 0 when nothing was rotated) and
    ``explained`` (the log is empty or starts at seq 1, or rotations account for every seq
    before its first)."""
    first = live_first_seq(conn)
    if _has_table(conn, "event_archive"):
        through = db.scalar(conn, "SELECT MAX(through_seq) FROM event_archive")
    else:
        through = db.scalar(conn, "SELECT MAX(CAST(json_extract(metadata, '$.last_seq') AS "
                                  "INTEGER)) FROM event WHERE event = 'audit_rotated'")
    rotated = int(through or 0)
    return {"live_first_seq": first, "rotated_through": rotated,
            "explained": first is None or first <= rotated + 1}


# --------------------------------------------------------------------------------- verify


def verify(conn: apsw.Connection, directory: Path) -> dict[str, Any]:
    """Check every archive against ``event_archive`` and the live log.

    Per file (``files``: {file: {"status", "problems", ...}}): it exists; its events with seq
    up to the last recorded ``through_seq`` match the recorded count and content checksum;
    events above it are still in the live log and identical there (``pending``: left by an
    interrupted rotation, moved by the next one); the file's bytes match the recorded sha256.
    Overall: the archives hold every seq below the live log's first exactly once
    (``continuity``). ``ok`` is false when any check fails."""
    files: dict[str, dict[str, Any]] = {}
    with db.snapshot(conn):
        first_live = live_first_seq(conn) or 1
        recorded = db.rows(
            conn, "SELECT a.* FROM event_archive a WHERE a.archive_id = (SELECT MAX(b.archive_id) "
                  "FROM event_archive b WHERE b.file = a.file) ORDER BY a.file") \
            if _has_table(conn, "event_archive") else []
        on_disk = {p.name: p for p in archive_files(directory).values()}
        for rec in recorded:
            files[rec["file"]] = _verify_file(conn, on_disk.get(rec["file"]), rec)
        for name, path in sorted(on_disk.items()):
            if name not in files:
                files[name] = _verify_file(conn, path, None)
    archived = sum(f.get("archived_events", 0) for f in files.values())
    continuity = {"live_first_seq": first_live, "archived_events": archived,
                  "expected": first_live - 1, "ok": archived == first_live - 1}
    ok = continuity["ok"] and all(f["status"] != "fail" for f in files.values())
    return {"ok": ok, "archive_dir": str(directory), "files": files, "continuity": continuity}


def _verify_file(conn: apsw.Connection, path: Path | None,
                 rec: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "ok", "problems": [], "notes": [],
                           "recorded": rec is not None, "archived_events": 0}
    if path is None or not path.exists():
        out.update(status="fail", problems=["the file is missing"])
        return out
    through = int(rec["through_seq"]) if rec else 0
    try:
        with open_archive(path) as arc:
            select = select_list(arc)
            sha, n = content_sha256(arc.execute(
                f"SELECT {select} FROM event WHERE seq <= ? ORDER BY seq", (through,)))
            above = list(arc.execute(f"SELECT {select} FROM event WHERE seq > ? ORDER BY seq",
                                     (through,)))
    except OrchError as exc:
        out.update(status="fail", problems=[exc.message])
        return out
    out.update(archived_events=n, content_sha256=sha, pending_events=len(above),
               file_sha256=file_sha256(path))
    problems, notes = out["problems"], out["notes"]
    if rec is not None:
        out.update(recorded_events=rec["file_events"],
                   recorded_content_sha256=rec["file_content_sha256"],
                   recorded_file_sha256=rec["file_sha256"])
        if n != rec["file_events"] or sha != rec["file_content_sha256"]:
            problems.append(f"holds {n} archived events with content checksum {sha}; "
                            f"recorded: {rec['file_events']} with {rec['file_content_sha256']}")
        if not above and out["file_sha256"] != rec["file_sha256"]:
            notes.append("the file's bytes changed since the rotation recorded them (VACUUM?); "
                         "its events still match the recorded content checksum")
    live_cols = ", ".join(EVENT_FIELDS)
    for values in above:
        live = conn.execute(f"SELECT {live_cols} FROM event WHERE seq = ?",
                            (values[0],)).fetchone()
        if live is None or tuple(live) != tuple(values):
            problems.append(f"event seq {values[0]} is in the file but neither recorded as "
                            "archived nor identical in the live log")
            break
    if above and not problems:
        notes.append(f"{len(above)} events are in the file and still in the live log (a "
                     "rotation was interrupted before its delete): the next `orch audit rotate` "
                     "finishes it")
    if rec is None and not above:
        notes.append("not recorded in event_archive and holds no events")
    out["status"] = ("fail" if problems else "pending" if above
                     else "warn" if notes else "ok")
    return out
