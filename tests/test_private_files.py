"""Backups, bug-report bundles, restore's kept files and event archives are readable by their
owner only (0600; their directories under .state/ 0700), whatever the umask: they hold task
logs, commands and the event log, which can hold secrets. Real `orch` processes, real files."""

from __future__ import annotations

import os
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.observe import archive
from kernel.store import db, eventlog
from kernel.store.machines import transition_in_tx
from kernel.store.project import Project, init_project

from .conftest import orch

DAY = 86400.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The umask of this process and of the `orch` processes it starts."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture
def project_with_events(tmp_path: Path, umask: int) -> Project:
    """A project made under ``umask``, with a task that went pending -> queued."""
    root = tmp_path / "proj"
    root.mkdir()
    init_project(root)
    project = Project(root)
    conn = project.connect()
    try:
        with db.write_tx(conn):
            conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
            conn.execute("INSERT INTO task (task_id, workstream_id, command) "
                         "VALUES ('a', 'ws', 'OPENAI_API_KEY=sk-x run')")
            transition_in_tx(conn, "task", "a", "queued", "scheduler_assigned")
    finally:
        conn.close()
    return project


def test_backups_are_private(project_with_events: Project, tmp_path: Path) -> None:
    root = str(project_with_events.root)
    orch("--root", root, "backup", check=True)  # the default place, .state/backups/
    (default,) = (project_with_events.state_dir / "backups").iterdir()
    explicit = tmp_path / "elsewhere" / "copy.db"
    orch("--root", root, "backup", str(explicit), check=True)
    orch("--root", root, "backup", str(explicit), "--force", check=True)  # over an existing one
    into_dir = tmp_path / "dir"
    into_dir.mkdir()
    orch("--root", root, "backup", str(into_dir), check=True)
    (in_dir,) = into_dir.iterdir()
    assert _mode(project_with_events.state_dir / "backups") == 0o700
    for path in (default, explicit, in_dir):
        assert _mode(path) == 0o600, path
    assert not list(tmp_path.rglob("*.tmp"))


def test_bundles_are_private_and_unpack_private(project_with_events: Project,
                                                tmp_path: Path) -> None:
    dest = tmp_path / "out" / "bug.tar.gz"
    orch("--root", str(project_with_events.root), "bundle", str(dest), check=True)
    assert _mode(dest) == 0o600
    with tarfile.open(dest) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes and set(modes.values()) == {0o600}, modes
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bug.tar.gz"]  # no work files left


def test_restore_keeps_the_replaced_files_private(project_with_events: Project,
                                                  tmp_path: Path) -> None:
    root = str(project_with_events.root)
    source = tmp_path / "src.db"
    orch("--root", root, "backup", str(source), check=True)
    os.chmod(source, 0o644)  # a backup copied around with looser permissions
    state = project_with_events.state_dir
    os.chmod(state / "kernel.db", 0o644)  # as an older orch, or another umask, left it
    (state / "transitions.jsonl").touch()
    os.chmod(state / "transitions.jsonl", 0o644)
    orch("--root", root, "restore", str(source), "--force", check=True)
    (aside,) = state.glob("kernel.db.before-restore-*")
    (log_aside,) = state.glob("transitions.jsonl.before-restore-*")
    for path in (aside, log_aside, state / "kernel.db"):
        assert _mode(path) == 0o600, path


def test_event_archives_are_private(project_with_events: Project) -> None:
    directory = eventlog.archive_dir(project_with_events.state_dir)
    conn = project_with_events.connect()
    try:
        result = archive.rotate(conn, directory, older_than_days=1, now=time.time() + 2 * DAY,
                                allow_short_retention=True)
    finally:
        conn.close()
    files = list(directory.glob("*.sqlite"))
    assert result["files"] and len(files) == len(result["files"])
    assert _mode(directory) == 0o700
    for path in files:
        assert _mode(path) == 0o600, path
