"""Where the kernel's bundled data lives: SQL migrations, state machines, failure modes.

Public API:
    ``sql_dir()``, ``state_machine_dir()``, ``failure_modes_file()``, ``defaults_dir()``,
    ``docs_dir()`` (orch's documentation set, which ``orch compliance`` checks),
    ``schemas_dir()`` (the published JSON Schemas);
    ``SCHEMA_URL_BASE``, ``schema_url(name, version)`` (the published schemas' addresses).

Stability Guarantees:
    The layout inside the wheel (``kernel/_data/...``) is internal; call these functions.

Integration Points:
    In a source checkout (or an editable install) the files are read from the repository's top
    level (``sql/``, ``docs/``, ``schemas/``), which is where people edit them. In an
    installed wheel they are read from ``kernel/_data/``, where
    ``pyproject.toml`` force-includes the same files.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent
_DATA = _PACKAGE / "_data"
_REPO = _PACKAGE.parent


def _pick(installed: Path, source: Path) -> Path:
    if installed.exists():
        return installed
    if source.exists():
        return source
    raise FileNotFoundError(
        f"bundled data not found at {installed} or {source}: the installation is incomplete; "
        "reinstall orch"
    )


#: Where the JSON Schemas of every published document live (``schema_url`` in each document).
SCHEMA_URL_BASE = "https://orch.dev/schemas/"


def schema_url(name: str, version: str) -> str:
    """The address of version ``version`` of the published schema ``name``."""
    return f"{SCHEMA_URL_BASE}{name}/v{version}.json"


def sql_dir() -> Path:
    return _pick(_DATA / "sql", _REPO / "sql")


def state_machine_dir() -> Path:
    return _pick(_DATA / "state_machines", _REPO / "docs" / "state_machines")


def failure_modes_file() -> Path:
    return _pick(
        _DATA / "failure_modes" / "failure_modes.yaml",
        _REPO / "docs" / "failure_modes" / "failure_modes.yaml",
    )


def defaults_dir() -> Path:
    return _PACKAGE / "defaults"


def docs_dir() -> Path:
    return _pick(_DATA / "docs", _REPO / "docs")


def schemas_dir() -> Path:
    return _pick(_DATA / "schemas", _REPO / "schemas")
