"""Storage faults for the reliability campaigns: an SQLite VFS that fails chosen reads, writes,
syncs or lock calls, and a power-loss simulation, around a real ``orch`` command.

    ORCH_VFS_FAULTS='write:full:nth=3:file=wal' python -m kernel.bench.faultvfs --root P run
    ORCH_VFS_POWERLOSS=UNDO_DIR python -m kernel.bench.faultvfs --root P run   # then power_loss

Public API:
    ``FAULTS_ENV`` (``ORCH_VFS_FAULTS``), ``POWERLOSS_ENV`` (``ORCH_VFS_POWERLOSS``), ``ALLOWED``,
    ``REPORT_ENV`` (``ORCH_VFS_REPORT``: a file ``main`` appends its count of injected faults to),
    ``KINDS``, ``ERRORS``, ``FILES``; ``Fault`` and ``parse(text) -> list[Fault]``;
    ``FaultVFS`` / ``FaultFile`` (``apsw.VFS`` / ``apsw.VFSFile`` subclasses inheriting from the
    default VFS); ``install(faults, undo_dir=None)`` registers it as the default VFS of this
    process (and so of the workers ``orch run`` forks); ``power_loss(undo_dir, where) -> int``
    puts back what was written after each file's last sync (the bytes undone); ``main(argv)``:
    install from the environment, then run ``kernel.cli.main``.

Stability Guarantees:
    Test and campaign instrumentation, never imported by kernel code: an ``orch`` started any
    other way is untouched. ``ORCH_VFS_FAULTS`` is a comma-separated list of
    ``KIND:ERROR[:nth=N][:times=M][:file=F][:after=POINT]`` entries. KIND is ``read``,
    ``write``, ``sync``, ``lock`` (xLock) or ``truncate``; ERROR is ``full`` (SQLITE_FULL),
    ``ioerr`` (SQLITE_IOERR), ``busy`` (SQLITE_BUSY) or ``readonly`` (SQLITE_READONLY), each
    only where a real file system can give it (``ALLOWED``: busy only for a lock); F is
    ``db``, ``wal`` or ``any`` (default). The Nth matching call (default 1) and the M - 1 after
    it fail (default 1; ``times=0``: every call from the Nth on). With ``after=POINT`` (a name
    of ``kernel.base.faults.POINTS``) calls are counted only once this process has passed that
    point. Counts are per process; a forked worker starts counting from zero. A bad entry is an
    error (``ValueError``): a campaign must not silently run without its fault.

    Power loss (``ORCH_VFS_POWERLOSS=DIR``): before each write to the database or its WAL, the
    bytes it overwrites (and the file's size) are appended to ``DIR/<file name>.undo`` under an
    exclusive flock; an ``xSync`` of that file empties its undo log, whatever process syncs.
    Writes still reach the file (every process sees them, as through the page cache), so the
    run behaves as usual. After every process was killed, ``power_loss(DIR)`` undoes, newest
    first, every write that no sync made durable: the file as a power cut would leave it.
    Truncations and file creations are treated as durable. An injected fault that SQLite ignores
    (a checkpoint when a connection closes) is still raised by apsw, as an "unraisable"
    exception when the connection is garbage-collected: the shim prints it as one line.

Integration Points:
    tests/test_faults*.py and tools/fault_campaign.py run ``python -m kernel.bench.faultvfs``
    in place of ``orch``; ``kernel.base.faults.point`` is wrapped to know which points passed.

Dependencies:
    apsw; ``kernel.base.faults``, ``kernel.cli.run``.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from kernel.base import faults

FAULTS_ENV = "ORCH_VFS_FAULTS"
POWERLOSS_ENV = "ORCH_VFS_POWERLOSS"
REPORT_ENV = "ORCH_VFS_REPORT"
VFS_NAME = "orch-faults"
KINDS = ("read", "write", "sync", "lock", "truncate")
ERRORS: dict[str, type[apsw.Error]] = {
    "full": apsw.FullError, "ioerr": apsw.IOError, "busy": apsw.BusyError,
    "readonly": apsw.ReadOnlyError,
}
FILES = ("db", "wal", "any")
#: The errors each kind of call may fail with: those a real file system gives it. SQLite takes
#: SQLITE_BUSY from a write during a checkpoint for "readers present" and carries on, leaving a
#: damaged file: no disk does that, so it is refused here.
ALLOWED = {"read": ("ioerr",), "write": ("full", "ioerr", "readonly"),
           "sync": ("full", "ioerr"), "truncate": ("full", "ioerr"), "lock": ("busy", "ioerr")}
_HEADER = struct.Struct("<qqq")   # offset, length of the old bytes, the file's size before


@dataclass
class Fault:
    kind: str
    error: str
    nth: int = 1
    times: int = 1
    file: str = "any"
    after: str | None = None
    seen: int = 0        # matching calls counted so far (in this process)

    def hit(self, kind: str, file: str, passed: set[str]) -> bool:
        if kind != self.kind or self.file not in ("any", file):
            return False
        if self.after is not None and self.after not in passed:
            return False
        self.seen += 1
        return self.seen >= self.nth and (self.times == 0 or self.seen < self.nth + self.times)


def parse(text: str) -> list[Fault]:
    found: list[Fault] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        kind, _, rest = item.partition(":")
        error, *options = rest.split(":") if rest else [""]
        if kind not in KINDS or error not in ALLOWED[kind]:
            raise ValueError(f"{FAULTS_ENV}: {item!r}: KIND must be one of {KINDS}, and ERROR "
                             f"one of {ALLOWED.get(kind, sorted(ERRORS))}")
        fault = Fault(kind, error)
        for option in options:
            key, _, value = option.partition("=")
            if key in ("nth", "times") and value.isdigit():
                setattr(fault, key, int(value))
            elif key == "file" and value in FILES:
                fault.file = value
            elif key == "after" and value in faults.POINTS:
                fault.after = value
            else:
                raise ValueError(f"{FAULTS_ENV}: {item!r}: bad option {option!r}")
        found.append(fault)
    return found


class _State:
    faults: list[Fault] = []
    passed: set[str] = set()
    undo_dir: Path | None = None
    injected = 0


def _check(kind: str, file: str) -> None:
    for fault in _State.faults:
        if fault.hit(kind, file, _State.passed):
            _State.injected += 1
            raise ERRORS[fault.error](f"injected fault: {fault.kind} {fault.error} on {file}")


class FaultFile(apsw.VFSFile):
    def __init__(self, base: str, name: Any, flags: list[int], file: str) -> None:
        super().__init__(base, name, flags)
        self.file = file
        self.name = name.filename() if hasattr(name, "filename") else str(name)

    def xRead(self, amount: int, offset: int) -> bytes:
        _check("read", self.file)
        return bytes(super().xRead(amount, offset))

    def xWrite(self, data: bytes, offset: int) -> None:
        _check("write", self.file)
        if _State.undo_dir is not None and self.file != "other":
            self._remember(len(data), offset)
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:
        _check("sync", self.file)
        super().xSync(flags)
        if _State.undo_dir is not None and self.file != "other":
            with _undo_log(self.name, truncate=True):
                pass

    def xLock(self, level: int) -> None:
        _check("lock", self.file)
        try:
            super().xLock(level)
        except apsw.IOError as exc:
            # A read-only connection's close asks for EXCLUSIVE (to checkpoint), which the unix
            # VFS refuses with SQLITE_IOERR_LOCK and SQLite ignores; apsw would still raise the
            # Python exception from close(). BUSY is the refusal apsw lets pass quietly.
            raise apsw.BusyError(f"lock refused: {exc}") from None

    def xTruncate(self, size: int) -> None:
        _check("truncate", self.file)
        super().xTruncate(size)

    def _remember(self, length: int, offset: int) -> None:
        size = self.xFileSize()
        old = b""
        if offset < size:
            try:
                old = bytes(super().xRead(min(length, size - offset), offset))
            except apsw.Error:   # a short read: the bytes beyond the end are undone by size
                old = b""
        with _undo_log(self.name) as log:
            log.write(_HEADER.pack(offset, len(old), size) + old)


class _undo_log:  # noqa: N801 - used as a context manager like open()
    def __init__(self, name: str, truncate: bool = False) -> None:
        assert _State.undo_dir is not None
        self.path = _State.undo_dir / (Path(name).name + ".undo")
        self.truncate = truncate

    def __enter__(self) -> Any:
        self.f = open(self.path, "ab")   # noqa: SIM115 - closed in __exit__
        fcntl.flock(self.f, fcntl.LOCK_EX)
        if self.truncate:
            self.f.truncate(0)
        return self.f

    def __exit__(self, *exc: Any) -> None:
        self.f.flush()
        self.f.close()   # releases the flock


class FaultVFS(apsw.VFS):
    def __init__(self) -> None:
        self.base = apsw.vfs_names()[0]   # the default before this one: "unix"
        super().__init__(VFS_NAME, base=self.base, makedefault=True)

    def xOpen(self, name: Any, flags: list[int]) -> FaultFile:
        if flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            file = "db"
        elif flags[0] & apsw.SQLITE_OPEN_WAL:
            file = "wal"
        else:
            file = "other"
        return FaultFile(self.base, name, flags, file)


_registered: list[FaultVFS] = []


def _wrap_points() -> None:
    original = faults.point

    def point(name: str) -> None:
        _State.passed.add(name)
        original(name)

    faults.point = point


def _after_fork() -> None:
    _State.passed = set()
    for fault in _State.faults:
        fault.seen = 0


def _unraisable(hook: Any) -> Any:
    """SQLite ignores an error while a connection closes (its checkpoint on close); apsw still
    reports the Python exception of a VFS method, as "unraisable" when the connection is
    garbage-collected. For an injected fault that report is the shim's, not orch's: one line."""
    def report(info: Any) -> None:
        if isinstance(info.exc_value, apsw.Error) and "injected fault" in str(info.exc_value):
            sys.stderr.write(f"orch fault shim: ignored on close: {info.exc_value}\n")
        else:
            hook(info)

    return report


def install(found: list[Fault], undo_dir: Path | None = None) -> None:
    """Register the faulty VFS as this process's default (once)."""
    _State.faults = found
    _State.undo_dir = undo_dir
    if undo_dir is not None:
        undo_dir.mkdir(parents=True, exist_ok=True)
    if not _registered:
        _registered.append(FaultVFS())
        _wrap_points()
        sys.unraisablehook = _unraisable(sys.unraisablehook)
        os.register_at_fork(after_in_child=_after_fork)


def power_loss(undo_dir: Path, where: Path) -> int:
    """Undo, in the files of directory ``where``, every write no sync made durable (every
    process that wrote must be dead): returns the bytes undone."""
    undone = 0
    for log in sorted(undo_dir.glob("*.undo")):
        target = where / log.name[:-len(".undo")]
        records = _records(log.read_bytes())
        if target.exists():
            with open(target, "r+b") as f:
                for offset, old, size in reversed(records):
                    f.seek(offset)
                    f.write(old)
                    end = f.seek(0, os.SEEK_END)
                    if end > size:
                        f.truncate(size)
                    undone += len(old) + max(0, end - size)
                os.fsync(f.fileno())
        log.unlink()
    return undone


def _records(data: bytes) -> list[tuple[int, bytes, int]]:
    found = []
    at = 0
    while at + _HEADER.size <= len(data):
        offset, length, size = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        if at + length > len(data):
            break   # a record cut by the kill: its write never started
        found.append((offset, data[at:at + length], size))
        at += length
    return found


def main(argv: list[str] | None = None) -> None:
    undo = os.environ.get(POWERLOSS_ENV)
    install(parse(os.environ.get(FAULTS_ENV, "")), Path(undo) if undo else None)
    from kernel.cli import run

    code = run(argv if argv is not None else sys.argv[1:])
    report = os.environ.get(REPORT_ENV)
    if report:   # how many faults this process injected (forked workers do not report)
        with open(report, "a", encoding="utf-8") as f:
            f.write(f"{_State.injected}\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
