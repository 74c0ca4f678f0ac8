"""Storage faults under real `orch` commands (kernel/bench/faultvfs.py: an SQLite VFS that fails
chosen reads, writes, syncs or lock calls): each command ends in a clear error (exit 3 with a
JSON error naming the file, never a traceback) or retries and succeeds; afterwards, without the
fault, `orch doctor` is clean (every transition has its event: log_agrees_with_tables), seq is
gapless, `orch export` makes views that agree with the database, and a new `orch run` finishes
the work. Also: writes refused mid-run (the file made read-only), `.state/` removed while
`orch run` runs, and a power cut (writes after the last sync undone) under durability full."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel.bench import faultvfs
from tools.kill_campaign import check_store

from .conftest import logical_dump, orch

TOML = """\
[workers]
heartbeat_seconds = 0.2
unresponsive_after_missed = 3
kill_grace_seconds = 0.3

[run]
tick_seconds = 0.05
worktrees = false

[database]
durability = "{durability}"
"""
TASKS = 6


def make_project(root: Path, seconds: float = 0.05, durability: str = "normal") -> Path:
    """An initialised project with a chain of TASKS tasks t1 <- t2 <- ... loaded."""
    root.mkdir(parents=True)
    (root / "orch.toml").write_text(TOML.format(durability=durability))
    orch("--root", str(root), "init", check=True)
    for i in range(1, TASKS + 1):
        doc = {"task_id": f"t{i}", "workstream_id": "w", "name": f"t{i}", "type": "custom",
               "dependencies": [f"t{i - 1}"] if i > 1 else [],
               "execution": {"command": f"sleep {seconds}", "max_retries": 3,
                             "retry_delay_seconds": 0.05}}
        path = root / "tasks" / "w" / f"t{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    orch("--root", str(root), "load", check=True)
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("faults") / "template")


def faulty(root: Path, fault: str, *args: str, timeout: float = 120,
           extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`orch --root ROOT --json ARGS` with the fault VFS and ``ORCH_VFS_FAULTS=fault``."""
    env = {**os.environ, faultvfs.FAULTS_ENV: fault, **(extra or {})}
    return subprocess.run([sys.executable, "-m", "kernel.bench.faultvfs", "--root", str(root),
                           "--json", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def last_document(stdout: str) -> dict:
    """The one JSON document, or the last one (`orch run --json` streams one per line; its
    error, if any, comes last, indented)."""
    lines = stdout.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise AssertionError(f"no JSON document in {stdout[-2000:]!r}")


def assert_clear(proc: subprocess.CompletedProcess[str], codes: tuple[int, ...]) -> dict:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in codes, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    doc = last_document(proc.stdout)
    if proc.returncode:
        error = doc["error"]
        assert error["message"] and error["hint"] and error["file"], error
        assert error["code"] != "database_error", error   # "a bug in orch"
    return doc


def assert_sound(root: Path) -> dict:
    problems: list[str] = []
    store = check_store(root, problems)
    assert problems == [], problems
    return store


def events(root: Path) -> int:
    conn = sqlite3.connect(f"file:{root / '.state' / 'kernel.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM event").fetchone()[0]
    finally:
        conn.close()


def copy(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "p"
    shutil.copytree(template, root)
    return root


# A fresh project's `orch load` under each fault: refused whole, the database unchanged.
LOAD_FAULTS = {
    "write:full:file=wal": "disk_full",
    "write:ioerr:file=wal:nth=3": "database_damaged",
    "sync:ioerr:file=wal": "database_damaged",
    "read:ioerr:file=db:nth=4": "database_damaged",
    "lock:busy:times=0": "database_locked",
}


@pytest.fixture(scope="module")
def unloaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised project with one task file, not loaded."""
    root = tmp_path_factory.mktemp("faults") / "unloaded"
    root.mkdir()
    # A lock refused for good: the command gives up after 1 s rather than the default 5 s.
    (root / "orch.toml").write_text("[database]\nbusy_timeout_ms = 1000\n")
    orch("--root", str(root), "init", check=True)
    (root / "tasks" / "w").mkdir(parents=True)
    (root / "tasks" / "w" / "a.json").write_text(json.dumps(
        {"task_id": "a", "workstream_id": "w", "name": "a", "type": "custom",
         "execution": {"command": "true"}}))
    return root


@pytest.mark.parametrize("fault", sorted(LOAD_FAULTS))
def test_load_under_a_storage_fault_commits_nothing(fault: str, unloaded: Path,
                                                    tmp_path: Path) -> None:
    root = copy(unloaded, tmp_path)
    before = logical_dump(root / ".state" / "kernel.db")
    doc = assert_clear(faulty(root, fault, "load"), (3,))
    assert doc["error"]["code"] == LOAD_FAULTS[fault]
    assert logical_dump(root / ".state" / "kernel.db") == before
    orch("--root", str(root), "load", check=True)       # without the fault it loads
    assert_sound(root)


def test_a_lock_refused_once_is_retried(template: Path, tmp_path: Path) -> None:
    root = copy(template, tmp_path)
    for args in (["status"], ["cancel", "t6"]):
        assert_clear(faulty(root, "lock:busy:nth=1:times=2", *args), (0,))
    assert_sound(root)


@pytest.mark.parametrize("fault", ["write:ioerr:file=wal", "sync:full:file=wal",
                                   "read:ioerr:nth=6"])
def test_operator_commands_under_a_fault_apply_all_or_nothing(fault: str, template: Path,
                                                              tmp_path: Path) -> None:
    root = copy(template, tmp_path)
    for args in (["cancel", "t3"], ["skip", "t1"], ["export"]):
        assert_clear(faulty(root, fault, *args), (0, 3))
    # Whatever was applied was applied whole: every state change has its event
    # (log_agrees_with_tables), and the views agree with the tables after an export.
    assert_sound(root)


RUN_FAULTS = ["write:full:file=wal:nth=25", "write:ioerr:file=wal:nth=60",
              "sync:ioerr:file=wal:nth=8", "read:ioerr:nth=300", "write:ioerr:after=run_setup",
              "write:readonly:times=0:nth=40"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", RUN_FAULTS)
def test_orch_run_under_a_fault_stops_clearly_and_a_new_run_finishes(
        fault: str, template: Path, tmp_path: Path) -> None:
    root = copy(template, tmp_path)
    doc = assert_clear(faulty(root, fault, "run", "--workers", "2"), (0, 1, 3))
    if "write:readonly" in fault:   # the file turned read-only mid-run: said so
        assert doc["error"]["code"] == "database_access_denied", doc
    assert_sound(root)
    proc = orch("--root", str(root), "run", "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = assert_sound(root)
    assert set(store["states"].values()) == {"completed"}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes to a read-only file")
def test_a_read_only_file_refuses_operator_commands(template: Path, tmp_path: Path) -> None:
    root = copy(template, tmp_path)
    db_file = root / ".state" / "kernel.db"
    db_file.chmod(0o444)
    try:
        proc = orch("--root", str(root), "--json", "cancel", "t2")
        doc = assert_clear(proc, (3,))
        assert doc["error"]["code"] == "database_access_denied"
    finally:
        db_file.chmod(0o644)
    assert_sound(root)


@pytest.mark.slow
def test_state_removed_while_orch_run_runs(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", seconds=0.4)
    exe = Path(sys.executable).parent / "orch"
    proc = subprocess.Popen([str(exe), "--root", str(root), "--json", "run", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while events(root) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(20):   # `rm -rf .state`, racing with the files the run writes
        shutil.rmtree(root / ".state", ignore_errors=True)
        if not (root / ".state" / "kernel.db").exists():
            break
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in out + err, err[-3000:]
    doc = last_document(out)
    assert proc.returncode == 3, (out[-2000:], err[-2000:])
    assert doc["error"]["code"] == "database_missing", doc
    # Nothing is left running, and the project can start again.
    assert not (root / ".state" / "kernel.db").exists()
    status = orch("--root", str(root), "--json", "status")
    assert status.returncode == 1 and "Traceback" not in status.stderr   # not_initialised
    assert json.loads(status.stdout)["error"]["code"] == "not_initialised"


def _kill_all(proc: subprocess.Popen[str], root: Path) -> None:
    """A power cut: `orch run` and its workers (each in its own session) die at once."""
    conn = sqlite3.connect(f"file:{root / '.state' / 'kernel.db'}?mode=ro", uri=True)
    pids = [p for (p,) in conn.execute("SELECT pid FROM worker WHERE pid IS NOT NULL")]
    conn.close()
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


@pytest.mark.slow
def test_a_power_cut_under_durability_full_loses_no_committed_transition(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", seconds=0.15, durability="full")
    undo = tmp_path / "undo"
    env = {**os.environ, faultvfs.POWERLOSS_ENV: str(undo)}
    proc = subprocess.Popen([sys.executable, "-m", "kernel.bench.faultvfs", "--root", str(root),
                             "run", "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    seen: dict[int, tuple] = {}   # every event an observer saw committed
    conn = sqlite3.connect(f"file:{root / '.state' / 'kernel.db'}?mode=ro", uri=True)
    deadline = time.monotonic() + 60
    while len(seen) < 30 and time.monotonic() < deadline and proc.poll() is None:
        for row in conn.execute("SELECT seq, event, entity_id, to_state FROM event"):
            seen[row[0]] = row[1:]
        time.sleep(0.01)
    conn.close()
    _kill_all(proc, root)
    assert len(seen) >= 30, proc.stderr.read() if proc.stderr else ""
    faultvfs.power_loss(undo, root / ".state")
    for leftover in (root / ".state").glob("kernel.db-shm"):
        leftover.unlink()   # no process holds it: the next open rebuilds the WAL index
    conn = sqlite3.connect(f"file:{root / '.state' / 'kernel.db'}?mode=ro", uri=True)
    after = {r[0]: r[1:] for r in conn.execute(
        "SELECT seq, event, entity_id, to_state FROM event")}
    conn.close()
    lost = {seq: ev for seq, ev in seen.items() if after.get(seq) != ev}
    assert lost == {}, lost
    assert_sound(root)
    proc2 = orch("--root", str(root), "run", "--workers", "2")
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert set(assert_sound(root)["states"].values()) == {"completed"}


POWER_CUT_SCRIPT = """\
import os, sys
from pathlib import Path
import apsw
from kernel.bench import faultvfs
faultvfs.install([], Path(sys.argv[2]))
from kernel.cli import run
held = apsw.Connection(sys.argv[1] + "/.state/kernel.db")   # so the command's close is not
held.execute("SELECT 1 FROM task").fetchall()               # the last: no checkpoint on close
code = run(["--root", sys.argv[1], "cancel", "t4"])
os._exit(code)   # the power goes: nothing more is synced
"""


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_the_power_cut_simulation_undoes_exactly_the_unsynced_commits(
        durability: str, tmp_path: Path) -> None:
    """The simulation has teeth: a commit under durability normal is not synced and is lost
    at the cut; under full it is synced before the command returns, and kept."""
    root = make_project(tmp_path / "p", durability=durability)
    undo = tmp_path / "undo"
    proc = subprocess.run([sys.executable, "-c", POWER_CUT_SCRIPT, str(root), str(undo)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    undone = faultvfs.power_loss(undo, root / ".state")
    (root / ".state" / "kernel.db-shm").unlink(missing_ok=True)
    conn = sqlite3.connect(f"file:{root / '.state' / 'kernel.db'}?mode=ro", uri=True)
    state = conn.execute("SELECT state FROM task WHERE task_id = 't4'").fetchone()[0]
    conn.close()
    if durability == "full":
        assert state == "cancelled"
    else:
        assert undone > 0 and state == "pending"
        # The views written before the cut hold the lost event. A new commit then reuses its
        # seq: the file's line and the database's row differ. The database wins: the next
        # export (here the one `orch cancel` runs after its change) moves the file aside, kept
        # as evidence, and writes it again from the database.
        again = orch("--root", str(root), "cancel", "t4")
        said = again.stdout + again.stderr
        assert again.returncode == 0, said
        assert "no longer matched the database's event log" in said, said
        aside = list((root / ".state").glob("transitions.jsonl.diverged-*"))
        assert len(aside) == 1
        assert orch("--root", str(root), "export").returncode == 0   # and then agrees
    assert_sound(root)


def test_a_bad_fault_setting_is_refused() -> None:
    for text in ("write:nothing", "scribble:full", "write:full:nth=x", "read:ioerr:after=nope",
                 "write:busy", "read:full"):
        with pytest.raises(ValueError):
            faultvfs.parse(text)
    [fault] = faultvfs.parse("sync:full:nth=2:times=0:file=wal:after=before_finish")
    assert (fault.kind, fault.error, fault.nth, fault.times, fault.file, fault.after) == (
        "sync", "full", 2, 0, "wal", "before_finish")


def test_a_write_after_state_was_removed_is_database_missing(tmp_path: Path) -> None:
    """The writer lock file lives in .state/: when the directory is gone, a write says the
    database is missing (exit 3) rather than raising FileNotFoundError."""
    from kernel.base.errors import DatabaseUnavailable
    from kernel.store import db
    from kernel.store.project import Project, init_project

    init_project(tmp_path)
    conn = Project(tmp_path).connect()
    try:
        shutil.rmtree(tmp_path / ".state")
        with pytest.raises(DatabaseUnavailable) as caught, db.write_tx(conn):
            pass
        assert caught.value.code == "database_missing" and caught.value.exit_code == 3
    finally:
        conn.close()
