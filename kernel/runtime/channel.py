"""The link between ``orch run`` and a worker it started: one JSON document per line on a socket
pair, and the worker's end of it (``KernelLink``).

Public API:
    ``Wire(sock)`` (``send(msg) -> bool``, ``recv(timeout) -> dict | None``, ``close()``;
    raises ``Gone`` when the other end is closed); ``KernelLink(sock)`` (a worker's end:
    ``hello``, ``wait_claim``, ``started``, ``report``; ``broken``);
    ``claim_to_wire(claim) -> dict``, ``claim_from_wire(data) -> Claim``; ``Gone``;
    ``DIRECT_ENV``;
    ``socket_pair() -> (kernel_end, worker_end)``; ``from_fd(fd) -> socket``;
    ``socket_path(db_path, create=True) -> Path | None`` (where a running kernel listens for
    workers that join by hand), ``listen(db_path) -> socket | None``, ``unlisten(db_path)``,
    ``connect(db_path) -> socket | None``.

Stability Guarantees:
    Messages a worker sends: ``hello`` {worker_id} (registered, ready for work);
    ``started`` {attempt_id, pgid, hostname} (the task's process group; no reply);
    ``refused`` {attempt_id, rule, reason, rules, more} (a pre-execution rule failed);
    ``finished`` {attempt_id, outcome, exit_code, error, duration, details, cancel_reason, more};
    ``validated`` {attempt_id, passed, summary, rules, duration, details, more}. The last three
    get the reply ``done`` {state, claim}: the task's new state as the kernel committed it, and
    the worker's next claim when it asked for more (``more``) and one was made in the same
    transaction. The kernel also sends ``claim`` {claim} to a worker that waits for work.
    A reply with ``state`` null (the kernel could not apply the report) or a link that breaks
    (the kernel is gone) makes the worker write the report itself, with the same fenced
    functions (``kernel.runtime.claims``): a report is never lost, and never applied twice
    (the compare-and-set on the fencing generation refuses a second one, logged as
    ``stale_result_rejected``). A worker whose link broke takes no new claim and exits after
    its task.

    A worker that joins by hand (``orch worker``) connects to the kernel's socket: a
    ``socket_path`` in a directory of the user's own (``$TMPDIR/orch-UID``, mode 0700, checked:
    no other user can connect), named after the database's path. No socket (no ``orch run``,
    another user's directory, ``ORCH_DIRECT_WORKERS``) means the worker claims and reports in
    its own transactions, as before; so does a joined worker whose kernel went away.

Integration Points:
    ``kernel.runtime.runner`` creates the pairs (``socket_pair``) when it forks or spawns a
    worker, and listens on ``socket_path`` while it runs; ``kernel.runtime.dispatch`` is the
    kernel's end; ``kernel.runtime.worker`` uses ``KernelLink`` when it was given a link
    (``WorkerOptions.link``) or found a kernel to join.

Dependencies:
    ``kernel.runtime.attempts``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import select
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kernel.runtime.attempts import Claim

#: Set: workers claim and report in their own transactions instead of through the group commit
#: of their ``orch run`` (it starts them unlinked, and ``orch worker`` does not join it).
DIRECT_ENV = "ORCH_DIRECT_WORKERS"

__all__ = ["DIRECT_ENV", "Gone", "KernelLink", "Wire", "claim_from_wire", "claim_to_wire",
           "connect", "from_fd", "listen", "socket_pair", "socket_path", "unlisten"]

T = TypeVar("T")


class Gone(Exception):
    """The other end of the link is closed."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the kernel's end, the worker's end); neither is inherited by a task's process."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def from_fd(fd: int) -> socket.socket:
    """The worker's end, passed to a spawned worker as a file descriptor."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return sock


_CLAIM_FIELDS = tuple(f.name for f in dataclasses.fields(Claim))


def socket_path(db_path: Path, create: bool = True) -> Path | None:
    """Where the kernel of ``db_path`` listens, or None when the directory is not safely this
    user's own (it is created with mode 0700 when ``create``; else None when missing)."""
    directory = Path(tempfile.gettempdir()) / f"orch-{os.getuid()}"
    try:
        if create:
            directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or stat.S_IMODE(info.st_mode) & 0o077:
        return None
    digest = hashlib.sha256(str(Path(db_path).resolve()).encode()).hexdigest()[:24]
    return directory / f"{digest}.sock"


def listen(db_path: Path) -> socket.socket | None:
    """The kernel's listening socket (non-blocking), or None when there can be none."""
    path = socket_path(db_path)
    if path is None:
        return None
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)      # left by a kernel that died: only one run owns a db
        server.bind(str(path))
        server.listen(64)
    except OSError:
        server.close()
        return None
    server.setblocking(False)
    return server


def unlisten(db_path: Path) -> None:
    """Remove the kernel's socket, and its directory when no other kernel uses it: nothing is
    left behind in ``$TMPDIR``."""
    path = socket_path(db_path, create=False)
    if path is None:
        return
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass   # another orch run's socket is there


def connect(db_path: Path) -> socket.socket | None:
    """A link to the running kernel of ``db_path``, or None when none listens (or
    ``DIRECT_ENV`` is set)."""
    if os.environ.get(DIRECT_ENV):
        return None
    path = socket_path(db_path, create=False)
    if path is None or not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def claim_to_wire(claim: Claim) -> dict[str, Any]:
    """The claim's fields (not copied: ``dataclasses.asdict`` deep-copies the definition)."""
    return {name: getattr(claim, name) for name in _CLAIM_FIELDS}


def claim_from_wire(data: dict[str, Any]) -> Claim:
    return Claim(**data)


class Wire:
    """Line-delimited JSON on a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._ready: list[dict[str, Any]] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any]) -> bool:
        """Send one message; False when the other end is gone."""
        try:
            self.sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        except OSError:
            return False
        return True

    def feed(self) -> bool:
        """Read what is there (the socket is readable); False at end of file."""
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        self._ready.extend(json.loads(line) for line in lines if line)
        return True

    def take(self) -> list[dict[str, Any]]:
        out, self._ready = self._ready, []
        return out

    def recv(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds; ``Gone`` at end of file."""
        while not self._ready:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                return None
            if not self.feed():
                raise Gone()
        return self._ready.pop(0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class KernelLink:
    """A worker's end of the link: reports go to the kernel, which commits them with the next
    claims; when the kernel is gone (or could not apply a report) the worker's own ``direct``
    function writes it."""

    def __init__(self, sock: socket.socket) -> None:
        self.wire = Wire(sock)
        self.broken = False

    def hello(self, worker_id: str) -> None:
        self.broken = self.broken or not self.wire.send({"op": "hello", "worker_id": worker_id})

    def wait_claim(self, timeout: float) -> Claim | None:
        """The next claim the kernel sends, or None after ``timeout`` (or once broken)."""
        if self.broken:
            return None
        try:
            msg = self.wire.recv(timeout)
        except (Gone, OSError, ValueError):
            self.broken = True
            return None
        if msg is not None and msg.get("op") == "claim" and msg.get("claim"):
            return claim_from_wire(msg["claim"])
        return None

    def started(self, attempt_id: int, pgid: int, hostname: str,
                direct: Callable[[], None]) -> None:
        if self.broken or not self.wire.send({"op": "started", "attempt_id": attempt_id,
                                              "pgid": pgid, "hostname": hostname}):
            self.broken = True
            direct()

    def report(self, msg: dict[str, Any],
               direct: Callable[[], T]) -> tuple[str | T, Claim | None]:
        """Send a report and wait for the kernel's ``done``: (the task's new state, the next
        claim or None). ``direct()`` writes the report instead when that fails."""
        if not self.broken and self.wire.send(msg):
            try:
                reply = self.wire.recv(None)
            except (Gone, OSError, ValueError):
                reply = None
            if reply is not None and reply.get("op") == "done" and reply.get("state"):
                claim = reply.get("claim")
                return str(reply["state"]), claim_from_wire(claim) if claim else None
            if reply is None:
                self.broken = True
        else:
            self.broken = True
        return direct(), None

    def close(self) -> None:
        self.wire.close()
