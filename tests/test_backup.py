"""orch backup, bundle, restore and doctor --repair: real files, real processes, no mocks."""

from __future__ import annotations

import gzip
import io
import json
import os
import shlex
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from kernel.base import clock
from kernel.maintain.backup import backup, list_backups
from kernel.maintain.redact import DEFAULT_PATTERNS, redact_string, redact_text
from kernel.observe import audit, exports
from kernel.store import db
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project

from .conftest import REPO, logical_dump, orch, orch_json
from .e2e import make_project, py, run, task, wait_for

WRITER = r"""
import pathlib, sys, time
from kernel.store import db, schema
from kernel.store.machines import transition_in_tx

conn = schema.connect(sys.argv[1])
stop = pathlib.Path(sys.argv[2])
i = 0
while not stop.exists():
    i += 1
    with db.write_tx(conn):
        conn.execute("INSERT INTO worker (worker_id) VALUES (?)", (f"wr{i}",))
        transition_in_tx(conn, "worker", f"wr{i}", "idle", "registration_complete")
    if i == 1:
        print("started", flush=True)
    time.sleep(0.001)
conn.close()
print(i, flush=True)
"""


def _fill(project: Project, tasks: int = 300, size: int = 2000) -> None:
    """A workstream of ``tasks`` tasks with long descriptions: a database of many pages."""
    conn = project.connect()
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
            for i in range(tasks):
                conn.execute("INSERT INTO task (task_id, workstream_id, description) "
                             "VALUES (?, 'ws', ?)", (f"t{i:04d}", f"task {i} " + "x" * size))
    finally:
        conn.close()


def _max_seq(path: Path) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(db.scalar(conn, "SELECT COALESCE(MAX(seq), 0) FROM event"))
    finally:
        conn.close()


def _events(path: Path) -> list[tuple[Any, ...]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(r) for r in conn.execute("SELECT * FROM event ORDER BY seq")]
    finally:
        conn.close()


def _single_file_checks(path: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        assert not Path(f"{path}{suffix}").exists(), suffix
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.pragma("journal_mode") == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.pragma("application_id") == db.APPLICATION_ID
    finally:
        conn.close()
    for suffix in ("-wal", "-shm", "-journal"):
        assert not Path(f"{path}{suffix}").exists(), suffix


# ----------------------------------------------------------------------------- backup


@pytest.mark.slow
def test_backup_while_a_writer_writes_is_a_consistent_single_file(project: Project,
                                                                  tmp_path: Path) -> None:
    _fill(project)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(project.db_path), str(stop)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "started"
        time.sleep(0.1)
        committed_before = _max_seq(project.db_path)
        # Few pages per step, so the writer commits between steps and the copy restarts.
        report = backup(project, tmp_path / "b.db", pages_per_step=4, step_sleep=0.002)
        assert report.max_seq is not None
        # The writer went on meanwhile (it was never blocked).
        wait_for(lambda: _max_seq(project.db_path) > report.max_seq, message="more events")
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert int(out.split()[-1]) > 10

    dest = Path(report.dest)
    _single_file_checks(dest)
    assert report.steps > 1 and report.pages > 100
    print(f"backup: {report.steps} steps, {report.restarts} restarts, {report.seconds} s")
    assert report.bytes == dest.stat().st_size
    assert report.max_seq is not None and report.max_seq >= committed_before
    copied = _events(dest)
    # A snapshot: gapless, identical to the source's first max_seq events, and the tables agree
    # with the log (every worker the events created is there, and idle).
    assert [e[0] for e in copied] == list(range(1, report.max_seq + 1))
    assert report.events == len(copied)
    assert copied == _events(project.db_path)[: report.max_seq]
    conn = apsw.Connection(str(dest), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        created = db.scalar(conn, "SELECT COUNT(*) FROM event WHERE event = 'worker_started' "
                                  "AND entity_id LIKE 'wr%'")
        workers = db.rows(conn, "SELECT state FROM worker WHERE worker_id LIKE 'wr%'")
        registered = db.scalar(conn, "SELECT COUNT(*) FROM event WHERE entity_type = 'worker' "
                                     "AND to_state = 'idle' AND entity_id LIKE 'wr%'")
    finally:
        conn.close()
    assert created == len(workers) == registered
    assert {w["state"] for w in workers} == {"idle"}


def test_backup_cli_default_dest_force_and_refusals(project: Project, tmp_path: Path) -> None:
    root = str(project.root)
    code, out = orch_json("--root", root, "backup")
    assert code == 0, out
    dest = Path(out["dest"])
    assert dest.parent == project.state_dir / "backups"
    assert dest.name.startswith("kernel-") and dest.suffix == ".db"
    _single_file_checks(dest)
    assert list_backups(project) == [dest]
    # A second default backup within the same second gets its own name.
    code, again = orch_json("--root", root, "backup")
    assert code == 0 and again["dest"] != out["dest"]

    target = tmp_path / "mine.db"
    assert orch_json("--root", root, "backup", str(target))[0] == 0
    before = target.read_bytes()
    code, refused = orch_json("--root", root, "backup", str(target))
    assert code == 1 and refused["error"]["code"] == "destination_exists"
    assert refused["error"]["file"] == str(target) and "--force" in refused["error"]["hint"]
    assert target.read_bytes() == before
    assert orch_json("--root", root, "backup", str(target), "--force")[0] == 0
    _single_file_checks(target)
    assert not Path(f"{target}.tmp").exists()
    # A directory as DEST: the default name inside it.
    (tmp_path / "dir").mkdir()
    code, out = orch_json("--root", root, "backup", str(tmp_path / "dir"))
    assert code == 0 and Path(out["dest"]).parent == tmp_path / "dir"
    # No project: not_initialised (exit 1), nothing written.
    code, out = orch_json("--root", str(tmp_path / "nothing"), "backup", str(tmp_path / "x.db"))
    assert (code, out["error"]["code"]) == (1, "not_initialised")
    assert not (tmp_path / "x.db").exists()


# ----------------------------------------------------------------------------- bundle

OPENAI = "sk-proj-Zq3xT9vB7nM2kL5pR8sW1yU4"
ANTHROPIC = "sk-ant-api03-Hj6Kd9Lm2Np5Qr8St1Uv4Wx7"
GITHUB = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
AWS = "AKIAQWERTYUIOPASDFGH"
SLACK = "xoxb-2048-4096-AbCdEfGhIjKlMn"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcmNoIn0.c2lnbmF0dXJlLXNlY3JldA"
BEARER = "Zx81vQm4Tr62nWp93Ks7"
PASSWORD = "hunter2-correct-horse"
SECRETS = (OPENAI, ANTHROPIC, GITHUB, AWS, SLACK, JWT, BEARER, PASSWORD, "CUSTOM-SECRET-42")


@pytest.mark.slow
def test_bundle_redacts_every_member_and_leaves_the_database_alone(tmp_path: Path) -> None:
    # The commands read the secrets from a file (as an agent gets them from its environment)
    # and print them in recognisable contexts; only OPENAI_API_KEY=... is in a command line.
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps([BEARER, GITHUB, "CUSTOM-SECRET-42", PASSWORD]))
    printer = py("import json, sys; s = json.load(open(sys.argv[1])); "
                 "print('calling with Authorization: Bearer ' + s[0]); "
                 "print('pushing with', s[1]); print('internal id', s[2])", str(secrets))
    root = make_project(tmp_path / "proj", [
        task("ok", command=f"{printer} OPENAI_API_KEY={OPENAI}"),
        task("boom", command=py("import json, sys; s = json.load(open(sys.argv[1])); "
                                "print('db password=' + s[3]); sys.exit(3)", str(secrets))),
    ])
    assert run(root, workers=2).returncode == 1  # boom fails
    project = Project(root)
    conn = project.connect()
    try:
        with db.write_tx(conn):
            transition_in_tx(conn, "task", "boom", "pending", "operator_reset",
                             {"error":
                                  f"deploy failed: GITHUB_TOKEN={GITHUB} ANTHROPIC {ANTHROPIC}"},
                             last_error=f"aws said no to {AWS}")
            conn.execute("UPDATE attempt SET error_message = ? WHERE task_id = 'boom'",
                         (f"slack {SLACK} jwt {JWT}",))
        # The views see the planted secrets too.
        exports.export(conn, project.state_dir, full=True)
    finally:
        conn.close()
    (project.logs_dir / "extra.log").write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n")
    # The secrets really are in the sources.
    original = logical_dump(project.db_path)
    for secret in (OPENAI, ANTHROPIC, GITHUB, AWS, SLACK, JWT):
        assert secret in original, secret
    logs = "".join(p.read_text() for p in project.logs_dir.glob("*.log"))
    for secret in (BEARER, GITHUB, PASSWORD, "CUSTOM-SECRET-42"):
        assert secret in logs, secret
    assert GITHUB in (project.state_dir / "transitions.jsonl").read_text()

    dest = tmp_path / "report.tar.gz"
    code, report = orch_json("--root", str(root), "bundle", str(dest),
                             "--redact", r"internal id (?P<secret>\S+)")
    assert code == 0, report
    assert report["errors"] == [] and report["redactions"] > 0

    raw = gzip.decompress(dest.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                   for m in tar.getmembers()}
    assert {"kernel.db", "doctor.json", "versions.json", "README.txt", "manifest.json",
            "orch.toml", "logs/ok.log", "logs/boom.log", "logs/extra.log"} <= set(members)
    assert {"state/current.json", "state/transitions.jsonl"} <= set(members)
    for secret in SECRETS:
        assert secret.encode() not in raw, secret  # every byte of every member, headers too
    assert b"PRIVATE KEY-----\nb3Bl" not in raw
    for name in ("kernel.db", "logs/ok.log", "logs/boom.log", "logs/extra.log",
                 "state/transitions.jsonl"):
        assert b"[REDACTED]" in members[name], name
    assert b"internal id [REDACTED]" in members["logs/ok.log"]

    # The database copy: sound, one file's worth, same schema and triggers, same event count.
    copy = tmp_path / "copy.db"
    copy.write_bytes(members["kernel.db"])
    _single_file_checks(copy)
    conn = apsw.Connection(str(copy), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        triggers = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger'")}
        command = db.scalar(conn, "SELECT command FROM task WHERE task_id = 'ok'")
        events = db.scalar(conn, "SELECT COUNT(*) FROM event")
    finally:
        conn.close()
    assert {"event_append_only_update", "event_append_only_delete"} <= triggers
    assert "OPENAI_API_KEY=[REDACTED]" in command
    assert events == _max_seq(project.db_path)
    doctor = json.loads(members["doctor.json"])
    assert doctor["ok"] is True
    versions = json.loads(members["versions.json"])
    assert {"python", "sqlite", "apsw", "orch"} <= set(versions)
    manifest = json.loads(members["manifest.json"])
    assert manifest["extra_patterns"] == [r"internal id (?P<secret>\S+)"]
    assert "append-only" in members["README.txt"].decode()
    for line in members["state/transitions.jsonl"].splitlines():
        json.loads(line)  # still one JSON document per line

    # The original database is unchanged.
    assert logical_dump(project.db_path) == original
    # DEST exists: refused without --force; a bad regex is a usage error.
    assert orch_json("--root", str(root), "bundle", str(dest))[0] == 1
    code, out = orch_json("--root", str(root), "bundle", str(tmp_path / "b2.tar.gz"),
                          "--redact", "(unclosed")
    assert code == 2 and out["error"]["code"] == "bad_redact_pattern"
    assert not (tmp_path / "b2.tar.gz").exists()


def test_redaction_patterns() -> None:
    cases = {
        f"export OPENAI_API_KEY={OPENAI}": "export OPENAI_API_KEY=[REDACTED]",
        'DB_PASSWORD="two words"': 'DB_PASSWORD="[REDACTED]"',
        f"curl -H 'Authorization: Bearer {BEARER}'": "curl -H 'Authorization: Bearer [REDACTED]'",
        "https://me:pa55@example.com/x": "https://me:[REDACTED]@example.com/x",
        f"aider --api-key {ANTHROPIC} --yes": "aider --api-key [REDACTED] --yes",
        f"id {AWS} and {SLACK}": "id [REDACTED] and [REDACTED]",
        "max_tokens=100 PWD=/home/me sort_key=a": "max_tokens=100 PWD=/home/me sort_key=a",
    }
    for text, expected in cases.items():
        assert redact_text(text, DEFAULT_PATTERNS)[0] == expected
    doc = json.dumps({"env": {"GITHUB_TOKEN": "plain", "HOME": "/h"}, "n": 1,
                      "cmd": f'X_SECRET="{PASSWORD}" run'})
    redacted, count = redact_string(doc, DEFAULT_PATTERNS)
    assert count == 2 and json.loads(redacted) == {
        "env": {"GITHUB_TOKEN": "[REDACTED]", "HOME": "/h"}, "n": 1,
        "cmd": 'X_SECRET="[REDACTED]" run'}


# ----------------------------------------------------------------------------- restore


def _cancel(project: Project, task_id: str) -> None:
    conn = project.connect()
    try:
        with db.write_tx(conn):
            transition_in_tx(conn, "task", task_id, "cancelled", "user_cancelled",
                             {"reason": "test"})
    finally:
        conn.close()


def _asides(project: Project) -> list[Path]:
    return sorted(project.state_dir.glob("kernel.db.before-restore-*"))


def test_restore_round_trip_and_undo(project: Project, tmp_path: Path) -> None:
    _fill(project, tasks=20, size=10)
    root = str(project.root)
    code, made = orch_json("--root", root, "backup", str(tmp_path / "b.db"))
    assert code == 0
    at_backup = logical_dump(project.db_path)
    _cancel(project, "t0001")
    _cancel(project, "t0002")
    changed = logical_dump(project.db_path)
    assert orch_json("--root", root, "export")[0] == 0
    log = project.state_dir / "transitions.jsonl"
    log_before = log.read_text()
    assert changed != at_backup

    code, refused = orch_json("--root", root, "restore", made["dest"])
    assert code == 1 and refused["error"]["code"] == "restore_needs_force"
    assert logical_dump(project.db_path) == changed and _asides(project) == []

    code, report = orch_json("--root", root, "restore", made["dest"], "--force")
    assert code == 0, report
    assert logical_dump(project.db_path) == at_backup
    assert report["max_seq"] == made["max_seq"]
    aside = Path(report["kept_aside"])
    assert _asides(project) == [aside]
    assert logical_dump(aside) == changed  # the previous database is kept, whole
    assert not Path(f"{aside}-wal").exists() or logical_dump(aside) == changed
    assert report["undo"] == (f"orch --root {shlex.quote(root)} restore "
                              f"{shlex.quote(str(aside))} --force")
    assert orch_json("--root", root, "doctor")[0] == 0
    # The events file followed the database: the old one is kept, the new one rewritten.
    assert Path(report["log_kept_aside"]).read_text() == log_before
    assert report["views_warning"] is None
    assert [json.loads(line)["seq"] for line in log.read_text().splitlines()] == list(
        range(1, made["max_seq"] + 1))

    # Undo: restore the kept file.
    code, undo = orch_json(*shlex.split(report["undo"])[1:])
    assert code == 0, undo
    assert logical_dump(project.db_path) == changed


def _corrupt(path: Path, offset: int, length: int = 64) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xa5" * length)


@pytest.mark.parametrize("kind", ["not_sqlite", "foreign", "too_new", "damaged", "missing"])
def test_restore_refuses_a_bad_source(project: Project, tmp_path: Path, kind: str) -> None:
    _fill(project, tasks=50, size=500)
    src = tmp_path / "src.db"
    if kind == "not_sqlite":
        src.write_text("this is not a database\n" * 100)
    elif kind == "foreign":
        with sqlite3.connect(src) as other:
            other.execute("CREATE TABLE notes (body TEXT)")
        other.close()
    elif kind == "too_new":
        backup(project, src)
        conn = apsw.Connection(str(src))
        conn.pragma("user_version", 999)
        conn.close()
    elif kind == "damaged":
        backup(project, src)
        _corrupt(src, _leaf_offset(src, "task"))
    before = logical_dump(project.db_path)
    code, out = orch_json("--root", str(project.root), "restore", str(src), "--force")
    assert code == 1, out
    assert out["error"]["code"] == f"backup_{kind}"
    assert out["error"]["file"] == str(src) and out["error"]["hint"]
    assert logical_dump(project.db_path) == before
    assert _asides(project) == []


def test_restore_refuses_while_a_kernel_holds_the_database(project: Project,
                                                           tmp_path: Path) -> None:
    src = Path(backup(project, tmp_path / "b.db").dest)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        conn = project.connect()
        try:
            with db.write_tx(conn):
                now = time.time()
                conn.execute(
                    "INSERT INTO scheduler_lock (lock_id, owner, pid, hostname, acquired_at, "
                    "renewed_at, expires_at) VALUES (1, 'run-x', ?, ?, ?, ?, ?)",
                    (holder.pid, socket.gethostname(), clock.iso(now), clock.iso(now),
                     clock.iso(now + 30)))
        finally:
            conn.close()
        before = logical_dump(project.db_path)
        code, out = orch_json("--root", str(project.root), "restore", str(src), "--force")
        assert code == 1, out
        assert out["error"]["code"] == "database_in_use"
        assert f"pid {holder.pid}" in out["error"]["message"]
        assert logical_dump(project.db_path) == before and _asides(project) == []
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock no longer stops a restore.
    code, out = orch_json("--root", str(project.root), "restore", str(src), "--force")
    assert code == 0, out


# ----------------------------------------------------------------------------- doctor --repair


def test_doctor_repair_rebuilds_deleted_views(project: Project) -> None:
    _fill(project, tasks=5, size=10)
    root = str(project.root)
    current, log = project.state_dir / "current.json", project.state_dir / "transitions.jsonl"
    current.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    code, out = orch_json("--root", root, "doctor", "--repair")
    assert code == 0, out
    assert out["ok"] and out["repair"]["ok"] and out["repair"]["damaged"] is False
    assert current.exists() and log.exists()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, _max_seq(project.db_path) + 1))


def _leaf_offset(path: Path, table: str) -> int:
    """The file offset of a leaf page of ``table`` near the middle of its pages."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        pages = [r[0] for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,))]
        size = int(conn.pragma("page_size"))
    finally:
        conn.close()
    return (pages[len(pages) // 2] - 1) * size


def _write_log(project: Project) -> list[dict[str, Any]]:
    """transitions.jsonl as the views keep it: one event per line (an independent copy)."""
    conn = project.connect(readonly=True)
    try:
        events = audit.list_events(conn)
    finally:
        conn.close()
    with open(project.state_dir / "transitions.jsonl", "w") as fh:
        for event in events:
            fh.write(json.dumps(event, sort_keys=True) + "\n")
    return events


@pytest.mark.slow
def test_doctor_repair_on_a_damaged_database_reports_the_loss(project: Project) -> None:
    _fill(project, tasks=200, size=300)
    root = str(project.root)
    code, made = orch_json("--root", root, "backup")
    assert code == 0
    for i in range(10, 17):
        _cancel(project, f"t{i:04d}")
    events = _write_log(project)
    lost = [e for e in events if e["seq"] > made["max_seq"]]
    assert len(lost) == 7
    conn = project.connect()
    try:
        db.checkpoint(conn, "TRUNCATE")
    finally:
        conn.close()
    _corrupt(project.db_path, _leaf_offset(project.db_path, "task"))  # its b-tree header
    damaged = project.db_path.read_bytes()
    stat = project.db_path.stat()

    code, out = orch_json("--root", root, "doctor")
    assert code == 1 and not out["ok"]
    assert {c["name"]: c["status"] for c in out["checks"]}["integrity_check"] == "fail"

    code, out = orch_json("--root", root, "doctor", "--repair")
    assert code == 1, out
    repair = out["repair"]
    assert repair["damaged"] is True and repair["views"] is None
    plan = repair["restore"]
    assert plan["backup"]["path"] == made["dest"]
    assert plan["backup"]["max_seq"] == made["max_seq"]
    assert plan["log_max_seq"] == events[-1]["seq"]
    assert plan["lost_events"] == 7
    assert (plan["lost_first_seq"], plan["lost_last_seq"]) == (lost[0]["seq"], lost[-1]["seq"])
    assert (plan["lost_from"], plan["lost_to"]) == (lost[0]["timestamp"], lost[-1]["timestamp"])
    command = f"orch --root {shlex.quote(root)} restore {shlex.quote(made['dest'])} --force"
    assert plan["command"] == command
    assert project.db_path.read_bytes() == damaged  # never touched
    assert project.db_path.stat().st_mtime_ns == stat.st_mtime_ns

    text = orch("--root", root, "doctor", "--repair")
    assert text.returncode == 1
    assert command in text.stdout and "7 event(s)" in text.stdout
    assert project.db_path.read_bytes() == damaged

    # Following the advice works, and keeps the damaged file.
    code, restored = orch_json(*shlex.split(command)[1:])
    assert code == 0, restored
    assert Path(restored["kept_aside"]).read_bytes() == damaged
    assert orch_json("--root", root, "doctor")[0] == 0
    assert _max_seq(project.db_path) == made["max_seq"]


def test_doctor_repair_on_a_file_that_is_not_a_database(project: Project) -> None:
    root = str(project.root)
    _corrupt(project.db_path, 0, 100)  # the header
    garbage = project.db_path.read_bytes()
    code, out = orch_json("--root", root, "doctor")
    assert code == 3 and out["error"]["code"] == "database_unreadable"
    code, out = orch_json("--root", root, "doctor", "--repair")
    assert code == 1, out
    plan = out["repair"]["restore"]
    assert out["repair"]["damaged"] is True
    assert plan["backup"] is None and plan["command"] is None
    assert "no usable backup" in plan["summary"]
    assert project.db_path.read_bytes() == garbage
    assert not os.path.exists(project.state_dir / "backups")
