"""The real Aider CLI for the tests: a virtual environment of its own, found or created once.

Aider pins its own dependency versions, so it cannot share the test environment. The venv lives
at ``$ORCH_TEST_CACHE/aider-VERSION`` (default ``~/.cache/orch-tests``) and is reused between
runs; when it is missing or broken it is created with ``python3 -m venv`` and
``pip install aider-chat==VERSION`` (as on a fresh CI machine, by the first test that needs it).
``python tests/aider_venv.py`` creates it ahead of time and prints its path. ``ModelServer``
runs the scripted model server (``kernel.demo.model_server``) as a process on 127.0.0.1 for
Aider to talk to; the fixtures ``aider_venv`` and ``server_factory`` (tests/conftest.py) give
both to a test.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

AIDER_VERSION = "0.86.2"


def cache_dir() -> Path:
    return Path(os.environ.get("ORCH_TEST_CACHE") or Path.home() / ".cache" / "orch-tests")


def _works(venv: Path) -> bool:
    python = venv / "bin" / "python"
    if not (python.exists() and (venv / "bin" / "aider").exists()):
        return False
    proc = subprocess.run([str(python), "-c", "import aider; print(aider.__version__)"],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == AIDER_VERSION


def ensure_aider_venv() -> Path:
    """The venv's directory, created (once, under a lock) when missing; raises on failure."""
    venv = cache_dir() / f"aider-{AIDER_VERSION}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".aider-{AIDER_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _works(venv):
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        for cmd in (["python3", "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                     f"aider-chat=={AIDER_VERSION}"]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"cannot create the Aider venv: {' '.join(cmd)} -> "
                                   f"{proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        if not _works(venv):
            raise RuntimeError(f"aider-chat=={AIDER_VERSION} installed in {venv} does not import")
    return venv


class ModelServer:
    """``python -m kernel.demo.model_server`` as a process; ``requests()`` reads its log."""

    def __init__(self, tmp: Path, script: list[Any]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "script.json").write_text(json.dumps(script))
        self.log = tmp / "requests.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernel.demo.model_server", "--script",
             str(tmp / "script.json"), "--requests-log", str(self.log)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


if __name__ == "__main__":
    print(ensure_aider_venv())
    sys.exit(0)
