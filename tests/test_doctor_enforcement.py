"""`orch doctor` sees lost enforcement (dropped or altered triggers and views, oversubscribed
leases, a fencing token gone backwards, a log cut at either end), `--repair` puts the shipped
schema back, `orch replay` says when it is partial, doctor never ends in a traceback, and a
routine cancel of a running task never raises a corruption alarm.

Real SQLite files; the damage is planted with plain SQL on a raw connection (no kernel code in
between), as a careless client would; doctor runs in-process or as the real `orch` script."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from kernel.base.clock import iso
from kernel.maintain.doctor_checks import normalise_sql, shipped_schema
from kernel.store import db
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project

from .conftest import orch, orch_json, run_cli
from .e2e import events, make_project, query, sleep_cmd, start_run, stop, task, wait_for

DAY = 86400.0


@contextlib.contextmanager
def raw(project: Project) -> Iterator[apsw.Connection]:
    """A plain connection to the project's database: no pragmas, no migration, no triggers
    recreated; foreign keys off (SQLite's default), autocommit."""
    conn = apsw.Connection(str(project.db_path))
    try:
        yield conn
    finally:
        conn.close()


def doctor(project: Project, capsys: pytest.CaptureFixture[str], *args: str
           ) -> tuple[int, dict[str, Any]]:
    code = run_cli("--root", str(project.root), "--json", "doctor", *args)
    return code, json.loads(capsys.readouterr().out)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def failed(report: dict[str, Any]) -> set[str]:
    return {c["name"] for c in report["checks"] if c["status"] == "fail"}


def with_tasks(project: Project, *task_ids: str) -> None:
    conn = project.connect()
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
            for task_id in task_ids:
                conn.execute("INSERT INTO task (task_id, workstream_id) VALUES (?, 'ws')",
                             (task_id,))
    finally:
        conn.close()


# ------------------------------------------------------------------------------ schema drift


def test_a_fresh_project_matches_the_shipped_schema(project: Project, capsys) -> None:
    code, report = doctor(project, capsys)
    assert code == 0, failed(report)
    checks = by_name(report)
    for name in ("schema_matches_shipped", "migrations_apply", "event_log_start_explained",
                 "event_log_end_intact", "invariant:pool_within_capacity",
                 "invariant:exclusive_single_holder", "invariant:max_holders_respected",
                 "invariant:generation_fences_attempts"):
        assert checks[name]["status"] == "ok", checks[name]


def test_layout_comments_and_case_are_not_drift(project: Project, capsys) -> None:
    """A view recreated with the same body in another layout is the same view: no alarm."""
    body = shipped_schema()["task_state_count"].sql
    assert normalise_sql(body) == normalise_sql(
        "-- mine\n" + body.upper().replace(" ", "\n  ") + " ;")
    with raw(project) as conn:
        conn.execute("DROP VIEW task_state_count")
        conn.execute(body.replace("SELECT", "select /* same */\n   ", 1))
    code, report = doctor(project, capsys)
    assert code == 0 and by_name(report)["schema_matches_shipped"]["status"] == "ok"


def test_dropped_and_altered_enforcement_is_named_and_repaired(project: Project,
                                                               capsys) -> None:
    with_tasks(project, "t1", "t2")
    with raw(project) as conn:
        conn.execute("DROP TRIGGER lease_guard_pool")
        conn.execute("DROP TRIGGER task_illegal_transition")
        conn.execute("DROP VIEW ready_task")
        conn.execute("CREATE VIEW ready_task AS SELECT task_id, workstream_id, state, priority, "
                     "critical, estimated_duration_seconds, created_at, queued_at FROM task")
        conn.execute("DROP INDEX lease_held")
        conn.execute("CREATE TRIGGER sneaky AFTER UPDATE ON task BEGIN SELECT 1; END")
        conn.execute("CREATE INDEX my_own_index ON task (name)")
    code, report = doctor(project, capsys)
    assert code == 1
    check = by_name(report)["schema_matches_shipped"]
    assert check["status"] == "fail"
    problems = {r["name"]: r["problem"] for r in check["rows"]}
    assert problems == {"lease_guard_pool": "missing", "task_illegal_transition": "missing",
                        "ready_task": "altered", "lease_held": "missing", "sneaky": "extra",
                        "my_own_index": "extra"}
    for name in problems:
        assert name in check["detail"]
    assert "--repair" in check["hint"]

    code, report = doctor(project, capsys, "--repair")
    schema = report["repair"]["schema"]
    assert sorted(schema["recreated"]) == ["index lease_held", "trigger lease_guard_pool",
                                           "trigger task_illegal_transition", "view ready_task"]
    assert schema["failed"] == []
    # An extra trigger is named, never dropped; an extra index only warns.
    assert [(n["name"], n["type"]) for n in schema["not_repaired"]] == [("sneaky", "trigger")]
    check = by_name(report)["schema_matches_shipped"]
    assert check["status"] == "fail" and [r["name"] for r in check["rows"]] == [
        "sneaky", "my_own_index"]
    assert code == 1

    with raw(project) as conn:
        conn.execute("DROP TRIGGER sneaky")
        shipped = shipped_schema()
        for name in ("ready_task", "lease_guard_pool", "task_illegal_transition"):
            sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (name,)).fetchone()
            assert sql == (shipped[name].sql,)
    code, report = doctor(project, capsys)
    assert code == 0 and by_name(report)["schema_matches_shipped"]["status"] == "warn"
    # The enforcement is back: an illegal transition is refused again.
    conn = project.connect()
    try:
        with pytest.raises(apsw.ConstraintError, match="illegal task transition"):
            conn.execute("UPDATE task SET state = 'completed', transition_trigger = 'x' "
                         "WHERE task_id = 't1'")
    finally:
        conn.close()


def test_a_missing_table_is_reported_never_recreated(project: Project, capsys) -> None:
    with raw(project) as conn:
        conn.execute("DROP TABLE resource_bucket")
    code, report = doctor(project, capsys, "--repair")
    assert code == 1
    check = by_name(report)["schema_matches_shipped"]
    assert {"name": "resource_bucket", "type": "table", "problem": "missing"} in check["rows"]
    assert "orch restore" in check["hint"]
    assert [n["name"] for n in report["repair"]["schema"]["not_repaired"]] == ["resource_bucket"]
    with raw(project) as conn:
        assert conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'resource_bucket'"
                            ).fetchall() == []


# ------------------------------------------------------- doctor never ends in a traceback


def test_a_lowered_user_version_is_reported_and_set_back(project: Project) -> None:
    with raw(project) as conn:
        conn.pragma("user_version", 3)
    proc = orch("--root", str(project.root), "--json", "doctor")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3  # refused before anything is written (kernel.db)
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "schema_damaged"
    assert "user_version = " in error["hint"]
    code, report = orch_json("--root", str(project.root), "doctor", "--repair")
    assert report["repair"]["schema"]["user_version"] == {"from": 3,
                                                          "to": db.latest_schema_version()}
    assert code == 0 and report["ok"]
    assert orch_json("--root", str(project.root), "doctor")[0] == 0


def test_dropped_tables_and_views_fail_their_checks_without_a_traceback(
        project: Project, capsys) -> None:
    with_tasks(project, "t1")
    with raw(project) as conn:
        conn.execute("DROP TABLE task_dependency")
        conn.execute("DROP TABLE lease")
        conn.execute("DROP VIEW ready_task")
    code, report = doctor(project, capsys)  # in-process: an exception would fail the test
    assert code == 1
    checks = by_name(report)
    for name in ("invariant:queued_dependencies_completed", "invariant:no_dependency_cycle",
                 "invariant:pool_within_capacity", "invariant:generation_fences_attempts"):
        assert checks[name]["status"] == "fail", name
        assert checks[name]["detail"].startswith("could not run:"), checks[name]
        assert "no such table" in checks[name]["detail"]
    assert checks["invariant:running_iff_worker"]["status"] == "ok"
    rows = checks["schema_matches_shipped"]["rows"]
    assert {("task_dependency", "missing"), ("lease", "missing"), ("ready_task", "missing")} \
        <= {(r["name"], r["problem"]) for r in rows}
    # As a user runs it: a report and exit 1, never a traceback.
    proc = orch("--root", str(project.root), "doctor")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "could not run" in proc.stdout


# ------------------------------------------------------------------------------------ leases


def _leases(project: Project) -> None:
    """Resources gpu (pool of 4), db (exclusive), slots (shared, at most 2 holders), a and b
    (conflicting); tasks t1..t4; leases the guards accept: t1 and t2 hold 2 gpu units each, t1
    holds db, t1 and t2 hold slots, t1 holds a."""
    with_tasks(project, "t1", "t2", "t3", "t4")
    conn = project.connect()
    now, later = iso(time.time()), iso(time.time() + 3600)
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO resource (resource_id, type, capacity, max_holders) VALUES "
                         "('gpu', 'pooled', 4, -1), ('db', 'exclusive', NULL, 1), "
                         "('slots', 'shared', NULL, 2), ('a', 'shared', NULL, -1), "
                         "('b', 'shared', NULL, -1)")
            conn.execute("INSERT INTO resource_conflict VALUES ('a', 'b')")
            for resource_id, task_id, mode, amount in (
                    ("gpu", "t1", "units", 2), ("gpu", "t2", "units", 2),
                    ("db", "t1", "exclusive", 1), ("slots", "t1", "shared", 1),
                    ("slots", "t2", "shared", 1), ("a", "t1", "shared", 1)):
                conn.execute("INSERT INTO lease (resource_id, task_id, owner, mode, amount, "
                             "generation, acquired_at, expires_at) VALUES (?, ?, 'w', ?, ?, 0, "
                             "?, ?)", (resource_id, task_id, mode, amount, now, later))
            # The guards refuse what the planting below does by UPDATE.
            with pytest.raises(apsw.ConstraintError, match="lease refused"):
                conn.execute("INSERT INTO lease (resource_id, task_id, owner, mode, amount, "
                             "generation, acquired_at, expires_at) VALUES ('db', 't3', 'w', "
                             "'shared', 1, 0, ?, ?)", (now, later))
    finally:
        conn.close()


def test_lease_guards_written_around_are_found(project: Project, capsys) -> None:
    _leases(project)
    code, report = doctor(project, capsys)
    assert code == 0, failed(report)
    with raw(project) as conn:   # the guards check INSERT only: an UPDATE walks around them
        conn.execute("UPDATE lease SET amount = 3 WHERE resource_id = 'gpu' AND task_id = 't2'")
        conn.execute("UPDATE lease SET task_id = 't3' WHERE resource_id = 'slots' "
                     "AND task_id = 't2'")
        for guard in ("exclusive", "shared", "max_holders", "conflicts"):
            conn.execute(f"DROP TRIGGER lease_guard_{guard}")
        conn.execute("INSERT INTO lease (resource_id, task_id, owner, mode, amount, generation, "
                     "acquired_at, expires_at) SELECT 'slots', 't4', 'w', 'shared', 1, 0, "
                     "acquired_at, expires_at FROM lease WHERE resource_id = 'db'")
        conn.execute("INSERT INTO lease (resource_id, task_id, owner, mode, amount, generation, "
                     "acquired_at, expires_at) SELECT 'db', 't2', 'w', 'exclusive', 1, 0, "
                     "acquired_at, expires_at FROM lease WHERE resource_id = 'db'")
        conn.execute("INSERT INTO lease (resource_id, task_id, owner, mode, amount, generation, "
                     "acquired_at, expires_at) SELECT 'b', 't2', 'w', 'shared', 1, 0, "
                     "acquired_at, expires_at FROM lease WHERE resource_id = 'db' LIMIT 1")
    code, report = doctor(project, capsys)
    assert code == 1
    checks = by_name(report)
    pool = checks["invariant:pool_within_capacity"]
    assert pool["status"] == "fail" and pool["rows"][0]["resource_id"] == "gpu"
    assert pool["rows"][0]["held"] == 5 and pool["rows"][0]["capacity"] == 4
    exclusive = checks["invariant:exclusive_single_holder"]
    assert [(r["resource_id"], r["holders"]) for r in exclusive["rows"]] == [("db", 2)]
    holders = checks["invariant:max_holders_respected"]
    assert sorted((r["resource_id"], r["holders"], r["max_holders"]) for r in holders["rows"]) \
        == [("db", 2, 1), ("slots", 3, 2)]
    conflict = checks["invariant:no_conflicting_holders"]
    assert [(r["resource_id"], r["holder"], r["conflicts_with"], r["other_holder"])
            for r in conflict["rows"]] == [("a", "t1", "b", "t2")]
    assert "lease_guard" in pool["hint"]
    assert {r["name"] for r in checks["schema_matches_shipped"]["rows"]} == {
        "lease_guard_exclusive", "lease_guard_shared", "lease_guard_max_holders",
        "lease_guard_conflicts"}


# ---------------------------------------------------------------------------------- fencing


def test_a_fencing_generation_below_an_attempt_is_found(project: Project, capsys) -> None:
    with_tasks(project, "t1")
    with raw(project) as conn:
        conn.execute("UPDATE task SET generation = 2 WHERE task_id = 't1'")
        conn.execute("INSERT INTO attempt (task_id, attempt_no, generation, started_at, "
                     "finished_at, outcome) VALUES ('t1', 1, 1, '2026-01-01T00:00:00.000Z', "
                     "'2026-01-01T00:00:01.000Z', 'lost'), ('t1', 2, 2, "
                     "'2026-01-01T00:00:02.000Z', '2026-01-01T00:00:03.000Z', 'failed')")
    code, report = doctor(project, capsys)
    assert code == 0, failed(report)
    with raw(project) as conn:
        conn.execute("UPDATE task SET generation = 1 WHERE task_id = 't1'")
    code, report = doctor(project, capsys)
    assert code == 1
    check = by_name(report)["invariant:generation_fences_attempts"]
    assert check["status"] == "fail" and "State-Corruption" in check["hint"]
    assert [(r["kind"], r["task_id"], r["generation"], r["task_generation"])
            for r in check["rows"]] == [("attempt", "t1", 2, 1)]
    with raw(project) as conn:   # two claims with one token: a stale report would pass
        conn.execute("UPDATE task SET generation = 2 WHERE task_id = 't1'")
        conn.execute("UPDATE attempt SET generation = 1 WHERE attempt_no = 2")
    code, report = doctor(project, capsys)
    rows = by_name(report)["invariant:generation_fences_attempts"]["rows"]
    assert code == 1 and [(r["kind"], r["generation"]) for r in rows] == [
        ("attempts_share_generation", 1)]


# -------------------------------------------------------------------------------- event log


def _drop_events(project: Project, where: str) -> None:
    """Delete events the way only a hand with the append-only trigger dropped can, then put
    the trigger back (so only the log itself is damaged)."""
    trigger = shipped_schema()["event_append_only_delete"].sql
    with raw(project) as conn:
        conn.execute("DROP TRIGGER event_append_only_delete")
        conn.execute(f"DELETE FROM event WHERE {where}")
        conn.execute(trigger)


def test_a_log_cut_at_the_start_fails_and_replay_says_it_is_partial(project: Project,
                                                                     capsys) -> None:
    with_tasks(project, "t1", "t2")   # seq 1..3
    conn = project.connect()
    try:
        with db.write_tx(conn):
            transition_in_tx(conn, "task", "t2", "queued", "scheduler_assigned")   # seq 4
    finally:
        conn.close()
    _drop_events(project, "seq <= 2")
    code, report = doctor(project, capsys)
    assert code == 1
    checks = by_name(report)
    start = checks["event_log_start_explained"]
    assert start["status"] == "fail" and "seq 1 to 2" in start["detail"]
    assert start["rows"] == [{"live_first_seq": 3, "rotated_through": 0,
                              "missing_first_seq": 1, "missing_last_seq": 2}]
    assert checks["event_log_end_intact"]["status"] == "ok"
    assert checks["invariant:event_seq_gapless"]["status"] == "ok"
    proc = orch("--root", str(project.root), "replay", "--at", iso(time.time() + 60))
    assert proc.returncode == 0
    assert "PARTIAL, complete only from seq 3" in proc.stdout
    assert "the log start is missing" in proc.stdout
    code, data = orch_json("--root", str(project.root), "replay", "--at", iso(time.time() + 60))
    assert data["complete"] is False and data["partial_from_seq"] == 3
    assert data["log_start_missing"] is True


def test_a_rotated_start_is_explained_and_replay_without_its_archives_is_partial(
        project: Project, capsys) -> None:
    old = time.time() - 200 * DAY
    conn = project.connect()
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO workstream (workstream_id, created_at, updated_at, "
                         "transition_metadata) VALUES ('ws', ?1, ?1, json_object('at', ?1))",
                         (iso(old),))
            conn.execute("INSERT INTO task (task_id, workstream_id, created_at, updated_at, "
                         "transition_metadata) VALUES ('t1', 'ws', ?1, ?1, "
                         "json_object('at', ?1))", (iso(old),))
        with db.write_tx(conn):
            transition_in_tx(conn, "task", "t1", "queued", "scheduler_assigned")
    finally:
        conn.close()
    assert run_cli("--root", str(project.root), "audit", "rotate") == 0
    capsys.readouterr()
    code, report = doctor(project, capsys)
    assert code == 0, failed(report)
    start = by_name(report)["event_log_start_explained"]
    assert "moved into archive files" in start["detail"]
    code, data = orch_json("--root", str(project.root), "replay", "--at", iso(time.time() + 60))
    assert data["complete"] is True and data["partial_from_seq"] is None
    for path in (project.state_dir / "archive" / "events").iterdir():
        path.unlink()
    code, data = orch_json("--root", str(project.root), "replay", "--at", iso(time.time() + 60))
    assert code == 0 and data["complete"] is False and data["partial_from_seq"] == 3
    assert data["log_start_missing"] is False
    assert "archived" in data["note"] and "complete only from seq 3" in data["note"]


def test_a_log_cut_at_the_end_fails(project: Project, capsys) -> None:
    with_tasks(project, "t1", "t2")   # seq 1..3
    _drop_events(project, "seq = 3")
    code, report = doctor(project, capsys)
    assert code == 1
    check = by_name(report)["event_log_end_intact"]
    assert check["status"] == "fail" and "1 event(s) deleted" in check["detail"]
    assert check["rows"] == [{"last_seq": 2, "last_assigned_seq": 3}]
    assert by_name(report)["invariant:event_seq_gapless"]["status"] == "ok"


# --------------------------------------------------- a routine cancel is not a corruption


@pytest.mark.slow
def test_cancelling_a_running_task_never_raises_a_corruption_alarm(tmp_path: Path) -> None:
    """The user's steps: run a long task, cancel it while it runs; the worker's late result is
    rejected and is the task's last event; `orch doctor` still passes."""
    root = make_project(tmp_path / "p", [task("sleeper", command=sleep_cmd(30), timeout=120)])
    proc = start_run(root, workers=1)
    try:
        wait_for(lambda: query(root, "SELECT 1 FROM task WHERE task_id = 'sleeper' "
                                     "AND state = 'running'"),
                 timeout=60, interval=0.1, message="the task to run")
        cancel = orch("--root", str(root), "cancel", "sleeper")
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        wait_for(lambda: query(root, "SELECT 1 FROM event WHERE task_id = 'sleeper' "
                                     "AND event = 'stale_result_rejected'"),
                 timeout=60, interval=0.1, message="the worker's late result")
        stop(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    evs = events(root, task_id="sleeper")
    assert evs[-1]["event"] == "stale_result_rejected"
    assert [e["to_state"] for e in evs if e["to_state"]][-1] == "cancelled"
    code, report = orch_json("--root", str(root), "doctor")
    assert code == 0, [c for c in report["checks"] if c["status"] != "ok"]
    assert by_name(report)["invariant:log_agrees_with_tables"]["status"] == "ok"
