"""Backups, bug-report bundles and restores of ``.state/kernel.db``, safe while the kernel runs.

Public API:
    ``backup(project_or_db_path, dest=None, *, force=False) -> BackupReport``: one
    self-contained SQLite file (online backup API, journal_mode DELETE, checked, fsynced,
    renamed into place); ``dest=None`` means ``default_backup_path`` (``.state/backups/
    kernel-<UTC timestamp>.db``).
    ``bundle(project, dest, *, redact_patterns=DEFAULT_PATTERNS, extra_patterns=(),
    force=False) -> BundleReport``: one ``.tar.gz`` for a bug report (redacted database copy,
    views, logs, doctor output, versions, a README and a manifest).
    ``restore(project, src, *, force=False) -> RestoreReport``: check ``src``, keep the current
    database aside as ``.state/kernel.db.before-restore-<timestamp>``, put ``src`` in place,
    migrate.
    ``inspect_database_file(path) -> DatabaseInfo`` (is it a sound orch database, and what does
    it hold); ``list_backups(project)`` (newest first); ``database_users(project)`` (why the
    database is in use right now); ``redact_text`` / ``redact_string`` / ``redact_json`` /
    ``redact_database`` / ``compile_patterns``; ``REDACTED``, ``DEFAULT_PATTERNS``.

Stability Guarantees:
    A backup is never a raw copy of the WAL-mode file: it is an SQLite snapshot taken with the
    backup API, so it is consistent (gapless events up to its ``max_seq``) and holds every
    transaction committed before it started. An existing destination is never overwritten
    without ``force``; a failed backup leaves no partial file behind. ``restore`` never deletes
    the database it replaces, and never runs while an ``orch run`` (``scheduler_lock``), a
    live ``orch worker`` or another process holds the database. Refusals raise ``OrchError``
    (exit 1) naming the file and what to do; an invalid ``--redact`` regex is a ``UsageError``
    (exit 2). Error codes are only added.

Integration Points:
    ``orch backup|bundle|restore`` (``kernel.cli.backup``); ``orch doctor --repair``
    (``kernel.doctor``) finds the newest backup with ``list_backups`` and checks it with
    ``inspect_database_file``. Attempt logs are read from ``Project.logs_dir``, the views from
    ``Project.state_dir``.

Dependencies:
    apsw; ``kernel.db``, ``kernel.project``, ``kernel.errors``, ``kernel.clock``,
    ``kernel.executors.local`` (``pid_alive``); ``kernel.doctor`` (lazily, for the bundle).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import platform
import re
import shlex
import socket
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw

from kernel import clock, db
from kernel.errors import OrchError, UsageError
from kernel.project import Project

SQLITE_MAGIC = b"SQLite format 3\x00"
BACKUPS_DIR = "backups"
PAGES_PER_STEP = 256          # pages copied per backup step (1 MiB at the 4 KiB page size)
STEP_SLEEP_SECONDS = 0.005    # pause between steps: the source's writers get the lock
MAX_RESTARTS = 3              # a source written to this often is then copied in one step
BACKUP_TIMEOUT_SECONDS = 120.0
MAX_BUNDLE_FILE_BYTES = 8 * 1024 * 1024   # a bigger log or view keeps only its tail
REDACTED = "[REDACTED]"

# --------------------------------------------------------------------------------- redaction

# Names of environment-like settings whose values are secrets: *TOKEN*, *SECRET*, *PASSWORD*,
# *API_KEY*, *ACCESS_KEY*, *PRIVATE_KEY*, *CREDENTIAL*, any upper-case *_KEY, AWS_*.
_NAME = (r"(?:[A-Za-z0-9_.-]{0,64}?(?i:token(?!s|iz)|secret|passw(?:or)?d|api[_-]?key"
         r"|access[_-]?key|private[_-]?key|credentials?)[A-Za-z0-9_.-]{0,64}"
         r"|[A-Z0-9_]{0,64}_KEY|AWS_[A-Z0-9_]{1,64})")
SECRET_KEY_NAME = re.compile(_NAME)

DEFAULT_PATTERNS: dict[str, re.Pattern[str]] = {
    "private_key_block": re.compile(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)"),
    # The tail of a key block whose beginning was cut off (a truncated log).
    "private_key_tail": re.compile(
        r"\A[A-Za-z0-9+/=\s]*-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"),
    "env_assignment": re.compile(
        rf"(?<![A-Za-z0-9_.-]){_NAME}[\"']?[ \t]*[=:][ \t]*(?P<q>[\"'])?"
        r"(?!\[REDACTED\])(?P<secret>(?(q)[^\"'\n]+|[^\s\"'&;,)}\]]+))"),
    "secret_flag": re.compile(
        r"(?i:(?<![A-Za-z0-9-])--?[a-z0-9-]{0,32}(?:token|secret|password|api-?key|access-key)"
        r"(?:=|[ \t]+))(?!\[REDACTED\])(?P<secret>[^\s\"']+)"),
    "authorization_header": re.compile(
        r"(?i:\bauthorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:basic|bearer|token|digest)[ \t]+)"
        r"(?!\[REDACTED\])(?P<secret>[A-Za-z0-9._~+/=-]{6,})"),
    "bearer_token": re.compile(
        r"(?i:\bbearer[ \t]+)(?!\[REDACTED\])(?P<secret>[A-Za-z0-9._~+/=-]{16,})"),
    "anthropic_key": re.compile(r"(?<![A-Za-z0-9])sk-ant-[A-Za-z0-9_-]{8,}"),
    "openai_key": re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9][A-Za-z0-9_-]{14,}"),
    "stripe_key": re.compile(r"(?<![A-Za-z0-9])[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    "github_token": re.compile(
        r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    "gitlab_token": re.compile(r"(?<![A-Za-z0-9])glpat-[A-Za-z0-9_-]{20,}"),
    "huggingface_token": re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}"),
    "aws_access_key_id": re.compile(
        r"(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "google_api_key": re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}"),
    "slack_token": re.compile(r"(?<![A-Za-z0-9])xox[baprs]-[A-Za-z0-9-]{10,}"),
    "jwt": re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]+){0,2}"),
    "url_password": re.compile(r"(?<=://)[^/\s:@]{1,128}:(?!\[REDACTED\])(?P<secret>[^/\s@]{1,256})@"),
}


def compile_patterns(regexes: Sequence[str]) -> dict[str, re.Pattern[str]]:
    """Extra patterns (``--redact REGEX``): the whole match is redacted, or only the group
    named ``secret`` when the regex has one."""
    compiled: dict[str, re.Pattern[str]] = {}
    for i, regex in enumerate(regexes, 1):
        try:
            compiled[f"extra_{i}"] = re.compile(regex)
        except re.error as exc:
            raise UsageError("bad_redact_pattern", f"--redact {regex!r} is not a valid regular "
                             f"expression: {exc}",
                             hint="use Python `re` syntax; quote it for the shell") from exc
    return compiled


def _substitute(match: re.Match[str]) -> str:
    if "secret" in match.re.groupindex and match.group("secret") is not None:
        start, end = match.span("secret")
        whole = match.group(0)
        return whole[: start - match.start()] + REDACTED + whole[end - match.start():]
    return REDACTED


def redact_text(text: str, patterns: Mapping[str, re.Pattern[str]]) -> tuple[str, int]:
    """``text`` with every match replaced by ``[REDACTED]``, and the number of replacements."""
    total = 0
    for pattern in patterns.values():
        text, n = pattern.subn(_substitute, text)
        total += n
    return text, total


def redact_json(value: Any, patterns: Mapping[str, re.Pattern[str]]) -> tuple[Any, int]:
    """A decoded JSON value with its strings redacted; string values under a secret-looking key
    (``OPENAI_API_KEY``, ``password``, ...) are replaced whole."""
    if isinstance(value, str):
        return redact_string(value, patterns)
    if isinstance(value, list):
        items = [redact_json(v, patterns) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        total = 0
        for key, item in value.items():
            new_key, n = redact_text(key, patterns) if isinstance(key, str) else (key, 0)
            total += n
            if (isinstance(item, str) and item and item != REDACTED
                    and SECRET_KEY_NAME.fullmatch(str(key))):
                out[new_key] = REDACTED
                total += 1
            else:
                out[new_key], n = redact_json(item, patterns)
                total += n
        return out, total
    return value, 0


def redact_string(value: str, patterns: Mapping[str, re.Pattern[str]]) -> tuple[str, int]:
    """Like ``redact_text``, but a string holding a JSON object or array stays valid JSON."""
    if value.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(value)
        except ValueError:
            pass
        else:
            new, n = redact_json(parsed, patterns)
            return (json.dumps(new, ensure_ascii=False) if n else value), n
    return redact_text(value, patterns)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_text(declared: str) -> bool:
    declared = declared.upper()
    return declared in ("", "TEXT", "ANY") or "CHAR" in declared or "CLOB" in declared


def _redact_table(conn: apsw.Connection, table: str,
                  patterns: Mapping[str, re.Pattern[str]]) -> dict[str, int]:
    info = db.rows(conn, f"PRAGMA table_xinfo({_ident(table)})")
    # Key columns are left alone: they identify rows (and foreign keys point at them).
    columns = [str(c["name"]) for c in info
               if not c["pk"] and not c["hidden"] and _is_text(str(c["type"] or ""))]
    if not columns:
        return {}
    try:
        conn.execute(f"SELECT rowid FROM {_ident(table)} LIMIT 0").fetchall()
        keys = ["rowid"]
    except apsw.SQLError:  # WITHOUT ROWID: its primary key
        keys = [str(c["name"]) for c in sorted(info, key=lambda c: int(c["pk"])) if c["pk"]]
    select = ", ".join(_ident(k) if k != "rowid" else "rowid" for k in keys)
    select += ", " + ", ".join(_ident(c) for c in columns)
    counts: dict[str, int] = {}
    updates: list[tuple[dict[str, Any], list[Any]]] = []
    for found in conn.execute(f"SELECT {select} FROM {_ident(table)}"):
        key_values = list(found[: len(keys)])
        changed: dict[str, Any] = {}
        for column, value in zip(columns, found[len(keys):], strict=True):
            if isinstance(value, str):
                new, n = redact_string(value, patterns)
                if n:
                    changed[column] = new
                    counts[f"{table}.{column}"] = counts.get(f"{table}.{column}", 0) + n
        if changed:
            updates.append((changed, key_values))
    where = " AND ".join(f"{k if k == 'rowid' else _ident(k)} = ?" for k in keys)
    for changed, key_values in updates:
        sets = ", ".join(f"{_ident(c)} = ?" for c in changed)
        conn.execute(f"UPDATE {_ident(table)} SET {sets} WHERE {where}",
                     [*changed.values(), *key_values])
    return counts


def redact_database(src: Path, dest: Path,
                    patterns: Mapping[str, re.Pattern[str]]) -> dict[str, int]:
    """Redact every text column of every table of the COPY ``src`` (not key columns), then
    ``VACUUM INTO dest`` so no redacted text survives in free pages. The triggers (among them
    the event log's append-only guards) are dropped for the redaction and re-created after it,
    in the same transaction, so ``dest`` has the original schema. Returns counts per column."""
    conn = apsw.Connection(str(src))
    try:
        conn.pragma("foreign_keys", False)
        conn.pragma("ignore_check_constraints", True)
        conn.pragma("secure_delete", True)
        triggers = [(str(name), str(sql)) for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND sql IS NOT NULL "
            "ORDER BY rowid")]
        tables = [str(r[0]) for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")]
        counts: dict[str, int] = {}
        with db.write_tx(conn):
            for name, _sql in triggers:
                conn.execute(f"DROP TRIGGER {_ident(name)}")
            for table in tables:
                counts.update(_redact_table(conn, table, patterns))
            for _name, sql in triggers:
                conn.execute(sql)
        conn.execute("VACUUM INTO ?", (str(dest),))
    finally:
        conn.close()
    _finish_single_file(dest)
    return counts


# --------------------------------------------------------------------------------- backup


@dataclass(frozen=True)
class BackupReport:
    source: str
    dest: str
    pages: int
    bytes: int
    events: int
    max_seq: int | None
    last_event_at: str | None
    schema_version: int
    seconds: float
    steps: int
    restarts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DatabaseInfo:
    """What ``inspect_database_file`` found in a sound orch database file."""

    path: str
    bytes: int
    modified_at: str
    schema_version: int
    events: int
    first_seq: int | None
    max_seq: int | None
    last_event_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stamp(now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def default_backup_path(state_dir: Path, now: float | None = None) -> Path:
    """``<state_dir>/backups/kernel-<UTC timestamp>.db`` (``-2``, ``-3``... when taken)."""
    return _unique(state_dir / BACKUPS_DIR / f"kernel-{_stamp(now)}.db")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _remove_with_sidecars(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _sidecars(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal")) if p.exists()]


def _finish_single_file(path: Path) -> tuple[int, dict[str, Any]]:
    """Make ``path`` a rollback-journal file, check it, and describe it. Raises when a check
    fails. Returns (page count, event summary)."""
    conn = apsw.Connection(str(path))
    try:
        if str(conn.pragma("journal_mode")).lower() != "delete":
            conn.pragma("journal_mode", "delete")
        for check in ("integrity_check", "quick_check"):
            result = [str(r[0]) for r in conn.execute(f"PRAGMA {check}").fetchall()]
            if result != ["ok"]:
                raise OrchError("backup_check_failed",
                                f"the copy failed PRAGMA {check}: {'; '.join(result[:5])}",
                                file=str(path),
                                hint="the source database is probably damaged: run "
                                     "`orch doctor`; no backup was written")
        pages = int(conn.pragma("page_count"))
        summary = {**_event_summary(conn), "schema_version": db.schema_version(conn)}
    finally:
        conn.close()
    if _sidecars(path):
        raise OrchError("backup_not_single_file",
                        f"the copy still has {', '.join(p.name for p in _sidecars(path))}",
                        file=str(path), hint="report this as a bug")
    return pages, summary


def _event_summary(conn: apsw.Connection) -> dict[str, Any]:
    try:
        found = db.row(conn, "SELECT COUNT(*) AS n, MIN(seq) AS first, MAX(seq) AS last "
                             "FROM event") or {}
        count, first, last = found.get("n") or 0, found.get("first"), found.get("last")
        last_at = db.scalar(conn, "SELECT timestamp FROM event WHERE seq = ?", (last,))
    except apsw.SQLError:  # no event table (schema version 0)
        return {"events": 0, "first_seq": None, "max_seq": None, "last_event_at": None}
    return {"events": int(count), "first_seq": first, "max_seq": last, "last_event_at": last_at}


def _copy_pages(src: apsw.Connection, dest_path: Path, pages_per_step: int,
                step_sleep: float, timeout: float) -> tuple[int, int]:
    """Copy ``src`` into ``dest_path`` with the backup API, a few pages at a time. A write by
    another connection restarts the copy; after ``MAX_RESTARTS`` restarts the rest is copied in
    one step, which in WAL mode holds only a read snapshot, so writers still go on."""
    deadline = time.monotonic() + timeout
    dest = apsw.Connection(str(dest_path))
    steps = restarts = 0
    try:
        with dest.backup("main", src, "main") as job:
            previous: int | None = None
            while not job.done:
                pages = pages_per_step if restarts < MAX_RESTARTS else -1
                try:
                    job.step(pages)
                except (apsw.BusyError, apsw.LockedError) as exc:
                    if time.monotonic() > deadline:
                        raise db.locked_error(dest_path) from exc
                    time.sleep(step_sleep * 10)
                    continue
                steps += 1
                if previous is not None and not job.done and job.remaining >= previous:
                    restarts += 1
                previous = job.remaining
                if not job.done:
                    time.sleep(step_sleep)
    finally:
        dest.close()
    return steps, restarts


def _resolve_source(source: Project | str | os.PathLike[str]) -> tuple[Path, Path]:
    """(database path, state directory) of a project, a project root or a database file."""
    if isinstance(source, Project):
        source.require_db()
        return source.db_path, source.state_dir
    path = Path(source).resolve()
    if path.is_dir():
        project = Project(path)
        project.require_db()
        return project.db_path, project.state_dir
    if not path.exists():
        raise OrchError("database_missing", f"no database at {path}", file=str(path),
                        hint="pass a project root or an existing kernel.db", exit_code=3)
    return path, path.parent


def _check_dest(dest: Path, source: Path, force: bool) -> None:
    if dest.exists() and source.exists() and dest.samefile(source):
        raise UsageError("backup_onto_source", "DEST is the database itself",
                         file=str(dest), hint="choose another DEST")
    live = _sidecars(dest)
    if live:
        raise OrchError("destination_in_use",
                        f"DEST looks like a live database (it has "
                        f"{', '.join(p.name for p in live)} next to it)",
                        file=str(dest), hint="choose another DEST; --force will not replace it")
    if dest.exists() and not force:
        raise OrchError("destination_exists", "DEST already exists", file=str(dest),
                        hint="pass --force to overwrite it, or choose another DEST")


def backup(
    project_or_db_path: Project | str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    pages_per_step: int = PAGES_PER_STEP,
    step_sleep: float = STEP_SLEEP_SECONDS,
    timeout: float = BACKUP_TIMEOUT_SECONDS,
) -> BackupReport:
    """Write a consistent, checked, single-file copy of the database to ``dest`` (default:
    ``.state/backups/kernel-<timestamp>.db``; a directory gets that name inside it). Safe while
    ``orch run`` writes: only a read snapshot of the source is held."""
    started = time.monotonic()
    source, state_dir = _resolve_source(project_or_db_path)
    if dest is None:
        target = default_backup_path(state_dir)
    else:
        target = Path(dest).expanduser().resolve()
        if target.is_dir():
            target = _unique(target / f"kernel-{_stamp()}.db")
    _check_dest(target, source, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    _remove_with_sidecars(tmp)
    src = db.connect(source, readonly=True)
    try:
        try:
            steps, restarts = _copy_pages(src, tmp, pages_per_step, step_sleep, timeout)
            pages, summary = _finish_single_file(tmp)
            _fsync(tmp)
        except BaseException:
            _remove_with_sidecars(tmp)
            raise
    finally:
        src.close()
    os.replace(tmp, target)
    _fsync(target.parent)
    return BackupReport(
        source=str(source), dest=str(target), pages=pages, bytes=target.stat().st_size,
        events=summary["events"], max_seq=summary["max_seq"],
        last_event_at=summary["last_event_at"], schema_version=summary["schema_version"],
        seconds=round(time.monotonic() - started, 3), steps=steps, restarts=restarts)


# --------------------------------------------------------------------------------- checks


def inspect_database_file(path: str | os.PathLike[str], *, role: str = "backup") -> DatabaseInfo:
    """Check that ``path`` is a sound orch database this kernel can use: an SQLite file, orch's
    application_id, a schema not newer than this orch, and ``integrity_check`` ok. Raises
    ``OrchError`` (exit 1) with a code ``<role>_missing|not_sqlite|foreign|too_new|damaged``."""
    path = Path(path)
    if not path.is_file():
        raise OrchError(f"{role}_missing", f"the {role} file does not exist or is not a file",
                        file=str(path), hint="check the path (backups are in .state/backups/)")
    with open(path, "rb") as fh:
        header = fh.read(len(SQLITE_MAGIC))
    if header != SQLITE_MAGIC:
        raise OrchError(f"{role}_not_sqlite", f"the {role} file is not an SQLite database",
                        file=str(path), hint="pick a file written by `orch backup`")
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        raise OrchError(f"{role}_damaged", f"the {role} file cannot be opened: {exc}",
                        file=str(path), hint="pick another backup") from exc
    try:
        try:
            app_id = int(conn.pragma("application_id"))
            version = db.schema_version(conn)
            if app_id != db.APPLICATION_ID:
                raise OrchError(f"{role}_foreign",
                                f"the {role} file is not an orch database "
                                f"(application_id {app_id:#x})",
                                file=str(path), hint="pick a file written by `orch backup`")
            latest = db.latest_schema_version()
            if version > latest:
                from kernel import __version__

                raise OrchError(f"{role}_too_new",
                                f"the {role} file has schema version {version}, newer "
                                f"than this orch {__version__} understands (up to {latest})",
                                file=str(path), hint="upgrade orch (pip install -U orch-kernel)")
            result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
            summary = _event_summary(conn)
        except apsw.Error as exc:  # NotADBError, CorruptError, ...
            raise OrchError(f"{role}_damaged", f"the {role} file is damaged: {exc}", file=str(path),
                            hint="pick another backup") from exc
    finally:
        conn.close()
    if result != ["ok"]:
        raise OrchError(f"{role}_damaged",
                        f"the {role} file fails integrity_check: {'; '.join(result[:5])}",
                        file=str(path), hint="pick another backup")
    stat = path.stat()
    return DatabaseInfo(path=str(path), bytes=stat.st_size, modified_at=clock.iso(stat.st_mtime),
                        schema_version=version, events=summary["events"],
                        first_seq=summary["first_seq"], max_seq=summary["max_seq"],
                        last_event_at=summary["last_event_at"])


def _has_sqlite_header(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def list_backups(project: Project) -> list[Path]:
    """The files in ``.state/backups/``, newest first (by modification time, then name)."""
    directory = project.state_dir / BACKUPS_DIR
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if p.is_file() and not p.name.endswith((".tmp", "-wal", "-shm", "-journal"))
             and (p.suffix == ".db" or _has_sqlite_header(p))]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def _open_processes(paths: Sequence[Path]) -> list[str]:
    """Other processes on this host that have one of ``paths`` open (Linux /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    wanted = {str(p) for p in paths}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        if any(_readlink(fd) in wanted for fd in fds):
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                name = "?"
            found.append(f"process {entry.name} ({name}) has it open")
    return found


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def database_users(project: Project, now: float | None = None) -> list[str]:
    """Why the database is in use, one sentence each: a live ``scheduler_lock`` holder, a live
    ``orch worker``, another process holding the file open. Empty when nobody uses it."""
    from kernel.executors.local import pid_alive

    now = time.time() if now is None else now
    host = socket.gethostname()
    users: list[str] = []
    path = project.db_path
    if not path.exists():
        return users
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error:
        conn = None
    if conn is not None:
        try:
            conn.set_busy_timeout(2000)
            lock = db.row(conn, "SELECT * FROM scheduler_lock WHERE lock_id = 1")
            if lock:
                live = (pid_alive(lock["pid"]) if lock["hostname"] == host
                        else lock["expires_at"] > clock.iso(now))
                if live:
                    users.append(f"`orch run` (pid {lock['pid']} on {lock['hostname']}, since "
                                 f"{lock['acquired_at']}) holds the scheduler lock")
            for w in db.rows(conn, "SELECT worker_id, pid, hostname, last_heartbeat_at, "
                             "heartbeat_interval_seconds FROM worker WHERE state IN "
                             "('initializing', 'idle', 'busy') AND pid IS NOT NULL"):
                recent = clock.iso(now - max(60.0, 6 * w["heartbeat_interval_seconds"]))
                if (w["hostname"] == host and w["pid"] != os.getpid() and pid_alive(w["pid"])
                        and (w["last_heartbeat_at"] or "") >= recent):
                    users.append(f"worker {w['worker_id']} (pid {w['pid']}) is running")
        except apsw.Error:  # a damaged or pre-scheduler database: nothing more to learn here
            pass
        finally:
            conn.close()
    return users + _open_processes([path, Path(f"{path}-wal")])


# --------------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class RestoreReport:
    source: str
    target: str
    kept_aside: str | None
    source_schema_version: int
    schema_version: int
    events: int
    max_seq: int | None
    last_event_at: str | None
    seconds: float
    undo: str | None
    log_kept_aside: str | None = None
    views_warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_command(project: Project, src: str | os.PathLike[str]) -> str:
    """The command line that restores ``src`` over the project's database."""
    return (f"orch --root {shlex.quote(str(project.root))} restore "
            f"{shlex.quote(str(src))} --force")


def _move_aside(path: Path, now: float) -> Path:
    """Rename the database, and its -wal/-shm/-journal, to ``<name>.before-restore-<stamp>``.
    A sound database is checkpointed first so the kept file usually stands alone."""
    try:
        conn = apsw.Connection(str(path))
        try:
            conn.set_busy_timeout(2000)
            if conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()
    except apsw.Error:
        pass  # damaged: keep every file exactly as it is
    aside = _unique(path.with_name(f"{path.name}.before-restore-{_stamp(now)}"))
    os.replace(path, aside)
    for suffix in ("-wal", "-shm", "-journal"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{aside}{suffix}"))
    return aside


def restore(project: Project, src: str | os.PathLike[str], *, force: bool = False,
            timeout: float = BACKUP_TIMEOUT_SECONDS) -> RestoreReport:
    """Replace the project's database with the backup ``src``; the current database is kept
    as ``.state/kernel.db.before-restore-<timestamp>`` (restore that file to undo)."""
    started, now = time.monotonic(), time.time()
    source = Path(src).expanduser().resolve()
    target = project.db_path
    if target.exists() and source.exists() and source.samefile(target):
        raise UsageError("restore_onto_itself", "SRC is the project's database itself",
                         file=str(source), hint="pass a backup file")
    info = inspect_database_file(source, role="backup")
    users = database_users(project, now)
    if users:
        raise OrchError("database_in_use", f"the database is in use: {'; '.join(users)}",
                        file=str(target),
                        hint="stop `orch run` (Ctrl-C) and every `orch worker`, close other "
                             "readers, then retry; nothing was changed")
    if target.exists() and not force:
        raise OrchError("restore_needs_force", "the current database exists and would be replaced",
                        file=str(target),
                        hint="pass --force; the current database is kept as "
                             f"{target.name}.before-restore-<timestamp> so you can undo")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".restore.tmp")
    _remove_with_sidecars(tmp)
    src_conn = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        try:
            _copy_pages(src_conn, tmp, -1, STEP_SLEEP_SECONDS, timeout)
            _finish_single_file(tmp)
            _fsync(tmp)
        except BaseException:
            _remove_with_sidecars(tmp)
            raise
    finally:
        src_conn.close()
    aside = _move_aside(target, now) if target.exists() else None
    # The events file mirrors the replaced database: it is kept beside it (it names the events
    # the restore dropped) and written again from the restored one.
    log = project.state_dir / "transitions.jsonl"
    log_aside = None
    if log.exists():
        log_aside = _unique(log.with_name(f"{log.name}.before-restore-{_stamp(now)}"))
        os.replace(log, log_aside)
    os.replace(tmp, target)
    _fsync(target.parent)
    conn = project.connect()  # migrates the restored file to this orch's schema
    try:
        version = db.schema_version(conn)
        views_warning = _export_views(conn, project)
    finally:
        conn.close()
    return RestoreReport(
        source=str(source), target=str(target), kept_aside=str(aside) if aside else None,
        source_schema_version=info.schema_version, schema_version=version, events=info.events,
        max_seq=info.max_seq, last_event_at=info.last_event_at,
        seconds=round(time.monotonic() - started, 3),
        undo=restore_command(project, aside) if aside else None,
        log_kept_aside=str(log_aside) if log_aside else None, views_warning=views_warning)


def _export_views(conn: apsw.Connection, project: Project) -> str | None:
    """Rewrite the .state views from the restored database; a failure is only a warning."""
    try:
        importlib.import_module("kernel.views").export(conn, project.state_dir, full=True)
    except (ImportError, OSError, apsw.Error, OrchError) as exc:
        return f"the .state views were not rewritten ({exc}); run `orch export`"
    return None


# --------------------------------------------------------------------------------- bundle


@dataclass
class BundleReport:
    dest: str
    members: list[dict[str, Any]] = field(default_factory=list)
    redactions: int = 0
    database: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_BUNDLE_README = """\
orch bug-report bundle
======================

Made by `orch bundle` ({created_at}, orch {version}) from the project at
{root}

Members
  kernel.db        a copy of .state/kernel.db made with SQLite's online backup API while
                   the kernel may have been running, then redacted (see below). Open it with
                   any SQLite client: sqlite3 kernel.db
  state/           the .state/*.json and *.jsonl views, redacted
  logs/            the attempt and worker logs of .state/logs/, redacted (a file over
                   {max_mib} MiB keeps only its tail; manifest.json says so)
  orch.toml        the project's configuration, redacted
  doctor.json      what `orch doctor --json` reported
  versions.json    python, platform, SQLite, apsw and orch versions
  manifest.json    every member with its size, sha256 and number of redactions

Redaction
  Values of environment-like settings (KEY=value, KEY: value, "KEY": "value" where KEY
  looks like *TOKEN*, *SECRET*, *PASSWORD*, *API_KEY*, *ACCESS_KEY*, *PRIVATE_KEY*,
  *CREDENTIAL*, *_KEY or AWS_*), secret command-line flags (--token X, --api-key=X),
  Authorization/Bearer tokens, OpenAI/Anthropic (sk-...), GitHub (ghp_, gho_,
  github_pat_...), GitLab, Hugging Face, Stripe, Slack (xox?-), AWS access key ids
  (AKIA...), Google API keys, JWT-like tokens (eyJ...), passwords in URLs and private
  key blocks were replaced by [REDACTED]{extra}. Review the bundle before you share it:
  redaction works by pattern and cannot know every secret.

About the database copy
  The copy's triggers, among them the event log's append-only guards
  (event_append_only_update/_delete), were dropped while its text columns were redacted
  and re-created afterwards, so its schema is the original one; then it was VACUUMed
  into a fresh file so no redacted text is left in free pages. Key columns (task ids,
  worker ids, ...) are not redacted. Because rows were rewritten, this copy is for
  reading and debugging: do not restore it over a real project.
"""


def _redact_file_bytes(data: bytes, suffix: str,
                       patterns: Mapping[str, re.Pattern[str]]) -> tuple[bytes, int]:
    text = data.decode("utf-8", errors="surrogateescape")
    total = 0
    if suffix == ".json":
        new, total = redact_string(text, patterns)
    elif suffix == ".jsonl":
        lines = []
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            new_body, n = redact_string(body, patterns)
            if n and body.lstrip()[:1] == "{" and new_body != body:
                try:  # keep one compact, sorted document per line
                    new_body = json.dumps(json.loads(new_body), ensure_ascii=False,
                                          sort_keys=True)
                except ValueError:
                    pass
            total += n
            lines.append(new_body + line[len(body):])
        new = "".join(lines)
    else:
        new, total = redact_text(text, patterns)
    if not total:
        return data, 0
    return new.encode("utf-8", errors="surrogateescape"), total


def _read_tail(path: Path, limit: int) -> tuple[bytes, int | None]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= limit:
            return fh.read(), None
        fh.seek(size - limit)
        data = fh.read()
    cut = data.find(b"\n")
    return (data[cut + 1:] if cut >= 0 else data), size


def _versions() -> dict[str, Any]:
    from kernel import __version__

    return {"orch": __version__, "python": sys.version, "platform": platform.platform(),
            "sqlite": apsw.sqlite_lib_version(), "apsw": apsw.apsw_version(),
            "schema_version_supported": db.latest_schema_version()}


def _doctor_output(project: Project) -> dict[str, Any]:
    from kernel.doctor import doctor_report

    try:
        return doctor_report(project)
    except OrchError as exc:
        return {"error": exc.as_dict()}
    except apsw.Error as exc:
        return {"error": {"code": "database_unreadable", "message": str(exc)}}


def bundle(
    project: Project,
    dest: str | os.PathLike[str],
    *,
    redact_patterns: Mapping[str, re.Pattern[str]] = DEFAULT_PATTERNS,
    extra_patterns: Sequence[str] = (),
    force: bool = False,
    max_file_bytes: int = MAX_BUNDLE_FILE_BYTES,
) -> BundleReport:
    """Write one ``.tar.gz`` for a bug report (see ``_BUNDLE_README`` for what it holds)."""
    started = time.monotonic()
    patterns = {**redact_patterns, **compile_patterns(extra_patterns)}
    target = Path(dest).expanduser().resolve()
    if target.is_dir():
        raise UsageError("destination_is_directory", "DEST is a directory",
                         file=str(target), hint="name the file, e.g. orch-bundle.tar.gz")
    if target.exists() and not force:
        raise OrchError("destination_exists", "DEST already exists", file=str(target),
                        hint="pass --force to overwrite it, or choose another DEST")
    target.parent.mkdir(parents=True, exist_ok=True)
    report = BundleReport(dest=str(target))
    now = time.time()
    top = f"orch-bundle-{_stamp(now)}"
    members: list[tuple[str, bytes, dict[str, Any]]] = []

    def add(name: str, data: bytes, redactions: int = 0, **extra: Any) -> None:
        report.redactions += redactions
        members.append((name, data, {"name": f"{top}/{name}", "bytes": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest(),
                                     "redactions": redactions, **extra}))

    def add_file(name: str, path: Path) -> None:
        try:
            data, original = _read_tail(path, max_file_bytes)
        except OSError as exc:
            report.errors.append(f"{path}: {exc}")
            return
        data, n = _redact_file_bytes(data, path.suffix, patterns)
        extra = {"truncated_from_bytes": original} if original is not None else {}
        add(name, data, n, **extra)

    with tempfile.TemporaryDirectory(prefix=".orch-bundle-", dir=target.parent) as work:
        raw, clean = Path(work) / "raw.db", Path(work) / "kernel.db"
        try:
            copy = backup(project, raw)
            counts = redact_database(raw, clean, patterns)
            raw.unlink()
            report.database = {
                "member": f"{top}/kernel.db", "bytes": clean.stat().st_size,
                "events": copy.events, "max_seq": copy.max_seq,
                "last_event_at": copy.last_event_at, "schema_version": copy.schema_version,
                "redactions": counts}
            add("kernel.db", clean.read_bytes(), sum(counts.values()),
                redactions_by_column=counts)
        except (OrchError, apsw.Error) as exc:
            report.errors.append(f"database not included: {exc}")
        for path in sorted([*project.state_dir.glob("*.json"),
                            *project.state_dir.glob("*.jsonl")]):
            if path.is_file():
                add_file(f"state/{path.name}", path)
        if project.logs_dir.is_dir():
            for path in sorted(p for p in project.logs_dir.rglob("*") if p.is_file()):
                add_file(f"logs/{path.relative_to(project.logs_dir)}", path)
        if project.config_path.is_file():
            add_file("orch.toml", project.config_path)
    doctor, n = redact_json(_doctor_output(project), patterns)
    add("doctor.json", (json.dumps(doctor, indent=2, sort_keys=True, default=str) + "\n")
        .encode(), n)
    versions = _versions()
    add("versions.json", (json.dumps(versions, indent=2, sort_keys=True) + "\n").encode())
    from kernel import __version__

    extra_note = (f", and matches of the extra patterns {list(extra_patterns)}"
                  if extra_patterns else "")
    readme = _BUNDLE_README.format(created_at=clock.iso(now), version=__version__,
                                   root=project.root, max_mib=max_file_bytes // 1048576,
                                   extra=extra_note)
    add("README.txt", readme.encode())
    report.members = [meta for _n, _d, meta in members]
    report.seconds = round(time.monotonic() - started, 3)
    manifest = {"created_at": clock.iso(now), "project": str(project.root),
                "versions": versions, "patterns": sorted(patterns),
                "extra_patterns": list(extra_patterns), **report.as_dict()}
    add("manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    report.members.append(members[-1][2])
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name, data, _meta in members:
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), int(now), 0o644
                tar.addfile(info, io.BytesIO(data))
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    _fsync(target.parent)
    report.seconds = round(time.monotonic() - started, 3)
    return report
