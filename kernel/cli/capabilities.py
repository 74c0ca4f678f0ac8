"""``orch capabilities``: the capability catalog, what this machine meets, who offers what.

Public API:
    ``COMMANDS`` (``capabilities``).

Stability Guarantees:
    See ``kernel.cli``. ``--json`` prints ``{"source", "capabilities": [{capability_id, name,
    version, stability, requirements, met, missing, workers}], "offered_here": [ids]}``:
    ``met``/``missing`` say whether this machine meets the capability's requirements
    (``kernel.definitions.offers``, the rule a worker applies when it registers), ``workers``
    the live workers offering it. ``source`` is ``"database"`` (the loaded catalog, what workers
    read) or the registry file read when nothing is loaded yet. Exit 0; nothing is written.

Integration Points:
    ``kernel.definitions.offers`` (the probes), ``kernel.definitions.fit.LIVE_WORKER_STATES``,
    ``kernel.definitions.registries`` (the registry file before a load).

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.definitions.fit``,
    ``kernel.definitions.offers``, ``kernel.definitions.registries``, ``kernel.store.db``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from kernel.base.errors import EXIT_OK
from kernel.cli.common import CliState, command, emit
from kernel.definitions import offers
from kernel.definitions.fit import LIVE_WORKER_STATES
from kernel.store import db
from kernel.store.project import Project


def _from_database(project: Project) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The loaded catalog's rows and, per capability, the live workers offering it."""
    with project.open(readonly=True) as conn, db.read_tx(conn):
        rows = db.rows(conn, "SELECT capability_id, name, version, stability, requirements "
                             "FROM capability ORDER BY capability_id")
        holders: dict[str, list[str]] = {}
        for cid, wid in conn.execute(
                "SELECT c.capability_id, w.worker_id FROM worker_capability c "
                "JOIN worker w ON w.worker_id = c.worker_id "
                "WHERE w.state IN (SELECT value FROM json_each(?)) ORDER BY w.worker_id",
                (json.dumps(LIVE_WORKER_STATES),)):
            holders.setdefault(cid, []).append(wid)
    for row in rows:
        row["requirements"] = json.loads(row["requirements"] or "{}")
    return rows, holders


def _from_file(project: Project) -> tuple[list[dict[str, Any]], str]:
    from kernel.definitions.registries import (
        DEFAULT_CAPABILITY_REGISTRY,
        load_capability_registry,
    )

    own = project.capabilities_dir / "registry.yaml"
    path = own if own.exists() else DEFAULT_CAPABILITY_REGISTRY
    registry = load_capability_registry(path)
    return [{"capability_id": c.capability_id, "name": c.name, "version": c.version,
             "stability": c.stability, "requirements": c.requirements.model_dump(mode="json")}
            for c in sorted(registry.capabilities, key=lambda c: c.capability_id)], \
        ("capabilities/registry.yaml" if own.exists() else "the shipped default registry")


def capabilities_report(project: Project) -> dict[str, Any]:
    """What ``orch capabilities --json`` prints."""
    rows: list[dict[str, Any]] = []
    holders: dict[str, list[str]] = {}
    source = "database"
    if project.db_path.exists():
        rows, holders = _from_database(project)
    if not rows:
        rows, source = _from_file(project)
    found = offers.assess([(r["capability_id"], r["version"], r["requirements"]) for r in rows],
                          project.config, project.root)
    for row, assessment in zip(rows, found, strict=True):
        row.update(met=assessment.met, missing=list(assessment.missing),
                   workers=holders.get(row["capability_id"], []))
    return {"source": source, "capabilities": rows,
            "offered_here": [r["capability_id"] for r in rows if r["met"]]}


def _print(data: dict[str, Any]) -> None:
    click.echo(f"catalog: {data['source']}")
    width = max([len(r["capability_id"]) for r in data["capabilities"]] + [10])
    click.echo(f"{'CAPABILITY':<{width}}  {'VERSION':<8}  {'THIS MACHINE':<12}  LIVE WORKERS")
    for r in data["capabilities"]:
        here = click.style(f"{'meets' if r['met'] else 'lacks':<12}",
                           fg="green" if r["met"] else "yellow")
        click.echo(f"{r['capability_id']:<{width}}  {r['version']:<8}  {here}  "
                   f"{', '.join(r['workers']) or '-'}")
        for missing in r["missing"]:
            click.echo(f"{'':<{width}}  needs {missing}")
    click.echo(f"A worker started here without --capability offers: "
               f"{', '.join(data['offered_here']) or 'nothing'}.")


@command("capabilities")
def capabilities_cmd(state: CliState) -> int:
    """List the capability catalog: what this machine meets, and the live workers offering
    each."""
    data = capabilities_report(state.project())
    emit(state, data, lambda: _print(data))
    return EXIT_OK


COMMANDS = [capabilities_cmd]
