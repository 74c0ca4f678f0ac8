"""JSON, YAML and TOML, read strictly: one parser per format, each applying the rules of
``kernel.base.documents``, and the line finders that place a problem in the text.

Public API:
    ``parse_json(raw, display=None) -> (data, problems)``; ``parse_yaml(raw, display=None) ->
    (data, root_node, problems)``; ``parse_toml(raw, display=None) -> (data, problems)``;
    ``json_line(text, loc, duplicate=False)``, ``yaml_line(node, loc)``, ``toml_line(text,
    loc)`` (the 1-based line of a value, best effort).

Stability Guarantees:
    Every document goes through ``kernel.base.documents.decode_utf8`` and the value rules of
    ``kernel.base.documents.check_values`` (no NaN or infinity, 64-bit integers, nesting, no
    key twice, no NUL, no lone surrogate); a syntax error is one problem with its line and
    column (``json_syntax``, ``yaml_syntax``, ``toml_syntax``). YAML anchors and aliases are
    refused (a few lines of aliases can expand to gigabytes). A document with a problem is
    returned as None with every problem, each with its path and, where known, its line.

Integration Points:
    ``kernel.definitions.taskfiles`` and ``kernel.definitions.task_documents`` (task and
    workstream files), ``kernel.definitions.registries`` (the YAML registries) and
    ``kernel.base.config`` (``orch.toml``).

Dependencies:
    yaml; ``kernel.base.documents``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import tomllib
from collections.abc import Sequence
from typing import Any

import yaml

from kernel.base.documents import (
    MAX_DEPTH,
    VALUE_HINTS,
    DocumentError,
    check_values,
    decode_utf8,
    path_loc,
    path_text,
)

# --------------------------------------------------------------------------- JSON


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


# A JSON text can only hold a NUL or a lone surrogate as a \u escape, and can only nest
# deeper than MAX_DEPTH with more than MAX_DEPTH brackets; the number hooks of parse_json flag
# integers of 19 digits or more and floats that overflow. Otherwise no walk is needed.
#
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
                                    file=display, hint=VALUE_HINTS["too_deep"])]
    if not (_FLAGGED.items or b"\\u" in raw
            or raw.count(b"{") + raw.count(b"[") > MAX_DEPTH):
        return data, []
    problems = check_values(data)
    for p in problems:
        p.file = display
        p.line = json_line(text, path_loc(p.path), duplicate=p.code == "duplicate_key")
    return (None if problems else data), problems


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
                                          "deep", file=display, hint=VALUE_HINTS["too_deep"])]
    finally:
        loader.dispose()
    problems = check_values(data)
    for p in problems:
        p.file = display
        p.line = yaml_line(root, path_loc(p.path))
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
                hint=VALUE_HINTS["too_deep"]))
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
                        path=path_text([*loc, name]), hint=VALUE_HINTS["duplicate_key"]))
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


_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")

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
                                    file=display, hint=VALUE_HINTS["too_deep"])]
    problems = check_values(data)
    for p in problems:
        p.file = display
        p.line = toml_line(text, path_loc(p.path))
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
