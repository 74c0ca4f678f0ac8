"""The task_created events of ``orch load`` are written set-based (one INSERT ... SELECT when the
load's marker row is deleted, sql/0007_bulk_task_events.sql): the event table is the one the
per-row trigger writes, row for row, and no other INSERT INTO task loses its event."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from kernel.definitions import load as load_module
from kernel.definitions.load import load
from kernel.store import db
from kernel.store.project import Project

from .conftest import logical_dump
from .test_load_bulk import _project
from .test_validate import task_doc, write_task

NOW = "2026-11-24T10:15:00.000Z"
LATER = "2026-11-25T08:00:00.000Z"


def _events(project: Project) -> list[tuple]:
    conn = project.connect(readonly=True)
    try:
        return conn.execute("SELECT * FROM event ORDER BY seq").fetchall()
    finally:
        conn.close()


def _two_loads(project: Project) -> None:
    """A first load (v1 and v2 files), then a second adding tasks after existing events."""
    load(project, now=NOW, workers=1)
    for i in range(60, 75):
        extra = {"schema_version": "1.0.0"} if i % 4 == 0 else {}
        write_task(project, task_doc(f"t{i:03d}", ws=f"ws{i % 3}", dependencies=["t001"],
                                     **extra))
    load(project, now=LATER, workers=1)


def test_set_based_events_are_the_rows_the_per_row_trigger_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dumps, events = [], []
    for set_based in (False, True):
        monkeypatch.setattr(load_module, "_SET_BASED_EVENTS", set_based)
        project = _project(tmp_path / f"p{set_based}")
        _two_loads(project)
        events.append(_events(project))
        dumps.append(logical_dump(project.db_path))
    assert events[0] == events[1]
    assert [e[0] for e in events[1]] == list(range(1, len(events[1]) + 1))  # gapless seq
    created = [e for e in events[1] if e[2] == "task_created"]
    assert len(created) == 75
    assert dumps[0] == dumps[1]  # the tasks too (transition columns cleared), and no marker


def test_without_a_clock_the_events_are_in_order_and_never_go_back(
        tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    _two_loads_now = load(project, workers=1)
    assert _two_loads_now.tasks_created == 60
    rows = _events(project)
    stamps = [r[1] for r in rows]
    assert stamps == sorted(stamps)
    created = [r[6] for r in rows if r[2] == "task_created"]
    assert created == sorted(created)  # insertion order: task_id order


def test_an_insert_outside_a_load_still_gets_its_event(tmp_path: Path) -> None:
    project = _project(tmp_path / "p", tasks=3)
    load(project, now=NOW, workers=1)
    conn = project.connect()
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO task (task_id, workstream_id, name, source_file) "
                         "VALUES ('by-hand', 'ws0', 'x', 'elsewhere.json')")
        row = conn.execute("SELECT event, task_id, metadata FROM event "
                           "ORDER BY seq DESC LIMIT 1").fetchone()
        assert db.scalar(conn, "SELECT count(*) FROM task_bulk_insert") == 0
    finally:
        conn.close()
    assert row == ("task_created", "by-hand", '{"max_retries":0,"source_file":"elsewhere.json"}')


def test_a_failed_load_leaves_no_marker_and_no_event(tmp_path: Path) -> None:
    project = _project(tmp_path / "p", tasks=5)
    load(project, now=NOW, workers=1)
    conn = project.connect()
    with db.write_tx(conn):  # a rule that refuses the last new task, after the others
        conn.execute("CREATE TRIGGER refuse_x9 BEFORE INSERT ON task "
                     "WHEN NEW.task_id = 'x9' BEGIN SELECT RAISE(ABORT, 'no x9'); END")
    conn.close()
    for i in range(5, 10):
        write_task(project, task_doc(f"x{i}", ws="ws9"))
    before = logical_dump(project.db_path)
    with pytest.raises(apsw.ConstraintError, match="no x9"):
        load(project, workers=1)
    assert logical_dump(project.db_path) == before
    conn = project.connect(readonly=True)
    try:
        assert db.scalar(conn, "SELECT count(*) FROM task_bulk_insert") == 0
    finally:
        conn.close()
