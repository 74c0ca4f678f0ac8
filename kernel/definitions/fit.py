"""Can a task ever run here: a worker's capabilities against a task's needs, and a task's
resource requests against what the registry can ever grant.

Public API:
    ``missing_capabilities(offers, needs) -> list[str]``, ``capable(offers, needs) -> bool``,
    ``worker_offers(conn, worker_id)``, ``worker_limits(conn, worker_id)``,
    ``task_requests(conn, task_id)``, ``fits_resources(limits, requests)``,
    ``live_offers(conn)``, ``live_limits(conn)``, ``catalog_offers(conn)``,
    ``LIVE_WORKER_STATES``, ``impossible_requests(conn, task_ids=None)``,
    ``unrunnable(conn, task_ids=None, *, offers=None, no_workers_reason=None)``.

Stability Guarantees:
    The one definition of "capable" (claims use it to pick a task) and of "unrunnable"
    (``orch run``'s summary, its ``task_unrunnable`` events and ``orch why`` read it).
    ``worker_requirements.min_version`` is the lowest version every listed capability must have
    on the worker (SPEC.md section 3; docs/execution_model/WORKERS.md). Read-only.

Integration Points:
    ``kernel.runtime.claims`` (claiming), ``kernel.runtime.scheduler`` (the run's summary),
    ``kernel.observe.status`` (``orch why``). The resource ceiling is
    ``kernel.definitions.registries.lease_ceiling``, the rule ``orch validate`` applies.

Dependencies:
    apsw; ``kernel.definitions.fields``, ``kernel.definitions.registries``, ``kernel.store.db``.
"""

from __future__ import annotations

import json
from typing import Any

import apsw

from kernel.store import db


def _version_key(text: str | None) -> tuple[Any, ...]:
    """Semver precedence
    (``kernel.definitions.fields.semver_key``, the one definition); a version that is
    not semver (a worker row written by another client) sorts below every real one."""
    from kernel.definitions.fields import semver_key  # pydantic models: not at worker start

    try:
        return semver_key(text or "")
    except ValueError:
        return (-1,)


def worker_offers(conn: apsw.Connection, worker_id: str) -> dict[str, str]:
    return dict(conn.execute(
        "SELECT capability_id, version FROM worker_capability WHERE worker_id = ?", (worker_id,)))


def worker_limits(conn: apsw.Connection, worker_id: str) -> dict[str, float]:
    """What the worker advertises of each resource (``worker_resource``; empty for a local
    worker): the limits ``fits_resources`` checks a task's requests against."""
    return {r: float(a) for r, a in conn.execute(
        "SELECT resource_id, amount FROM worker_resource WHERE worker_id = ?", (worker_id,))}


def task_requests(conn: apsw.Connection, task_id: str) -> dict[str, float]:
    """What a task asks of each resource: its units, or 1 for exclusive and shared."""
    return {r: (float(a) if mode == "units" else 1.0) for r, mode, a in conn.execute(
        "SELECT resource_id, mode, amount FROM task_resource WHERE task_id = ?", (task_id,))}


def fits_resources(limits: dict[str, float], requests: dict[str, float]) -> bool:
    """The one rule for a worker that advertises resources (a Dask worker, sql/0009): a task
    runs there only if, for each resource the worker advertises, the task asks for at most
    that much. A resource the worker does not advertise does not constrain it."""
    return all(requests.get(r, 0.0) <= amount for r, amount in limits.items())


def missing_capabilities(offers: dict[str, str], needs: list[Any]) -> list[str]:
    """What a worker offering ``offers`` ({capability: version}) lacks for a task needing
    ``needs`` ([capability, min_version] pairs, as ``task_capability`` holds them): each entry
    names the capability, and the version wanted when the worker has an older one.

    ``worker_requirements.min_version`` is the lowest version that every listed capability must
    have on the worker (SPEC.md section 3); load copies it onto each ``task_capability`` row.
    """
    lacking = []
    for cap, cap_min in needs:
        have = offers.get(cap)
        if have is None:
            lacking.append(str(cap))
        elif cap_min and _version_key(have) < _version_key(cap_min):
            lacking.append(f"{cap} >= {cap_min} (has {have})")
    return lacking


def capable(offers: dict[str, str], needs: list[Any]) -> bool:
    """True if a worker offering ``offers`` can run a task needing ``needs``."""
    return not missing_capabilities(offers, needs)


LIVE_WORKER_STATES = ("initializing", "idle", "busy")


def _per_live_worker(conn: apsw.Connection, table: str, key: str,
                     value: str) -> list[dict[str, Any]]:
    """``{key: value}`` of ``table``'s rows, one dict per live worker (ordered by worker id;
    empty for a worker with no row)."""
    by_worker: dict[str, dict[str, Any]] = {}
    for wid, k, v in conn.execute(
            f"SELECT w.worker_id, x.{key}, x.{value} FROM worker w "
            f"LEFT JOIN {table} x ON x.worker_id = w.worker_id "
            "WHERE w.state IN (SELECT value FROM json_each(?)) ORDER BY w.worker_id",
            (json.dumps(LIVE_WORKER_STATES),)):
        found = by_worker.setdefault(wid, {})
        if k is not None:
            found[k] = v
    return list(by_worker.values())


def live_offers(conn: apsw.Connection) -> list[dict[str, str]]:
    """What each live worker offers ({capability: version}), one dict per worker."""
    return _per_live_worker(conn, "worker_capability", "capability_id", "version")


def live_limits(conn: apsw.Connection) -> list[dict[str, float]]:
    """What each live worker advertises of each resource (``worker_limits``), one dict per
    worker, in the order of ``live_offers``."""
    return _per_live_worker(conn, "worker_resource", "resource_id", "amount")


def catalog_offers(conn: apsw.Connection) -> dict[str, str]:
    """The whole catalog ({capability: version}); what a worker started without
    ``--capability`` offers is the part this machine meets (``kernel.definitions.offers``)."""
    return dict(conn.execute("SELECT capability_id, version FROM capability"))


def unrunnable(conn: apsw.Connection, task_ids: list[str] | None = None, *,
               offers: list[dict[str, str]] | None = None,
               no_workers_reason: str | None = None) -> list[dict[str, Any]]:
    """Queued tasks that no worker can ever run, each with the reason: a resource request no
    pool can ever grant, or capabilities (at the versions ``min_version`` asks) that none of
    ``offers`` has (default: the live workers). With no worker at all, a task is named only
    when ``no_workers_reason`` is given (e.g. the run has no worker left to start).

    The one definition of "unrunnable": ``orch run``'s summary, its ``task_unrunnable``
    events and ``orch why`` read it.
    """
    limits = live_limits(conn) if offers is None else [{} for _ in offers]
    offers = live_offers(conn) if offers is None else offers
    impossible = {r["task_id"]: r for r in impossible_requests(conn)}
    sql = ("SELECT t.task_id, (SELECT json_group_array(json_array(c.capability_id, "
           "c.min_version)) FROM task_capability c WHERE c.task_id = t.task_id) AS needs "
           "FROM task t WHERE t.state = 'queued'")
    params: tuple[Any, ...] = ()
    if task_ids is not None:
        sql += " AND t.task_id IN (SELECT value FROM json_each(?))"
        params = (json.dumps(task_ids),)
    out = []
    for t in db.rows(conn, sql + " ORDER BY t.task_id", params):
        reason = None
        if t["task_id"] in impossible:
            r = impossible[t["task_id"]]
            reason = (f"requests {r['requested']:g} {r['resource_id']} but at most "
                      f"{r['available']:g} can ever be leased (Resource-Exhaustion)")
        elif not offers:
            reason = no_workers_reason
        else:
            reason = _no_worker_fits(conn, t["task_id"], json.loads(t["needs"]), offers, limits)
        if reason:
            out.append({"task_id": t["task_id"], "reason": reason})
    return out


def _no_worker_fits(conn: apsw.Connection, task_id: str, needs: list[Any],
                    offers: list[dict[str, str]], limits: list[dict[str, float]]) -> str | None:
    """Why no live worker can take the task (capabilities, then what the workers that have
    them advertise of a resource), or None."""
    lacking = [missing_capabilities(o, needs) for o in offers]
    if all(lacking):
        closest = min(lacking, key=len)
        return ("no registered worker offers " + ", ".join(closest)
                + (f" (the closest of {len(offers)} workers)" if len(offers) > 1 else ""))
    capable_limits = [lim for lim, lack in zip(limits, lacking, strict=True) if not lack]
    if not all(capable_limits):   # a capable worker that advertises nothing takes any amount
        return None
    requests = task_requests(conn, task_id)
    if any(fits_resources(lim, requests) for lim in capable_limits):
        return None
    short = sorted({r for lim in capable_limits for r, a in lim.items()
                    if requests.get(r, 0.0) > a})
    most = {r: max(lim.get(r, 0.0) for lim in capable_limits) for r in short}
    return ("no registered worker advertises enough " + ", ".join(
        f"{r} (it asks {requests[r]:g}, the most a worker advertises is {most[r]:g})"
        for r in short))


def impossible_requests(conn: apsw.Connection, task_ids: list[str] | None = None
                        ) -> list[dict[str, Any]]:
    """Requests larger than a pool or bucket can ever give (Resource-Exhaustion): the rule is
    ``kernel.definitions.registries.lease_ceiling``,
    the one ``orch validate`` applies to task files."""
    from kernel.definitions.registries import lease_ceiling  # pydantic models, as above

    ceilings = {rid: ceiling for rid, kind, capacity, reserved in conn.execute(
        "SELECT resource_id, type, capacity, reserved FROM resource")
        if (ceiling := lease_ceiling(kind, capacity, reserved)) is not None}
    if not ceilings:
        return []
    sql = (
        "SELECT tr.task_id, tr.resource_id, tr.amount AS requested, c.value AS available "
        "  FROM task_resource tr JOIN json_each(?) c ON c.key = tr.resource_id "
        " WHERE tr.amount > c.value")
    found = db.rows(conn, sql, (json.dumps(ceilings),))
    if task_ids is not None:
        wanted = set(task_ids)
        found = [f for f in found if f["task_id"] in wanted]
    return found
