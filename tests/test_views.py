"""The .state views: every step of a scripted run exported and checked against the database and
the JSON Schemas; the STATE-OBS-003 order survives a kill between the rename and the append."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import apsw
import jsonschema
import pytest

from kernel.base.clock import iso
from kernel.base.config import Config, WorkersConfig
from kernel.observe import documents, exports, view_documents, view_models
from kernel.runtime import claims, scheduler
from kernel.store import db, eventlog, schema
from kernel.store.project import Project
from tests.conftest import REPO, orch
from tests.e2e import make_project, run, task

T0 = 1_800_000_000.0
CONFIG = Config(workers=WorkersConfig(heartbeat_seconds=1, retry_jitter=0))
SCHEMAS = REPO / "schemas"


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def _validate(doc: dict[str, Any], name: str) -> None:
    jsonschema.validate(doc, _schema(name))


def _load(state: Path, name: str) -> dict[str, Any]:
    return json.loads((state / name).read_text())


def _jsonl(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / exports.TRANSITIONS).read_text().splitlines()]


def _db_events(conn: apsw.Connection) -> list[dict[str, Any]]:
    out = db.rows(conn, f"SELECT {', '.join(exports.EVENT_LINE_FIELDS)} FROM event ORDER BY seq")
    for event in out:
        event["metadata"] = json.loads(event["metadata"])
    return out


def _check_agrees(conn: apsw.Connection, state: Path) -> dict[str, Any]:
    """current.json valid against its schema and equal to the tables; transitions.jsonl equal
    to the event table; the indices valid and derived from current.json; no .tmp left."""
    current = _load(state, "current.json")
    _validate(current, "current-state")
    view_models.CurrentState.model_validate(current)
    tasks = {t["task_id"]: t for t in current["tasks"]}
    rows = db.rows(conn, "SELECT task_id, state, retry_count, worker_id, last_error, "
                         "failure_mode FROM task")
    assert set(tasks) == {r["task_id"] for r in rows}
    for r in rows:
        t = tasks[r["task_id"]]
        assert (t["state"], t["retry_count"], t["assigned_worker"], t["last_error"],
                t["failure_mode"]) == (r["state"], r["retry_count"], r["worker_id"],
                                       r["last_error"], r["failure_mode"])
        assert t["attempts"] == db.scalar(conn, "SELECT count(*) FROM attempt WHERE task_id = ?",
                                          (r["task_id"],))
    assert [t["task_id"] for t in current["tasks"]] == sorted(tasks)   # rows in key order
    assert {w["worker_id"]: w["state"] for w in current["workers"]} == dict(
        conn.execute("SELECT worker_id, state FROM worker"))
    assert {w["workstream_id"]: w["state"] for w in current["workstreams"]} == dict(
        conn.execute("SELECT workstream_id, state FROM workstream"))
    assert [h["lease_id"] for h in current["resources"]] == [
        r[0] for r in conn.execute("SELECT lease_id FROM lease WHERE released_at IS NULL "
                                   "ORDER BY lease_id")]
    assert current["last_event_seq"] == db.scalar(conn, "SELECT max(seq) FROM event")
    assert _jsonl(state) == _db_events(conn)
    by_status = _load(state, "by_status.json")
    _validate(by_status, "by-status")
    expected: dict[str, list[str]] = {}
    for t in current["tasks"]:
        expected.setdefault(t["state"], []).append(t["task_id"])
    assert by_status["statuses"] == expected
    assert by_status["source_timestamp"] == current["timestamp"]
    _validate(_load(state, "by_workstream.json"), "by-workstream")
    _validate(_load(state, "by_worker.json"), "by-worker")
    for path in (state / "checkpoints").glob("*.json"):
        _validate(json.loads(path.read_text()), "checkpoint")
    assert not list(state.rglob("*.tmp"))
    return current


@pytest.fixture
def conn(project: Project) -> apsw.Connection:
    conn = project.connect()
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id, created_at, updated_at) "
                     "VALUES ('ws', ?, ?)", (iso(T0 - 100), iso(T0 - 100)))
        for tid, deps, retries in (("a", (), 1), ("b", ("a",), 0), ("c", ("a",), 0)):
            conn.execute("INSERT INTO task (task_id, workstream_id, max_retries, created_at, "
                         "updated_at) VALUES (?, 'ws', ?, ?, ?)",
                         (tid, retries, iso(T0 - 50), iso(T0 - 50)))
            conn.executemany("INSERT INTO task_dependency VALUES (?, ?)",
                             [(tid, d) for d in deps])
        conn.execute("INSERT INTO worker (worker_id, pid, hostname, heartbeat_interval_seconds, "
                     "last_heartbeat_at, registered_at, updated_at) "
                     "VALUES ('w1', NULL, 'h', 1, ?, ?, ?)", (iso(T0), iso(T0 - 100),
                                                              iso(T0 - 100)))
        conn.execute("UPDATE worker SET state = 'idle', "
                     "transition_trigger = 'registration_complete' WHERE worker_id = 'w1'")
    yield conn
    conn.close()


def _ctx(root: Path) -> scheduler.TickContext:
    return scheduler.TickContext(root=root, config=CONFIG, hostname="h", alive=lambda pid: True)


def test_every_step_of_a_scripted_run_is_exported_exactly(conn: apsw.Connection,
                                                           project: Project) -> None:
    state = project.state_dir
    backoff = {"retry_delay_seconds": 0, "cap": 0, "jitter": 0}

    def step() -> dict[str, Any]:
        exports.export(conn, state)
        return _check_agrees(conn, state)

    step()
    scheduler.tick(conn, T0, _ctx(project.root))                      # a queued
    assert {t["task_id"]: t["state"] for t in step()["tasks"]}["a"] == "queued"
    claim = claims.claim_next(conn, "w1", T0 + 1, lease_ttl=30)       # a running on w1
    assert claim is not None
    current = step()
    running = {t["task_id"]: t for t in current["tasks"]}["a"]
    assert running["state"] == "running" and running["assigned_worker"] == "w1"
    assert {w["worker_id"]: w["current_task"] for w in current["workers"]} == {"w1": "a"}
    assert _load(state, "by_worker.json")["workers"]["w1"]["tasks"] == ["a"]
    claims.finish_execution(conn, claim, T0 + 2, outcome="failed", exit_code=3,
                            error="exit code 3", duration=1, backoff=backoff)
    current = step()                                                  # a retrying
    a = {t["task_id"]: t for t in current["tasks"]}["a"]
    assert (a["state"], a["last_exit_code"], a["last_worker"]) == ("retrying", 3, "w1")
    scheduler.tick(conn, T0 + 3, _ctx(project.root))
    claim = claims.claim_next(conn, "w1", T0 + 4, lease_ttl=30)
    assert claim is not None
    step()
    claims.finish_execution(conn, claim, T0 + 5, outcome="succeeded", exit_code=0, error=None,
                            duration=1, backoff=backoff)              # a completed, b c queued
    current = step()
    assert current["counts"] == {"completed": 1, "queued": 2}
    checkpoint = _load(state, "checkpoints/ws_latest.json")
    assert checkpoint["completed"] == ["a"] and checkpoint["pending"] == ["b", "c"]
    dag = _load(state, "dag_ws.json")
    assert {n["task_id"]: n["status"] for n in dag["nodes"]} == {
        "a": "completed", "b": "queued", "c": "queued"}
    assert dag["topological_order"][0] == "a"
    plan = _load(state, "execution_plan_ws.json")
    assert [s["parallel_tasks"] for s in plan["stages"]] == [["a"], ["b", "c"]]


def test_pending_tasks_name_what_they_wait_for(conn: apsw.Connection, project: Project) -> None:
    exports.export(conn, project.state_dir)
    tasks = {t["task_id"]: t for t in _load(project.state_dir, "current.json")["tasks"]}
    assert tasks["b"]["waiting_for"] == ["a"] and tasks["a"]["waiting_for"] == []


def test_exports_are_idempotent_and_never_append_an_event_twice(conn: apsw.Connection,
                                                                project: Project) -> None:
    state = project.state_dir
    first = exports.export(conn, state, now="2026-01-01T00:00:00.000Z")
    text = (state / "current.json").read_text()
    second = exports.export(conn, state, now="2026-01-01T00:00:00.000Z")
    assert first.events_appended == db.scalar(conn, "SELECT count(*) FROM event") > 0
    assert second.events_appended == 0
    assert (state / "current.json").read_text() == text
    _check_agrees(conn, state)


def test_unchanged_workstreams_keep_their_dag_files_between_run_exports(
        conn: apsw.Connection, project: Project) -> None:
    cache: dict[str, str] = {}
    state = project.state_dir
    assert "dag_ws.json" in exports.export(conn, state, full=False, cache=cache).files_written
    again = exports.export(conn, state, full=False, cache=cache)
    assert again.workstreams_skipped == ["ws"] and "dag_ws.json" not in again.files_written
    scheduler.tick(conn, T0, _ctx(project.root))
    changed = exports.export(conn, state, full=False, cache=cache)
    assert "dag_ws.json" in changed.files_written
    assert {n["task_id"]: n["status"] for n in _load(state, "dag_ws.json")["nodes"]}["a"] == \
        "queued"


KILL_BETWEEN_RENAME_AND_APPEND = """
import os, sys
from pathlib import Path
from kernel.observe import exports
from kernel.store import schema
def die(*args, **kwargs):
    os._exit(9)
exports._append_events = die
conn = schema.connect(sys.argv[1], readonly=True)
exports.export(conn, Path(sys.argv[2]))
"""


def test_a_kill_between_the_rename_and_the_append_loses_nothing(conn: apsw.Connection,
                                                                project: Project) -> None:
    state = project.state_dir
    exports.export(conn, state)
    before = len(_jsonl(state))
    scheduler.tick(conn, T0, _ctx(project.root))       # new events the killed export misses
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAME_AND_APPEND,
                           str(project.db_path), str(state)], cwd=REPO, capture_output=True)
    assert proc.returncode == 9, proc.stderr
    current = _load(state, "current.json")
    assert current["last_event_seq"] == db.scalar(conn, "SELECT max(seq) FROM event")
    assert len(_jsonl(state)) == before < current["last_event_seq"]   # renamed, not appended
    exports.export(conn, state)
    _check_agrees(conn, state)


def test_a_torn_last_line_and_a_leftover_tmp_are_repaired(conn: apsw.Connection,
                                                          project: Project) -> None:
    state = project.state_dir
    exports.export(conn, state)
    scheduler.tick(conn, T0, _ctx(project.root))
    with open(state / exports.TRANSITIONS, "a") as fh:   # a process died mid-append
        fh.write('{"seq": 99, "event": "task_qu')
    (state / "current.json.tmp").write_text("{ half a docu")
    exports.export(conn, state)
    _check_agrees(conn, state)


def test_concurrent_exports_do_not_duplicate_events(conn: apsw.Connection,
                                                    project: Project) -> None:
    scheduler.tick(conn, T0, _ctx(project.root))
    errors: list[BaseException] = []

    def export_once() -> None:
        c = schema.connect(project.db_path, readonly=True)
        try:
            exports.export(c, project.state_dir)
        except BaseException as exc:   # pragma: no cover - reported below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=export_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _check_agrees(conn, project.state_dir)


def test_a_stale_index_is_not_used(conn: apsw.Connection, project: Project) -> None:
    state = project.state_dir
    exports.export(conn, state, now="2026-01-01T00:00:00.000Z")
    assert exports.read_view(state, "by_status.json")["_read_from"] == "by_status.json"
    current = _load(state, "current.json")
    current["timestamp"] = "2026-01-01T00:01:01.000Z"   # current.json moved on; index did not
    (state / "current.json").write_text(json.dumps(current))
    assert exports.read_view(state, "by_status.json")["_read_from"] == "current.json"


def test_an_events_file_that_diverged_from_the_database_is_set_aside_and_written_again(
        conn: apsw.Connection, project: Project) -> None:
    """The database wins: a file holding an event the database does not have (a newer
    database's, a power cut's) is kept as evidence under another name, and written again."""
    state = project.state_dir
    exports.export(conn, state)
    written = _jsonl(state)
    with open(state / exports.TRANSITIONS, "a") as fh:
        fh.write(json.dumps({"seq": 10_000, "event": "from_a_newer_database"}) + "\n")
    report = exports.export(conn, state)
    assert report.warnings and "no longer matched" in report.warnings[0]
    [aside] = state.glob(exports.TRANSITIONS + ".diverged-*")
    assert json.loads(aside.read_text().splitlines()[-1])["seq"] == 10_000
    assert _jsonl(state) == written and report.events_appended == len(written)
    again = exports.export(conn, state)
    assert again.warnings == [] and again.events_appended == 0


def test_a_real_run_and_an_operator_command_keep_the_views_current(tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_project(root, [task("a"), task("b", deps=["a"]), task("c", command="false"),
                        task("d", deps=["c"])])
    proc = run(root, workers=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    state = root / ".state"
    conn = schema.connect(state / "kernel.db", readonly=True)
    try:
        current = _check_agrees(conn, state)
        assert current["counts"] == {"completed": 2, "failed": 1, "pending": 1}
        metrics = _load(state, "metrics.json")       # written at the end of the run
        _validate(metrics, "metrics")
        for name in ("pending", "running", "completed", "failed"):
            assert metrics["tasks"][name] == current["counts"].get(name, 0)
        workers = {w["state"] for w in current["workers"]}
        assert metrics["workers"]["busy"] == 0 and workers == {"shutdown"}
        assert {t["task_id"]: t["waiting_for"] for t in current["tasks"]}["d"] == ["c"]
        retried = orch("--root", str(root), "retry", "c")
        assert retried.returncode == 0, retried.stderr
        current = _check_agrees(conn, state)
        assert {t["task_id"]: t["state"] for t in current["tasks"]}["c"] == "pending"
    finally:
        conn.close()


def test_orch_export_rebuilds_deleted_views(tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_project(root, [task("a"), task("b", deps=["a"])])
    assert run(root, workers=1).returncode == 0
    state = root / ".state"
    for name in ("current.json", "transitions.jsonl", "by_status.json", "dag_ws.json"):
        (state / name).unlink()
    proc = orch("--root", str(root), "--json", "export")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tasks"] == 2 and report["events_appended"] == report["last_event_seq"]
    conn = schema.connect(state / "kernel.db", readonly=True)
    try:
        _check_agrees(conn, state)
    finally:
        conn.close()


def test_views_can_be_turned_off(tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_project(root, [task("a")], toml_extra="[views]\nexport = false\n")
    assert run(root, workers=1).returncode == 0
    assert not (root / ".state" / "current.json").exists()


def test_a_rebuilt_events_file_includes_the_rotated_events(conn: apsw.Connection,
                                                           project: Project) -> None:
    """The events file is the whole log: after `orch audit rotate` moved old events into the
    archives, deleting transitions.jsonl and exporting writes the archived events too."""
    from kernel.observe import archive
    from kernel.store.machines import transition_in_tx

    with db.write_tx(conn):     # one more event, young, after the old history of the fixture
        transition_in_tx(conn, "task", "a", "queued", "scheduler_assigned",
                         {"at": iso(T0 + 200 * 86400)})
    everything = _db_events(conn)
    result = archive.rotate(conn, eventlog.archive_dir(project.state_dir),
                            now=T0 + 200 * 86400)
    assert result["events"] > 0
    live_first = db.scalar(conn, "SELECT min(seq) FROM event")
    assert live_first > 1
    exports.export(conn, project.state_dir)
    assert _jsonl(project.state_dir)[:len(everything)] == everything
    assert [e["seq"] for e in _jsonl(project.state_dir)] == list(
        range(1, db.scalar(conn, "SELECT max(seq) FROM event") + 1))


@pytest.mark.parametrize("ids", [["a", "b"], ['a","b'], ['q"uote', "back\\slash"], ["tab\tx"],
                                 ["ünï"]])
def test_waiting_for_lists_are_valid_json_whatever_the_ids(ids: list[str]) -> None:
    assert json.loads(view_documents._json_strings(ids)) == ids


def test_orch_load_writes_the_views(tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_project(root, [task("a"), task("b", deps=["a"])])
    state = root / ".state"
    current = _load(state, "current.json")
    assert {t["task_id"]: t["waiting_for"] for t in current["tasks"]} == {"a": [], "b": ["a"]}
    assert [s["parallel_tasks"] for s in _load(state, "execution_plan_ws.json")["stages"]] == [
        ["a"], ["b"]]


def test_one_renderer_lays_out_and_writes_every_state_document(tmp_path: Path) -> None:
    doc = {"b": [{"y": 1, "x": "ü"}, {"y": 2}], "a": 1, "edges": [{"to": "b", "from": "a"}],
           "c": {"k2": [1], "k1": {"z": 1}}, "d": {"n": 1}, "e": [],
           "rows": documents.RawRows(['{"id":"t1"}', '{"id":"t2"}'])}
    text = documents.render(doc)
    assert text == ('{\n "a": 1,\n "b": [\n  {"x":"ü","y":1},\n  {"y":2}\n ],\n'
                    ' "c": {\n  "k1":{"z":1},\n  "k2":[1]\n },\n "d": {"n":1},\n "e": [],\n'
                    ' "edges": [{"from":"a","to":"b"}],\n'
                    ' "rows": [\n  {"id":"t1"},\n  {"id":"t2"}\n ]\n}\n')
    assert json.loads(text) == {**doc, "rows": [{"id": "t1"}, {"id": "t2"}]}
    documents.write_document(tmp_path / "view.json", doc)
    documents.write_document(tmp_path / "metrics.json", {"b": {"y": 1}, "a": "ü"}, indented=True)
    assert (tmp_path / "view.json").read_text() == text
    assert (tmp_path / "metrics.json").read_text() == json.dumps(
        {"b": {"y": 1}, "a": "ü"}, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "view.json"]
    version = view_models.VIEWS_SCHEMA_VERSION
    assert documents.header("by-status", version) == {
        "schema_version": version, "schema_url": _schema("by-status")["$id"]}


def test_the_exported_indices_are_the_renderers_text(conn: apsw.Connection,
                                                     project: Project) -> None:
    state = project.state_dir
    exports.export(conn, state)
    for name in ("by_status.json", "by_workstream.json", "by_worker.json",
                 "checkpoints/ws_latest.json", "dag_ws.json", "execution_plan_ws.json"):
        text = (state / name).read_text()
        assert text == documents.render(json.loads(text)), name
