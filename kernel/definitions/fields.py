"""The strict ground every definition model stands on: the schema versions, the shared field
types (ids, semantic versions, relative paths, timestamps) and the two base models.

Public API:
    Versions: ``TASK_SCHEMA_VERSION`` ("2.0.0"), ``TASK_V1_SCHEMA_VERSION``,
    ``SUPPORTED_TASK_SCHEMA_VERSIONS``, ``WORKSTREAM_SCHEMA_VERSION``,
    ``REGISTRY_SCHEMA_VERSION``, ``ATTEMPT_OUTPUT_SCHEMA_VERSION``.
    Patterns: ``ID_PATTERN``, ``SEMVER_PATTERN``; ``semver_key(version)`` (semver precedence,
    for comparing versions: parsed, never compared as strings); ``major_minor(version)`` (the
    schema line a version string names, or None); ``any_patch_of(version)`` (the
    ``schema_version`` pattern of a document: any patch release of that line).
    Field types: ``Id``, ``IdList`` (unique), ``SemVer``, ``RelPath`` (relative, no '..'),
    ``Timestamp`` (ISO-8601 with a zone); ``not_a_number`` (a validator refusing a YAML number
    where a version string is meant); ``unique(items)``.
    Base models: ``StrictModel`` (frozen, strict, unknown fields rejected) and
    ``StrictDocument`` (a top-level document: ``schema_version``, ``schema_url``, ``$schema``,
    ``$comment``).

Stability Guarantees:
    Types are strict: a value of the wrong JSON type is an error, never converted ("60" for a
    number, true for a count, "yes" for a boolean, 1 for a string); an integer is accepted
    where a float is expected; NaN and infinity are refused. A document's ``schema_url`` is
    filled from its ``schema_version`` when absent, and one under ``SCHEMA_URL_BASE`` must
    match it. Versions follow SCHEMA-VER-001 (docs/schema_migrations/VERSIONING.md).

Integration Points:
    ``kernel.definitions.models`` (task, workstream and attempt-output models) and
    ``kernel.definitions.registries`` (the registries) build on these; ``kernel.definitions.fit``
    and ``kernel.definitions.taskfiles`` compare versions with ``semver_key``.

Dependencies:
    pydantic; ``kernel.base.data``.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from kernel.base.data import SCHEMA_URL_BASE, schema_url

TASK_SCHEMA_VERSION = "2.0.0"
TASK_V1_SCHEMA_VERSION = "1.0.0"
SUPPORTED_TASK_SCHEMA_VERSIONS = (TASK_V1_SCHEMA_VERSION, TASK_SCHEMA_VERSION)
WORKSTREAM_SCHEMA_VERSION = "1.0.0"
REGISTRY_SCHEMA_VERSION = "1.0.0"
ATTEMPT_OUTPUT_SCHEMA_VERSION = "1.1.0"


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# Semantic Versioning 2.0.0 (semver.org): groups 1-3 are major, minor, patch; group 4 the
# pre-release identifiers, group 5 the build metadata (ignored in comparisons).
_SEMVER_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    rf"(?:-({_SEMVER_IDENT}(?:\.{_SEMVER_IDENT})*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_SEMVER = re.compile(SEMVER_PATTERN)


# --- versions -------------------------------------------------------------------------------


def semver_key(version: str) -> tuple[Any, ...]:
    """A sort key for a semver string, with semver's precedence: numeric parts as numbers
    (1.10.0 > 1.9.2), a pre-release below its release (1.0.0-rc.1 < 1.0.0), pre-release
    identifiers compared one by one (numeric < alphanumeric), build metadata ignored.
    Raises ValueError for anything that is not semver."""
    match = _SEMVER.match(version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version such as 1.2.0")
    core = (int(match[1]), int(match[2]), int(match[3]))
    if match[4] is None:
        return (*core, 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in match[4].split("."))
    return (*core, 0, parts)


def major_minor(version: Any) -> tuple[int, int] | None:
    """(major, minor) of a semver string such as "2.0.0"; None for anything else."""
    match = _SEMVER.match(version) if isinstance(version, str) else None
    return (int(match[1]), int(match[2])) if match else None


def any_patch_of(version: str) -> str:
    """The ``schema_version`` pattern a document of ``version`` accepts: every patch release of
    its line (a patch is compatible, SCHEMA-VER-001), "2.0.0" -> ``^2\\.0\\.(0|[1-9][0-9]*)$``."""
    line = major_minor(version)
    if line is None:
        raise ValueError(f"{version!r} is not a semantic version such as 1.2.0")
    return rf"^{line[0]}\.{line[1]}\.(0|[1-9][0-9]*)$"


# --- shared field types ---------------------------------------------------------------------


def unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ValueError(f"'{item}' is listed twice")
        seen.add(item)
    return items


def not_a_number(value: Any) -> Any:
    # YAML reads 1.0 as a float and 3.10 as 3.1: refuse rather than guess what was meant.
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ValueError(f'write the version as a quoted string, e.g. "{value}"')
    return value


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"'{value}' must be a relative path inside the worktree (no '..')")
    return value


Id = Annotated[str, Field(pattern=ID_PATTERN)]
IdList = Annotated[
    list[Id], AfterValidator(unique), Field(json_schema_extra={"uniqueItems": True})
]
SemVer = Annotated[str, BeforeValidator(not_a_number), Field(pattern=SEMVER_PATTERN)]
RelPath = Annotated[str, AfterValidator(_relative_path)]


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("write the time as an ISO-8601 string, e.g. \"2026-01-31T12:00:00Z\"")
    return value


# JSON has no date type: a timestamp is an ISO-8601 string with a time zone (parsed, so not
# strict), and nothing else (a number is not read as seconds since 1970).
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text), Field(strict=False)]


# --- base models ----------------------------------------------------------------------------


class StrictModel(BaseModel):
    # Strict: a value of the wrong JSON type is an error, never converted ("60" is not a
    # number, true is not a count, "yes" is not a boolean, 1 is not a string). As in JSON
    # mode, an integer is accepted where a float is expected. NaN and infinity are refused.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class StrictDocument(StrictModel):
    """Top-level document: carries schema_version/schema_url and may carry $schema/$comment."""

    _schema_name: ClassVar[str]
    _default_version: ClassVar[str]

    schema_version: str
    # Filled from schema_version when absent (see _fill_schema_url), so never empty after load.
    schema_url: str = Field(default_factory=str, description="URL of this file's JSON Schema. "
                            "Default: the one its schema_version names.")
    dollar_schema: str | None = Field(
        default=None, alias="$schema", exclude=True, description="Editor hint; ignored by orch."
    )
    dollar_comment: str | None = Field(
        default=None, alias="$comment", exclude=True, description="Free text; ignored by orch."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_schema_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_url") is None:
            version = data.get("schema_version", cls._default_version)
            data = {**data, "schema_url": schema_url(cls._schema_name, str(version))}
        return data

    @model_validator(mode="after")
    def _check_schema_url(self) -> StrictDocument:
        expected = schema_url(self._schema_name, self.schema_version)
        if self.schema_url.startswith(SCHEMA_URL_BASE) and self.schema_url != expected:
            raise ValueError(
                f"schema_url is {self.schema_url} but schema_version implies {expected}"
            )
        return self
