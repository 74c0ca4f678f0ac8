"""The DAG and plan documents of one workstream, printed as JSON by a process of their own, for
the DAG pages of ``orch browse``.

Usage: ``python -m kernel.observe.browse.plandoc DATABASE WORKSTREAM``.

Public API:
    ``main(argv=None) -> int``; ``plan_documents(path, workstream) -> dict`` (``{"dag": ...,
    "plan": ...}``, what ``kernel.planning.plan.workstream_plan`` returns).

Stability Guarantees:
    Prints exactly one JSON document on stdout: ``{"dag", "plan"}`` with exit 0, or
    ``{"error": {"code", "message"}}`` with exit 1 (an unknown workstream is
    ``unknown_workstream``) or 3 (the database cannot be read). Opens the database read-only
    and writes nothing.

Integration Points:
    ``kernel.observe.browse.plugin`` runs it: Datasette reads the database with Python's
    ``sqlite3``, the planner with apsw, and the two libraries never open the same file in one
    process (DESIGN.md, "SQLite rules"). The documents are those of ``orch plan``.

Dependencies:
    apsw; ``kernel.base.errors``, ``kernel.planning.plan``, ``kernel.store.schema``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw

from kernel.base.errors import EXIT_DATABASE, EXIT_FAILED, OrchError
from kernel.planning.plan import workstream_plan
from kernel.store import schema


def plan_documents(path: Path, workstream: str) -> dict[str, Any]:
    conn = schema.connect(path, readonly=True)
    try:
        dag_doc, plan_doc = workstream_plan(conn, workstream, datetime.now(UTC))
    finally:
        conn.close()
    return {"dag": dag_doc, "plan": plan_doc}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(json.dumps({"error": {"code": "usage",
                                    "message": "usage: plandoc DATABASE WORKSTREAM"}}))
        return 2
    try:
        found = plan_documents(Path(args[0]), args[1])
    except OrchError as err:
        print(json.dumps({"error": {"code": err.code, "message": str(err)}}))
        return err.exit_code if err.exit_code != 0 else EXIT_FAILED
    except apsw.Error as exc:
        print(json.dumps({"error": {"code": "database_unavailable", "message": str(exc)}}))
        return EXIT_DATABASE
    print(json.dumps(found, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
