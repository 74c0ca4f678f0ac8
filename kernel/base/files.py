"""Writing files so that a crash never leaves half of one: the only place that does it.

Public API:
    ``write_atomic(path, text)``: ``path.tmp``, fsync, rename over ``path``, fsync the
    directory; ``fsync_path(path)``: fsync a file or a directory; ``private_dir(path)``: create
    a directory (and its missing parents) readable by the owner only (0700);
    ``make_private(path)``: chmod a file 0600 (a directory 0700); ``open_private(path, mode)``:
    open a file for writing that is created 0600 whatever the umask.

Stability Guarantees:
    Whatever the umask, the kernel's own files (the database, logs, backups, bundles, views) are
    created 0600 and ``.state/`` 0700: task logs and the database can hold secrets.
    After ``write_atomic`` returns, ``path`` holds the new text, durably; if the process dies
    first, ``path`` holds the old text (or nothing) and at most a ``.tmp`` is left over, which
    the next write replaces.

Integration Points:
    The ``.state/`` views (``kernel.observe.exports``), ``metrics.json``
    (``kernel.observe.metrics``), archives,
    backups and bundles (``kernel.observe.archive``, ``kernel.maintain.backup``,
    ``kernel.maintain.bundle``).

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (after a rename into it) where the filesystem allows."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """``mkdir -p path`` with mode 0700 (also when it exists already: it is chmod-ed)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
    return path


def make_private(path: Path) -> None:
    """chmod 0600 a file (0700 a directory); a missing path is left alone."""
    try:
        os.chmod(path, PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)
    except FileNotFoundError:
        pass


def open_private(path: Path, mode: str = "a", *, encoding: str | None = "utf-8",
                 errors: str | None = None) -> IO[Any]:
    """``open(path, mode)`` for writing, the file created 0600 whatever the umask (an existing
    file is chmod-ed 0600 too)."""
    flags = os.O_WRONLY | os.O_CREAT
    if "a" in mode:
        flags |= os.O_APPEND
    elif "w" in mode:
        flags |= os.O_TRUNC
    else:
        raise ValueError(f"open_private is for writing ('w' or 'a'), not {mode!r}")
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        pass
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding, errors=errors)


def write_atomic(path: Path, text: str) -> None:
    """Write ``path.tmp`` (0600), fsync it, rename it over ``path``, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open_private(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
