"""Fixtures named for the state they set up. Real SQLite files in tmp_path; no mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from kernel.cli import run
from kernel.store import db, schema
from kernel.store.project import Project, init_project
from tests.aider_venv import ModelServer, ensure_aider_venv

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[apsw.Connection]:
    """A freshly migrated kernel database (no project files around it)."""
    conn = schema.connect(tmp_path / "kernel.db", create=True)
    yield conn
    conn.close()


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """An initialised project (orch init) in tmp_path / 'proj'."""
    root = tmp_path / "proj"
    root.mkdir()
    init_project(root)
    return Project(root)


@pytest.fixture
def db_with_workstream(fresh_db: apsw.Connection) -> apsw.Connection:
    """fresh_db plus workstream 'ws' and tasks a <- b <- c (b depends on a, c on b), a worker 'w1'
    (idle) and a worker 'w2' (idle)."""
    with db.write_tx(fresh_db):
        fresh_db.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        fresh_db.execute(
            "INSERT INTO task (task_id, workstream_id, max_retries) "
            "VALUES ('a', 'ws', 2), ('b', 'ws', 0), ('c', 'ws', 1)"
        )
        fresh_db.execute("INSERT INTO task_dependency VALUES ('b', 'a'), ('c', 'b')")
        for worker in ("w1", "w2"):
            fresh_db.execute("INSERT INTO worker (worker_id) VALUES (?)", (worker,))
            fresh_db.execute(
                "UPDATE worker SET state = 'idle', transition_trigger = 'registration_complete' "
                "WHERE worker_id = ?",
                (worker,),
            )
    return fresh_db


@pytest.fixture(scope="session")
def aider_venv() -> Path:
    """The real Aider CLI's own venv (tests/aider_venv.py), installed once when missing."""
    return ensure_aider_venv()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Start scripted model servers (``start(script) -> ModelServer``); all stop at the end."""
    servers: list[ModelServer] = []

    def start(script: list[Any]) -> ModelServer:
        servers.append(ModelServer(tmp_path / f"server{len(servers)}", script))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def git(where: Path, *args: str) -> str:
    """``git -C where ARGS``, which must succeed: its standard output."""
    proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def orch(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `orch` console script of this environment in a subprocess."""
    exe = Path(sys.executable).parent / "orch"
    proc = subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"orch {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def orch_json(*args: str, cwd: Path | None = None) -> tuple[int, dict]:
    proc = orch("--json", *args, cwd=cwd)
    return proc.returncode, json.loads(proc.stdout)


def run_cli(*args: str) -> int:
    """Run the CLI in-process (fast); capture output with capsys."""
    return run(list(args))


def logical_dump(path: Path) -> str:
    """The database's content as text: user_version, application_id, the schema and every row
    of every table in a fixed order. Two files with the same dump hold the same data. (Raw bytes
    are no good: SQLite bumps the header's change counter on an idle open/close in WAL mode.)"""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        lines = [
            f"user_version={conn.pragma('user_version')}",
            f"application_id={conn.pragma('application_id')}",
        ]
        objects = conn.execute(
            "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY type, name"
        ).fetchall()
        lines += [sql for _t, _n, sql in objects]
        for (table,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        ).fetchall():
            ncols = len(conn.execute(f'PRAGMA table_info("{table}")').fetchall())
            order = ", ".join(str(i) for i in range(1, ncols + 1))
            for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}'):
                lines.append(f"{table}: {r!r}")
        return "\n".join(lines)
    finally:
        conn.close()
