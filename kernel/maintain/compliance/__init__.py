"""``orch compliance``: every requirement ID of the specification checked against the project,
the kernel's state and orch's documentation.

Public API:
    ``run_compliance(project, *, only=None, docs=None, source=None, schemas=None)
    -> ComplianceReport`` (``results``, ``ok(strict=False)``, ``counts()``, ``as_dict()``);
    re-exports ``REQUIREMENTS``, ``Result``, ``Violation`` from
    ``kernel.maintain.compliance.core``.

Stability Guarantees:
    One result per requirement ID, in the specification's order, each PASS, WARN, FAIL or N/A
    with its reason, its violations (file and line where there is one) and a fix. ``ok()`` is
    true when nothing FAILs; ``ok(strict=True)`` also needs no WARN. Nothing is written. The
    JSON shape (``as_dict``) is ``{"ok", "strict", "counts", "results": [...]}``; keys are only
    added.

Integration Points:
    ``orch compliance`` (kernel.cli.compliance); docs/compliance.md is generated from the
    requirements and the checks (tools/docgen.py). ``docs``, ``source`` and ``schemas`` default
    to orch's own documentation set, kernel source and published schemas; tests pass copies
    to break them.

Dependencies:
    ``kernel.maintain.compliance.core``, ``kernel.maintain.compliance.definition_checks``,
    ``kernel.maintain.compliance.doc_checks``, ``kernel.maintain.compliance.state_checks``,
    ``kernel.store.project``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.maintain.compliance import definition_checks, doc_checks, state_checks
from kernel.maintain.compliance.core import (
    REQUIREMENTS,
    Context,
    Result,
    Violation,
    run_checks,
)
from kernel.store.project import Project

__all__ = ["REQUIREMENTS", "ComplianceReport", "Result", "Violation", "run_compliance"]

# The check modules register themselves when imported.
_MODULES = (state_checks, doc_checks, definition_checks)


@dataclass
class ComplianceReport:
    results: list[Result]
    strict: bool = False

    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "WARN": 0, "FAIL": 0, "N/A": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def ok(self, strict: bool | None = None) -> bool:
        strict = self.strict if strict is None else strict
        bad = {"FAIL", "WARN"} if strict else {"FAIL"}
        return not any(r.status in bad for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok(), "strict": self.strict, "counts": self.counts(),
                "results": [r.as_dict() for r in self.results]}


def run_compliance(project: Project, *, only: str | None = None, strict: bool = False,
                   docs: Path | None = None, source: Path | None = None,
                   schemas: Path | None = None) -> ComplianceReport:
    """Run every check (or those whose ID starts with ``only``)."""
    ctx = Context(project, docs=docs, source=source, schemas=schemas)
    try:
        return ComplianceReport(run_checks(ctx, only), strict)
    finally:
        ctx.close()
