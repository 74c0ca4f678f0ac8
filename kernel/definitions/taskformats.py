"""Task and workstream files in JSON or YAML: one decoder for both, and the YAML values that
would surprise a reader refused with their line.

Public API:
    ``parse_definition(raw, path, display) -> (data, problems)`` (``.yaml``/``.yml``: YAML,
    anything else: JSON; problems are ``ValidationProblem``); ``is_yaml(path)``;
    ``yaml_surprises(root, display) -> problems``.

Stability Guarantees:
    Both formats go through the strict parsers of ``kernel.base.formats`` (duplicate keys,
    NaN, 64-bit integers, nesting, NUL characters: each a problem with its line; YAML anchors,
    aliases and tags that build objects are refused). On top of that a YAML definition may
    not hold a plain (unquoted) scalar that YAML 1.1 reads as something else than it looks:
    ``yes``/``no``/``on``/``off``/``y``/``n`` (booleans), dates and times (``2024-01-01``),
    sexagesimal numbers (``1:30`` is 90) and octal-looking numbers (``0755`` is 493), nor a
    mapping key that is not a string (``on:`` is the boolean true). Each is an error
    ``yaml_ambiguous`` with its line, its JSON path and the spelling to use instead. ``true``,
    ``false``, ``null``, ``~`` and ordinary numbers are what they look like and stay allowed.

Integration Points:
    ``kernel.definitions.taskfiles`` reads task and workstream files through
    ``parse_definition``; line numbers of later (schema) problems come from
    ``kernel.base.formats.json_line``, which reads YAML as well as JSON.

Dependencies:
    yaml; ``kernel.base.documents``, ``kernel.base.formats``, ``kernel.definitions.records``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from kernel.base.documents import path_text
from kernel.base.formats import parse_json, parse_yaml
from kernel.definitions.records import ValidationProblem, document_problem

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_OCTAL = re.compile(r"^[-+]?0[0-9_]+$")


def is_yaml(path: str) -> bool:
    return path.endswith((".yaml", ".yml"))


def parse_definition(raw: bytes, path: str, display: str
                     ) -> tuple[Any, list[ValidationProblem]]:
    """Decode a task or workstream file by its extension: ``(data, [])`` or ``(None,
    problems)``."""
    if not is_yaml(path):
        data, found = parse_json(raw, display)
        return (None, [document_problem(p, display) for p in found]) if found else (data, [])
    data, root, found = parse_yaml(raw, display)
    if found:
        return None, [document_problem(p, display) for p in found]
    surprises = yaml_surprises(root, display)
    return (None, surprises) if surprises else (data, [])


def yaml_surprises(root: yaml.Node | None, display: str) -> list[ValidationProblem]:
    """The plain scalars and keys of a composed YAML document that YAML 1.1 reads as another
    type than they look (see the module's guarantees)."""
    problems: list[ValidationProblem] = []
    stack: list[tuple[yaml.Node, list[Any]]] = [(root, [])] if root is not None else []
    while stack:
        node, loc = stack.pop()
        if isinstance(node, yaml.MappingNode):
            children = []
            for key, value in node.value:
                name = str(key.value)
                if isinstance(key, yaml.ScalarNode) and key.tag != _STR:
                    problems.append(_problem(
                        display, key, [*loc, name], f"the key {name!r} is read by YAML as "
                        f"{_what(key)}, not as the text {name!r}",
                        f'quote it: "{name}":'))
                children.append((value, [*loc, name]))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(v, [*loc, i]) for i, v in enumerate(node.value)]))
        elif isinstance(node, yaml.ScalarNode) and node.style is None:
            surprise = _surprise(node)
            if surprise:
                problems.append(_problem(display, node, loc, surprise[0], surprise[1]))
    return sorted(problems, key=lambda p: p.line or 0)


def _surprise(node: yaml.ScalarNode) -> tuple[str, str] | None:
    text = node.value
    if node.tag == _BOOL and text.lower() not in ("true", "false"):
        return (f"{text!r} is read by YAML as the boolean {_bool(text)}, not as text",
                f"write {_bool(text)} for the boolean, or \"{text}\" (quoted) for the text")
    if node.tag == _TIMESTAMP:
        return (f"{text!r} is read by YAML as a date, not as text", f'quote it: "{text}"')
    if node.tag in (_INT, _FLOAT) and ":" in text:
        return (f"{text!r} is read by YAML 1.1 as a base-60 number, not as text",
                f'quote it ("{text}"), or write the number of seconds')
    if node.tag == _INT and _OCTAL.match(text):
        return (f"{text!r} is read by YAML 1.1 as an octal number ({int(text, 8)}), not as "
                f"{int(text.replace('_', ''))}",
                f"write {int(text.replace('_', ''))} without the leading zero, or quote it")
    return None


def _bool(text: str) -> str:
    return "true" if text.lower() in ("yes", "y", "on", "true") else "false"


def _what(key: yaml.ScalarNode) -> str:
    if key.tag == _BOOL:
        return f"the boolean {_bool(key.value)}"
    return {"tag:yaml.org,2002:null": "null", _INT: "a number", _FLOAT: "a number",
            _TIMESTAMP: "a date"}.get(key.tag, key.tag)


def _problem(display: str, node: yaml.Node, loc: list[Any], message: str,
             hint: str) -> ValidationProblem:
    return ValidationProblem("yaml_ambiguous", display, path_text(loc), message, hint,
                             node.start_mark.line + 1, node.start_mark.column + 1)
