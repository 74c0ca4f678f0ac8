"""Reading definition documents strictly: the files, the limits and the value rules that every
definition file obeys, whatever its format (the parsers are ``kernel.base.formats``).

Task files, ``workstream.json``, the registries (``capabilities/*.yaml``) and ``orch.toml`` are
read here before any model sees them. Nothing is guessed: whatever this layer cannot hand on
unchanged and unambiguous is refused with a ``DocumentError`` naming the file, the JSON path of
the value and, where known, the line.

Public API:
    ``DocumentError(OrchError)`` (adds ``path`` and ``column``; ``code`` is one of
    ``DOCUMENT_CODES``); ``read_file(path, *, max_bytes, display=None) -> bytes``;
    ``decode_utf8(raw, display=None) -> str``; ``check_values(data) -> problems`` (the value
    rules on an already decoded document); ``path_text(loc)`` and its inverse
    ``path_loc(text)``; ``kind_of(mode)``; ``VALUE_HINTS`` (code -> hint); the limits
    ``MAX_DEPTH``, ``INT64_MIN``, ``INT64_MAX``, ``DEFAULT_MAX_FILE_BYTES``, ``MAX_SECONDS`` (the
    longest duration any setting or field accepts).

Stability Guarantees:
    The rules, for every format: the file is a regular file (a symlink is followed; one that
    dangles, loops, or ends at a FIFO, socket or device is refused), opened without blocking
    (a FIFO can never hang a reader), at most ``max_bytes`` long, not empty, UTF-8 without a
    byte-order mark. Values: no NaN or infinity, integers within SQLite's 64-bit INTEGER range,
    nesting at most ``MAX_DEPTH`` containers deep, no key twice in one object or mapping, no
    NUL character and no lone UTF-16 surrogate in any string or key. Every value problem of a
    document is reported, each with its path. Codes are only added, never renamed.

Integration Points:
    ``kernel.base.formats`` (JSON, YAML and TOML) decodes through ``decode_utf8`` and applies
    ``check_values``; ``kernel.definitions.taskfiles`` (task and workstream files),
    ``kernel.definitions.registries`` (the YAML registries), ``kernel.base.config``
    (``orch.toml``) and ``kernel.definitions.task_documents`` (one task file, for
    ``kernel.definitions.migrate_tasks``) read through ``read_file``; their callers turn a
    ``DocumentError`` into their own problem records.

Dependencies:
    ``kernel.base.errors``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from collections.abc import Sequence
from typing import Any

from kernel.base.errors import OrchError

MAX_DEPTH = 64  # containers inside containers; task files need 3
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # SQLite INTEGER
DEFAULT_MAX_FILE_BYTES = 1_048_576
# Durations above this (about 31.7 years) are refused: a deadline that far away cannot be
# represented as a date, and none is meant.
MAX_SECONDS = 1_000_000_000

DOCUMENT_CODES = (
    "file_unreadable", "not_a_regular_file", "file_too_large", "empty_file", "bad_encoding",
    "json_syntax", "yaml_syntax", "toml_syntax", "duplicate_key", "non_finite_number",
    "integer_out_of_range", "too_deep", "nul_character", "invalid_unicode",
)

_SURROGATE = re.compile("[\ud800-\udfff]")
_PATH_PART = re.compile(r"[^.\[\]]+")


class DocumentError(OrchError):
    """One problem of one document: ``code``, ``message``, ``file``, ``line``, ``column``,
    ``path`` (a JSON path such as ``execution.timeout_seconds``; "" for the whole file) and a
    ``hint``."""

    def __init__(self, code: str, message: str, *, file: str | None = None,
                 line: int | None = None, column: int | None = None, path: str = "",
                 hint: str | None = None) -> None:
        super().__init__(code, message, file=file, line=line, hint=hint)
        self.column = column
        self.path = path

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        at = f"{self.path}: " if self.path else ""
        text = f"{where}{at}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


# --------------------------------------------------------------------------- files


def kind_of(mode: int) -> str:
    """What a file-system object is, in words ("a FIFO", "a directory", ...)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


_NOT_REGULAR_HINT = "definition files must be regular files (or symlinks to one inside the project)"


def _open_error(path: str, shown: str, exc: OSError) -> DocumentError:
    if exc.errno == errno.ELOOP:
        return DocumentError("not_a_regular_file", "a symlink loop (too many levels of "
                             "symbolic links)", file=shown, hint=_NOT_REGULAR_HINT)
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return DocumentError("not_a_regular_file", f"a dangling symlink (to "
                             f"{os.readlink(path)!r}, which does not exist)", file=shown,
                             hint="point the symlink at an existing file, or remove it")
    if exc.errno == errno.ENXIO:  # a socket
        return DocumentError("not_a_regular_file", "a socket", file=shown,
                             hint=_NOT_REGULAR_HINT)
    if exc.errno == errno.EISDIR:
        return DocumentError("not_a_regular_file", "a directory", file=shown,
                             hint=_NOT_REGULAR_HINT)
    return DocumentError("file_unreadable", f"cannot read the file: {exc.strerror or exc}",
                         file=shown, hint="check the file's permissions")


def read_file(path: str, *, max_bytes: int, display: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed). Opened with O_NONBLOCK and
    checked with fstat before reading, so a FIFO or device is refused, never waited on."""
    shown = display or path
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, shown, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DocumentError("not_a_regular_file", f"{kind_of(info.st_mode)}, not a regular "
                                "file", file=shown, hint=_NOT_REGULAR_HINT)
        if info.st_size > max_bytes:
            raise _too_large(shown, info.st_size, max_bytes)
        # os.read: half the cost of open() for small files (no buffered file objects).
        parts = [os.read(fd, 65536)]
        total = len(parts[0])
        while len(parts[-1]) == 65536 and total <= max_bytes:
            parts.append(os.read(fd, 65536))
            total += len(parts[-1])
    except OSError as exc:
        raise _open_error(path, shown, exc) from None
    finally:
        os.close(fd)
    data = b"".join(parts) if len(parts) > 1 else parts[0]
    if len(data) > max_bytes:  # it grew while we read it
        raise _too_large(shown, len(data), max_bytes)
    if data.isspace() or not data:
        raise DocumentError("empty_file", "the file is empty" if not data else
                            "the file holds only white space", file=shown,
                            hint="write the document, or delete the file")
    return data


def _too_large(shown: str, size: int, limit: int) -> DocumentError:
    return DocumentError(
        "file_too_large", f"{size} bytes, over the limit of {limit} bytes", file=shown,
        hint="split it up; the limit for task files is [definitions] max_task_file_bytes in "
             "orch.toml")


def decode_utf8(raw: bytes, display: str | None = None) -> str:
    """``raw`` as UTF-8 text; a byte-order mark or any invalid byte is a ``bad_encoding``
    error with the line and column of the first bad byte."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise DocumentError("bad_encoding", "the file starts with a UTF-8 byte-order mark",
                            file=display, line=1, column=1,
                            hint="save the file as UTF-8 without a BOM")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError("bad_encoding", "the file is UTF-16, not UTF-8", file=display,
                            line=1, column=1, hint="save the file as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise DocumentError("bad_encoding", f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start} ({exc.reason})", file=display, line=line,
                            column=column, hint="save the file as UTF-8") from None


# --------------------------------------------------------------------------- values


def path_text(loc: Sequence[Any]) -> str:
    """``("execution", "timeout_seconds")`` -> ``execution.timeout_seconds``; ints index."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def path_loc(text: str) -> list[str | int]:
    """The inverse of ``path_text``: ``dependencies[2]`` -> ``["dependencies", 2]``."""
    return [int(p) if p.isdecimal() and p.isascii() else p for p in _PATH_PART.findall(text)]



def _string_problem(text: str, what: str) -> tuple[str, str] | None:
    if "\x00" in text:
        return "nul_character", f"{what} holds a NUL character (\\u0000)"
    if not text.isascii() and _SURROGATE.search(text):
        return "invalid_unicode", f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
    return None


VALUE_HINTS = {
    "duplicate_key": "give each key once: which of the two values was meant is not guessed",
    "non_finite_number": "write a finite number",
    "integer_out_of_range": f"integers must lie within {INT64_MIN}..{INT64_MAX} (64 bits)",
    "too_deep": f"definitions nest at most {MAX_DEPTH} levels deep",
    "nul_character": "remove the NUL: it cannot be passed to a program, a path or SQLite",
    "invalid_unicode": "write the character as a valid surrogate pair, or remove it",
}


def check_values(data: Any) -> list[DocumentError]:
    """Every value problem of a decoded document (JSON, YAML or TOML), in document order, each
    with its ``path`` (no file, no line: the caller knows them)."""
    problems: list[DocumentError] = []

    def add(code: str, loc: list[Any], message: str) -> None:
        problems.append(DocumentError(code, message, path=path_text(loc),
                                      hint=VALUE_HINTS[code]))

    stack: list[tuple[Any, list[Any], int]] = [(data, [], 0)]
    while stack:
        value, loc, depth = stack.pop()
        if isinstance(value, dict | list) and depth >= MAX_DEPTH:
            add("too_deep", loc, f"nested more than {MAX_DEPTH} levels deep")
            continue
        if isinstance(value, dict):
            for key in getattr(value, "duplicates", ()):
                add("duplicate_key", [*loc, key], f"key '{key}' appears more than once in "
                    "this object")
            children = []
            for key, item in [*getattr(value, "shadowed", ()), *value.items()]:
                if isinstance(key, str):
                    bad = _string_problem(key, f"key {key!r}")
                    if bad:
                        add(bad[0], [*loc, key], bad[1])
                        continue
                children.append((item, [*loc, key], depth + 1))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([(item, [*loc, i], depth + 1) for i, item in enumerate(value)]))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                add("integer_out_of_range", loc, f"integer {value} does not fit in 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                name = "NaN" if value != value else ("-" if value < 0 else "") + "Infinity"
                add("non_finite_number", loc, f"{name} is not a finite number: orch accepts "
                    "no NaN and no infinity")
        elif isinstance(value, str):
            bad = _string_problem(value, "the string")
            if bad:
                add(bad[0], loc, bad[1])
    return problems
