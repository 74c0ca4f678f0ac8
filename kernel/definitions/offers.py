"""What this machine can offer: each capability's ``requirements`` (capabilities/registry.yaml)
checked against the machine, so a worker offers only what it can run.

Public API:
    ``PROBES`` (dependency name -> ``Probe``: the one table of how a dependency is found),
    ``Probe`` (``executables``, ``modules``, ``config_key``), ``Assessment`` (one capability:
    ``capability_id``, ``version``, ``missing``; ``met``), ``dependency_problem(name, config,
    root)`` (None when met, else one sentence), ``assess(rows, config, root)`` (the catalog's
    rows as ``(capability_id, version, requirements)``, requirements a dict or its JSON),
    ``catalog_rows(conn)`` (those rows from the ``capability`` table), ``local_offers(conn,
    config, root) -> {capability_id: version}`` (what a worker started here without
    ``--capability`` offers), ``registry_rows(registry)`` (the rows of a parsed
    ``CapabilityRegistry``).

Stability Guarantees:
    A requirement is met when: ``min_python_version`` <= this Python; every ``dependencies``
    entry is found by its probe (an executable on PATH, or a module this Python can import;
    ``aider-chat`` is the configured ``[agents.aider] executable``, a name looked up on PATH or a
    path, relative paths from the project root, that exists and is executable); the machine has
    ``min_memory_mb`` of physical memory and ``min_disk_space_mb`` free on the project's disk.
    ``network_required`` is not checked (a model server may be local). A dependency name not in
    ``PROBES`` is met by an executable of that name on PATH or an importable module of that
    name (``-`` read as ``_``). No subprocess is started: ``shutil.which``,
    ``importlib.util.find_spec`` (which imports nothing), ``os.sysconf`` and one ``statvfs``.
    Read-only; each ``missing`` entry is one sentence a person can act on.

Integration Points:
    ``kernel.runtime.worker.Worker.register`` (the default offers, when no ``--capability`` is
    given; the ``worker_registered`` event lists what was left out and why), ``orch validate``
    (``kernel.definitions.check``: the ``capability_unoffered`` warning), ``orch why``
    (``kernel.observe.status``: what a worker started here would lack) and ``orch capabilities``
    (``kernel.cli.capabilities``).

Dependencies:
    apsw; ``kernel.base.config``, ``kernel.definitions.registries``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw

if TYPE_CHECKING:  # pydantic models: not imported at a worker's start
    from kernel.base.config import Config
    from kernel.definitions.registries import CapabilityRegistry


@dataclass(frozen=True)
class Probe:
    """How to find a dependency: any of ``executables`` on PATH, or any of ``modules``
    importable by this Python, or (``config_key``) the program ``orch.toml`` names."""

    executables: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    config_key: str | None = None


AIDER_KEY = "[agents.aider] executable"

# The one table: a dependency named in a capability's requirements -> how this machine has it.
PROBES: dict[str, Probe] = {
    "git": Probe(executables=("git",)),
    "pytest": Probe(executables=("pytest",), modules=("pytest",)),    # python -m pytest
    "ruff": Probe(executables=("ruff",), modules=("ruff",)),          # python -m ruff
    "bandit": Probe(executables=("bandit",), modules=("bandit",)),
    "aider-chat": Probe(config_key=AIDER_KEY),
}


@dataclass(frozen=True)
class Assessment:
    """One capability of the catalog on this machine: ``missing`` is empty when it is met."""

    capability_id: str
    version: str
    missing: tuple[str, ...]

    @property
    def met(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"capability_id": self.capability_id, "version": self.version,
                "met": self.met, "missing": list(self.missing)}


def _program(path: str, root: Path | None) -> str | None:
    """``path`` (a name looked up on PATH, or a path; relative to ``root``) if it exists and
    is executable."""
    if os.sep in path and not os.path.isabs(path) and root is not None:
        path = str(root / path)
    return shutil.which(path)


def _configured(config_key: str, config: Config | None, root: Path | None) -> str | None:
    program = config.agents.aider.executable if config is not None else "aider"
    if _program(program, root):
        return None
    if os.sep in program:
        return (f"{program!r} ({config_key} in orch.toml) does not exist or is not "
                "executable")
    return f"{program!r} ({config_key} in orch.toml) is not on PATH"


def dependency_problem(name: str, config: Config | None = None,
                       root: Path | None = None) -> str | None:
    """None when this machine has the dependency ``name``, else why not (one sentence)."""
    probe = PROBES.get(name) or Probe(executables=(name,), modules=(name.replace("-", "_"),))
    if probe.config_key is not None:
        problem = _configured(probe.config_key, config, root)
        return None if problem is None else f"{name}: {problem}"
    if any(shutil.which(program) for program in probe.executables):
        return None
    if any(_importable(module) for module in probe.modules):
        return None
    where = " or ".join([*(f"a program {p!r} on PATH" for p in probe.executables),
                         *(f"the module {m!r} for {sys.executable}" for m in probe.modules)])
    return f"{name}: found neither {where}"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _memory_mb() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return None


def _requirement_problems(reqs: Mapping[str, Any], config: Config | None,
                          root: Path | None, probed: dict[str, str | None]) -> list[str]:
    out = []
    wanted = reqs.get("min_python_version")
    if wanted:
        need = tuple(int(p) for p in str(wanted).split("."))
        if sys.version_info[:len(need)] < need:
            out.append(f"Python {wanted} or newer (this is "
                       f"{'.'.join(map(str, sys.version_info[:3]))})")
    for dep in reqs.get("dependencies") or ():
        if dep not in probed:
            probed[dep] = dependency_problem(dep, config, root)
        if probed[dep] is not None:
            out.append(str(probed[dep]))
    memory, have = reqs.get("min_memory_mb") or 0, _memory_mb()
    if memory and have is not None and have < memory:
        out.append(f"{memory} MB of memory (this machine has {have} MB)")
    disk = reqs.get("min_disk_space_mb") or 0
    if disk:
        free = shutil.disk_usage(root or Path.cwd()).free // (1024 * 1024)
        if free < disk:
            out.append(f"{disk} MB of free disk space ({free} MB free)")
    return out


def assess(rows: Iterable[tuple[str, str, Mapping[str, Any] | str | None]],
           config: Config | None = None, root: Path | None = None) -> list[Assessment]:
    """Each capability of ``rows`` ((capability_id, version, requirements)) on this machine,
    in the order given. Each dependency is probed once."""
    probed: dict[str, str | None] = {}
    out = []
    for cid, version, reqs in rows:
        parsed = json.loads(reqs) if isinstance(reqs, str) else (reqs or {})
        out.append(Assessment(cid, version,
                              tuple(_requirement_problems(parsed, config, root, probed))))
    return out


def catalog_rows(conn: apsw.Connection) -> list[tuple[str, str, str | None]]:
    """The loaded catalog (the ``capability`` table) as ``assess`` takes it."""
    return list(conn.execute(
        "SELECT capability_id, version, requirements FROM capability ORDER BY capability_id"))


def registry_rows(registry: CapabilityRegistry) -> list[tuple[str, str, dict[str, Any]]]:
    """A parsed registry file's capabilities as ``assess`` takes them."""
    return [(c.capability_id, c.version, c.requirements.model_dump(mode="json"))
            for c in registry.capabilities]


def local_offers(conn: apsw.Connection, config: Config | None = None,
                 root: Path | None = None) -> dict[str, str]:
    """What a worker started on this machine without ``--capability`` offers: every loaded
    capability whose requirements this machine meets, at its catalog version."""
    return {a.capability_id: a.version for a in assess(catalog_rows(conn), config, root)
            if a.met}
