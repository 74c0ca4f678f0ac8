"""The bulk write path of orch load (kernel.definitions.load.insert_rows_in_tx): tasks are
inserted a batch per statement, and that changes nothing in the database but the time it
takes: the same rows, the same event log (one task_created event per task, in task_id order,
gapless seq) as one INSERT per row; a failure inside a batch still leaves the database as it
was."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.definitions import load as load_module
from kernel.definitions.load import insert_rows_in_tx, load
from kernel.store import db
from kernel.store.project import Project, init_project

from .conftest import logical_dump
from .test_validate import task_doc, write_task

NOW = "2026-11-24T10:15:00.000Z"
TASK_PARAMETERS = 18  # values per row of the task INSERT


def _project(root: Path, tasks: int = 60) -> Project:
    """Two workstreams, v1 and v2 files (v1 tasks get a non-NULL transition_metadata, so the
    creation trigger takes its UPDATE branch), resources, capabilities, dependencies and
    blocks across workstreams."""
    root.mkdir()
    init_project(root)
    project = Project(root)
    for i in range(tasks):
        ws = f"ws{i % 2}"
        extra: dict = {}
        if i % 7 == 3:
            extra["schema_version"] = "1.0.0"
        if i % 5 == 1:
            extra["resource_requirements"] = {"cpu_cores": 1 + i % 3}
        if i % 6 == 2:
            extra["worker_requirements"] = {"capabilities": ["RuffLinting"]}
        deps = [f"t{j:03d}" for j in (i - 1, i - 3) if j >= 0]
        blocks = [f"t{i + 5:03d}"] if i % 9 == 0 and i + 5 < tasks else []
        write_task(project, task_doc(f"t{i:03d}", ws=ws, dependencies=deps, blocks=blocks,
                                     priority=i % 4, **extra))
    return project


@pytest.mark.parametrize("now", [NOW, None])
def test_batches_write_what_one_insert_per_row_writes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      now: str | None) -> None:
    dumps = []
    for rows_per_batch in (1, 7, 1000):  # 1: one statement per row, as before batching
        monkeypatch.setattr(load_module, "BATCH_PARAMETERS", rows_per_batch * TASK_PARAMETERS)
        project = _project(tmp_path / f"p{rows_per_batch}")
        report = load(project, now=now, workers=1)
        assert report.tasks_created == 60 and report.migrated == 9
        dump = logical_dump(project.db_path)
        if now is None:  # the clock differs between the loads: compare everything else
            conn = project.connect(readonly=True)
            try:
                stamps = {r[0] for r in conn.execute(
                    "SELECT timestamp FROM event UNION SELECT created_at FROM task "
                    "UNION SELECT updated_at FROM task UNION SELECT created_at FROM workstream "
                    "UNION SELECT updated_at FROM workstream")}
            finally:
                conn.close()
            for stamp in stamps:
                dump = dump.replace(stamp, "<time>")
        dumps.append(dump)
    assert dumps[0] == dumps[1] == dumps[2]


def test_batched_updates_write_what_one_update_per_task_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dumps = []
    for rows_per_batch in (1, 3, 1000):
        monkeypatch.setattr(load_module, "BATCH_PARAMETERS", rows_per_batch * TASK_PARAMETERS)
        project = _project(tmp_path / f"p{rows_per_batch}", tasks=20)
        load(project, now=NOW, workers=1)
        for i in range(0, 20, 2):  # half the tasks change: name, type, resources, workstream
            extra = {"resource_requirements": {"cpu_cores": 2}} if i % 4 else {}
            write_task(project, task_doc(f"t{i:03d}", ws=f"ws{i % 2}", name=f"renamed {i}",
                                         type="lint", dependencies=[], **extra))
        report = load(project, now="2026-11-25T08:00:00.000Z", workers=1)
        assert report.tasks_updated == [f"t{i:03d}" for i in range(0, 20, 2)]
        dumps.append(logical_dump(project.db_path))
    assert dumps[0] == dumps[1] == dumps[2]
    assert "task_definition_updated" in dumps[0]


def test_one_created_event_per_task_in_order_and_gapless(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "BATCH_PARAMETERS", 5 * TASK_PARAMETERS)
    project = _project(tmp_path / "p")
    load(project, now=NOW, workers=1)
    conn = project.connect(readonly=True)
    try:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM event ORDER BY seq")]
        created = conn.execute(
            "SELECT task_id, workstream_id, from_state, to_state, trigger, metadata "
            "FROM event WHERE event = 'task_created' ORDER BY seq").fetchall()
        tasks = conn.execute("SELECT task_id, workstream_id, max_retries, source_file, "
                             "transition_trigger, transition_metadata FROM task "
                             "ORDER BY task_id").fetchall()
    finally:
        conn.close()
    assert seqs == list(range(1, len(seqs) + 1))
    assert [c[0] for c in created] == [t[0] for t in tasks]
    for (task_id, ws, from_state, to_state, trigger, metadata), task in zip(created, tasks,
                                                                          strict=True):
        assert (ws, from_state, to_state, trigger) == (task[1], None, "pending", "task_loaded")
        expected = {"max_retries": task[2], "source_file": task[3]}
        if task_id in {f"t{i:03d}" for i in range(60) if i % 7 == 3}:
            expected["migrated_from"] = "1.0.0"
        assert json.loads(metadata) == expected
        assert task[4:] == (None, None)  # the trigger cleared the transition request


def test_a_failure_inside_a_batch_leaves_the_database_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "BATCH_PARAMETERS", 4 * TASK_PARAMETERS)
    project = _project(tmp_path / "p", tasks=10)
    load(project, workers=1)
    conn = project.connect()
    with db.write_tx(conn):  # another client's rule that refuses one task (of a later batch)
        conn.execute("CREATE TRIGGER refuse_boom BEFORE INSERT ON task "
                     "WHEN NEW.task_id = 'x15' BEGIN SELECT RAISE(ABORT, 'no boom'); END")
    conn.close()
    for i in range(10, 20):
        write_task(project, task_doc(f"x{i}", ws="ws9", dependencies=["t000"]))
    before = logical_dump(project.db_path)
    with pytest.raises(apsw.ConstraintError, match="no boom"):
        load(project, workers=1)
    assert logical_dump(project.db_path) == before


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 5), per_batch=st.integers(1, 9), data=st.data())
def test_insert_rows_inserts_every_row_in_order(width: int, per_batch: int,
                                                data: st.DataObject) -> None:
    value = st.one_of(st.none(), st.integers(-10**12, 10**12), st.text(max_size=8))
    rows = data.draw(st.lists(st.tuples(*[value] * width), max_size=40))
    conn = apsw.Connection(":memory:")
    columns = ", ".join(f"c{i}" for i in range(width))
    conn.execute(f"CREATE TABLE t (n INTEGER PRIMARY KEY, {columns})")
    original = load_module.BATCH_PARAMETERS
    load_module.BATCH_PARAMETERS = per_batch * width
    try:
        insert_rows_in_tx(conn, f"INSERT INTO t ({columns})", rows)
    finally:
        load_module.BATCH_PARAMETERS = original
    assert [tuple(r[1:]) for r in conn.execute("SELECT * FROM t ORDER BY n")] == rows
