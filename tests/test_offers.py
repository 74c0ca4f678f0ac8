"""Capabilities reflect the machine (kernel.definitions.offers): the probes against this real
machine (real PATH, real files, this Python), and through the real `orch` CLI: what a worker
registers, the capability an aider task needs without listing it, `orch validate`'s
capability_unoffered, `orch capabilities`, and a run whose only worker lacks Aider."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel.base.config import Config
from kernel.definitions import offers
from tests.conftest import orch, orch_json

CATALOG_IDS = {"cap-aider-001", "cap-dag-001", "cap-git-001", "cap-orchestration-001",
               "cap-pytest-001", "cap-ruff-001", "cap-validation-001"}


def config_with(executable: str) -> Config:
    return Config.model_validate({"agents": {"aider": {"executable": executable}}})


def script(path: Path, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- the probes


def test_programs_are_found_on_path_and_modules_by_this_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert offers.dependency_problem("git") is None           # git is on this machine's PATH
    assert offers.dependency_problem("pytest") is None        # importable here, PATH or not
    missing = offers.dependency_problem("no-such-tool-4711")
    assert missing is not None and missing.startswith("no-such-tool-4711: found neither")
    assert "'no-such-tool-4711' on PATH" in missing and "'no_such_tool_4711'" in missing
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert "a program 'git' on PATH" in str(offers.dependency_problem("git"))
    assert offers.dependency_problem("pytest") is None, "python -m pytest still works"
    assert offers.dependency_problem("ruff") is None, "python -m ruff still works"
    script(empty / "git")
    assert offers.dependency_problem("git") is None


def test_aider_is_the_configured_executable(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    on_path = offers.dependency_problem("aider-chat", config_with("aider"))
    assert on_path == ("aider-chat: 'aider' ([agents.aider] executable in orch.toml) is not "
                       "on PATH")
    script(bin_dir / "aider")
    assert offers.dependency_problem("aider-chat", config_with("aider")) is None
    assert offers.dependency_problem("aider-chat") is None     # no config: the default name
    gone = tmp_path / "nowhere" / "aider"
    assert "does not exist or is not executable" in str(
        offers.dependency_problem("aider-chat", config_with(str(gone))))
    plain = script(tmp_path / "not-executable", 0o644)
    assert offers.dependency_problem("aider-chat", config_with(str(plain))) is not None
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    assert offers.dependency_problem("aider-chat", config_with(str(plain))) is None
    # A relative path is read from the project root, wherever the worker's cwd is.
    (tmp_path / "proj" / "tools").mkdir(parents=True)
    script(tmp_path / "proj" / "tools" / "aider")
    assert offers.dependency_problem("aider-chat", config_with("tools/aider"),
                                     tmp_path / "proj") is None
    assert offers.dependency_problem("aider-chat", config_with("tools/aider"),
                                     tmp_path) is not None


def test_assess_checks_python_memory_disk_and_probes_each_dependency_once() -> None:
    rows: list[tuple[str, str, Any]] = [
        ("a", "1.0.0", {"min_python_version": "3.11", "dependencies": ["git"]}),
        ("b", "2.0.0", json.dumps({"min_python_version": "99.0"})),
        ("c", "1.0.0", {"min_memory_mb": 10**9, "min_disk_space_mb": 10**12}),
        ("d", "1.0.0", None),
        ("e", "1.0.0", {"dependencies": ["no-such-tool-4711", "git"],
                        "network_required": True}),
    ]
    found = {a.capability_id: a for a in offers.assess(rows, None, Path.cwd())}
    assert [a.capability_id for a in offers.assess(rows)] == ["a", "b", "c", "d", "e"]
    assert found["a"].met and found["d"].met and found["a"].as_dict() == {
        "capability_id": "a", "version": "1.0.0", "met": True, "missing": []}
    assert found["b"].missing == (
        f"Python 99.0 or newer (this is {'.'.join(map(str, sys.version_info[:3]))})",)
    assert len(found["c"].missing) == 2
    assert "MB of memory (this machine has" in found["c"].missing[0]
    assert "MB of free disk space (" in found["c"].missing[1]
    assert len(found["e"].missing) == 1 and "no-such-tool-4711" in found["e"].missing[0]


def test_the_probe_table_names_every_dependency_of_the_shipped_catalog() -> None:
    from kernel.definitions.registries import DEFAULT_CAPABILITY_REGISTRY, load_capability_registry

    registry = load_capability_registry(DEFAULT_CAPABILITY_REGISTRY)
    deps = {d for c in registry.capabilities for d in c.requirements.dependencies}
    assert deps and deps <= set(offers.PROBES), deps - set(offers.PROBES)
    assert {r[0] for r in offers.registry_rows(registry)} == CATALOG_IDS


# --------------------------------------------------------------------------- through orch


def make_project(root: Path, executable: str, tasks: dict[str, dict[str, Any]]) -> Path:
    root.mkdir()
    orch("--root", str(root), "init", check=True)
    config = (root / "orch.toml").read_text()
    assert 'executable = "aider"' in config
    (root / "orch.toml").write_text(config.replace('executable = "aider"',
                                                   f"executable = {json.dumps(executable)}"))
    (root / "tasks" / "ws").mkdir(parents=True)
    for task_id, fields in tasks.items():
        doc = {"schema_version": "2.0.0", "task_id": task_id, "workstream_id": "ws",
               "name": task_id, "type": "custom",
               "execution": {"command": "true", "timeout_seconds": 60},
               "validation_rules": {"pre_execution": [], "post_execution": []}}
        for key, value in fields.items():
            doc[key] = {**doc[key], **value} if isinstance(value, dict) and key in doc \
                else value
        (root / "tasks" / "ws" / f"{task_id}.json").write_text(json.dumps(doc))
    return root


AIDER_TASKS: dict[str, dict[str, Any]] = {
    "by-executor": {"execution": {"executor": "aider"}},
    "by-type": {"type": "aider"},
    "listed-too": {"execution": {"executor": "aider"},
                   "worker_requirements": {"capabilities": ["AiderCodeEditing"],
                                           "min_version": "1.0.0"}},
    "type-but-noop": {"type": "aider", "execution": {"executor": "noop"}},
    "plain": {"execution": {"executor": "noop"},
              "worker_requirements": {"capabilities": ["cap-git-001"]}},
}


def test_aider_tasks_need_cap_aider_001_and_validate_warns_without_aider(
        tmp_path: Path) -> None:
    missing = str(tmp_path / "no-aider-here")
    root = make_project(tmp_path / "proj", missing, AIDER_TASKS)
    code, data = orch_json("--root", str(root), "validate")
    assert code == 0 and data["ok"], data                     # warnings only
    warned = {Path(p["file"]).stem: p for p in data["problems"]
              if p["code"] == "capability_unoffered"}
    assert set(warned) == {"by-executor", "by-type", "listed-too"}, data["problems"]
    first = warned["by-executor"]
    assert first["severity"] == "warning"
    assert "cap-aider-001" in first["message"] and missing in first["message"]
    assert "does not exist or is not executable" in first["message"]
    assert "orch capabilities" in first["hint"]
    assert data["counts"]["warnings"] == 3

    orch("--root", str(root), "load", check=True)
    needs = {tid: orch_json("--root", str(root), "show", tid)[1]["capabilities"]
             for tid in AIDER_TASKS}
    assert needs["by-executor"] == [{"capability_id": "cap-aider-001", "min_version": None}]
    assert needs["by-type"] == needs["by-executor"]
    assert needs["listed-too"] == [{"capability_id": "cap-aider-001", "min_version": "1.0.0"}]
    assert needs["type-but-noop"] == []
    assert needs["plain"] == [{"capability_id": "cap-git-001", "min_version": None}]

    # With an executable Aider stand-in configured, this machine meets it: no warning.
    config = (root / "orch.toml").read_text().replace(json.dumps(missing),
                                                      json.dumps(sys.executable))
    (root / "orch.toml").write_text(config)
    code, data = orch_json("--root", str(root), "validate")
    assert code == 0 and data["problems"] == [], data["problems"]


def test_orch_capabilities_shows_what_this_machine_meets(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-aider-here")
    root = make_project(tmp_path / "proj", missing, {})
    code, before = orch_json("--root", str(root), "capabilities")  # nothing loaded yet
    assert code == 0 and before["source"] == "capabilities/registry.yaml"
    orch("--root", str(root), "load", check=True)
    code, data = orch_json("--root", str(root), "capabilities")
    assert code == 0 and data["source"] == "database"
    assert data["capabilities"] == before["capabilities"]
    by_id = {c["capability_id"]: c for c in data["capabilities"]}
    assert set(by_id) == CATALOG_IDS
    aider = by_id["cap-aider-001"]
    assert aider["met"] is False and aider["workers"] == []
    assert aider["missing"] == [f"aider-chat: {missing!r} ([agents.aider] executable in "
                                "orch.toml) does not exist or is not executable"]
    assert aider["requirements"]["dependencies"] == ["aider-chat", "git"]
    assert set(data["offered_here"]) == CATALOG_IDS - {"cap-aider-001"}
    text = orch("--root", str(root), "capabilities").stdout
    assert "cap-aider-001" in text and "lacks" in text and missing in text
    assert "A worker started here without --capability offers: cap-dag-001" in text


def registrations(root: Path) -> list[dict[str, Any]]:
    code, data = orch_json("--root", str(root), "events")
    assert code == 0
    return [e["metadata"] for e in data["events"] if e["event"] == "worker_registered"]


def test_a_worker_registers_what_the_machine_meets_unless_told(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-aider-here")
    root = make_project(tmp_path / "proj", missing, {})
    orch("--root", str(root), "load", check=True)
    orch("--root", str(root), "worker", "--once", check=True)
    first = registrations(root)[-1]
    assert set(first["capabilities"]) == CATALOG_IDS - {"cap-aider-001"}
    assert list(first["not_offered"]) == ["cap-aider-001"]
    assert missing in first["not_offered"]["cap-aider-001"][0]
    # An explicit --capability still wins, whatever the machine has.
    orch("--root", str(root), "worker", "--once", "--capability", "cap-aider-001@1.2.0",
         check=True)
    second = registrations(root)[-1]
    assert second["capabilities"] == ["cap-aider-001"] and "not_offered" not in second
    # Aider present (any executable stands in for registering): the whole catalog.
    config = (root / "orch.toml").read_text().replace(json.dumps(missing),
                                                      json.dumps(sys.executable))
    (root / "orch.toml").write_text(config)
    orch("--root", str(root), "worker", "--once", check=True)
    third = registrations(root)[-1]
    assert set(third["capabilities"]) == CATALOG_IDS and "not_offered" not in third


def test_a_run_without_aider_never_claims_the_aider_task_and_why_says_so(
        tmp_path: Path) -> None:
    missing = str(tmp_path / "no-aider-here")
    root = make_project(tmp_path / "proj", missing, {
        "edit": {"execution": {"executor": "aider", "prompt": "change nothing"}},
        "other": {"execution": {"executor": "noop"}}})
    orch("--root", str(root), "load", check=True)
    proc = orch("--root", str(root), "--json", "run", "--workers", "1", "--no-worktrees")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)   # one document: the summary, with the events
    assert summary["unrunnable"] == [{"task_id": "edit",
                                      "reason": "no registered worker offers cap-aider-001"}]
    code, show = orch_json("--root", str(root), "show", "edit")
    assert show["state"] == "queued" and show["attempts"] == []
    assert orch_json("--root", str(root), "show", "other")[1]["state"] == "completed"
    code, why = orch_json("--root", str(root), "why", "edit")
    assert code == 0
    assert "cap-aider-001" in why["sentences"][0], why["sentences"]
    assert "no worker offers it, and one started on this machine would lack" in \
        why["sentences"][0], why["sentences"]
    events = orch_json("--root", str(root), "events", "--task", "edit")[1]["events"]
    assert [e["metadata"]["reason"] for e in events if e["event"] == "task_unrunnable"] == \
        ["no registered worker offers cap-aider-001"]
    assert not os.path.exists(missing)
