"""What the README tells a reader is true: its `sqlite3` examples set a busy timeout, so they work
while `orch run` writes (run here for real, against a held write lock), and a database is backed up
with `orch backup`, because a plain copy of a live WAL database misses the newest commits."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from kernel.maintain.backup import backup
from kernel.store import db
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project

from .conftest import REPO

README = REPO / "README.md"
# Docs whose sqlite3 commands are held to the same rule as the README's.
DOCS = [README, REPO / "docs" / "operations" / "BACKUP.md"]
LIVE_DB = ".state/kernel.db"

HOLD_LOCK = """
import sys, time, apsw
conn = apsw.Connection(sys.argv[1])
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)


def _sqlite3_commands(path: Path) -> list[str]:
    """Every command line in the file's code blocks that runs the sqlite3 shell."""
    found = []
    for block in _code_blocks(path.read_text()):
        for line in block.splitlines():
            line = line.removeprefix("$ ").strip()
            if line.startswith("sqlite3 "):
                found.append(line)
    return found


def test_readme_sqlite3_examples_set_a_busy_timeout() -> None:
    commands = _sqlite3_commands(README)
    assert commands, "the README shows the sqlite3 shell rejecting an illegal transition"
    for path in DOCS:
        for command in _sqlite3_commands(path):
            if path == README or LIVE_DB in command:
                assert re.search(r"-cmd '\.timeout [1-9][0-9]*'", command), (path.name, command)


def _readme_console_example() -> tuple[list[str], str]:
    """The README's `$ sqlite3 ...` console example: its argv and the line it prints."""
    for block in _code_blocks(README.read_text()):
        lines = block.splitlines()
        if lines and lines[0].startswith("$ sqlite3 "):
            return shlex.split(lines[0].removeprefix("$ ")), lines[1]
    raise AssertionError("no `$ sqlite3 ...` console example in the README")


def test_readme_sqlite3_example_waits_for_a_writer_and_prints_what_the_readme_says(
        project: Project) -> None:
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 shell is not installed")
    argv, expected = _readme_console_example()
    conn = project.connect()
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
            conn.execute("INSERT INTO task (task_id, workstream_id) VALUES ('lint', 'ws')")
    finally:
        conn.close()
    # Another process holds the write lock, as `orch run` does while it commits.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(project.db_path), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        proc = subprocess.run(argv, cwd=project.root, capture_output=True, text=True, timeout=60)
    finally:
        holder.wait(timeout=30)
    assert "database is locked" not in proc.stderr
    assert proc.returncode != 0 and proc.stderr.strip() == expected
    conn = project.connect(readonly=True)
    try:
        assert db.scalar(conn, "SELECT state FROM task WHERE task_id = 'lint'") == "pending"
    finally:
        conn.close()


def test_readme_says_back_up_with_orch_backup_and_a_plain_copy_misses_commits(
        project: Project, tmp_path: Path) -> None:
    intro = README.read_text().split("**Install", 1)[0]
    assert "copying it is a backup" not in intro
    assert "`orch backup`" in intro and "-wal" in intro
    # The claim, for real: commits still in kernel.db-wal are missing from a copy of kernel.db
    # alone, and present in `orch backup`'s copy.
    writer = apsw.Connection(str(project.db_path))  # stays open, so nothing checkpoints the WAL
    try:
        writer.pragma("wal_autocheckpoint", 0)
        with db.write_tx(writer):
            writer.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
            writer.executemany("INSERT INTO task (task_id, workstream_id) VALUES (?, 'ws')",
                               [(f"t{i}",) for i in range(40)])
        for i in range(40):
            with db.write_tx(writer):
                transition_in_tx(writer, "task", f"t{i}", "queued", "scheduler_assigned")
        live = db.scalar(writer, "SELECT COUNT(*) FROM event")
        plain = tmp_path / "cp.db"
        shutil.copyfile(project.db_path, plain)
        made = backup(project, tmp_path / "backup.db")
    finally:
        writer.close()
    copied = apsw.Connection(str(plain))
    try:
        in_copy = db.scalar(copied, "SELECT COUNT(*) FROM event")
    finally:
        copied.close()
    assert in_copy < live == made.events
