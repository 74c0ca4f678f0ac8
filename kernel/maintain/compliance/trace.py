"""Where each requirement ID is implemented: the traceability that docs/compliance.md shows.

Public API:
    ``IMPLEMENTED_BY`` (requirement ID -> the paths, relative to the repository, of what
    implements it); ``tests_naming(tests_dir) -> dict[str, list[str]]`` (requirement ID -> the
    test files that name it).

Stability Guarantees:
    Every requirement ID has at least one implementing path, and every path exists (a test
    checks both, so a moved module fails it instead of leaving a dead link).

Integration Points:
    tools/docgen_compliance.py renders docs/compliance.md from ``REQUIREMENTS``, the checks
    (``CHECKS``), ``IMPLEMENTED_BY`` and ``tests_naming``.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["IMPLEMENTED_BY", "tests_naming"]

_VIEWS = ("kernel/observe/exports.py", "kernel/observe/view_documents.py",
          "kernel/observe/view_models.py")
_DOCS = "docs/execution_model/"
IMPLEMENTED_BY: dict[str, tuple[str, ...]] = {
    "STATE-OBS-001": _VIEWS,
    "STATE-OBS-002": ("kernel/observe/exports.py", "kernel/store/eventlog.py"),
    "STATE-OBS-003": ("kernel/observe/exports.py", "kernel/base/files.py"),
    "STATE-OBS-004": ("kernel/store/events.py", "sql/0001_core.sql",
                      "docs/operations/EVENTS.md"),
    "STATE-OBS-005": _VIEWS,
    "STATE-OBS-006": ("kernel/observe/exports.py",),
    "EXEC-DOC-001": (_DOCS,),
    "EXEC-DOC-002": (_DOCS + "OVERVIEW.md",),
    "EXEC-DOC-003": (_DOCS + "STATE_MACHINE.md", "tools/docgen.py"),
    "EXEC-DOC-004": (_DOCS + "SCHEDULING.md",),
    "EXEC-DOC-005": (_DOCS + "WORKERS.md",),
    "EXEC-DOC-006": (_DOCS + "RECOVERY.md",),
    "TASK-DEF-001": ("kernel/definitions/discover.py", "kernel/definitions/taskfiles.py"),
    "TASK-DEF-002": ("kernel/definitions/models.py", "schemas/task.schema.json",
                     "kernel/definitions/check.py"),
    "DAG-VIEW-001": ("kernel/observe/exports.py", "kernel/planning/dag.py"),
    "DAG-VIEW-002": ("kernel/planning/dag.py", "kernel/definitions/check.py"),
    "DAG-VIEW-003": ("kernel/planning/dag.py", "kernel/planning/plan.py"),
    "CAP-REG-001": ("kernel/definitions/registries.py", "kernel/defaults/registry.yaml"),
    "CAP-REG-002": ("kernel/definitions/registries.py", "kernel/definitions/task_checks.py",
                    "kernel/runtime/scheduler.py"),
    "ERR-FM-001": ("docs/failure_modes/failure_modes.yaml", "kernel/store/reference.py"),
    "ERR-FM-002": ("docs/failure_modes/failure_modes.yaml",),
    "ERR-FM-003": ("docs/failure_modes/failure_modes.yaml",),
    "AIDER-INT-001": ("kernel/runtime/executors/aider.py", "kernel/runtime/executors/agent.py",
                      "kernel/runtime/executors/base.py"),
    "AIDER-INT-002": ("kernel/runtime/executors/agentkit.py", "kernel/base/tokens.py"),
    "AIDER-INT-003": ("kernel/definitions/models.py", "kernel/runtime/attempts.py"),
    "SM-DEF-001": ("docs/state_machines/", "kernel/store/machines.py"),
    "SM-DEF-002": ("kernel/store/machines.py", "sql/0001_core.sql"),
    "SM-DEF-003": ("tools/docgen.py", _DOCS + "STATE_MACHINE.md"),
    "MOD-IDX-001": ("kernel/maintain/compliance/doc_checks.py", "tools/docgen.py"),
    "CONC-REG-001": ("kernel/definitions/registries.py", "kernel/defaults/resources.yaml"),
    "CONC-REG-002": ("kernel/runtime/leases.py", "sql/0001_core.sql",
                     "kernel/maintain/invariants.py"),
    "AUDIT-001": ("kernel/observe/replay.py", "kernel/observe/audit.py"),
    "AUDIT-002": ("kernel/observe/archive.py", "docs/operations/AUDIT_RETENTION.md"),
    "SCHEMA-VER-001": ("kernel/observe/documents.py", "kernel/observe/schemas.py", "schemas/"),
    "SCHEMA-VER-002": ("docs/schema_migrations/", "kernel/definitions/migrate_tasks.py"),
    "OBS-001": ("kernel/observe/metrics_document.py", "kernel/observe/metrics_history.py"),
    "OBS-002": ("kernel/observe/prometheus.py", "kernel/observe/metrics_history.py"),
    "COMPLIANCE-001": ("kernel/maintain/compliance/", "kernel/cli/compliance.py"),
}

_ID = re.compile(r"\b([A-Z]+(?:-[A-Z]+)*-\d{3})\b")


def tests_naming(tests_dir: Path) -> dict[str, list[str]]:
    """Requirement ID -> the test files (names) whose text names it."""
    out: dict[str, list[str]] = {}
    for path in sorted(tests_dir.glob("test_*.py")):
        for rid in sorted(set(_ID.findall(path.read_text(encoding="utf-8")))):
            out.setdefault(rid, []).append(path.name)
    return out
