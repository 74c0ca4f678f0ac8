"""``orch browse [--port P] [--open]``: Datasette over the project's history, read-only.

Public API:
    ``COMMANDS`` (``browse``).

Stability Guarantees:
    See ``kernel.cli``. Serves on 127.0.0.1 only. ``--port 0`` (and a busy default port is an
    error, never a silent move) picks a free port. The URL is printed once Datasette answers
    (``--json``: one document ``{"browse": {"url", "port", "pid", "databases"}}``); Ctrl-C
    or SIGTERM stops Datasette and exits 0. A port that cannot be bound exits 1
    (``address_unavailable``); a Datasette that fails to start exits 1 (``browse_failed``)
    with its message; a missing or unreadable database exits 3. Datasette runs as its own
    process, over ``.state/kernel.db`` and the event archive files in mutable read-only mode
    (never ``immutable``), with the kernel's metadata; nothing it serves can write.

Integration Points:
    ``kernel.observe.browse.metadata`` (the metadata), ``kernel.observe.browse.serve`` (the
    Datasette process, started with ``sys.executable``), ``kernel.store.eventlog`` (the
    archive files). The DAG pages come from the plugin (``kernel.observe.browse.plugin``).
    Start-up: this module imports neither Datasette nor the planner.

Dependencies:
    apsw, click; ``kernel.base.errors``, ``kernel.cli.common``,
    ``kernel.observe.browse.metadata``, ``kernel.store.db``, ``kernel.store.eventlog``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import apsw
import click

from kernel.base.errors import EXIT_OK, OrchError
from kernel.cli.common import CliState, command, emit
from kernel.observe.browse.metadata import datasette_metadata
from kernel.store import db
from kernel.store.eventlog import archive_dir, archive_files
from kernel.store.project import Project

HOST = "127.0.0.1"
DEFAULT_PORT = 8001
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0


def _schema(conn: apsw.Connection) -> tuple[list[str], dict[str, list[str]]]:
    workstreams = [r[0] for r in conn.execute(
        "SELECT workstream_id FROM workstream ORDER BY 1")]
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    columns = {n: [r[1] for r in conn.execute(f"PRAGMA table_info(\"{n}\")")] for n in names}
    return workstreams, columns


def _config(project: Project, fd: int) -> dict[str, Any]:
    with project.open(readonly=True) as conn, db.read_tx(conn):
        workstreams, columns = _schema(conn)
    archives = list(archive_files(archive_dir(project.state_dir)).values())
    metadata = datasette_metadata(
        title=f"orch: {project.root.name}", kernel_name=project.db_path.stem,
        archive_names=[p.stem for p in archives], workstreams=workstreams, columns=columns)
    return {"fd": fd, "files": [str(project.db_path), *map(str, archives)],
            "metadata": metadata}


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OrchError("address_unavailable", f"cannot listen on {HOST}:{port}: "
                        f"{exc.strerror}", hint="pick another port: --port 0 picks a free one"
                        ) from exc
    sock.set_inheritable(True)
    return sock


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "-/versions.json", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not _answers(url):
        if proc.poll() is not None:
            raise OrchError("browse_failed", f"Datasette exited with status {proc.returncode} "
                            "before it served (its message is above)",
                            hint="check that the datasette package is installed: "
                                 "pip install 'datasette>=0.65,<0.66'")
        if time.monotonic() > deadline:
            raise OrchError("browse_failed", f"Datasette did not answer within "
                            f"{_READY_TIMEOUT:.0f} s", hint="see its messages above")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin (it stops gracefully), then SIGTERM, then SIGKILL."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    for escalate in (None, proc.terminate, proc.kill):
        if escalate is not None:
            escalate()
        try:
            proc.wait(_STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _start(config: dict[str, Any], sock: socket.socket) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "kernel.observe.browse.serve"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            pass_fds=(sock.fileno(),))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config).encode() + b"\n")
    proc.stdin.flush()
    return proc


@command("browse")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="The port on 127.0.0.1; 0 picks a free one.")
@click.option("--open", "open_browser", is_flag=True,
              help="Open the index page in the web browser once it answers.")
def browse_cmd(state: CliState, port: int, open_browser: bool) -> int:
    """Browse the history in Datasette on 127.0.0.1, read-only: every table described, canned
    queries, and a DAG picture per workstream, until Ctrl-C.

    Datasette runs as its own process over .state/kernel.db and the event archives. It can
    not write: there is no write query, and every connection to orch's databases is
    query-only.
    """
    project = state.project()
    project.require_db()
    sock = _bind(port)
    # Ctrl-C and SIGTERM both end in the KeyboardInterrupt below (even where the shell started
    # us with SIGINT ignored, as it does for a background job).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    proc: subprocess.Popen[bytes] | None = None
    try:
        bound = int(sock.getsockname()[1])
        config = _config(project, sock.fileno())
        proc = _start(config, sock)
        sock.close()
        url = f"http://{HOST}:{bound}/"
        _wait_ready(proc, url)
        emit(state, {"browse": {"url": url, "port": bound, "pid": proc.pid,
                                "databases": [Path(f).name for f in config["files"]]}},
             f"Datasette serves {project.root.name} on {url} (read-only; Ctrl-C stops it)")
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        code = proc.wait()
        if code not in (0, -signal.SIGINT, -signal.SIGTERM):
            raise OrchError("browse_failed", f"Datasette exited with status {code}",
                            hint="see its messages above")
    except KeyboardInterrupt:
        if not state.json:
            click.echo("stopping Datasette", err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        if proc is not None:
            _stop(proc)
    return EXIT_OK


COMMANDS = [browse_cmd]
