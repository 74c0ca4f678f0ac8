"""Task files on disk: v1 -> v2 migration, dry run, backups, restore, downgrade, all-or-nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kernel.definitions.migrate_tasks import (
    MigrationError,
    list_backups,
    main,
    migrate_tasks,
    restore_backup,
    task_files,
)
from kernel.definitions.task_documents import load_task_file

NOW = datetime(2026, 11, 24, 10, 15, 0, tzinfo=UTC)
STAMP = "20261124T101500Z"


def v1_task(task_id: str, ws: str, task_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "schema_version": "1.0.0",
        "schema_url": "https://orch.dev/schemas/task/v1.0.0.json",
        "task_id": task_id,
        "workstream_id": ws,
        "name": f"Task {task_id} ✓",
        "type": task_type,
        "dependencies": [],
        "execution": {"command": "make it", "timeout_seconds": 120},
        "resource_requirements": {"cpu_cores": 1},
    } | fields


def write(path: Path, doc: Any, indent: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent, ensure_ascii=False))  # no trailing newline


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def v1_tasks_dir(tmp_path: Path) -> Path:
    """tasks/ with two v1 files, one v2 file, a workstream.json and an unrelated dot-dir."""
    tasks = tmp_path / "tasks"
    write(tasks / "ws-a" / "edit.json", v1_task("edit", "ws-a", "aider"))
    write(tasks / "ws-a" / "test.json", v1_task("test", "ws-a", "pytest", dependencies=["edit"]))
    v2 = v1_task("lint", "ws-b", "lint") | {
        "schema_version": "2.0.0",
        "schema_url": "https://orch.dev/schemas/task/v2.0.0.json",
        "validation_rules": {"pre_execution": [], "post_execution": []},
    }
    write(tasks / "ws-b" / "lint.json", v2, indent=2)
    write(tasks / "ws-a" / "workstream.json", {"workstream_id": "ws-a", "schema_version": "1.0.0"})
    write(tasks / ".scratch" / "junk.json", {"not": "a task"})
    return tasks


def test_task_files_skip_workstream_json_and_dot_dirs(v1_tasks_dir: Path) -> None:
    found = [p.relative_to(v1_tasks_dir).as_posix() for p in task_files(v1_tasks_dir)]
    assert found == ["ws-a/edit.json", "ws-a/test.json", "ws-b/lint.json"]


def test_dry_run_reports_and_writes_nothing(v1_tasks_dir: Path) -> None:
    before = snapshot(v1_tasks_dir)
    report = migrate_tasks(v1_tasks_dir, dry_run=True, now=NOW)
    assert report.changed == ("ws-a/edit.json", "ws-a/test.json")
    assert report.unchanged == ("ws-b/lint.json",)
    assert report.backup_dir is None
    assert report.summary().startswith("would migrate 2 task file(s) from 1.0.0 to 2.0.0")
    assert snapshot(v1_tasks_dir) == before
    assert not (v1_tasks_dir / ".backups").exists()


def test_migration_rewrites_v1_files_keeping_order_and_format(v1_tasks_dir: Path) -> None:
    v2_before = (v1_tasks_dir / "ws-b" / "lint.json").read_bytes()
    ws_before = (v1_tasks_dir / "ws-a" / "workstream.json").read_bytes()
    report = migrate_tasks(v1_tasks_dir, now=NOW)
    assert report.changed == ("ws-a/edit.json", "ws-a/test.json")
    text = (v1_tasks_dir / "ws-a" / "edit.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    assert "✓" in text  # unicode kept readable
    assert list(doc) == [
        "schema_version", "schema_url", "task_id", "workstream_id", "name", "type",
        "dependencies", "execution", "context_requirements", "validation_rules",
        "resource_requirements",
    ]  # fmt: skip
    assert doc["schema_version"] == "2.0.0"
    assert doc["schema_url"] == "https://orch.dev/schemas/task/v2.0.0.json"
    assert doc["context_requirements"]["max_context_tokens"] == 8000
    assert doc["validation_rules"] == {
        "pre_execution": ["git_clean"],
        "post_execution": ["no_lint_errors"],
    }
    test_doc = json.loads((v1_tasks_dir / "ws-a" / "test.json").read_text())
    assert "context_requirements" not in test_doc
    assert test_doc["validation_rules"]["post_execution"] == ["tests_passing"]
    assert (v1_tasks_dir / "ws-b" / "lint.json").read_bytes() == v2_before
    assert (v1_tasks_dir / "ws-a" / "workstream.json").read_bytes() == ws_before
    for path in task_files(v1_tasks_dir):
        task, migrated = load_task_file(path)
        assert not migrated and task.schema_version == "2.0.0"


def test_backup_holds_exactly_the_touched_files(v1_tasks_dir: Path) -> None:
    before = snapshot(v1_tasks_dir)
    report = migrate_tasks(v1_tasks_dir, now=NOW)
    assert report.backup_dir == v1_tasks_dir / ".backups" / STAMP
    assert snapshot(report.backup_dir) == {
        "ws-a/edit.json": before["ws-a/edit.json"],
        "ws-a/test.json": before["ws-a/test.json"],
    }
    assert f"backup: {report.backup_dir}" in report.summary()


def test_second_run_changes_nothing(v1_tasks_dir: Path) -> None:
    migrate_tasks(v1_tasks_dir, now=NOW)
    after = snapshot(v1_tasks_dir)
    report = migrate_tasks(v1_tasks_dir, now=NOW)
    assert report.changed == () and report.backup_dir is None
    assert snapshot(v1_tasks_dir) == after


def test_restore_puts_back_every_byte(v1_tasks_dir: Path) -> None:
    before = snapshot(v1_tasks_dir)
    migrate_tasks(v1_tasks_dir, now=NOW)
    assert restore_backup(v1_tasks_dir) == ["ws-a/edit.json", "ws-a/test.json"]
    after = {k: v for k, v in snapshot(v1_tasks_dir).items() if not k.startswith(".backups/")}
    assert after == before


def test_restore_a_named_backup_and_report_missing_ones(v1_tasks_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no backups"):
        restore_backup(v1_tasks_dir)
    original = (v1_tasks_dir / "ws-a" / "edit.json").read_bytes()
    migrate_tasks(v1_tasks_dir, now=NOW)
    migrate_tasks(v1_tasks_dir, "2.0.0", "1.0.0", now=NOW)  # same second: a second backup
    assert [b.name for b in list_backups(v1_tasks_dir)] == [STAMP, f"{STAMP}-2"]
    restore_backup(v1_tasks_dir, STAMP)
    assert (v1_tasks_dir / "ws-a" / "edit.json").read_bytes() == original
    with pytest.raises(FileNotFoundError, match=f"available: {STAMP}, {STAMP}-2"):
        restore_backup(v1_tasks_dir, "20200101T000000Z")


def test_downgrade_removes_the_v2_fields(v1_tasks_dir: Path) -> None:
    migrate_tasks(v1_tasks_dir, now=NOW)
    report = migrate_tasks(v1_tasks_dir, "2.0.0", "1.0.0", now=NOW)
    assert report.changed == ("ws-a/edit.json", "ws-a/test.json", "ws-b/lint.json")
    for path in task_files(v1_tasks_dir):
        doc = json.loads(path.read_text())
        assert doc["schema_version"] == "1.0.0"
        assert doc["schema_url"] == "https://orch.dev/schemas/task/v1.0.0.json"
        assert "context_requirements" not in doc and "validation_rules" not in doc
        assert load_task_file(path)[1]  # reads again as v1, migrated on load
    edit = json.loads((v1_tasks_dir / "ws-a" / "edit.json").read_text())
    assert edit == v1_task("edit", "ws-a", "aider")  # v1 -> v2 -> v1 is the identity


def test_half_invalid_directory_writes_nothing(v1_tasks_dir: Path) -> None:
    bad = v1_task("bad", "ws-c", "aider", prority=3)
    bad["execution"] = {"command": "x", "timeout_seconds": -5}
    write(v1_tasks_dir / "ws-c" / "bad.json", bad)
    write(v1_tasks_dir / "ws-c" / "future.json", v1_task("future", "ws-c", "lint") | {
        "schema_version": "3.0.0", "schema_url": None,
    })  # fmt: skip
    (v1_tasks_dir / "ws-c" / "broken.json").write_text('{"task_id": "broken",\n  oops}')
    before = snapshot(v1_tasks_dir)
    with pytest.raises(MigrationError) as exc:
        migrate_tasks(v1_tasks_dir, now=NOW)
    message = str(exc.value)
    assert message.startswith("3 task files cannot be migrated; nothing was written")
    assert f"{v1_tasks_dir / 'ws-c' / 'bad.json'}: invalid task definition" in message
    assert "prority: unknown field 'prority' (did you mean 'priority'?)" in message
    assert "execution.timeout_seconds: Input should be greater than 0" in message
    assert "future.json: invalid task definition\n  - schema_version: is '3.0.0'" in message
    assert f"{v1_tasks_dir / 'ws-c' / 'broken.json'}:2: invalid JSON" in message
    assert {Path(e.file or "").name for e in exc.value.errors} == {
        "bad.json", "future.json", "broken.json"
    }  # fmt: skip
    assert snapshot(v1_tasks_dir) == before
    assert not (v1_tasks_dir / ".backups").exists()
    with pytest.raises(MigrationError):  # a dry run finds the same problems
        migrate_tasks(v1_tasks_dir, dry_run=True)


def test_unsupported_direction_and_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="from 1.0.0 to 3.0.0"):
        migrate_tasks(tmp_path, "1.0.0", "3.0.0")
    with pytest.raises(FileNotFoundError, match="no tasks directory"):
        migrate_tasks(tmp_path / "nope")


def test_command_line(v1_tasks_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(v1_tasks_dir), "--dry-run"]) == 0
    assert "would migrate 2 task file(s)" in capsys.readouterr().out
    assert main([str(v1_tasks_dir)]) == 0
    assert main([str(v1_tasks_dir), "--restore"]) == 0
    assert "restored 2 file(s)" in capsys.readouterr().out
    assert main([str(v1_tasks_dir / "missing")]) == 1
    assert "error: no tasks directory" in capsys.readouterr().err
