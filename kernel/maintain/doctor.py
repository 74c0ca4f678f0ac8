"""``orch doctor``: is the database sound, current, and true to its invariants?

Public API:
    ``diagnose(project, *, record=False) -> list[Check]``; ``doctor_report(project) -> dict``
    (what ``orch doctor --json`` prints; records nothing: ``orch bundle`` calls it);
    ``repair(project, *, record=False) -> (list[Check], RepairReport)`` (``orch doctor
    --repair``); ``repair_schema_of(project) -> dict`` (the schema part of the
    repair); ``restore_plan(project) -> dict`` (the newest usable backup and what restoring it
    would lose); ``rebuild_views(project) -> dict``; ``Check(name, status, detail, hint,
    rows)`` with status ``ok`` | ``warn`` | ``fail``; ``record_corruption(conn, checks)`` (the
    ``state_corruption`` event of a run with failed checks); ``INVARIANT_QUERIES`` (from
    ``kernel.maintain.invariants``: name -> (SQL
    returning offending rows, what it means), the lease and fencing ones from
    ``kernel.maintain.doctor_checks.ENFORCEMENT_QUERIES``); ``INVARIANT_HINTS`` (name -> what to do,
    when it is not the generic ``STATE_CORRUPTION_HINT``); ``CHECK_DOCS``; ``REPAIR_DOC``
    (the ``--repair`` section of docs/operations/DOCTOR.md).

Stability Guarantees:
    Check names are stable (scripts may grep them); checks are only added. Every check runs
    guarded: one that cannot run (a dropped table, a migration that does not apply) fails with
    the reason and the others still run; doctor never ends in a traceback on a sound file.
    When the database cannot be migrated, it is checked read-only as it is
    (``migrations_apply`` fails). A routine operator action (cancel, retry, skip, rotation)
    never makes a check fail: ``log_agrees_with_tables`` compares each entity with its last
    *transition* event. Plain ``orch doctor`` writes to the database only to apply pending
    migrations, as every command does, and (``record=True``, what the command passes), when a
    check fails on a database it could open for writing, to record one ``state_corruption``
    event (State-Corruption) per distinct set of failed checks (the same set as the newest such
    event records nothing). A damaged database (``integrity_check`` fails, or the file is not a
    database) is only ever opened read-only and never migrated;
    ``--repair`` then changes nothing and prints the ``orch restore`` command instead. A file
    ``kernel.db`` refuses before opening it (empty, truncated, not SQLite, not orch's, a schema
    that does not match its version: see ``kernel.db``) makes plain ``orch doctor`` exit 3 with
    that error, never a traceback; ``--repair`` reports it as damaged (``db.DAMAGED_CODES``).
    On a sound database ``--repair`` recreates missing or altered views, triggers and indexes
    from the shipped schema (never a table, never a row), sets a hand-lowered ``user_version``
    back when the schema matches, and rewrites the ``.state`` views.

Integration Points:
    ``orch doctor [--repair] [--json]`` exits 1 when any check fails (and with ``--repair``
    when a repair fails or the database is damaged). The invariant queries are plain SQL, so
    any SQLite client can run them (they are also listed in docs/operations/DOCTOR.md).
    ``--repair`` calls ``kernel.observe.exports.export(conn, state_dir, full=True)`` and reads
    backups
    through ``kernel.maintain.backup``; ``orch bundle`` includes ``doctor_report``. The schema and
    event-log checks live in ``kernel.maintain.doctor_checks``.

Dependencies:
    apsw; ``kernel.base.errors``, ``kernel.maintain.backup``, ``kernel.maintain.doctor_checks``,
    ``kernel.maintain.invariants``, ``kernel.maintain.restore``, ``kernel.store.db``,
    ``kernel.store.events``, ``kernel.store.machines``, ``kernel.store.project``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import apsw

from kernel.base.errors import DatabaseUnavailable, OrchError
from kernel.maintain.backup import inspect_database_file, list_backups
from kernel.maintain.doctor_checks import (
    CHECK_DOCS,
    Check,
    Status,
    event_log_checks,
    guarded,
    repair_schema,
    schema_check,
    set_back_lowered_version,
)
from kernel.maintain.invariants import (
    INVARIANT_HINTS,
    INVARIANT_QUERIES,
    STATE_CORRUPTION_HINT,
    invariant_checks,
)
from kernel.maintain.restore import restore_command
from kernel.store import db, events
from kernel.store.machines import load_machines, stored_matches_yaml
from kernel.store.project import Project

__all__ = ["CHECK_DOCS", "INVARIANT_HINTS", "INVARIANT_QUERIES", "REPAIR_DOC",
           "STATE_CORRUPTION_HINT", "Check", "RepairReport", "diagnose", "doctor_report",
           "rebuild_views", "repair", "repair_schema_of", "restore_plan"]
WAL_WARN_BYTES = 2 * db.JOURNAL_SIZE_LIMIT

# The --repair section of docs/operations/DOCTOR.md (rendered by tools/docgen.py).
REPAIR_DOC = """\
## orch doctor --repair

`--repair` runs the same checks, then:

- **A sound database** (`integrity_check` passes): when `schema_matches_shipped` or
  `migrations_apply` fails, every missing or altered view, trigger and index is recreated from
  the shipped definitions (the schema a freshly migrated database has), in one write
  transaction, and doctor says what it recreated. Tables are never created, dropped or
  altered (restore a backup for those), and objects orch does not ship are left alone (an
  extra trigger is named so you can drop it). When the schema then matches the shipped one
  exactly but `user_version` is lower (lowered by hand), it is set back. The checks then run
  again. Then the `.state` views are rewritten from the database
  (`kernel.observe.exports.export(conn, state_dir, full=True)`): `current.json`,
  `transitions.jsonl`,
  the indices, the DAG and plan files. Use it after a view was deleted, truncated or edited by
  hand. Rows are never changed: a violated invariant stays for you to judge.
- **A damaged database** (`integrity_check` fails, or the file is not an SQLite database at
  all): nothing is changed, the database is not even migrated. Doctor looks for the newest
  backup in `.state/backups/` that passes `integrity_check`, compares its newest event (seq and
  timestamp) with `.state/transitions.jsonl` (an independent copy of the event log, written
  after every commit), and reports the events a restore would lose: how many, their seq range
  and their time range. It prints the exact command, for example
  `orch --root /p restore /p/.state/backups/kernel-20260101T120000Z.db --force`.
  The restore keeps the damaged file as `.state/kernel.db.before-restore-<timestamp>`.

`--repair` exits 0 when every check passes (after the repair) and the views were rewritten,
and 1 when a check fails, an object could not be recreated, the views could not be written,
or the database is damaged. With `--json` the report has a `repair` object: `damaged`,
`schema` (null when the schema needed nothing, else `recreated` (names), `failed` (`name`,
`type`, `error`), `not_repaired` (`name`, `type`, `why`), `user_version` (`from`, `to`) and
`error` when the repair could not run), `views` (the export report), `views_error`, and `restore`
(`backup`, `invalid_backups`, `log_max_seq`, `lost_events`, `lost_first_seq`,
`lost_last_seq`, `lost_from`, `lost_to`, `damaged_database_max_seq`, `command`, `summary`).
Plain `orch doctor` on a file that is not a database exits 3 (`database_unreadable`);
`orch doctor --repair` reports it as damaged instead. See docs/operations/BACKUP.md.
"""


def _library() -> Check:
    lib = ".".join(map(str, db.sqlite_version()))
    minimum = ".".join(map(str, db.MIN_SQLITE_VERSION))
    return Check("sqlite_library", "ok", f"SQLite {lib} (apsw), at least {minimum} required")


def _versions(conn: apsw.Connection) -> list[Check]:
    from kernel import __version__

    version, latest = db.schema_version(conn), db.latest_schema_version()
    app_id = int(conn.pragma("application_id"))
    return [
        _library(),
        Check(
            "schema_version",
            "ok" if version == latest else "fail",
            f"schema version {version}; orch {__version__} knows up to {latest}",
            None if version == latest else "run any orch command to migrate (when migrations_apply "
            "fails, see its hint), or upgrade orch",
        ),
        Check(
            "application_id",
            "ok" if app_id == db.APPLICATION_ID else "fail",
            f"application_id {app_id:#x}",
        ),
    ]


DAMAGED_HINT = ("the file is damaged: `orch doctor --repair` names the newest backup and what "
                "restoring it would lose (docs/operations/BACKUP.md)")


def _integrity(result: list[str]) -> Check:
    """``result``: the integrity_check result ``_probe`` found."""
    return Check(
        "integrity_check",
        "ok" if result == ["ok"] else "fail",
        "ok" if result == ["ok"] else "; ".join(result[:10]),
        None if result == ["ok"] else DAMAGED_HINT,
    )


def _foreign_keys(conn: apsw.Connection) -> Check:
    fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    return Check(
        "foreign_key_check",
        "ok" if not fk else "fail",
        f"{len(fk)} rows reference missing rows" if fk else "ok",
        rows=tuple({"table": r[0], "rowid": r[1], "parent": r[2]} for r in fk[:20]),
    )


def _machines(conn: apsw.Connection) -> Check:
    problems = stored_matches_yaml(conn, load_machines())
    return Check(
        "transition_table_matches_yaml",
        "ok" if not problems else "fail",
        "ok" if not problems else "; ".join(problems[:10]),
        None if not problems else "someone edited machine_transition by hand; "
        "DELETE FROM machine to make orch reload the YAML on next open",
    )


def _wal(project: Project) -> Check:
    size = db.wal_size(project.db_path)
    status: Status = "ok" if size <= WAL_WARN_BYTES else "warn"
    return Check(
        "wal_size",
        status,
        f"{size / 1048576:.1f} MiB write-ahead log",
        None if status == "ok" else "a long-lived reader may be holding the WAL open; "
        "stop idle readers so the next checkpoint can reset it",
    )


def _probe(path: Path) -> tuple[list[str], list[Check]]:
    """Open the file read-only, without migrating it, and run integrity_check. Returns the
    result (``["ok"]`` when sound) and the version checks it could read. Raises
    ``DatabaseUnavailable`` when ``db.check_file`` refuses the file (empty, not a file, not
    SQLite, truncated, unreadable) or SQLite cannot open it; nothing is written either way."""
    db.check_file(path)
    with db.open_file(path) as conn:
        try:
            try:
                versions = _versions(conn)
            except apsw.NotADBError as exc:
                raise DatabaseUnavailable("database_unreadable",
                                          f"{path} is not an SQLite database ({exc})",
                                          file=str(path), hint=DAMAGED_HINT) from exc
            except apsw.CorruptError:
                versions = []
            try:
                result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
            except (apsw.CorruptError, apsw.NotADBError) as exc:
                result = [f"{exc}"]
            return result, versions
        except apsw.BusyError as exc:
            raise db.locked_error(path) from exc


def _open(project: Project) -> tuple[apsw.Connection | None, Check]:
    """The database opened as every command opens it (migrated). When that fails, short of a
    lock or a refusal (``DatabaseUnavailable``: too new, not orch's), for example a migration
    that cannot apply because ``user_version`` was lowered by hand, or a table the state
    machines need is gone: opened read-only without migrating, so the other checks still run."""
    try:
        conn = project.connect()
    except apsw.BusyError:
        raise
    except apsw.Error as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        return conn, Check("migrations_apply", "ok", "the database opens and is migrated")
    failed = Check("migrations_apply", "fail",
                   f"opening and migrating the database failed ({problem}); the other checks "
                   "ran on it read-only, as it is", CHECK_DOCS["migrations_apply"][1])
    try:
        return project.connect(readonly=True), failed
    except apsw.BusyError:
        raise
    except (apsw.Error, OrchError) as exc:
        return None, dataclasses.replace(
            failed, detail=f"opening and migrating the database failed ({problem}), and it "
                           f"cannot be opened read-only either ({exc})")


def diagnose(project: Project, *, record: bool = False) -> list[Check]:
    """Every check, each guarded: one that cannot run (a dropped table, a view that no longer
    compiles) fails with the reason instead of stopping the others. ``record`` (``orch
    doctor``): a failed check is also recorded as a ``state_corruption`` event
    (``record_corruption``)."""
    project.require_db()
    checked, versions = _probe(project.db_path)
    if checked != ["ok"]:
        # Damaged: never migrate it or run more queries against it.
        return [*(versions or [_library()]), *_integrity_failed(checked)]
    conn, opened = _open(project)
    if conn is None:
        return [*(versions or [_library()]), opened]
    try:
        with db.read_tx(conn):
            checks = [
                *guarded(["schema_version"], lambda: _versions(conn)),
                opened,
                _integrity(checked),
                *guarded(["foreign_key_check"], lambda: [_foreign_keys(conn)]),
                *guarded(["transition_table_matches_yaml"], lambda: [_machines(conn)]),
                *guarded(["schema_matches_shipped"], lambda: [schema_check(conn)]),
                *invariant_checks(conn),
                *event_log_checks(conn),
                *guarded(["wal_size"], lambda: [_wal(project)]),
            ]
        if record and opened.status == "ok":  # opened as every command opens it: writable
            record_corruption(conn, checks)
        return checks
    finally:
        conn.close()


def record_corruption(conn: apsw.Connection, checks: list[Check]) -> int | None:
    """State-Corruption: one ``state_corruption`` event (critical) naming the failed checks,
    unless the newest such event names the same set (a second ``orch doctor`` on the same
    damage records nothing; a new finding is recorded). The event's seq, or None: nothing
    failed, the same set was recorded already, or the database cannot be written now (a
    lock, a read-only file, a dropped event table); doctor's verdict stands either way."""
    failed = sorted(c.name for c in checks if c.status == "fail")
    if not failed:
        return None
    fingerprint = hashlib.sha256("\n".join(failed).encode()).hexdigest()[:16]
    try:
        with db.write_tx(conn):
            newest = db.scalar(conn, "SELECT json_extract(metadata, '$.fingerprint') FROM event "
                                     "WHERE event = 'state_corruption' ORDER BY seq DESC LIMIT 1")
            if newest == fingerprint:
                return None
            return events.emit_event_in_tx(
                conn, "state_corruption", trigger="doctor",
                metadata={"failure_mode": "State-Corruption", "checks": failed,
                          "fingerprint": fingerprint,
                          "findings": {c.name: c.detail for c in checks if c.status == "fail"}})
    except apsw.Error:
        return None


def _integrity_failed(result: list[str]) -> list[Check]:
    return [Check("integrity_check", "fail", "; ".join(result[:10]), DAMAGED_HINT)]


def doctor_report(project: Project) -> dict[str, Any]:
    """What ``orch doctor --json`` prints: ``{"ok", "checks"}``."""
    checks = diagnose(project)
    return {"ok": not any(c.status == "fail" for c in checks),
            "checks": [c.as_dict() for c in checks]}


# ----------------------------------------------------------------------------- --repair


@dataclass(frozen=True)
class RepairReport:
    damaged: bool
    views: dict[str, Any] | None = None
    views_error: str | None = None
    restore: dict[str, Any] | None = None
    schema: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        schema_failed = bool(self.schema and (self.schema.get("failed")
                                              or self.schema.get("error")))
        return not self.damaged and self.views_error is None and not schema_failed

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _jsonable(result: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        data: Any = dataclasses.asdict(result)
    elif hasattr(result, "model_dump"):
        data = result.model_dump(mode="json")
    elif hasattr(result, "as_dict"):
        data = result.as_dict()
    else:
        data = result
    if not isinstance(data, dict):
        data = {"result": data}
    return json.loads(json.dumps(data, default=str))


def rebuild_views(project: Project) -> dict[str, Any]:
    """Rewrite every ``.state`` view from the database (``kernel.observe.exports.export``, full)."""
    views = importlib.import_module("kernel.observe.exports")
    with project.open() as conn:
        return _jsonable(views.export(conn, project.state_dir, full=True))


def _log_events(path: Path) -> tuple[list[tuple[int, str | None]], int]:
    """(seq, timestamp) of each event in a ``transitions.jsonl`` and the unreadable lines."""
    events: list[tuple[int, str | None]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                events.append((int(event["seq"]), event.get("timestamp")))
            except (ValueError, KeyError, TypeError):
                bad += 1  # e.g. a line cut short by a crash
    return events, bad


def _damaged_max_seq(path: Path) -> int | None:
    """What the damaged file itself still says about its newest event (read-only; may fail)."""
    try:
        with db.open_file(path) as conn:
            found = db.scalar(conn, "SELECT MAX(seq) FROM event")
            return int(found) if found is not None else None
    except (apsw.Error, DatabaseUnavailable):
        return None


def restore_plan(project: Project) -> dict[str, Any]:
    """The newest usable backup in ``.state/backups/``, the events a restore of it would lose
    according to ``.state/transitions.jsonl`` (an independent copy of the event log), and the
    exact ``orch restore`` command."""
    invalid: list[dict[str, str]] = []
    chosen = None
    for path in list_backups(project):
        try:
            chosen = inspect_database_file(path)
            break
        except OrchError as exc:
            invalid.append({"path": str(path), "problem": exc.message})
    log_path = project.state_dir / "transitions.jsonl"
    plan: dict[str, Any] = {
        "backup": chosen.as_dict() if chosen else None,
        "invalid_backups": invalid,
        "log": str(log_path) if log_path.exists() else None,
        "damaged_database_max_seq": _damaged_max_seq(project.db_path),
        "log_max_seq": None, "lost_events": None, "lost_first_seq": None,
        "lost_last_seq": None, "lost_from": None, "lost_to": None,
        "command": restore_command(project, chosen.path) if chosen else None,
    }
    if log_path.exists():
        events, plan["log_unreadable_lines"] = _log_events(log_path)
        plan["log_max_seq"] = max((seq for seq, _ in events), default=None)
        if chosen:
            lost = sorted(e for e in events if e[0] > (chosen.max_seq or 0))
            plan["lost_events"] = len(lost)
            if lost:
                plan["lost_first_seq"], plan["lost_from"] = lost[0]
                plan["lost_last_seq"], plan["lost_to"] = lost[-1]
    plan["summary"] = _plan_summary(project, plan)
    return plan


def _plan_summary(project: Project, plan: dict[str, Any]) -> str:
    backup = plan["backup"]
    if backup is None:
        found = f" ({len(plan['invalid_backups'])} unusable)" if plan["invalid_backups"] else ""
        return (f"no usable backup in {project.state_dir / 'backups'}{found}. Restore one from "
                "elsewhere with `orch restore FILE --force`, or move the damaged file away, "
                "run `orch init` and `orch load` again (the history stays in "
                ".state/transitions.jsonl).")
    held = (f"holding events up to seq {backup['max_seq']} ({backup['last_event_at']})"
            if backup["max_seq"] is not None else "holding no events")
    text = (f"the newest usable backup is {backup['path']} (written "
            f"{backup['modified_at']}), {held}. ")
    if plan["log"] is None:
        text += ("There is no .state/transitions.jsonl to compare with: every event after "
                 f"{backup['last_event_at']} would be lost. ")
    elif plan["lost_events"]:
        text += (f"Restoring it would lose {plan['lost_events']} event(s) that "
                 f".state/transitions.jsonl holds: seq {plan['lost_first_seq']} to "
                 f"{plan['lost_last_seq']}, from {plan['lost_from']} to {plan['lost_to']}. ")
    else:
        text += "According to .state/transitions.jsonl no event would be lost. "
    return text + f"To restore it: {plan['command']}"


def _schema_needs_repair(checks: list[Check]) -> bool:
    return any(c.status == "fail" and c.name in ("schema_matches_shipped", "migrations_apply")
               for c in checks)


def repair_schema_of(project: Project) -> dict[str, Any]:
    """``kernel.maintain.doctor_checks.repair_schema`` on the project's database, opened for writing
    without migrating it (a migration may be what fails)."""
    cfg = project.config.database
    try:
        conn = db.open_connection(project.db_path, durability=cfg.durability,
                          busy_timeout_ms=cfg.busy_timeout_ms)
    except DatabaseUnavailable:
        raise
    except apsw.Error as exc:
        return {"recreated": [], "failed": [], "not_repaired": [], "user_version": None,
                "error": f"cannot open the database for writing: {exc}"}
    try:
        return repair_schema(conn)
    except apsw.BusyError:
        raise
    except apsw.Error as exc:
        return {"recreated": [], "failed": [], "not_repaired": [], "user_version": None,
                "error": f"the repair was rolled back: {exc}"}
    finally:
        conn.close()


def repair(project: Project, *, record: bool = False) -> tuple[list[Check], RepairReport]:
    """``orch doctor --repair``: diagnose; on a sound database recreate lost or altered views,
    triggers and indexes (then diagnose again) and rewrite the ``.state`` views; on a damaged
    one change nothing and say what restoring the newest backup would lose."""
    project.require_db()
    try:
        checks = diagnose(project, record=record)
    except DatabaseUnavailable as exc:
        if exc.code not in db.DAMAGED_CODES:
            raise
        lowered = (set_back_lowered_version(project.db_path)
                   if exc.code == "schema_damaged" else None)
        if lowered is not None:  # only the version was wrong: set back, diagnose again
            checks, report = repair(project, record=record)
            base = report.schema or {"recreated": [], "failed": [], "not_repaired": []}
            lowered_schema = {**base, "user_version": lowered}
            return checks, dataclasses.replace(report, schema=lowered_schema)
        checks = [_library(), *_integrity_failed([exc.message])]
    damaged = any(c.name == "integrity_check" and c.status == "fail" for c in checks)
    if damaged:
        return checks, RepairReport(damaged=True, restore=restore_plan(project))
    schema: dict[str, Any] | None = None
    if _schema_needs_repair(checks):
        schema = repair_schema_of(project)
        checks = diagnose(project)
    try:
        return checks, RepairReport(damaged=False, views=rebuild_views(project), schema=schema)
    except ImportError as exc:
        return checks, RepairReport(damaged=False, schema=schema,
                                    views_error=f"this orch cannot export views: {exc}")
    except (OrchError, apsw.Error, OSError) as exc:
        return checks, RepairReport(damaged=False, views_error=str(exc), schema=schema)
