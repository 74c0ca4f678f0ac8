"""docs/operations/SCALING.md's console session, run as written: a Dask scheduler and two Dask
workers started in the background as a user starts them, the example project run on them with
`orch run --scheduler-address`, and every line the page shows found in what the commands
print (``...`` in a shown line stands for what differs from run to run)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from tests.conftest import REPO
from tests.test_docs_commands import _bare_env, _block_after, _console_session

pytest.importorskip("distributed")   # the dask extra (installed by the tests)

SCALING = REPO / "docs" / "operations" / "SCALING.md"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pattern(shown: str) -> re.Pattern[str]:
    """A shown line as a pattern for a whole printed line; ``...`` matches anything."""
    return re.compile(".*?".join(re.escape(part) for part in shown.split("...")))


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(groups: list[int]) -> None:
    """End what the session left running in the background (the scheduler, the workers):
    each command ran in a process group of its own."""
    for pgid in groups:
        if not _gone(pgid):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not all(_gone(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pgid in groups:
        if not _gone(pgid):
            os.killpg(pgid, signal.SIGKILL)


def _run(command: str, cwd: Path, env: dict[str, str], groups: list[int]) -> tuple[int, str, str]:
    """One line of the session in a shell that starts where the previous one ended (``cd``
    carries over); returns its exit code, what it printed and the directory it ended in."""
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"{command}\npwd"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    groups.append(proc.pid)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out + err, out.rstrip("\n").rsplit("\n", 1)[-1]


def test_the_scaling_session_runs_as_written(tmp_path: Path) -> None:
    block = _block_after(SCALING.read_text(encoding="utf-8"), "### A session you can run",
                         "console")
    assert "8786" in block and "orch run --scheduler-address" in block
    steps = _console_session(block.replace("8786", str(_free_port())))
    assert [c.split()[:2] for c, _ in steps][:3] == [["dask", "scheduler"], ["dask", "worker"],
                                                    ["dask", "worker"]]
    env = _bare_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # orch, dask
    cwd, groups = tmp_path, []
    try:
        for command, shown in steps:
            code, printed, where = _run(command, cwd, env, groups)
            assert code == 0, f"$ {command}\n{printed}"
            assert "Traceback" not in printed, f"$ {command}\n{printed}"
            cwd = Path(where)
            lines = printed.splitlines()
            for line in shown:
                assert any(_pattern(line).fullmatch(p) for p in lines), \
                    f"$ {command}: the docs show {line!r}; it printed:\n{printed}"
    finally:
        _stop(groups)
    assert cwd.name == "my-project"
    conn = apsw.Connection(str(cwd / ".state" / "kernel.db"), flags=apsw.SQLITE_OPEN_READONLY)
    ran = [name for (name,) in conn.execute(
        "SELECT DISTINCT w.name FROM attempt a JOIN worker w ON w.worker_id = a.worker_id")]
    advertised = {amount for (amount,) in conn.execute("SELECT amount FROM worker_resource")}
    conn.close()
    assert ran and all(n.startswith("dask:tcp://127.0.0.1:") for n in ran)   # on the cluster
    assert 8.0 in advertised and advertised <= {2.0, 8.0}
