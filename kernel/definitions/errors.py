"""What is wrong with a definition, readably: ``DefinitionError`` and the problems it lists,
made from pydantic's validation errors.

Public API:
    ``Problem(path, message, line=None)`` (``str()``: "line 3, execution.command: ...");
    ``DefinitionError(OrchError, ValueError)`` with ``.source``, ``.what``, ``.problems``, and
    ``DefinitionError.of_documents(source, what, document_errors)`` (a document that
    ``kernel.base.documents`` or ``kernel.base.formats`` refused); ``problems_from(
    validation_error, model, line_of=None) -> list[Problem]``; ``field_hint(model, loc)`` (the
    description of the field at a path: what it is for, as the JSON Schema says).

Stability Guarantees:
    Every problem is listed, not just the first. A path is a JSON path
    (``execution.timeout_seconds``, ``capabilities[2].version``; "" for the document). An
    unknown field gets a did-you-mean hint (or the known fields); a value that misses the id
    or semver pattern says what form is expected; a model-level check that names its field
    ("field.path: message") is reported at that field.

Integration Points:
    ``kernel.definitions.task_documents`` (task documents), ``kernel.definitions.registries``
    (the YAML registries) and ``kernel.definitions.migrate_tasks`` raise ``DefinitionError``;
    ``kernel.definitions.taskfiles`` and ``kernel.definitions.task_checks`` turn
    ``problems_from`` into their own problem records, with ``field_hint`` as the hint.

Dependencies:
    pydantic; ``kernel.base.documents``, ``kernel.base.errors``, ``kernel.definitions.fields``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from kernel.base.documents import DocumentError, path_loc, path_text
from kernel.base.errors import OrchError
from kernel.definitions.fields import ID_PATTERN, SEMVER_PATTERN


@dataclass(frozen=True)
class Problem:
    path: str  # "execution.timeout_seconds", "capabilities[2].version", "" for the document
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = ", ".join(p for p in (f"line {self.line}" if self.line else "", self.path) if p)
        return f"{where}: {self.message}" if where else self.message


class DefinitionError(OrchError, ValueError):
    """A definition file or document is invalid; lists every problem found, not just the first."""

    def __init__(self, source: str | None, what: str, problems: list[Problem]) -> None:
        self.source, self.what, self.problems = source, what, problems
        lines = [p.line for p in problems if p.line]
        super().__init__(
            "invalid_definition",
            f"invalid {what}" + "".join(f"\n  - {p}" for p in problems),
            file=source,
            line=lines[0] if len(lines) == 1 else None,
        )

    @classmethod
    def of_documents(cls, source: str | None, what: str,
                     errors: Sequence[DocumentError]) -> DefinitionError:
        """The error of a document that the strict parse layer refused (``errors``: every
        problem it found, each with its path and line)."""
        return cls(source, what, [Problem(e.path, e.message, e.line) for e in errors])


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        current = _model_in(fields[part].annotation) if part in fields else None
    return [] if current is None else [f.alias or n for n, f in current.model_fields.items()]


def _pattern_message(value: Any, pattern: str | None, default: str) -> str:
    if pattern == SEMVER_PATTERN:
        return (f"{value!r} is not a semantic version: write MAJOR.MINOR.PATCH such as "
                "\"1.2.0\" (semver.org)")
    if pattern == ID_PATTERN:
        return (f"{value!r} is not a valid id: 1-128 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit")
    return f"{value!r} does not have the required form ({default.lower()})"


_FIELD_PREFIX = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])*(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])*)*): "
    r"(.+)$", re.S)


def problems_from(
    exc: ValidationError, model: type[BaseModel], line_of: Any = None
) -> list[Problem]:
    """Readable problems from a pydantic error; unknown fields get a did-you-mean hint."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        # A model-level check names the field it is about as "field.path: message".
        at = _FIELD_PREFIX.match(message) if err["type"] == "value_error" else None
        if at:
            loc += tuple(path_loc(at[1]))
            message = at[2]
        if err["type"] == "string_pattern_mismatch":
            message = _pattern_message(err["input"], err.get("ctx", {}).get("pattern"), message)
        if err["type"] == "extra_forbidden":
            known = _known_fields(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(known)
            message = f"unknown field '{loc[-1]}' ({hint})"
        problems.append(Problem(path_text(loc), message, line_of(loc) if line_of else None))
    return problems


def field_hint(model: type[BaseModel], loc: Sequence[Any]) -> str | None:
    """The description of the field at ``loc``: what it is for, as the JSON Schema says."""
    current: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        current = next((a for a in (info.annotation, *getattr(info.annotation, "__args__", ()))
                        if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return info.description if info is not None else None
