"""The connection factory: pragmas, migrations, refusals, the schema snapshot."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import apsw
import pytest

from kernel.base.errors import DatabaseUnavailable
from kernel.store import db, schema
from tools.docgen import schema_snapshot

from .conftest import logical_dump

REPO = Path(__file__).resolve().parent.parent


def test_pragmas_are_set(fresh_db: apsw.Connection) -> None:
    """WAL, NORMAL sync, foreign keys, recursive triggers, journal size limit, busy timeout."""
    assert fresh_db.pragma("journal_mode") == "wal"
    assert fresh_db.pragma("synchronous") == 1  # NORMAL
    assert fresh_db.pragma("foreign_keys") == 1
    assert fresh_db.pragma("recursive_triggers") == 1
    assert fresh_db.pragma("journal_size_limit") == db.JOURNAL_SIZE_LIMIT
    assert fresh_db.pragma("application_id") == db.APPLICATION_ID
    assert db.schema_version(fresh_db) == db.latest_schema_version()


def test_full_durability_sets_synchronous_full(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "k.db", create=True, durability="full")
    assert conn.pragma("synchronous") == 2  # FULL
    conn.close()
    with pytest.raises(ValueError, match="durability"):
        schema.connect(tmp_path / "k.db", durability="fast")


def test_fresh_migration_reproduces_the_snapshot() -> None:
    """sql/schema.sql is what a fresh database holds (regenerate with tools/gen_docs.py)."""
    committed = (REPO / "sql" / "schema.sql").read_text(encoding="utf-8")
    assert schema_snapshot() == committed, "sql/schema.sql is stale: run python tools/gen_docs.py"


def test_reopening_is_idempotent(tmp_path: Path) -> None:
    """A second open migrates nothing and rewrites no machine rows (no new events, same schema)."""
    path = tmp_path / "k.db"
    first = schema.connect(path, create=True)
    schema_before = db.schema_sql(first)
    data_version = first.pragma("data_version")
    first.close()
    second = schema.connect(path)
    assert db.schema_sql(second) == schema_before
    assert second.execute("SELECT COUNT(*) FROM event").fetchone()[0] == 0
    assert second.pragma("data_version") == data_version
    second.close()


def test_newer_database_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    schema.connect(path, create=True).close()
    newer = db.latest_schema_version() + 1
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {newer}")
    before = logical_dump(path)
    with pytest.raises(DatabaseUnavailable) as err:
        schema.connect(path)
    assert err.value.code == "schema_too_new"
    assert err.value.exit_code == 3
    assert f"schema version {newer}" in err.value.message
    assert "upgrade orch" in (err.value.hint or "")
    with pytest.raises(DatabaseUnavailable):
        schema.connect(path, readonly=True)
    assert logical_dump(path) == before


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(DatabaseUnavailable) as err:
        schema.connect(path)
    assert err.value.code == "not_an_orch_database"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA application_id = 42")
    with pytest.raises(DatabaseUnavailable, match="another application"):
        schema.connect(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseUnavailable) as err:
        schema.connect(path)
    assert err.value.code == "database_unreadable"


def test_old_sqlite_library_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The library version is the edge we cannot vary for real; raise the minimum instead."""
    monkeypatch.setattr(db, "MIN_SQLITE_VERSION", (99, 0, 0))
    with pytest.raises(DatabaseUnavailable) as err:
        schema.connect(tmp_path / "k.db", create=True)
    assert err.value.code == "sqlite_too_old"
    assert "WAL corruption" in err.value.message
    assert not (tmp_path / "k.db").exists()


def test_the_bundled_sqlite_is_new_enough() -> None:
    assert db.sqlite_version() >= db.MIN_SQLITE_VERSION


def test_write_tx_is_immediate_and_rolls_back(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE takes the write lock at once: a second writer waits, then gives up."""
    path = tmp_path / "k.db"
    first = schema.connect(path, create=True)
    second = schema.connect(path, busy_timeout_ms=50)
    with db.write_tx(first):
        first.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        with pytest.raises(apsw.BusyError):
            second.execute("BEGIN IMMEDIATE")
    with pytest.raises(RuntimeError), db.write_tx(first):
        first.execute("INSERT INTO workstream (workstream_id) VALUES ('gone')")
        raise RuntimeError("boom")
    ids = [r[0] for r in second.execute("SELECT workstream_id FROM workstream").fetchall()]
    assert ids == ["ws"]
    first.close()
    second.close()


def test_migrations_are_numbered_without_gaps() -> None:
    found = db.migrations()
    assert [m.number for m in found] == list(range(1, len(found) + 1))
    assert all(m.sql.strip() for m in found)


def test_checkpoint_resets_the_wal(fresh_db: apsw.Connection, tmp_path: Path) -> None:
    with db.write_tx(fresh_db):
        fresh_db.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
    busy, _log, _done = db.checkpoint(fresh_db, "TRUNCATE")
    assert busy == 0
    assert db.wal_size(tmp_path / "kernel.db") == 0


def test_views_parse_in_the_system_sqlite(fresh_db: apsw.Connection, tmp_path: Path) -> None:
    """Datasette and the sqlite3 shell use the system SQLite (3.40 here): every view and trigger
    must parse and every view must run there."""
    with sqlite3.connect(tmp_path / "kernel.db") as raw:
        views = [r[0] for r in raw.execute("SELECT name FROM sqlite_schema WHERE type = 'view'")]
        assert {"ready_task", "blocked_task", "stuck_task", "active_lease"} <= set(views)
        for view in views:
            raw.execute(f"SELECT * FROM {view}").fetchall()


def test_open_file_leaves_no_writer_lock_and_closes(tmp_path: Path) -> None:
    """A file that is not the live database (a backup, an archive) is written without the
    kernel's writer lock file, and the connection is closed when the block ends."""
    path = tmp_path / "archive.db"
    with db.open_file(path, readonly=False, create=True) as conn, db.write_tx(conn):
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.db"]
    with pytest.raises(apsw.ConnectionClosedError):
        conn.execute("SELECT 1")
    with db.open_file(path) as ro:
        assert ro.execute("SELECT x FROM t").fetchall() == [(1,)]
        with pytest.raises(apsw.ReadOnlyError):
            ro.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(DatabaseUnavailable) as err, db.open_file(tmp_path / "missing.db"):
        pass
    assert err.value.code.startswith("database_")


def test_project_open_closes_its_connection(tmp_path: Path) -> None:
    from kernel.store.project import Project, init_project

    init_project(tmp_path)
    with Project(tmp_path).open() as conn:
        assert db.schema_version(conn) == db.latest_schema_version()
    with pytest.raises(apsw.ConnectionClosedError):
        conn.execute("SELECT 1")
