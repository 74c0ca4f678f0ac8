"""`orch resources` against a running `orch run`: the task holding git_repo_write exclusively
is its holder, the ready task that needs it too is waiting, the pool shows its units; the
queries are the ones any reader gets (kernel.observe.resources)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .conftest import orch, orch_json


def _task(root: Path, task_id: str, command: str, resources: dict) -> None:
    folder = root / "tasks" / "ws"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task_id}.json").write_text(json.dumps({
        "schema_version": "2.0.0", "task_id": task_id, "workstream_id": "ws", "name": task_id,
        "type": "custom", "execution": {"command": command, "timeout_seconds": 600},
        "resource_requirements": resources}))


def test_resources_shows_holders_and_waiting_tasks_of_a_running_kernel(tmp_path: Path) -> None:
    root = tmp_path
    orch("init", cwd=root, check=True)
    edit = {"git_repo_write": "exclusive", "cpu_cores": 2}
    _task(root, "first", "sleep 600", edit)
    _task(root, "second", "sleep 600", edit)
    assert "no resources are loaded yet" in orch("resources", cwd=root).stdout
    orch("load", cwd=root, check=True)
    code, idle = orch_json("resources", cwd=root)    # ready, not running: both wait
    assert code == 0 and all(not r["holders"] for r in idle["resources"])
    waiting = {r["resource_id"]: [w["task_id"] for w in r["waiting"]] for r in idle["resources"]}
    assert waiting["git_repo_write"] == ["first", "second"] == waiting["cpu_cores"]
    run = subprocess.Popen([str(Path(sys.executable).parent / "orch"), "run", "--workers", "2"],
                           cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "COLUMNS": "120"})
    try:
        deadline = time.monotonic() + 120
        while True:
            code, doc = orch_json("resources", cwd=root)
            by_id = {r["resource_id"]: r for r in doc["resources"]}
            if by_id["git_repo_write"]["holders"] and by_id["git_repo_write"]["waiting"]:
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)
        git, cpu = by_id["git_repo_write"], by_id["cpu_cores"]
        holder = git["holders"][0]["task_id"]
        assert holder in {"first", "second"} and git["holders"][0]["mode"] == "exclusive"
        assert [w["task_id"] for w in git["waiting"]] == [{"first", "second"}.difference(
            {holder}).pop()]
        assert cpu["amount_held"] == 2 and cpu["available"] == cpu["capacity"] - 2
        text = orch("resources", cwd=root).stdout
        assert f"held by    {holder} (exclusive)" in text and "waiting    " in text
    finally:
        orch("cancel", "--workstream", "ws", cwd=root)
        try:
            run.wait(timeout=120)
        finally:
            run.kill()


def test_a_deprecated_capability_in_use_warns_when_the_run_starts(tmp_path: Path) -> None:
    """CAP-REG: a task that needs a deprecated capability loads with a warning, and `orch run`
    logs `capability_deprecated_in_use` (naming what replaces it and the task) and says so."""
    root = tmp_path
    orch("init", cwd=root, check=True)
    registry = root / "capabilities" / "registry.yaml"
    text = registry.read_text()
    old = "  - capability_id: cap-orchestration-001\n"
    assert old in text
    registry.write_text(text.replace(old, (
        "  - capability_id: cap-oldtool-001\n"
        "    name: OldTool\n    version: 1.0.0\n    deprecated_by: cap-orchestration-001\n"
        "    stability: deprecated\n    since_version: 0.1.0\n\n") + old, 1))
    folder = root / "tasks" / "ws"
    folder.mkdir(parents=True)
    (folder / "t.json").write_text(json.dumps({
        "schema_version": "2.0.0", "task_id": "t", "workstream_id": "ws", "name": "t",
        "type": "custom", "execution": {"command": "true"},
        "worker_requirements": {"capabilities": ["cap-oldtool-001"]}}))
    code, loaded = orch_json("load", cwd=root)
    assert code == 0 and "deprecated_capability" in {p["code"] for p in loaded["problems"]}
    run = orch("run", "--workers", "1", cwd=root)   # it has no requirements: offered here
    assert "capability cap-oldtool-001 is deprecated; use cap-orchestration-001 instead " \
           "(needed by t)" in run.stdout + run.stderr, run.stdout + run.stderr
    code, events = orch_json("events", cwd=root)
    found = [e for e in events["events"] if e["event"] == "capability_deprecated_in_use"]
    assert len(found) == 1 and found[0]["severity"] == "warning"
    assert found[0]["metadata"]["tasks"] == ["t"]
    assert found[0]["metadata"]["deprecated_by"] == "cap-orchestration-001"
