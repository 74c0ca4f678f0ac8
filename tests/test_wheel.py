"""The built wheel, installed outside the source tree, carries its SQL and YAML and works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (found,) = out.glob("orch_kernel-*.whl")
    return found


def test_wheel_ships_sql_and_state_machines(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kernel/_data/sql/0001_core.sql" in names
    for machine in ("task", "workstream", "worker"):
        assert f"kernel/_data/state_machines/{machine}_lifecycle.yaml" in names
    assert "kernel/_data/failure_modes/failure_modes.yaml" in names


def test_installed_wheel_inits_an_empty_directory(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel into its own directory (dependencies come from this environment) and
    run `orch init`, `orch doctor`, `orch events` with the source tree nowhere on the path."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    script = (
        "import sys, kernel, kernel.base.data as r; "
        "assert str(r.sql_dir()).startswith(sys.argv[1]), r.sql_dir(); "
        "from kernel.cli import run; sys.exit(run(sys.argv[2:]))"
    )

    def orch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, str(target), *args], cwd=work,
                              env=env, capture_output=True, text=True, timeout=120)

    init = orch("--json", "init")
    assert init.returncode == 0, init.stderr
    assert ".state/kernel.db" in json.loads(init.stdout)["created"]
    doctor = orch("--json", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert json.loads(doctor.stdout)["ok"] is True
    events = orch("--json", "events")
    assert events.returncode == 0 and json.loads(events.stdout) == {"events": []}


def test_installed_wheel_runs_the_demo_and_its_workers(wheel: Path, tmp_path: Path) -> None:
    """`orch demo` from the installed wheel: the example project comes from the package's data
    files, and `orch run` starts its workers as `python -m kernel worker` from the wheel."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kernel/demo/project/scripts/smoke_test_cli.py" in names
    assert "kernel/demo/edits.json" in names and "kernel/demo/mini_agent.py" in names
    assert "kernel/demo/project/gitignore" in names
    work = tmp_path / "work"
    work.mkdir()
    # Not PYTHONSAFEPATH here: the tasks' own scripts import their neighbours (scripts/agent.py).
    # The current directory is a fresh one, so only the wheel provides `kernel`.
    env = {**os.environ, "PYTHONPATH": str(target), "DEMO_THINK_SECONDS": "0"}
    env.pop("PYTHONSAFEPATH", None)
    script = (
        "import sys, kernel.demo as d; "
        "assert str(d.PROJECT_DIR).startswith(sys.argv[1]), d.PROJECT_DIR; "
        "from kernel.cli import run; sys.exit(run(sys.argv[2:]))"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(target), "--json", "demo", "--keep",
                           str(work / "demo")], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["workstream_state"] == "completed"
    assert (work / "demo" / ".gitignore").read_text().startswith("__pycache__/")
    assert doc["summary"]["ok"] is True
