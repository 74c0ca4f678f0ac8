"""`orch browse` as a command: one JSON document with --json, the archive files served beside
the kernel database, a busy port and a missing database reported without a traceback, and
Datasette ending with its parent however the parent ends."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kernel.store.eventlog import archive_dir, month_file, open_archive_for_write
from tests.browse_project import ORCH, get, start_browse
from tests.conftest import orch
from tests.e2e import make_project, pid_gone, task, wait_for


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def test_json_prints_one_document_and_the_archives_are_served(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a"), task("b", deps=["a"])])
    with open_archive_for_write(archive_dir(root / ".state") / month_file("2025-01"), "2025-01",
                                7):
        pass
    proc = subprocess.Popen([ORCH, "--root", str(root), "--json", "browse", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        text = line = proc.stdout.readline()
        while line != "}\n":  # the document is printed indented; this is its last line
            line = proc.stdout.readline()
            assert line, "orch browse --json ended before its document"
            text += line
        doc = json.loads(text)
        url = doc["browse"]["url"]
        assert url == f"http://127.0.0.1:{doc['browse']['port']}/"
        assert doc["browse"]["databases"] == ["kernel.db", "events-2025-01.sqlite"]
        status, body = get(url + "events-2025-01/event.json?_shape=objects")
        assert status == 200 and json.loads(body)["rows"] == []
        status, body = get(url + "-/metadata.json")
        meta = json.loads(body)
        assert meta["databases"]["events-2025-01"]["tables"]["event"]["description"]
        assert meta["databases"]["kernel"]["tables"]["task"]["columns"]["bottom_level"]
        status, _ = get(url + "kernel/task/nonexistent")
        assert status == 404  # a missing row is a 404, not a server error
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""  # nothing after the one document


def test_a_busy_port_and_a_missing_database_are_errors_without_a_traceback(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a")])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = orch("--root", str(root), "browse", "--port", str(port))
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = orch("--root", str(empty), "--json", "browse", "--port", "0")
    assert proc.returncode == 1   # not_initialised: exit 1 (3 is a locked or unreadable db)
    assert json.loads(proc.stdout)["error"]["code"] == "not_initialised"


def test_datasette_ends_when_orch_browse_is_killed(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a")])
    proc, url = start_browse(root)
    (server,) = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # Its standard input closed with its parent: it stops by itself, and the port is free.
    wait_for(lambda: pid_gone(server), timeout=20, message="Datasette to stop")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
