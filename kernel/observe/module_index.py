"""The module index (MOD-IDX-001): every kernel module's docstring, parsed into its summary and
its sections, so an agent finds its way without reading code.

Public API:
    ``SECTIONS`` (the four required section headers, in order); ``MODULE_INDEX_SCHEMA`` (schema
    name and version of ``.state/module_index.json``); ``INDEX_NAME``; ``kernel_modules(root=None)
    -> list[Path]`` (the kernel's own modules, not the example project ``orch demo`` ships as
    data nor the data a wheel ships in ``kernel/_data``); ``parse_docstring(doc) -> (summary,
    sections)``; ``missing_sections(doc) -> list[str]``; ``section_problems(doc) -> list[str]``
    (a missing or out-of-order required section, in words; empty when the docstring is
    complete); ``module_entry(path, root) -> dict``; ``build_index(root=None, *, now=None) ->
    dict`` (the document); ``write_index(state_dir, root=None) -> (Path, dict)``.

Stability Guarantees:
    One parser: tests/test_generated.py checks every module's docstring with
    ``section_problems``, ``orch compliance`` (MOD-IDX-001) with ``missing_sections``, and
    ``tools/docgen.py`` lists the modules with ``kernel_modules``. A
    section header is a line of its own, unindented, ending with a colon (``Public API:``); its
    body runs to the next such line. Modules are listed by dotted name; the document is
    deterministic but for ``generated_at``. Nothing is imported: sources are parsed with ``ast``.

Integration Points:
    ``orch index`` (``kernel.cli.index``) writes ``.state/module_index.json``; its JSON Schema is
    ``ModuleIndexDocument`` (``kernel.observe.document_models``), schemas/module-index.schema.json.

Dependencies:
    ``kernel.base.clock``, ``kernel.observe.documents``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import kernel
from kernel.base import clock
from kernel.observe.documents import header, write_document

SECTIONS = ("Public API:", "Stability Guarantees:", "Integration Points:", "Dependencies:")
MODULE_INDEX_SCHEMA = ("module-index", "1.0.0")
INDEX_NAME = "module_index.json"

_HEADER = re.compile(r"^[A-Z][A-Za-z0-9 /()-]*:$")


def kernel_modules(root: Path | None = None) -> list[Path]:
    """The kernel's own modules under ``root`` (default: this installed package), sorted; the
    example project ``orch demo`` ships as data is not the kernel's."""
    root = root or Path(kernel.__file__).resolve().parent
    data = (root / "demo" / "project", root / "_data")   # shipped data (an installed wheel)
    return [p for p in sorted(root.rglob("*.py")) if not any(p.is_relative_to(d) for d in data)]


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (the first paragraph, on one line) and every section (header without its
    colon -> its body, dedented)."""
    lines = doc.split("\n")
    summary = " ".join(line.strip() for line in
                       lines[:next((i for i, line in enumerate(lines) if not line.strip()),
                                   len(lines))])
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if _HEADER.match(line):
            current = sections.setdefault(line[:-1], [])
        elif current is not None:
            current.append(line[4:] if line.startswith("    ") else line.strip())
    return summary, {name: "\n".join(body).strip() for name, body in sections.items()}


def missing_sections(doc: str) -> list[str]:
    """The MOD-IDX-001 section headers (``"Public API:"``, ...) the docstring lacks."""
    found = parse_docstring(doc)[1]
    return [s for s in SECTIONS if s[:-1] not in found]


def section_problems(doc: str) -> list[str]:
    """What the docstring lacks of MOD-IDX-001: each missing section, or the order broken."""
    missing = missing_sections(doc)
    problems = [f"no {s[:-1]!r} section" for s in missing]
    found = [doc.find(f"\n{s}\n") for s in SECTIONS if s not in missing]
    if found != sorted(found):
        problems.append("sections out of order (" + ", ".join(s[:-1] for s in SECTIONS) + ")")
    return problems


def _dotted(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_entry(path: Path, root: Path) -> dict[str, Any]:
    """One module's row of the index."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    summary, found = parse_docstring(doc)
    return {"module": _dotted(path, root), "path": path.relative_to(root.parent).as_posix(),
            "summary": summary,
            "sections": {s[:-1]: found[s[:-1]] for s in SECTIONS if s[:-1] in found},
            "missing_sections": [s[:-1] for s in missing_sections(doc)]}


def build_index(root: Path | None = None, *, now: str | None = None) -> dict[str, Any]:
    """The ``.state/module_index.json`` document."""
    root = root or Path(kernel.__file__).resolve().parent
    return {**header(*MODULE_INDEX_SCHEMA), "generated_at": now or clock.now_iso(),
            "kernel_version": kernel.__version__,
            "modules": sorted((module_entry(p, root) for p in kernel_modules(root)),
                              key=lambda m: m["module"])}


def write_index(state_dir: Path, root: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the index to ``state_dir/module_index.json`` (atomically); the path and document."""
    doc = build_index(root)
    path = state_dir / INDEX_NAME
    write_document(path, doc)
    return path, doc
