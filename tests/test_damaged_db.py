"""A damaged or foreign `.state/kernel.db` is never taken for a fresh project.

Real files, no mocks: a project that ran one task is copied, its database is damaged in one of
several ways (emptied, truncated, pages overwritten, a garbage header, a text file, a
directory, another application's database, a hand-lowered user_version...), and every command
that opens the database must exit with its error code's exit code (3; 1 for
``not_initialised``, docs/CLI.md) and an error naming the file and a hint (``orch restore``
/ ``orch init``), print no traceback, and leave the file's bytes exactly as they were. Most
runs are in-process (fast); a representative subset runs the real `orch` script.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from kernel.base.errors import DatabaseUnavailable, exit_code_for
from kernel.store import db, dbcheck, schema
from kernel.store.project import Project, init_project

from .conftest import orch, run_cli
from .e2e import make_project, run, task

PAGE = 4096


# --------------------------------------------------------------------------- the damage


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: 3 * PAGE])


def _corrupt_pages(path: Path) -> None:
    """Random bytes (seeded) over the middle half of the pages; the header is intact."""
    data = bytearray(path.read_bytes())
    pages = len(data) // PAGE
    rng = random.Random(20260101)
    start, end = pages // 4 * PAGE, 3 * pages // 4 * PAGE
    data[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    path.write_bytes(bytes(data))


def _garbage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:100] = random.Random(7).randbytes(100)
    path.write_bytes(bytes(data))


def _text(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 50)


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _missing(path: Path) -> None:
    path.unlink()


def _sqlite(path: Path, *statements: str) -> None:
    raw = sqlite3.connect(path)
    try:
        for sql in statements:
            raw.execute(sql)
        raw.commit()
    finally:
        raw.close()


def _foreign_tables(path: Path) -> None:
    path.unlink()
    _sqlite(path, "CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('hello')",
            "PRAGMA user_version = 3")


def _foreign_app_id(path: Path) -> None:
    _sqlite(path, "PRAGMA application_id = 42")


def _never_initialised(path: Path) -> None:
    """A valid SQLite file with nothing in it (user_version 0, application_id 0, no tables)."""
    path.unlink()
    _sqlite(path, "CREATE TABLE scratch (x)", "DROP TABLE scratch")


def _downgraded(path: Path) -> None:
    """`PRAGMA user_version = 2` on a current database: migrations 3.. must not run again."""
    _sqlite(path, "PRAGMA user_version = 2")


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (_empty, "not_initialised"),
    "missing": (_missing, "not_initialised"),
    "truncated": (_truncated, "database_damaged"),
    "corrupt_pages": (_corrupt_pages, "database_damaged"),
    "garbage_header": (_garbage_header, "database_unreadable"),
    "text_file": (_text, "database_unreadable"),
    "directory": (_directory, "database_unreadable"),
    "foreign_tables": (_foreign_tables, "not_an_orch_database"),
    "foreign_app_id": (_foreign_app_id, "not_an_orch_database"),
    "never_initialised": (_never_initialised, "not_initialised"),
    "downgraded": (_downgraded, "schema_damaged"),
}

COMMANDS: list[tuple[str, ...]] = [
    ("load",), ("status",), ("run", "--workers", "1"), ("doctor",), ("plan",), ("why", "a"),
    ("export",), ("validate",), ("events",),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose task `a` has completed (loaded and run for real), its database closed
    and checkpointed into one file."""
    root = make_project(tmp_path_factory.mktemp("template") / "p", [task("a")])
    assert run(root, workers=1).returncode == 0
    path = root / ".state" / "kernel.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    assert not Path(f"{path}-wal").exists()
    return root


def damaged_copy(template: Path, dest: Path, kind: str) -> Project:
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns("kernel.db-wal",
                                                                  "kernel.db-shm"))
    project = Project(dest)
    DAMAGE[kind][0](project.db_path)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{project.db_path}{suffix}").unlink(missing_ok=True)
    return project


def fingerprint(path: Path) -> str:
    """The file's bytes (sha256), or what stands in its place."""
    if path.is_dir():
        return f"directory {sorted(os.listdir(path))}"
    if not path.exists():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sidecars(path: Path) -> list[str]:
    return [s for s in ("-wal", "-shm", "-journal") if Path(f"{path}{s}").exists()]


@pytest.fixture
def keep_sigterm() -> Iterator[None]:
    """An in-process `orch run` installs its SIGTERM handler: put pytest's back."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- every command


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_every_command_refuses_a_damaged_database_and_leaves_it_alone(
        template: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str],
        keep_sigterm: None) -> None:
    expected = DAMAGE[kind][1]
    problems = []
    for n, command in enumerate(COMMANDS):
        if kind == "missing" and command == ("validate",):
            continue  # validate checks the files alone when there is no database (by design)
        project = damaged_copy(template, tmp_path / f"p{n}", kind)
        before = fingerprint(project.db_path)
        code = run_cli("--root", str(project.root), "--json", *command)
        out = capsys.readouterr().out
        name = " ".join(command)
        if fingerprint(project.db_path) != before:
            problems.append(f"{name}: the file changed")
        if kind != "corrupt_pages" and sidecars(project.db_path):
            # Refused before SQLite opened it for real: not even a -wal/-shm is left behind.
            problems.append(f"{name}: left {sidecars(project.db_path)}")
        doc = json.loads(out)
        if kind == "corrupt_pages" and command == ("doctor",):
            checks = {c["name"]: c["status"] for c in doc.get("checks", [])}
            if code != 1 or checks.get("integrity_check") != "fail":
                problems.append(f"doctor: exit {code}, {doc}")
            continue
        error = doc.get("error") or {}
        if code != exit_code_for(expected) or error.get("code") != expected:
            problems.append(f"{name}: exit {code}, {error.get('code')} (not {expected})")
            continue
        if error.get("file") != str(project.db_path):
            problems.append(f"{name}: names {error.get('file')}")
        hint = error.get("hint") or ""
        if "orch restore" not in hint or "orch init" not in hint:
            problems.append(f"{name}: hint {hint!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_the_orch_script_prints_one_clean_error(template: Path, tmp_path: Path,
                                                kind: str) -> None:
    """The console script in a subprocess: text output, the code's exit code, no traceback
    (one command per kind, so every command is run for real at least once)."""
    command = COMMANDS[list(DAMAGE).index(kind) % len(COMMANDS)]
    if kind == "corrupt_pages" and command == ("doctor",):
        command = ("status",)
    project = damaged_copy(template, tmp_path / "p", kind)
    before = fingerprint(project.db_path)
    proc = orch("--root", str(project.root), *command)
    # One exit code per error code: 3 for a damaged file, 1 for an uninitialised project.
    assert proc.returncode == exit_code_for(DAMAGE[kind][1]), (command, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    first, *rest = proc.stderr.splitlines()
    assert first.startswith(f"error: {project.db_path}: "), proc.stderr
    assert rest and rest[0].startswith("  hint: ") and "orch restore" in rest[0]
    assert fingerprint(project.db_path) == before


def test_an_emptied_database_is_not_a_fresh_project(template: Path, tmp_path: Path) -> None:
    """The defect: a 0-byte kernel.db used to be migrated into a new, empty database (doctor
    passed, `orch run` said "all tasks completed: no tasks", and after `orch load` the
    completed task ran again). Now every command refuses it and it stays 0 bytes."""
    project = damaged_copy(template, tmp_path / "p", "empty")
    root = str(project.root)
    refused = exit_code_for("not_initialised")   # 1: not exit 3, kept for a damaged file
    proc = orch("--root", root, "doctor")
    assert proc.returncode == refused and "is empty (0 bytes)" in proc.stderr
    proc = orch("--root", root, "run", "--workers", "1")
    assert proc.returncode == refused and "all tasks completed" not in proc.stdout
    proc = orch("--root", root, "--json", "load")
    assert proc.returncode == refused, proc.stdout
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "not_initialised" and error["file"] == str(project.db_path)
    assert "orch restore BACKUP --force" in error["hint"] and "orch init" in error["hint"]
    assert project.db_path.stat().st_size == 0


def test_a_missing_database_is_not_created_by_any_command(template: Path,
                                                         tmp_path: Path) -> None:
    project = damaged_copy(template, tmp_path / "p", "missing")
    for command in (("load",), ("run", "--workers", "1")):
        proc = orch("--root", str(project.root), *command)
        assert proc.returncode == exit_code_for("not_initialised") and "orch init" in proc.stderr, \
            proc.stderr
    assert not project.db_path.exists() and not sidecars(project.db_path)


@pytest.mark.parametrize("kind", ["empty", "truncated", "directory"])
def test_doctor_repair_reports_a_refused_file_as_damaged(template: Path, tmp_path: Path,
                                                         kind: str,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    project = damaged_copy(template, tmp_path / "p", kind)
    before = fingerprint(project.db_path)
    assert run_cli("--root", str(project.root), "--json", "doctor", "--repair") == 1
    repair = json.loads(capsys.readouterr().out)["repair"]
    assert repair["damaged"] is True and repair["restore"]["summary"]
    assert fingerprint(project.db_path) == before


def test_doctor_repair_sets_back_only_a_version_lowered_on_the_shipped_schema(
        template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lowered user_version on the exact shipped schema is set back by --repair; once a
    table is also gone, the file is damaged and --repair changes nothing."""
    project = damaged_copy(template, tmp_path / "p", "downgraded")
    assert run_cli("--root", str(project.root), "--json", "doctor", "--repair") == 0
    repair = json.loads(capsys.readouterr().out)["repair"]
    assert repair["schema"]["user_version"] == {"from": 2, "to": db.latest_schema_version()}
    assert run_cli("--root", str(project.root), "status") == 0
    capsys.readouterr()
    other = damaged_copy(template, tmp_path / "q", "downgraded")
    _sqlite(other.db_path, "DROP TABLE metric_sample")
    before = fingerprint(other.db_path)
    assert run_cli("--root", str(other.root), "--json", "doctor", "--repair") == 1
    repair = json.loads(capsys.readouterr().out)["repair"]
    assert repair["damaged"] is True and repair["restore"]["summary"]
    assert fingerprint(other.db_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes files whatever their mode")
def test_a_database_this_user_may_not_read_is_access_denied(template: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    project = damaged_copy(template, tmp_path / "p", "foreign_app_id")
    shutil.copyfile(template / ".state" / "kernel.db", project.db_path)
    os.chmod(project.db_path, 0)
    try:
        assert run_cli("--root", str(project.root), "--json", "status") == 3
        assert json.loads(capsys.readouterr().out)["error"]["code"] == \
            "database_access_denied"
        os.chmod(project.db_path, 0o400)
        assert run_cli("--root", str(project.root), "--json", "load") == 3
        assert json.loads(capsys.readouterr().out)["error"]["code"] == \
            "database_access_denied"
    finally:
        os.chmod(project.db_path, 0o600)


# --------------------------------------------------------------------------- orch init


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_init_creates_a_private_state_dir_and_database(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        init_project(tmp_path)
    finally:
        os.umask(old)
    state = tmp_path / ".state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "kernel.db").stat().st_mode) == 0o600
    # Built in a temporary file and linked into place: nothing of it is left behind.
    assert sorted(p.name for p in state.iterdir()) == [".gitignore", "kernel.db"]
    conn = schema.connect(state / "kernel.db", readonly=True)
    try:
        assert db.schema_version(conn) == db.latest_schema_version()
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign_tables"])
def test_init_never_replaces_an_existing_database(template: Path, tmp_path: Path, kind: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    project = damaged_copy(template, tmp_path / "p", kind)
    before = fingerprint(project.db_path)
    assert run_cli("--root", str(project.root), "--json", "init") == exit_code_for(DAMAGE[kind][1])
    assert json.loads(capsys.readouterr().out)["error"]["code"] == DAMAGE[kind][1]
    assert fingerprint(project.db_path) == before


def test_init_refuses_a_write_ahead_log_without_its_database(template: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    """kernel.db deleted while its -wal still holds commits: a new database would have the old
    one's pages replayed into it. init refuses; once the -wal is moved away it starts afresh."""
    project = damaged_copy(template, tmp_path / "p", "missing")
    wal = Path(f"{project.db_path}-wal")
    wal.write_bytes(b"\x37\x7f\x06\x82" + bytes(60))
    assert run_cli("--root", str(project.root), "--json", "init") == 3
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "database_missing" and "kernel.db-wal" in error["message"]
    assert not project.db_path.exists()
    wal.rename(tmp_path / "kept-wal")
    assert run_cli("--root", str(project.root), "init") == 0
    assert project.db_path.stat().st_size > 0


# --------------------------------------------------------------------------- db.connect


def test_connect_creates_a_database_only_when_asked(tmp_path: Path) -> None:
    missing, empty = tmp_path / "missing.db", tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(DatabaseUnavailable) as err:
        schema.connect(missing)
    assert err.value.code == "database_missing" and err.value.exit_code == 3
    assert not missing.exists()
    for readonly in (False, True):
        with pytest.raises(DatabaseUnavailable) as err:
            schema.connect(empty, readonly=readonly)
        assert err.value.code == "not_initialised"
        assert empty.stat().st_size == 0 and not sidecars(empty)
    with pytest.raises(ValueError, match="read-only"):
        schema.connect(missing, create=True, readonly=True)
    for path in (missing, empty):
        conn = schema.connect(path, create=True)
        assert db.schema_version(conn) == db.latest_schema_version()
        conn.close()


def _database_at(path: Path, version: int) -> None:
    """A database as an orch of schema ``version`` left it: migrations 1..version only."""
    conn = apsw.Connection(str(path))
    try:
        for migration in db.migrations()[:version]:
            with db.write_tx(conn):
                conn.execute(migration.sql)
                conn.pragma("application_id", db.APPLICATION_ID)
                conn.pragma("user_version", migration.number)
    finally:
        conn.close()


def test_an_older_database_is_still_migrated(tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    _database_at(path, 3)
    conn = schema.connect(path)
    try:
        assert db.schema_version(conn) == db.latest_schema_version()
    finally:
        conn.close()


def test_a_raised_user_version_is_schema_damaged(tmp_path: Path) -> None:
    """user_version says 4 but migration 4's tables are missing: not migrated, not used."""
    path = tmp_path / "kernel.db"
    _database_at(path, 3)
    _sqlite(path, "PRAGMA user_version = 4")
    before = fingerprint(path)
    with pytest.raises(DatabaseUnavailable) as err:
        schema.connect(path)
    assert err.value.code == "schema_damaged" and "metric_sample" in err.value.message
    assert fingerprint(path) == before


def test_a_lowered_user_version_names_the_version_to_set_back(tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    schema.connect(path, create=True).close()
    _downgraded(path)
    with pytest.raises(DatabaseUnavailable) as err:
        schema.connect(path, readonly=True)
    assert err.value.code == "schema_damaged"
    assert f"PRAGMA user_version = {db.latest_schema_version()}" in (err.value.hint or "")


def test_the_migrations_objects_are_those_of_a_fresh_database(
        fresh_db: apsw.Connection) -> None:
    """The schema check reads the objects each migration creates from its SQL: that reading
    must find every table and view a fresh database holds, and nothing it lacks."""
    introduced, dropped = dbcheck._migration_objects()
    fresh = dict(fresh_db.execute(
        "SELECT name, type FROM sqlite_schema WHERE name NOT LIKE 'sqlite%'").fetchall())
    expected = {n for n, (_, kind) in introduced.items() if n not in dropped}
    assert expected <= set(fresh)
    assert {n for n, kind in fresh.items() if kind in ("table", "view")} <= expected


def test_a_pending_wal_is_not_mistaken_for_truncation(fresh_db: apsw.Connection,
                                                      tmp_path: Path) -> None:
    """While commits sit in the -wal, the main file is not the whole database: the header and
    length checks do not judge it then, and other connections open as usual."""
    fresh_db.pragma("wal_autocheckpoint", 0)
    with db.write_tx(fresh_db):
        fresh_db.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        fresh_db.executemany("INSERT INTO task (task_id, workstream_id, description) "
                             "VALUES (?, 'ws', ?)",
                             [(f"t{i}", "x" * 2000) for i in range(300)])
    path = tmp_path / "kernel.db"
    assert db.wal_size(path) > 0
    assert db.check_file(path) is False
    other = schema.connect(path, readonly=True)
    try:
        assert db.scalar(other, "SELECT COUNT(*) FROM task") == 300
    finally:
        other.close()


def test_sqlite_errors_map_to_exit_3_codes(tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    cases = {
        apsw.CorruptError("database disk image is malformed"): "database_damaged",
        apsw.NotADBError("file is not a database"): "database_damaged",
        apsw.IOError("disk I/O error"): "database_damaged",
        apsw.FullError("database or disk is full"): "disk_full",
        apsw.BusyError("database is locked"): "database_locked",
        apsw.ReadOnlyError("attempt to write a readonly database"): "database_access_denied",
        apsw.SQLError("no such table: task"): "database_error",
    }
    for exc, code in cases.items():
        err = db.error_for(exc, path)
        assert (err.code, err.exit_code, err.file) == (code, 3, str(path)), exc
        assert err.hint
