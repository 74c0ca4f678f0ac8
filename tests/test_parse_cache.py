"""The parse cache (.state/definitions.cache, kernel.definitions.parsecache): ``orch validate``
leaves what it parsed for ``orch load``, which parses only files that changed; an edited file,
a stale or a corrupt cache is never trusted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kernel.definitions import parsecache
from kernel.definitions.check import validate
from kernel.definitions.collect import collect
from kernel.definitions.load import load
from kernel.store.project import Project, init_project
from tests.conftest import orch

from .test_validate import task_doc, write_task

N = 12


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test itself are cached at once (the racy window is tested apart)."""
    monkeypatch.setattr(parsecache, "RACY_SECONDS", 0.0)


def _project(root: Path) -> Project:
    root.mkdir()
    init_project(root)
    project = Project(root)
    for i in range(N):
        write_task(project, task_doc(f"t{i:02d}", ws=f"ws{i % 2}",
                                     dependencies=[f"t{i - 1:02d}"] if i else []))
    time.sleep(0.01)  # older than the command that caches them
    return project


def _names(project: Project) -> dict[str, str]:
    conn = project.connect(readonly=True)
    try:
        return dict(conn.execute("SELECT task_id, name FROM task").fetchall())
    finally:
        conn.close()


def test_load_after_validate_parses_nothing_again(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    assert validate(project, workers=1).ok
    assert (project.state_dir / parsecache.CACHE_FILE).exists()
    assert collect(project, workers=1).cached == N
    report = load(project, workers=1)
    assert report.tasks_created == N


def test_an_edit_between_validate_and_load_is_seen(tmp_path: Path) -> None:
    """Same size, and the modification time put back: the change time still differs."""
    project = _project(tmp_path / "p")
    assert validate(project, workers=1).ok
    path = project.tasks_dir / "ws1" / "t03.json"
    before = path.stat()
    text = path.read_text()
    path.write_text(text.replace('"Task t03"', '"Task X03"'))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    defs = collect(project, workers=1)
    assert defs.cached == N - 1
    load(project, workers=1)
    assert _names(project)["t03"] == "Task X03"


def test_an_invalid_edit_is_reported_by_load(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    assert validate(project, workers=1).ok
    write_task(project, task_doc("t05", ws="ws1", execution={"command": "x",
                                                             "timeout_seconds": "60"}))
    proc = orch("--root", str(project.root), "--json", "load")
    assert proc.returncode == 1, proc.stdout
    assert "execution.timeout_seconds" in proc.stdout


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_corrupt_cache_is_never_used(tmp_path: Path, damage: str) -> None:
    project = _project(tmp_path / "p")
    assert validate(project, workers=1).ok
    cache = project.state_dir / parsecache.CACHE_FILE
    data = bytearray(cache.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[len(data) - 100] ^= 0x01
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    cache.write_bytes(bytes(data))
    assert collect(project, workers=1).cached == 0
    assert collect(project, workers=1).cached == N  # rewritten by the first
    assert load(project, workers=1).tasks_created == N


def test_a_changed_registry_or_setting_invalidates_the_cache(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    assert validate(project, workers=1).ok
    registry = project.capabilities_dir / "resources.yaml"
    registry.write_text(registry.read_text() + "\n# a comment changes nothing\n")
    assert collect(project, workers=1).cached == N  # same registry content
    project.config_path.write_text("[definitions]\nmax_task_file_bytes = 4096\n")
    assert collect(Project(project.root), workers=1).cached == 0


def test_files_changed_just_before_the_command_are_not_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path / "p")
    monkeypatch.setattr(parsecache, "RACY_SECONDS", 3600.0)
    assert validate(project, workers=1).ok
    assert collect(project, workers=1).cached == 0


def test_a_task_naming_other_paths_is_parsed_every_time(tmp_path: Path) -> None:
    """Its result depends on files the cache does not stat: a required file deleted between
    validate and load is reported by load."""
    project = _project(tmp_path / "p")
    (project.root / "src").mkdir()
    (project.root / "src" / "a.py").write_text("x = 1\n")
    write_task(project, task_doc("ctx", ws="ws0",
                                 context_requirements={"required_files": ["src/a.py"]}))
    time.sleep(0.01)
    assert validate(project, workers=1).ok
    assert collect(project, workers=1).cached == N
    (project.root / "src" / "a.py").unlink()
    proc = orch("--root", str(project.root), "--json", "load")
    assert proc.returncode == 1, proc.stdout
    assert "required_file_missing" in proc.stdout


def test_the_cli_validate_then_load_uses_the_cache_and_sees_an_edit(tmp_path: Path) -> None:
    """The commands as typed (real processes, the real racy window)."""
    project = _project(tmp_path / "p")
    time.sleep(parsecache.RACY_SECONDS + 2.1)
    assert orch("--root", str(project.root), "validate").returncode == 0
    assert (project.state_dir / parsecache.CACHE_FILE).exists()
    write_task(project, task_doc("t07", ws="ws1", name="edited after validate"))
    proc = orch("--root", str(project.root), "--json", "load")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tasks"]["created"] == N
    assert _names(project)["t07"] == "edited after validate"


def test_checking_some_paths_keeps_the_other_files_cached(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    assert validate(project, workers=1).ok
    path = project.tasks_dir / "ws0" / "t02.json"
    path.write_text(path.read_text().replace('"Task t02"', '"Task Y02"'))
    os.utime(path, ns=(0, 0))  # an old time: cacheable, but a new change time
    assert collect(project, [str(project.tasks_dir / "ws0")], workers=1).cached == N // 2 - 1
    assert collect(project, workers=1).cached == N


def test_the_environment_matters_only_to_commands_near_the_argument_limits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path / "p")
    write_task(project, task_doc("long", ws="ws0", execution={
        "command": "echo {prompt}", "prompt": "x" * 20000}))
    time.sleep(0.01)
    assert validate(project, workers=1).ok
    monkeypatch.setenv("ORCH_TEST_SOMETHING_NEW", "y" * 100)
    defs = collect(project, workers=1)
    assert defs.cached == N  # the long command is checked again, with this environment
    assert len(defs.tasks) == N + 1
