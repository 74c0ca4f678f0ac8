"""Writing files so that a crash never leaves half of one: the only place that does it.

Public API:
    ``write_atomic(path, text)``: ``path.tmp``, fsync, rename over ``path``, fsync the
    directory; ``fsync_path(path)``: fsync a file or a directory.

Stability Guarantees:
    After ``write_atomic`` returns, ``path`` holds the new text, durably; if the process dies
    first, ``path`` holds the old text (or nothing) and at most a ``.tmp`` is left over, which
    the next write replaces.

Integration Points:
    The ``.state/`` views (``kernel.views``), ``metrics.json`` (``kernel.metrics``), archives,
    backups and bundles (``kernel.archive``, ``kernel.backup``, ``kernel.bundle``).

Dependencies:
    The standard library.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (after a rename into it) where the filesystem allows."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``path.tmp``, fsync it, rename it over ``path``, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
