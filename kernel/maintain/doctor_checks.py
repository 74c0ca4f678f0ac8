"""The checks of ``orch doctor`` that look past the rows: is the enforcement still in place (the
schema's triggers, views, indexes and tables are the ones this orch ships), and is the event log
whole at both ends. Also the guard every check runs under.

Public API:
    ``Check(name, status, detail, hint, rows)`` (re-exported by ``kernel.maintain.doctor``);
    ``guarded(names, run) -> list[Check]`` (a check that cannot run fails with the reason
    instead of raising); ``shipped_schema() -> dict[str, SchemaObject]`` (name -> the object a
    freshly migrated database has; built once per process); ``normalise_sql(sql)``;
    ``schema_drift(conn) -> list[Drift]``; ``schema_check(conn) -> Check``
    (``schema_matches_shipped``); ``repair_schema(conn) -> dict`` (what ``orch doctor
    --repair`` did to the schema); ``event_log_checks(conn) -> list[Check]``
    (``event_log_start_explained``, ``event_log_end_intact``); ``CHECK_DOCS`` (name -> (what it
    means, what to do), rendered into docs/operations/DOCTOR.md).

Stability Guarantees:
    Check names are stable and only added. The expected schema is never written down a second
    time: it is what ``kernel.store.schema.connect`` builds from sql/NNNN_*.sql and the state
    machines
    in an in-memory database. Objects are compared by name, type, table and SQL text with
    comments, case (outside string literals) and whitespace ignored. ``repair_schema`` only
    ever creates or replaces views, triggers and indexes, each inside a savepoint of one write
    transaction (one that fails is reported, the others stay repaired); it never creates,
    drops or alters a table, and never drops an object orch does not ship. It sets
    ``user_version`` back to this orch's only when, after the repair, the schema matches the
    shipped one exactly (a version lowered by hand).

Integration Points:
    ``kernel.maintain.doctor.diagnose`` and ``kernel.maintain.doctor.repair`` call these;
    ``kernel.archive.log_start`` (what explains a log that does not start at seq 1) is shared
    with ``orch replay``. ``tools/gen_docs.py`` renders ``CHECK_DOCS``.

Dependencies:
    apsw; ``kernel.observe.archive``, ``kernel.store.db``, ``kernel.store.schema``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import apsw

from kernel.observe import archive
from kernel.store import db, schema

Status = Literal["ok", "warn", "fail"]

#: What each check below means and what to do when it fails (docs/operations/DOCTOR.md).
CHECK_DOCS: dict[str, tuple[str, str]] = {
    "migrations_apply": (
        "the database opens and every pending migration applies. When a migration fails (for "
        "example because `user_version` was lowered by hand, so an applied migration would run "
        "twice), doctor opens the file read-only and runs every other check without migrating.",
        "if `schema_matches_shipped` passes, `orch doctor --repair` sets `user_version` back; "
        "otherwise restore a backup (`orch doctor --repair` names the newest).",
    ),
    "schema_matches_shipped": (
        "every table, index, view and trigger is the one this orch ships (the schema a freshly "
        "migrated database has), by name, type and SQL. The triggers are the enforcement: a "
        "dropped `lease_guard_pool` lets a pool be oversubscribed, a dropped "
        "`task_illegal_transition` lets any state change through. Missing and altered objects "
        "fail, as do triggers orch does not ship; other extra objects (your own index or view) "
        "only warn.",
        "`orch doctor --repair` recreates missing or altered views, triggers and indexes from "
        "the shipped definitions in one transaction and says what it did. Tables are never "
        "created, dropped or altered: for a missing or altered table restore a backup "
        "(`orch restore FILE --force`). Drop an extra trigger yourself if you did not add it.",
    ),
    "event_log_start_explained": (
        "the live event log starts at seq 1, or every event before its first seq was moved "
        "into an archive by `orch audit rotate` (an `event_archive` row or `audit_rotated` "
        "event covers it).",
        "events were deleted from the start of the log without a rotation: restore a backup "
        "(`orch doctor --repair` names the newest and what restoring it would lose); "
        "`.state/transitions.jsonl` may still hold the events. `orch replay` says its "
        "reconstruction is partial.",
    ),
    "event_log_end_intact": (
        "the newest event is the last seq SQLite handed out (`sqlite_sequence`): no event was "
        "deleted from the end of the log.",
        "restore a backup (`orch doctor --repair` names the newest); compare with "
        "`.state/transitions.jsonl`, written after every commit.",
    ),
}

# Invariants of the enforcement the kernel relies on (leases and fencing), in the form of
# kernel.maintain.doctor.INVARIANT_QUERIES (name -> (SQL returning the offending rows, what it
# means));
# doctor runs them with the others as `invariant:<name>`.
ENFORCEMENT_QUERIES: dict[str, tuple[str, str]] = {
    "pool_within_capacity": (
        "SELECT r.resource_id, r.capacity, r.reserved, SUM(l.amount) AS held, "
        "COUNT(*) AS leases, group_concat(l.task_id) AS holders FROM resource r "
        "JOIN lease l ON l.resource_id = r.resource_id AND l.released_at IS NULL "
        "WHERE r.type = 'pooled' GROUP BY r.resource_id "
        "HAVING SUM(l.amount) > r.capacity - r.reserved + 1e-9",
        "the active leases of a pooled resource hold at most capacity - reserved units",
    ),
    "exclusive_single_holder": (
        "SELECT l.resource_id, r.type, COUNT(DISTINCT l.task_id) AS holders, "
        "group_concat(DISTINCT l.task_id) AS tasks FROM lease l "
        "JOIN resource r ON r.resource_id = l.resource_id WHERE l.released_at IS NULL "
        "GROUP BY l.resource_id HAVING COUNT(DISTINCT l.task_id) > 1 "
        "AND (r.type = 'exclusive' OR MAX(l.mode = 'exclusive') = 1)",
        "an exclusive resource, or one leased in exclusive mode, has a single holder",
    ),
    "max_holders_respected": (
        "SELECT r.resource_id, r.max_holders, COUNT(DISTINCT l.task_id) AS holders, "
        "group_concat(DISTINCT l.task_id) AS tasks FROM resource r "
        "JOIN lease l ON l.resource_id = r.resource_id AND l.released_at IS NULL "
        "WHERE r.max_holders <> -1 GROUP BY r.resource_id "
        "HAVING COUNT(DISTINCT l.task_id) > r.max_holders",
        "no resource has more holders (tasks with an active lease) than its max_holders",
    ),
    "no_conflicting_holders": (
        "SELECT DISTINCT c.resource_id, a.task_id AS holder, c.conflicts_with, "
        "b.task_id AS other_holder FROM resource_conflict c "
        "JOIN lease a ON a.resource_id = c.resource_id AND a.released_at IS NULL "
        "JOIN lease b ON b.resource_id = c.conflicts_with AND b.released_at IS NULL "
        "AND b.task_id <> a.task_id",
        "two different tasks never hold conflicting resources at once",
    ),
    "generation_fences_attempts": (
        "SELECT 'attempt' AS kind, a.attempt_id AS id, a.task_id, a.generation, "
        "t.generation AS task_generation FROM attempt a JOIN task t ON t.task_id = a.task_id "
        "WHERE a.generation > t.generation "
        "UNION ALL SELECT 'lease', l.lease_id, l.task_id, l.generation, t.generation "
        "FROM lease l JOIN task t ON t.task_id = l.task_id WHERE l.generation > t.generation "
        "UNION ALL SELECT 'attempts_share_generation', MIN(a.attempt_id), a.task_id, "
        "a.generation, MAX(t.generation) FROM attempt a JOIN task t ON t.task_id = a.task_id "
        "GROUP BY a.task_id, a.generation HAVING COUNT(*) > 1",
        "a task's fencing generation is at least that of each of its attempts and leases, "
        "and no two of its attempts share one",
    ),
}

_LEASE_HINT = ("the lease guards (the lease_guard_* triggers, which check INSERT INTO lease "
               "only) were bypassed or written around: see schema_matches_shipped and `orch "
               "doctor --repair`. If `orch load` shrank the resource (capacity, max_holders, "
               "made it exclusive, added a conflict) while these leases were held, this is "
               "expected and clears when their tasks finish")
ENFORCEMENT_HINTS: dict[str, str] = {
    "pool_within_capacity": _LEASE_HINT,
    "exclusive_single_holder": _LEASE_HINT,
    "max_holders_respected": _LEASE_HINT,
    "no_conflicting_holders": _LEASE_HINT,
    "generation_fences_attempts": (
        "State-Corruption: the fencing token went backwards (task.generation lowered, or an "
        "attempt or lease written by hand), so a stale worker's late report could pass for the "
        "current one; stop `orch run` and restore a backup (`orch doctor --repair` names one)"),
}

_COULD_NOT_RUN_HINT = ("the check could not run: the schema is damaged or incomplete (see "
                       "schema_matches_shipped; `orch doctor --repair`, or restore a backup)")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str | None = None
    rows: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = list(self.rows)
        return data


def guarded(names: Sequence[str], run: Callable[[], list[Check]]) -> list[Check]:
    """``run()``; when it raises (a dropped table, a view that no longer compiles), one failed
    check per name in ``names`` saying why. A lock (``apsw.BusyError``) is not swallowed: it
    means "try again", exit 3, not a broken database."""
    try:
        return run()
    except apsw.BusyError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is reported as the check's result
        why = f"could not run: {type(exc).__name__}: {exc}"
        return [Check(name, "fail", why, _COULD_NOT_RUN_HINT) for name in names]


# ----------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class SchemaObject:
    type: str
    name: str
    tbl_name: str
    sql: str
    order: int

    @property
    def normalised(self) -> str:
        return normalise_sql(self.sql)


@dataclass(frozen=True)
class Drift:
    name: str
    problem: Literal["missing", "altered", "extra", "type_changed"]
    type: str             # the shipped type (the found one for extra objects)
    found_type: str | None = None

    def as_row(self) -> dict[str, Any]:
        row = {"name": self.name, "type": self.type, "problem": self.problem}
        if self.found_type and self.found_type != self.type:
            row["found_type"] = self.found_type
        return row


_TOKEN = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/|\s+|[(),;=]|[^'\s\-/(),;=]+|.", re.S)
_PUNCTUATION = frozenset("(),;=")


def normalise_sql(sql: str) -> str:
    """The SQL text with comments dropped, whitespace collapsed (and dropped next to
    punctuation), and everything outside string literals in lower case."""
    tokens: list[str] = []
    for token in _TOKEN.findall(sql):
        if token.startswith(("--", "/*")) or token.isspace():
            if tokens and tokens[-1] != " ":
                tokens.append(" ")
        else:
            tokens.append(token if token.startswith("'") else token.lower())
    kept = [t for i, t in enumerate(tokens)
            if t != " " or (0 < i < len(tokens) - 1 and tokens[i - 1] not in _PUNCTUATION
                            and tokens[i + 1] not in _PUNCTUATION)]
    while kept and kept[-1] == ";":
        kept.pop()
    return "".join(kept)


_SCHEMA_SQL = ("SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL "
               "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")


def _objects(conn: apsw.Connection) -> dict[str, SchemaObject]:
    return {str(name): SchemaObject(str(kind), str(name), str(table), str(sql), order)
            for order, (kind, name, table, sql) in enumerate(conn.execute(_SCHEMA_SQL))}


@functools.lru_cache(maxsize=1)
def shipped_schema() -> dict[str, SchemaObject]:
    """The schema this orch ships: every migration and the state machines applied to an empty
    in-memory database by ``kernel.store.schema.connect`` (the one migration path), read once."""
    conn = schema.connect(":memory:", create=True)
    try:
        return _objects(conn)
    finally:
        conn.close()


def schema_drift(conn: apsw.Connection) -> list[Drift]:
    """Each object that differs from the shipped schema, in the shipped order (extras last)."""
    want, have = shipped_schema(), _objects(conn)
    drift: list[Drift] = []
    for name, obj in sorted(want.items(), key=lambda item: item[1].order):
        found = have.get(name)
        if found is None:
            drift.append(Drift(name, "missing", obj.type))
        elif found.type != obj.type:
            drift.append(Drift(name, "type_changed", obj.type, found.type))
        elif found.tbl_name.lower() != obj.tbl_name.lower() or found.normalised != obj.normalised:
            drift.append(Drift(name, "altered", obj.type))
    for name, found in sorted(have.items(), key=lambda item: item[1].order):
        if name not in want:
            drift.append(Drift(name, "extra", found.type, found.type))
    return drift


def _serious(d: Drift) -> bool:
    """Extra tables, indexes and views are someone's additions; everything else is lost or
    changed enforcement (or an extra trigger, which changes what the kernel's writes do)."""
    return d.problem != "extra" or d.type == "trigger"


def _describe(drift: Sequence[Drift], limit: int = 30) -> str:
    parts = []
    for problem in ("missing", "altered", "type_changed", "extra"):
        names = [f"{d.type} {d.name}" + (f" (now a {d.found_type})"
                                         if problem == "type_changed" else "")
                 for d in drift if d.problem == problem]
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more"
                                                 if len(names) > limit else "")
            parts.append(f"{len(names)} {problem.replace('_', ' ')}: {shown}")
    return "; ".join(parts)


def schema_check(conn: apsw.Connection) -> Check:
    drift = schema_drift(conn)
    if not drift:
        return Check("schema_matches_shipped", "ok",
                     f"all {len(shipped_schema())} tables, indexes, views and triggers are the "
                     "shipped ones")
    serious = [d for d in drift if _serious(d)]
    tables = [d for d in serious if "table" in (d.type, d.found_type)]
    if not serious:
        hint = ("objects orch does not ship; harmless to orch (drop them if nobody "
                "needs them)")
    elif tables:
        hint = ("`orch doctor --repair` recreates views, triggers and indexes but never "
                "touches a table: restore a backup for " + ", ".join(d.name for d in tables)
                + " (`orch doctor --repair` names the newest; `orch restore FILE --force`)")
    else:
        hint = ("`orch doctor --repair` recreates them from the shipped definitions "
                "(docs/operations/DOCTOR.md)")
    return Check("schema_matches_shipped", "fail" if serious else "warn",
                 "differs from the shipped schema: " + _describe(drift), hint,
                 rows=tuple(d.as_row() for d in drift))


_REPAIRABLE = ("view", "trigger", "index")


def repair_schema(conn: apsw.Connection) -> dict[str, Any]:
    """Recreate every missing or altered view, trigger and index from the shipped definitions,
    in one write transaction (one savepoint per object). Returns ``recreated`` (names),
    ``failed`` ({name, type, error}), ``not_repaired`` (tables and objects orch does not ship,
    with why) and ``user_version`` ({from, to} when it was set back, else None)."""
    want = shipped_schema()
    report: dict[str, Any] = {"recreated": [], "failed": [], "not_repaired": [],
                              "user_version": None}
    with db.write_tx(conn):
        for d in schema_drift(conn):
            if d.problem == "extra":
                if _serious(d):
                    report["not_repaired"].append({
                        "name": d.name, "type": d.type,
                        "why": f"orch does not ship this {d.type}; drop it yourself if you did "
                               f"not add it (DROP {d.type.upper()} {d.name})"})
                continue
            if d.type not in _REPAIRABLE or (d.found_type or d.type) not in _REPAIRABLE:
                report["not_repaired"].append({
                    "name": d.name, "type": d.type,
                    "why": f"{d.problem.replace('_', ' ')}; tables are never changed by "
                           "--repair: restore a backup"})
                continue
            conn.execute("SAVEPOINT repair_object")
            try:
                if d.problem != "missing":
                    conn.execute(f'DROP {(d.found_type or d.type).upper()} IF EXISTS "{d.name}"')
                conn.execute(want[d.name].sql)
            except apsw.BusyError:
                raise
            except apsw.Error as exc:
                conn.execute("ROLLBACK TO repair_object")
                report["failed"].append({"name": d.name, "type": d.type, "error": str(exc)})
            else:
                report["recreated"].append(f"{d.type} {d.name}")
            conn.execute("RELEASE repair_object")
        version, latest = db.schema_version(conn), db.latest_schema_version()
        if version < latest and not any(_serious(d) for d in schema_drift(conn)):
            conn.pragma("user_version", latest)
            report["user_version"] = {"from": version, "to": latest}
    return report


def set_back_lowered_version(path: Path) -> dict[str, Any] | None:
    """A database refused as ``schema_damaged`` whose objects are exactly the shipped schema
    had its ``user_version`` lowered by hand: set it back (``{from, to}``) and change nothing
    else. Any other difference (a lost table, a foreign application_id) returns None and the
    file is left as it was, for a restore."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        conn.set_busy_timeout(db.DEFAULT_BUSY_TIMEOUT_MS)
        with db.write_tx(conn):
            if int(conn.pragma("application_id")) != db.APPLICATION_ID:
                return None
            version, latest = db.schema_version(conn), db.latest_schema_version()
            if version >= latest or any(_serious(d) for d in schema_drift(conn)):
                return None
            conn.pragma("user_version", latest)
            return {"from": version, "to": latest}
    finally:
        conn.close()


# -------------------------------------------------------------------------------- event log


def event_log_checks(conn: apsw.Connection) -> list[Check]:
    return [*guarded(["event_log_start_explained"], lambda: [_log_start(conn)]),
            *guarded(["event_log_end_intact"], lambda: [_log_end(conn)])]


def _log_start(conn: apsw.Connection) -> Check:
    start = archive.log_start(conn)
    first = start["live_first_seq"]
    name = "event_log_start_explained"
    if first is None or first == 1:
        return Check(name, "ok", "the live log starts at seq 1" if first else "the log is empty")
    if start["explained"]:
        return Check(name, "ok",
                     f"the live log starts at seq {first}; seq 1 to {first - 1} were moved "
                     "into archive files by `orch audit rotate` (`orch audit verify` checks "
                     "them)")
    rotated = start["rotated_through"]
    lost = (f"seq {rotated + 1} to {first - 1}" if rotated else f"seq 1 to {first - 1}")
    why = (f"; rotations account for seq 1 to {rotated} only" if rotated
           else "; no rotation record (event_archive, audit_rotated) explains them")
    return Check(name, "fail",
                 f"the start of the event log is missing: the live log starts at seq {first}, "
                 f"{lost} are gone{why}",
                 CHECK_DOCS[name][1],
                 rows=({"live_first_seq": first, "rotated_through": rotated,
                        "missing_first_seq": (rotated or 0) + 1,
                        "missing_last_seq": first - 1},))


def _log_end(conn: apsw.Connection) -> Check:
    name = "event_log_end_intact"
    assigned = db.scalar(conn, "SELECT seq FROM sqlite_sequence WHERE name = 'event'")
    assigned = int(assigned or 0)
    last = db.scalar(conn, "SELECT MAX(seq) FROM event")
    last = int(last) if last is not None else 0
    row = {"last_seq": last or None, "last_assigned_seq": assigned}
    if assigned == last:
        return Check(name, "ok", f"the log ends at seq {last}, the last seq handed out"
                     if last else "no event was ever written")
    if assigned > last:
        return Check(name, "fail",
                     f"the end of the event log is missing: seq up to {assigned} were handed "
                     f"out but the log ends at {last or 'nothing'} ({assigned - last} "
                     "event(s) deleted)", CHECK_DOCS[name][1], rows=(row,))
    return Check(name, "warn",
                 f"sqlite_sequence says {assigned} but the log holds seq {last}: it was edited "
                 "by hand (harmless: SQLite continues after the largest seq)", rows=(row,))
