"""Audit retention and reports (AUDIT-001, AUDIT-002): orch audit rotate | query | verify |
report, replay across archives, and orch why after rotation. Real SQLite files, real runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import apsw
import pytest

from kernel.base import identity
from kernel.base.clock import iso
from kernel.base.errors import OrchError
from kernel.observe import archive, audit
from kernel.observe.replay import replay
from kernel.observe.status import why
from kernel.runtime import actions
from kernel.store import db, eventlog
from kernel.store.events import EVENT_FIELDS
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project

from .conftest import logical_dump, orch, orch_json, run_cli
from .e2e import make_project, py, query, run, task

DAY = 86400.0
NOW = time.time()
USER = identity.operator_name()


def _ago(days: float) -> str:
    return iso(NOW - days * DAY)


def _history(conn: apsw.Connection) -> None:
    """Events from 200 days ago to yesterday, every timestamp set by the test."""
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id, created_at, updated_at, "
                     "transition_metadata) VALUES ('ws', ?, ?, json_object('at', ?))",
                     (_ago(200), _ago(200), _ago(200)))
        for task_id in ("a", "b", "c"):
            conn.execute("INSERT INTO task (task_id, workstream_id, created_at, updated_at, "
                         "transition_metadata) VALUES (?, 'ws', ?, ?, json_object('at', ?))",
                         (task_id, _ago(200), _ago(200), _ago(200)))
        conn.execute("INSERT INTO worker (worker_id, registered_at, updated_at, "
                     "transition_metadata) VALUES ('w1', ?, ?, json_object('at', ?))",
                     (_ago(120), _ago(120), _ago(120)))
    with db.write_tx(conn):
        transition_in_tx(conn, "worker", "w1", "idle", "registration_complete", {"at": _ago(120)})
        transition_in_tx(conn, "task", "a", "queued", "scheduler_assigned", {"at": _ago(150)})
        transition_in_tx(conn, "workstream", "ws", "ready", "all_tasks_created", {"at": _ago(150)})
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "running", "worker_started", {"at": _ago(100)},
                         worker_id="w1", generation=1)
        transition_in_tx(conn, "worker", "w1", "busy", "task_assigned", {"at": _ago(100)})
        transition_in_tx(conn, "workstream", "ws", "executing", "first_task_started",
                         {"at": _ago(100)})
    actions.cancel_tasks(conn, ["b"], now=_ago(95))
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "validating", "execution_completed", {"at": _ago(92)},
                         worker_id=None)
        transition_in_tx(conn, "task", "a", "completed", "validation_passed", {"at": _ago(89)},
                         completed_at=_ago(89))
        transition_in_tx(conn, "worker", "w1", "idle", "task_completed", {"at": _ago(89)})
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "c", "queued", "scheduler_assigned", {"at": _ago(1)})


@pytest.fixture
def old_project(project: Project) -> Project:
    conn = project.connect()
    try:
        _history(conn)
    finally:
        conn.close()
    return project


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    """The CLI in-process with --json (faster than a subprocess): exit code and document."""
    capsys.readouterr()
    code = run_cli("--json", *args)
    return code, json.loads(capsys.readouterr().out)


def _connect(project: Project, readonly: bool = False) -> apsw.Connection:
    return project.connect(readonly=readonly)


def _all_events(project: Project) -> list[dict[str, Any]]:
    return query(project.root, "SELECT * FROM event ORDER BY seq")


def _archived(project: Project) -> dict[str, list[tuple[Any, ...]]]:
    """Every archive file's rows, by file name (opened read-only, as any client would)."""
    out = {}
    for path in eventlog.archive_files(eventlog.archive_dir(project.state_dir)).values():
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            out[path.name] = [tuple(r) for r in conn.execute(
                f"SELECT {', '.join(EVENT_FIELDS)} FROM event ORDER BY seq")]
        finally:
            conn.close()
    return out


def _rows(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(e[f] for f in EVENT_FIELDS) for e in events]


# ----------------------------------------------------------------------------------- rotate


def test_rotate_moves_exactly_the_events_older_than_the_cut(old_project: Project) -> None:
    before = _all_events(old_project)
    cut = _ago(90)
    old = [e for e in before if e["timestamp"] < cut]
    young = [e for e in before if e["timestamp"] >= cut]
    assert old and young and old[-1]["seq"] < young[0]["seq"]
    code, result = orch_json("--root", str(old_project.root), "audit", "rotate")
    assert code == 0, result
    assert (result["events"], result["first_seq"], result["last_seq"]) == (
        len(old), 1, old[-1]["seq"])
    after = _all_events(old_project)
    rotation = after[-1]
    assert rotation["event"] == "audit_rotated" and rotation["entity_type"] == "system"
    assert rotation["seq"] == before[-1]["seq"] + 1 == result["rotation_seq"]
    assert rotation["severity"] == "info"
    # The live log: exactly the young events, then the rotation event; seq contiguous.
    assert _rows(after[:-1]) == _rows(young)
    assert [e["seq"] for e in after] == list(range(old[-1]["seq"] + 1, rotation["seq"] + 1))
    # The archives: exactly the old events, each once, in the file of its month.
    files = _archived(old_project)
    months = sorted({e["timestamp"][:7] for e in old})
    assert sorted(files) == [f"events-{m}.sqlite" for m in months]
    for name, rows in files.items():
        assert {r[1][:7] for r in rows} == {name[7:14]}
    assert sorted(r for rows in files.values() for r in rows) == _rows(old)
    # The rotation event and event_archive record counts, seq ranges, files and checksums.
    meta = json.loads(rotation["metadata"])
    assert (meta["events"], meta["first_seq"], meta["last_seq"]) == (len(old), 1, old[-1]["seq"])
    assert meta["operator"] == USER and meta["older_than_days"] == 90
    assert meta["retention_override"] is False
    recorded = query(old_project.root, "SELECT * FROM event_archive ORDER BY month")
    assert [r["file"] for r in recorded] == [f["file"] for f in meta["files"]] == sorted(files)
    for rec in recorded:
        rows = files[rec["file"]]
        assert rec["rotation_seq"] == rotation["seq"]
        assert (rec["events"], rec["first_seq"], rec["last_seq"]) == (
            len(rows), rows[0][0], rows[-1][0])
        assert rec["batch_sha256"] == archive.content_sha256(rows)[0]
        path = eventlog.archive_dir(old_project.state_dir) / rec["file"]
        assert rec["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # The event log still takes new events (event_seq_gapless passes after the delete).
    conn = _connect(old_project)
    try:
        with db.write_tx(conn):
            transition_in_tx(conn, "task", "c", "cancelled", "user_cancelled", {"at": iso(NOW)})
        assert db.scalar(conn, "SELECT MAX(seq) FROM event") == rotation["seq"] + 1
    finally:
        conn.close()
    # Nothing more is old enough: a second rotation moves nothing and records nothing.
    conn = _connect(old_project)
    try:
        again = archive.rotate(conn, eventlog.archive_dir(old_project.state_dir))
    finally:
        conn.close()
    assert again["events"] == 0 and again["rotation_seq"] is None


def test_rotate_moves_only_a_prefix_so_nothing_young_is_moved(old_project: Project) -> None:
    conn = _connect(old_project)
    try:
        with db.write_tx(conn):  # a late writer's clock: an old stamp after young events
            conn.execute("INSERT INTO event (timestamp, event, event_type, severity, "
                         "entity_type, metadata) VALUES (?, 'late_stamp', 'test', 'info', "
                         "'system', '{}')", (_ago(300),))
        late = db.scalar(conn, "SELECT MAX(seq) FROM event")
        plan = archive.plan_rotation(conn, older_than_days=90)
        result = archive.rotate(conn, eventlog.archive_dir(old_project.state_dir))
        live = [r[0] for r in conn.execute("SELECT seq FROM event ORDER BY seq")]
    finally:
        conn.close()
    assert result["last_seq"] == plan.last_seq and late in live
    assert live == list(range(plan.last_seq + 1, late + 2))


def test_a_too_short_retention_is_refused_and_nothing_changes(old_project: Project,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    before = logical_dump(old_project.db_path)
    for older in ("30d", "89d", "12w", "2000h"):
        code, out = (orch_json if older == "30d" else partial(cli, capsys))(
            "--root", str(old_project.root), "audit", "rotate", "--older-than", older)
        assert code == 2, out
        assert out["error"]["code"] == "retention_too_short"
        assert "90 days" in out["error"]["message"]
        assert "--force-short-retention" in out["error"]["hint"]
    code, out = cli(capsys, "--root", str(old_project.root), "audit", "rotate",
                    "--older-than", "0d")
    assert code == 2 and "positive duration" in out["error"]["message"]
    code, out = cli(capsys, "--root", str(old_project.root), "audit", "rotate",
                    "--older-than", "soon")
    assert code == 2 and "e.g. 90d" in out["error"]["hint"]
    assert logical_dump(old_project.db_path) == before
    assert not eventlog.archive_dir(old_project.state_dir).exists()


def test_the_override_moves_younger_events_and_says_so(old_project: Project) -> None:
    code, result = orch_json("--root", str(old_project.root), "audit", "rotate",
                             "--older-than", "12h", "--force-short-retention")
    assert code == 0 and result["retention_override"] is True
    last = query(old_project.root, "SELECT * FROM event ORDER BY seq DESC LIMIT 1")[0]
    assert last["event"] == "audit_rotated" and last["severity"] == "warning"
    assert json.loads(last["metadata"])["retention_override"] is True
    # Every older event moved; the rotation event is the whole live log now.
    assert query(old_project.root, "SELECT COUNT(*) AS n FROM event")[0]["n"] == 1


def test_dry_run_changes_nothing(old_project: Project) -> None:
    before = logical_dump(old_project.db_path)
    proc = orch("--root", str(old_project.root), "audit", "rotate", "--dry-run")
    assert proc.returncode == 0 and "would move" in proc.stdout
    assert logical_dump(old_project.db_path) == before
    assert not eventlog.archive_dir(old_project.state_dir).exists()


def test_an_interrupted_rotation_loses_and_duplicates_nothing(old_project: Project) -> None:
    before = _rows([{**e} for e in _all_events(old_project)])
    directory = eventlog.archive_dir(old_project.state_dir)
    conn = _connect(old_project)
    try:
        plan = archive.plan_rotation(conn, older_than_days=90)
        # Step 1 ran (twice, even), then the process died before step 2.
        archive.write_archives(conn, plan, directory)
        files = archive.write_archives(conn, plan, directory)
        assert sum(f.events for f in files) == plan.events
        assert _rows(_all_events(old_project)) == before  # the live log is untouched
        check = archive.verify(conn, directory)
        assert check["ok"] and {f["status"] for f in check["files"].values()} == {"pending"}
        # The archived and live copies overlap now; readers still see every event once.
        union = eventlog.read_events(conn, directory)
        assert [e["seq"] for e in union] == [r[0] for r in before]
        # The rerun finishes the job.
        result = archive.rotate(conn, directory)
        assert result["events"] == plan.events and result["last_seq"] == plan.last_seq
        check = archive.verify(conn, directory)
        assert check["ok"] and {f["status"] for f in check["files"].values()} == {"ok"}
    finally:
        conn.close()
    archived = [r for rows in _archived(old_project).values() for r in rows]
    assert len(archived) == len({r[0] for r in archived}) == plan.events
    live = _rows(_all_events(old_project))
    assert sorted(archived) + live[:-1] == before


def test_a_rotation_that_lost_a_race_deletes_nothing(old_project: Project) -> None:
    directory = eventlog.archive_dir(old_project.state_dir)
    conn = _connect(old_project)
    try:
        plan = archive.plan_rotation(conn, older_than_days=90)
        files = archive.write_archives(conn, plan, directory)
        archive.rotate(conn, directory)  # another rotation commits first
        live = db.scalar(conn, "SELECT COUNT(*) FROM event")
        with pytest.raises(archive.OrchError, match="another rotation"):
            archive.commit_rotation(conn, plan, files)
        assert db.scalar(conn, "SELECT COUNT(*) FROM event") == live
        assert db.scalar(conn, "SELECT COUNT(DISTINCT rotation_seq) FROM event_archive") == 1
    finally:
        conn.close()


def test_events_are_deleted_only_by_a_rotation(old_project: Project) -> None:
    conn = _connect(old_project)
    try:
        with pytest.raises(apsw.ConstraintError, match="append-only"):
            conn.execute("DELETE FROM event WHERE seq = 1")
        # A marker alone is not enough: an event_archive row of that rotation must cover it.
        with pytest.raises(apsw.ConstraintError, match="append-only"), db.write_tx(conn):
            conn.execute("INSERT INTO event_rotation_marker VALUES (1, 999, 5, 'x')")
            conn.execute("DELETE FROM event WHERE seq = 1")
        assert db.scalar(conn, "SELECT MIN(seq) FROM event") == 1
        archive.rotate(conn, eventlog.archive_dir(old_project.state_dir))
        with pytest.raises(apsw.ConstraintError, match="append-only"):
            conn.execute("DELETE FROM event_archive")
        with pytest.raises(apsw.ConstraintError, match="append-only"):
            conn.execute("DELETE FROM event")
        assert db.scalar(conn, "SELECT COUNT(*) FROM event_rotation_marker") == 0
    finally:
        conn.close()


def test_a_rotation_leaves_only_the_archive_files_in_their_directory(
        old_project: Project) -> None:
    """Archives are opened with db.open_file: no writer lock file (nor journal) beside them."""
    code, result = orch_json("--root", str(old_project.root), "audit", "rotate")
    assert code == 0 and result["files"], result
    directory = eventlog.archive_dir(old_project.state_dir)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f["file"] for f in result["files"])


def test_a_file_that_is_not_an_archive_is_refused_by_the_reader(old_project: Project,
                                                                tmp_path: Path) -> None:
    garbage = tmp_path / "events-2020-01.sqlite"
    garbage.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(OrchError, match="cannot read the event archive") as raised, \
            eventlog.open_archive(garbage):
        pass
    assert raised.value.code == "archive_unreadable"
    with pytest.raises(OrchError) as raised, \
            eventlog.open_archive(tmp_path / "events-2020-02.sqlite"):
        pass
    assert raised.value.code == "archive_unreadable"
    assert not (tmp_path / "events-2020-02.sqlite").exists()   # read-only: never created
    with pytest.raises(OrchError, match="is not an orch event archive") as raised, \
            eventlog.open_archive(old_project.db_path):
        pass
    assert raised.value.code == "not_an_archive"


def test_list_events_is_the_live_part_of_the_one_reader(old_project: Project) -> None:
    assert run_cli("--root", str(old_project.root), "audit", "rotate") == 0
    directory = eventlog.archive_dir(old_project.state_dir)
    conn = _connect(old_project, readonly=True)
    try:
        live = audit.list_events(conn)
        both = eventlog.read_events(conn, directory)
        first_live = eventlog.live_first_seq(conn)
        assert first_live is not None and first_live > 1
        assert live == [{k: v for k, v in e.items() if k != "source"}
                        for e in both if e["source"] == "live"]
        assert [e["seq"] for e in live] == [e["seq"] for e in both if e["seq"] >= first_live]
        assert all(set(e) == set(EVENT_FIELDS) for e in live)
        assert eventlog.read_events(conn, directory, with_source=False) == [
            {k: v for k, v in e.items() if k != "source"} for e in both]
        assert audit.list_events(conn, since=first_live, limit=1) == live[1:2]
        assert audit.list_events(conn, limit=-1) == live   # as SQLite's LIMIT -1: no limit
        assert audit.list_events(conn, limit=0) == []
    finally:
        conn.close()


# ------------------------------------------------------------------------- reading archives


def test_audit_query_returns_live_and_archived_events_in_seq_order(
        old_project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    before = _all_events(old_project)
    root = str(old_project.root)
    assert run_cli("--root", root, "audit", "rotate") == 0
    code, out = cli(capsys, "--root", root, "audit", "query")
    assert code == 0
    seqs = [e["seq"] for e in out["events"]]
    assert seqs == list(range(1, before[-1]["seq"] + 2)) and out["count"] == len(seqs)
    assert _rows([{**e, "metadata": json.dumps(e["metadata"], separators=(",", ":"))}
                  for e in out["events"][:3]])[0][:13] == _rows(before[:1])[0][:13]
    sources = {e["source"] for e in out["events"]}
    assert "live" in sources and any(s.startswith("events-") for s in sources)
    _code, out = cli(capsys, "--root", root, "audit", "query", "--task", "a")
    assert [e["to_state"] for e in out["events"]] == [
        "pending", "queued", "running", "validating", "completed"]
    _code, out = cli(capsys, "--root", root, "audit", "query", "--event", "task_cancelled")
    assert [e["task_id"] for e in out["events"]] == ["b"]
    _code, out = cli(capsys, "--root", root, "audit", "query", "--from", _ago(151),
                           "--to", _ago(99))
    assert {e["timestamp"][:10] for e in out["events"]} <= {_ago(d)[:10] for d in range(99, 152)}
    assert [e["event"] for e in out["events"]][:2] == ["worker_registered", "task_queued"] or \
        len(out["events"]) >= 5
    _code, out = cli(capsys, "--root", root, "audit", "query", "--since-seq", "3", "--limit", "4")
    assert [e["seq"] for e in out["events"]] == [4, 5, 6, 7]
    proc = orch("--root", root, "audit", "query", "--task", "b")
    assert proc.returncode == 0 and "task_cancelled" in proc.stdout and "[events-" in proc.stdout
    code, out = cli(capsys, "--root", root, "audit", "query", "--from", "noon")
    assert code == 2 and out["error"]["code"] == "bad_timestamp"


def test_replay_reads_the_archives_across_the_boundary(old_project: Project) -> None:
    moments = [_ago(d) for d in (210, 199, 140, 97, 91, 90, 88, 0.5)]
    conn = _connect(old_project, readonly=True)
    try:
        expected = {m: replay(conn, m) for m in moments}
    finally:
        conn.close()
    assert run_cli("--root", str(old_project.root), "audit", "rotate") == 0
    directory = eventlog.archive_dir(old_project.state_dir)
    conn = _connect(old_project, readonly=True)
    try:
        for m in moments:
            got = replay(conn, m, archive_dir=directory)
            assert got == expected[m], m
        partial = replay(conn, _ago(0.5))
        assert partial["complete"] is False and "archived" in partial["note"]
    finally:
        conn.close()
    code, data = orch_json("--root", str(old_project.root), "replay", "--at", _ago(97))
    assert code == 0 and data["tasks"]["a"]["state"] == "running"
    assert data["tasks"]["b"]["state"] == "pending" and data["complete"] is True
    assert data["tasks"]["a"]["worker_id"] == "w1" and data["workers"]["w1"]["task_id"] == "a"
    # A lost archive makes the replay incomplete, and it says which file is missing.
    lost = sorted(directory.iterdir())[0]
    lost.unlink()
    conn = _connect(old_project, readonly=True)
    try:
        got = replay(conn, _ago(0.5), archive_dir=directory)
    finally:
        conn.close()
    assert got["complete"] is False and lost.name in got["note"]


def test_verify_checks_the_recorded_counts_and_checksums(old_project: Project,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = str(old_project.root)
    code, out = cli(capsys, "--root", root, "audit", "verify")
    assert code == 0 and out["ok"] and out["files"] == {}
    assert cli(capsys, "--root", root, "audit", "rotate")[0] == 0
    code, out = cli(capsys, "--root", root, "audit", "verify")
    assert code == 0 and out["ok"], out
    assert out["continuity"]["ok"] and all(f["status"] == "ok" for f in out["files"].values())
    capsys.readouterr()
    assert run_cli("--root", root, "audit", "verify") == 0
    assert "ok       continuity: " in capsys.readouterr().out
    # A damaged archive: one archived event changed behind orch's back.
    directory = eventlog.archive_dir(old_project.state_dir)
    victim = sorted(directory.iterdir())[0]
    conn = apsw.Connection(str(victim))
    conn.execute("DROP TRIGGER event_archive_no_update")
    conn.execute("UPDATE event SET event = 'forged' WHERE seq = (SELECT MIN(seq) FROM event)")
    conn.close()
    code, out = cli(capsys, "--root", root, "audit", "verify")
    assert code == 1 and not out["ok"]
    assert out["files"][victim.name]["status"] == "fail"
    # A lost archive.
    victim.unlink()
    code, out = cli(capsys, "--root", root, "audit", "verify")
    assert code == 1 and out["files"][victim.name]["problems"] == ["the file is missing"]
    assert out["continuity"]["ok"] is False


# ---------------------------------------------------------------------- a real run: report

FLAKY = """\
import pathlib, sys
p = pathlib.Path(sys.argv[1])
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
sys.exit(1 if n <= 1 else 0)
"""
FAIL = f"{sys.executable} -c 'import sys; print(3 * 7); sys.exit(1)'"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit") / "p"
    root.mkdir()
    make_project(root, [
        task("build", command=py("import time; time.sleep(0.2)"),
             resources={"git_repo_write": "exclusive"}),
        task("flaky", command=py(FLAKY, str(root / "flaky.count")), max_retries=1,
             retry_delay=0.05, resources={"cpu_cores": 1}),
        task("linted", post=["no_lint_errors"]),
        task("doomed", command=py("import sys; print('boom'); sys.exit(3)")),
        task("after", deps=["doomed"]),
        task("guarded", pre=["tests_passing"]),
    ], toml_extra=f'[rules]\nno_lint_errors = "{FAIL}"\ntests_passing = "{FAIL}"\n')
    proc = run(root, workers=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    orch("--root", str(root), "skip", "after", check=True)
    return root


def test_report_numbers_match_the_attempts_and_leases(real_run: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, rep = orch_json("--root", str(real_run), "audit", "report")
    assert code == 0, rep
    attempts = query(real_run, "SELECT *, (julianday(finished_at) - julianday(started_at)) "
                               "* 86400.0 AS secs FROM attempt ORDER BY task_id, attempt_no")
    leases = query(real_run, "SELECT *, (julianday(released_at) - julianday(acquired_at)) "
                             "* 86400.0 AS secs FROM lease ORDER BY lease_id")
    events = query(real_run, "SELECT COUNT(*) AS n FROM event")[0]["n"]
    s = rep["summary"]
    assert s["events"] == rep["events_read"] == events
    assert s["attempts"] == len(attempts) and s["leases"] == len(leases) >= 3
    assert s["attempt_seconds"] == pytest.approx(sum(a["secs"] for a in attempts), abs=0.01)
    assert s["lease_seconds"] == pytest.approx(sum(lease["secs"] for lease in leases), abs=0.01)
    assert s["workers"] == len({a["worker_id"] for a in attempts})
    assert s["operator_actions"] == 1
    for task_id, t in rep["tasks"].items():
        mine = [a for a in attempts if a["task_id"] == task_id]
        assert t["attempts"] == len(mine), task_id
        assert t["outcomes"] == [a["outcome"] for a in mine]
        assert t["workers"] == list(dict.fromkeys(a["worker_id"] for a in mine))
        assert t["attempt_seconds"] == pytest.approx(sum(a["secs"] for a in mine), abs=0.01)
        held = [lease for lease in leases if lease["task_id"] == task_id]
        assert len(t["leases"]) == len(held)
        assert sum(x["seconds_held"] for x in t["leases"]) == pytest.approx(
            sum(lease["secs"] for lease in held), abs=0.01)
        assert t["first_event"] <= t["last_event"]
    assert rep["tasks"]["flaky"]["outcomes"] == ["failed", "succeeded"]
    assert rep["tasks"]["doomed"]["state"] == "failed"
    assert rep["tasks"]["doomed"]["failure_mode"] == "Task-Failed"
    assert rep["tasks"]["after"]["operator_actions"][0]["trigger"] == "operator_skip"
    assert rep["tasks"]["after"]["operator_actions"][0]["operator"] == USER
    assert rep["actors"]["operators"][USER]["by_trigger"] == {"operator_skip": 1}
    ws = rep["workstreams"]["ws"]
    assert ws["attempts"] == len(attempts) and ws["tasks"] == 6
    assert ws["task_states"] == {"completed": 3, "failed": 3}
    assert ws["wall_seconds"] >= max(a["secs"] for a in attempts)
    by_res = rep["resources"]["by_resource"]
    assert set(by_res) == {lease["resource_id"] for lease in leases}
    assert by_res["git_repo_write"]["tasks"] == ["build"]
    proc = orch("--root", str(real_run), "audit", "report")
    assert proc.returncode == 0
    assert "flaky (ws): completed; attempts 2 [failed, succeeded]" in proc.stdout
    assert f"operator_skip by {USER}" in proc.stdout and "git_repo_write: " in proc.stdout
    # --since: only what happened from then on.
    code, later = cli(capsys, "--root", str(real_run), "audit", "report", "--since",
                      "2999-01-01")
    assert code == 0 and later["summary"]["attempts"] == later["summary"]["events"] == 0


def test_why_explains_failures_even_after_rotation(real_run: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(real_run, root)
    project = Project(root)
    expected = {
        "doomed": ["doomed failed after 1 attempt: its command failed (Task-Failed: exit code 3)",
                   "Attempt 1 on worker w-", "failed with exit code 3 (Task-Failed)."],
        "linted": ["linted failed: validation rule no_lint_errors failed: ",
                   "ran but failed validation (rule no_lint_errors).",
                   "Rule no_lint_errors printed (last 1 line): 21"],
        "guarded": ["guarded failed after 1 attempt: pre-execution rule tests_passing failed, "
                    "so its command never ran", "Rule tests_passing printed"],
    }

    def explain(task_id: str) -> dict[str, Any]:
        conn = project.connect(readonly=True)
        try:
            return why(conn, task_id, project.logs_dir)
        finally:
            conn.close()

    before = {task_id: explain(task_id) for task_id in expected}
    for task_id, pieces in expected.items():
        text = "\n".join(before[task_id]["sentences"])
        for piece in pieces:
            assert piece in text, text
        assert "post-execution validation failed: post-execution" not in text
        assert bool(before[task_id]["log_tail"]) is (task_id != "guarded")  # it never ran
    assert any("boom" in line for line in before["doomed"]["log_tail"])
    # Every event moves to the archives; the answers stay the same.
    conn = project.connect()
    try:
        result = archive.rotate(conn, eventlog.archive_dir(project.state_dir), older_than_days=1,
                                now=time.time() + 2 * DAY, allow_short_retention=True)
        assert result["events"] == db.scalar(conn, "SELECT MAX(seq) FROM event") - 1
    finally:
        conn.close()
    for task_id in expected:
        assert explain(task_id) == before[task_id]
    code, out = orch_json("--root", str(root), "why", "doomed")
    assert code == 0 and out["sentences"] == before["doomed"]["sentences"]
