"""Reading definition documents strictly: the one parse layer every definition file goes through.

Task files, ``workstream.json``, the registries (``capabilities/*.yaml``) and ``orch.toml`` are
read here before any model sees them. Nothing is guessed: whatever this layer cannot hand on
unchanged and unambiguous is refused with a ``DocumentError`` naming the file, the JSON path of
the value and, where known, the line.

Public API:
    ``DocumentError(OrchError)`` (adds ``path`` and ``column``; ``code`` is one of
    ``DOCUMENT_CODES``); ``read_file(path, *, max_bytes, display=None) -> bytes``;
    ``decode_utf8(raw, display=None) -> str``; ``parse_json(raw, display=None) -> (data,
    problems)``; ``parse_yaml(raw, display=None) -> (data, root_node, problems)``;
    ``parse_toml(raw, display=None) -> (data, problems)``; ``check_values(data) -> problems``
    (the value rules on an already decoded document); ``json_line(text, loc,
    duplicate=False)``, ``yaml_line(node, loc)``, ``toml_line(text, loc)`` (the 1-based line of
    a value, best effort); ``path_text(loc)``; ``kind_of(mode)``; the limits ``MAX_DEPTH``,
    ``INT64_MIN``, ``INT64_MAX``, ``DEFAULT_MAX_FILE_BYTES``, ``MAX_SECONDS`` (the longest
    duration any setting or field accepts).

Stability Guarantees:
    The rules, for every format: the file is a regular file (a symlink is followed; one that
    dangles, loops, or ends at a FIFO, socket or device is refused), opened without blocking
    (a FIFO can never hang a reader), at most ``max_bytes`` long, not empty, UTF-8 without a
    byte-order mark. Values: no NaN or infinity, integers within SQLite's 64-bit INTEGER range,
    nesting at most ``MAX_DEPTH`` containers deep, no key twice in one object or mapping, no
    NUL character and no lone UTF-16 surrogate in any string or key. YAML anchors and aliases
    are refused (a few lines of aliases can expand to gigabytes). Every value problem of a
    document is reported, each with its path. Codes are only added, never renamed.

Integration Points:
    ``kernel.definitions.taskfiles`` (task and workstream files), ``kernel.definitions.registries``
    (the YAML
    registries), ``kernel.base.config`` (``orch.toml``) and ``kernel.definitions.migrate_tasks``
    read through
    this module; their callers turn a ``DocumentError`` into their own problem records.

Dependencies:
    yaml; ``kernel.base.errors``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import threading
import tomllib
from collections.abc import Sequence
from typing import Any

import yaml

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
# A JSON text can only hold a NUL or a lone surrogate as a \u escape, and can only nest
# deeper than MAX_DEPTH with more than MAX_DEPTH brackets; the number hooks of parse_json flag
# integers of 19 digits or more and floats that overflow. Otherwise no walk is needed.
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


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


class _Duplicates(dict[str, Any]):
    """A JSON object that had a key twice (its `duplicates`; the document is refused)."""

    duplicates: list[str]
    shadowed: list[tuple[str, Any]]


def _marked(pairs: list[tuple[str, Any]]) -> _Duplicates:
    marked = _Duplicates(pairs)  # the last value of each key...
    seen: set[str] = set()
    marked.duplicates, marked.shadowed = [], []
    for i, (key, value) in enumerate(pairs):
        if key in seen and key not in marked.duplicates:
            marked.duplicates.append(key)
        seen.add(key)
        if marked[key] is not value or any(k == key for k, _ in pairs[i + 1:]):
            marked.shadowed.append((key, value))  # ...and the others, checked all the same
    return marked


def _string_problem(text: str, what: str) -> tuple[str, str] | None:
    if "\x00" in text:
        return "nul_character", f"{what} holds a NUL character (\\u0000)"
    if not text.isascii() and _SURROGATE.search(text):
        return "invalid_unicode", f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
    return None


_VALUE_HINTS = {
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
                                      hint=_VALUE_HINTS[code]))

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


# --------------------------------------------------------------------------- JSON


# The hooks of one reused decoder (making a decoder per document costs more than parsing a
# task file) note in _FLAGGED what needs a walk: NaN/Infinity, an integer of 19 digits or
# more, a float that overflows, an object with a key twice.
_FLAGGED = threading.local()


def _flag(what: str) -> None:
    _FLAGGED.items = [*getattr(_FLAGGED, "items", []), what]


def _constant(name: str) -> float:
    _flag(name)
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[name]


def _integer(digits: str) -> int:
    if len(digits) > 18:
        _flag(digits)
    return int(digits)


def _float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        _flag(text)
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    _flag("duplicate key")
    return _marked(pairs)


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant,
                            parse_int=_integer, parse_float=_float)


def parse_json(raw: bytes, display: str | None = None) -> tuple[Any, list[DocumentError]]:
    """Decode one JSON document strictly: ``(data, [])``, or ``(None, problems)``."""
    try:
        text = decode_utf8(raw, display)
    except DocumentError as exc:
        return None, [exc]
    _FLAGGED.items = []
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return None, [DocumentError(
            "json_syntax", exc.msg, file=display, line=exc.lineno, column=exc.colno,
            hint="fix the JSON syntax (a trailing comma or a missing quote is the usual cause)")]
    except RecursionError:
        return None, [DocumentError("too_deep", f"nested more than {MAX_DEPTH} levels deep",
                                    file=display, hint=_VALUE_HINTS["too_deep"])]
    if not (_FLAGGED.items or b"\\u" in raw
            or raw.count(b"{") + raw.count(b"[") > MAX_DEPTH):
        return data, []
    problems = check_values(data)
    for p in problems:
        p.file = display
        p.line = json_line(text, _loc(p.path), duplicate=p.code == "duplicate_key")
    return (None if problems else data), problems


def _loc(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]


def json_line(text: str, loc: Sequence[Any], duplicate: bool = False) -> int | None:
    """The 1-based line of the value at ``loc`` in a JSON text (of the second occurrence of
    the last key with ``duplicate``); JSON is YAML's flow style, so PyYAML gives positions."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    return _node_line(root, loc, duplicate)


def _node_line(node: yaml.Node | None, loc: Sequence[Any], duplicate: bool = False
               ) -> int | None:
    if node is None:
        return None
    for n, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            keys = [(k, v) for k, v in node.value if k.value == str(part)]
            if not keys:  # a missing field: the line of the object that lacks it
                break
            if duplicate and n == len(loc) - 1 and len(keys) > 1:
                return int(keys[1][0].start_mark.line) + 1
            node = keys[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (a few lines of them can expand to gigabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not supported in orch files: write the "
                "value out", event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(raw: bytes, display: str | None = None
               ) -> tuple[Any, yaml.Node | None, list[DocumentError]]:
    """Decode one YAML document strictly: ``(data, root_node, [])``, or ``(None, node,
    problems)``. The node tree gives line numbers (``yaml_line``)."""
    try:
        text = decode_utf8(raw, display)
    except DocumentError as exc:
        return None, None, [exc]
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        problems = _node_problems(root, display)
        if problems:
            return None, root, problems
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        message = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, None, [DocumentError(
            "yaml_syntax", message, file=display,
            line=mark.line + 1 if mark is not None else None,
            column=mark.column + 1 if mark is not None else None,
            hint="fix the YAML syntax (indentation and a missing ':' are the usual causes)")]
    except RecursionError:
        return None, None, [DocumentError("too_deep", f"nested more than {MAX_DEPTH} levels "
                                          "deep", file=display, hint=_VALUE_HINTS["too_deep"])]
    finally:
        loader.dispose()
    problems = check_values(data)
    for p in problems:
        p.file = display
        p.line = yaml_line(root, _loc(p.path))
    return (None if problems else data), root, problems


def _node_problems(root: yaml.Node | None, display: str | None) -> list[DocumentError]:
    problems: list[DocumentError] = []
    stack: list[tuple[yaml.Node, list[Any], int]] = [(root, [], 0)] if root is not None else []
    while stack:
        node, loc, depth = stack.pop()
        if isinstance(node, yaml.CollectionNode) and depth >= MAX_DEPTH:
            problems.append(DocumentError(
                "too_deep", f"nested more than {MAX_DEPTH} levels deep", file=display,
                line=node.start_mark.line + 1, path=path_text(loc),
                hint=_VALUE_HINTS["too_deep"]))
            continue
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            children = []
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else repr(key.value)
                if name in seen:
                    problems.append(DocumentError(
                        "duplicate_key", f"key '{name}' appears more than once in this mapping",
                        file=display, line=key.start_mark.line + 1,
                        path=path_text([*loc, name]), hint=_VALUE_HINTS["duplicate_key"]))
                seen.add(name)
                children.append((value, [*loc, name], depth + 1))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(v, [*loc, i], depth + 1) for i, v in enumerate(node.value)]))
    problems.sort(key=lambda p: p.line or 0)
    return problems


def yaml_line(root: yaml.Node | None, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the value at ``loc`` in a composed YAML document."""
    return _node_line(root, loc) if loc else None


# --------------------------------------------------------------------------- TOML


def parse_toml(raw: bytes, display: str | None = None) -> tuple[Any, list[DocumentError]]:
    """Decode one TOML document strictly: ``(data, [])``, or ``(None, problems)``."""
    try:
        text = decode_utf8(raw, display)
    except DocumentError as exc:
        return None, [exc]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = _TOML_AT.search(str(exc))
        return None, [DocumentError(
            "toml_syntax", f"not valid TOML: {_TOML_AT.sub('', str(exc)).strip()}",
            file=display, line=int(at[1]) if at else None, column=int(at[2]) if at else None,
            hint="fix the syntax; `orch init` in an empty directory writes a commented example")]
    except RecursionError:
        return None, [DocumentError("too_deep", f"nested more than {MAX_DEPTH} levels deep",
                                    file=display, hint=_VALUE_HINTS["too_deep"])]
    problems = check_values(data)
    for p in problems:
        p.file = display
        p.line = toml_line(text, _loc(p.path))
    return (None if problems else data), problems


_TOML_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")


def toml_line(text: str, loc: Sequence[Any]) -> int | None:
    """Best effort: the line of ``key = ...`` (or of the ``[table]`` header) for ``loc``."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    if not names:
        return None
    table: list[str] = []
    header_line = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _TOML_HEADER.match(line)
        if header:
            table = [part.strip().strip("\"'") for part in header[1].split(".")]
            if table == names:
                header_line = number
            continue
        key = _TOML_KEY.match(line)
        if key:
            full = table + [part.strip().strip("\"'") for part in key[1].split(".")]
            if full == names[:len(full)] and len(full) >= min(len(names), len(table) + 1):
                return number
    return header_line
