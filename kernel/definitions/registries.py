"""The capability registry (CAP-REG-001/002) and the resource registry (CONC-REG-001), as YAML
files in the user's project (``capabilities/registry.yaml``, ``capabilities/resources.yaml``).

Public API:
    Models (pydantic v2, frozen, unknown fields rejected): Capability, CapabilityRequirements,
    Operation, CapabilityRegistry (``get(id_or_name)``, ``check_capabilities(refs) -> (errors,
    warnings)``), Resource (``refill_per_second``), ResourceRegistry (``get(id)``,
    ``conflicts(a, b)``, ``check_requirements(reqs) -> list``); loaders
    ``load_capability_registry(path)``, ``load_resource_registry(path)``,
    ``load_yaml_registry(path, max_bytes)``, ``load_default_registries()``; the shipped
    defaults ``DEFAULT_CAPABILITY_REGISTRY`` and ``DEFAULT_RESOURCE_REGISTRY``;
    ``lease_ceiling(type, capacity, reserved)`` (the most units one task can ever lease: the
    one definition of an impossible request, also used by ``kernel.runtime.leases``) and
    ``Resource.ceiling``.

Stability Guarantees:
    Registry fields follow SCHEMA-VER-001 like every schema'd document (patch compatible, minor
    adds optional fields, major breaks); capability and resource ids are stable. The files are
    read through ``kernel.base.documents`` (regular file, strict YAML: no duplicate keys, aliases,
    NaN or infinity) and validated strictly (no type coercion); a problem found by a
    model-level check names its field (``resources[2].reserved``).

Integration Points:
    ``orch init`` copies the defaults into ``capabilities/``; ``orch validate`` / ``orch load``
    check task requirements against them and load them into the ``capability``, ``resource``
    and ``resource_conflict`` tables; kernel.observe.schemas renders their JSON Schemas.

Dependencies:
    pydantic; ``kernel.base.data``, ``kernel.base.documents``, ``kernel.base.formats``,
    ``kernel.definitions.errors``, ``kernel.definitions.fields``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    model_validator,
)

from kernel.base.data import defaults_dir
from kernel.base.documents import DEFAULT_MAX_FILE_BYTES, read_file
from kernel.base.formats import parse_yaml, yaml_line
from kernel.definitions.errors import DefinitionError, Problem, problems_from
from kernel.definitions.fields import (
    REGISTRY_SCHEMA_VERSION,
    Id,
    IdList,
    SemVer,
    StrictDocument,
    StrictModel,
    any_patch_of,
    not_a_number,
)

DEFAULT_CAPABILITY_REGISTRY = defaults_dir() / "registry.yaml"
DEFAULT_RESOURCE_REGISTRY = defaults_dir() / "resources.yaml"
_RATE_RE = re.compile(r"^([1-9][0-9]*)/(second|minute|hour)$")
_RATE_PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600}


# --- capability registry (CAP-REG-001/002) --------------------------------------------------


class CapabilityRequirements(StrictModel):
    """What a machine needs for a worker to offer the capability."""

    min_python_version: Annotated[str | None, BeforeValidator(not_a_number)] = Field(
        default=None, pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?$", description='Quoted, e.g. "3.11".'
    )
    dependencies: list[str] = Field(
        default_factory=list, description="Programs or packages needed, e.g. aider-chat, git."
    )
    min_memory_mb: int = Field(default=0, ge=0)
    min_disk_space_mb: int = Field(default=0, ge=0)
    network_required: bool = False


class Operation(StrictModel):
    """One thing a capability can do."""

    name: str = Field(min_length=1)
    inputs: list[str] = Field(default_factory=list, description="Names of the inputs it takes.")
    output: str | None = Field(default=None, description="What it produces.")
    description: str = ""


class Capability(StrictModel):
    """A capability a worker can advertise; tasks name it in worker_requirements."""

    capability_id: Id = Field(description="Stable id, e.g. cap-aider-001.")
    version: SemVer = Field(description="Version of this capability (semver). Mandatory.")
    name: str = Field(min_length=1, description="Unique short name, e.g. AiderCodeEditing.")
    description: str = ""
    provider: str = Field(default="orch", description="Who implements it. Default: orch.")
    deprecated_by: Id | None = Field(
        description="Mandatory key: the capability that replaces this one, or null."
    )
    stability: Literal["experimental", "stable", "deprecated"] = Field(
        description="Mandatory. Tasks using a deprecated capability load with a warning."
    )
    since_version: SemVer = Field(description="orch release that introduced it. Mandatory.")
    requirements: CapabilityRequirements = Field(default_factory=CapabilityRequirements)
    operations: list[Operation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Capability:
        if self.deprecated_by == self.capability_id:
            raise ValueError(f"deprecated_by: {self.capability_id} is deprecated_by itself")
        if self.deprecated_by and self.stability != "deprecated":
            raise ValueError("stability: deprecated_by is set, so stability must be "
                             "'deprecated'")
        _unique_in("operations", "name", [op.name for op in self.operations])
        return self


class CapabilityRegistry(StrictDocument):
    """capabilities/registry.yaml: the capabilities workers may advertise."""

    _schema_name: ClassVar[str] = "capability-registry"
    _default_version: ClassVar[str] = REGISTRY_SCHEMA_VERSION
    schema_version: str = Field(default=REGISTRY_SCHEMA_VERSION,
                                pattern=any_patch_of(REGISTRY_SCHEMA_VERSION))
    capabilities: list[Capability] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> CapabilityRegistry:
        ids = [c.capability_id for c in self.capabilities]
        _unique_in("capabilities", "capability_id", ids)
        _unique_in("capabilities", "name", [c.name for c in self.capabilities])
        for index, cap in enumerate(self.capabilities):
            if cap.deprecated_by and cap.deprecated_by not in ids:
                raise ValueError(
                    f"capabilities[{index}].deprecated_by: unknown capability '{cap.deprecated_by}'"
                )
        return self

    def get(self, ref: str) -> Capability | None:
        """Look a capability up by capability_id or by name."""
        return next((c for c in self.capabilities if ref in (c.capability_id, c.name)), None)

    def check_capabilities(self, refs: Iterable[str]) -> tuple[list[str], list[str]]:
        """(errors for unknown refs, warnings for deprecated ones) for a task's requirements."""
        errors, warnings = [], []
        for ref in refs:
            cap = self.get(ref)
            if cap is None:
                errors.append(f"unknown capability '{ref}'")
            elif cap.stability == "deprecated":
                instead = f"; use '{cap.deprecated_by}'" if cap.deprecated_by else ""
                warnings.append(f"capability '{ref}' is deprecated{instead}")
        return errors, warnings


def _unique_in(items: str, field: str, values: list[str]) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            raise ValueError(f"{items}[{index}].{field}: duplicate {field}: '{value}' is "
                             f"used twice (also by {items}[{first[value]}])")
        first[value] = index


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def lease_ceiling(kind: str, capacity: float | None, reserved: float | None) -> float | None:
    """The most units of a resource that one task can ever lease, whatever else runs: a pooled
    resource's ``capacity - reserved``, a rate-limited one's bucket size (``capacity``); None
    for exclusive and shared resources (a lease of those is one holder, not units).

    The one definition of "a request no pool can ever grant": the lease triggers
    (sql/0002_scheduler.sql) refuse more than this, ``kernel.definitions.fit.impossible_requests``
    finds loaded requests above it (Resource-Exhaustion), and ``orch validate`` refuses task
    files that ask for more."""
    if kind not in _SIZED or capacity is None:
        return None
    return capacity - (reserved or 0)


# --- resource registry (CONC-REG-001/002) ---------------------------------------------------

_SIZED = ("pooled", "rate_limited")


class Resource(StrictModel):
    """Something tasks lease before they run; see CONC-REG-001 for the types."""

    resource_id: Id
    type: Literal["exclusive", "shared", "pooled", "rate_limited"] = Field(
        description="exclusive: one holder; shared: many holders; pooled: a count of units; "
        "rate_limited: a token bucket refilled at refill_rate."
    )
    description: str = ""
    max_holders: int = Field(
        default=-1,
        description="Most tasks holding it at once; -1 = unlimited. Default: 1 for exclusive, "
        "-1 otherwise.",
    )
    refill_rate: str | None = Field(
        default=None,
        pattern=_RATE_RE.pattern,
        description="rate_limited only: N/second, N/minute or N/hour, e.g. 100/minute.",
    )
    capacity: int | None = Field(
        default=None,
        gt=0,
        description="pooled: units in the pool (required). rate_limited: bucket "
        "size. Default for rate_limited: one period's refill.",
    )
    min_per_task: int | None = Field(
        default=None, gt=0, description="pooled/rate_limited: least a task may ask for. Default 1."
    )
    max_per_task: int | None = Field(
        default=None,
        gt=0,
        description="pooled/rate_limited: most a task may ask for. Default: everything available.",
    )
    reserved: int | None = Field(
        default=None, ge=0, description="pooled only: units never leased to tasks. Default 0."
    )
    priority: int = Field(
        default=0,
        description="Scheduling hint: scarcer, higher-priority resources are considered first.",
    )
    conflicts_with: IdList = Field(
        default_factory=list,
        description="Resources that may not be held by two different tasks at the same time as "
        "this one (symmetric; listing itself makes it mutually exclusive).",
    )

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        kind = data.get("type")
        if kind == "exclusive":
            data.setdefault("max_holders", 1)
        refill = data.get("refill_rate")
        rate = _RATE_RE.match(refill) if kind == "rate_limited" and isinstance(refill, str) \
            else None
        if rate and data.get("capacity") is None:
            data["capacity"] = int(rate[1])
        if kind in _SIZED and _whole(data.get("capacity")):
            reserved = data.setdefault("reserved", 0) if kind == "pooled" else 0
            data.setdefault("min_per_task", 1)
            if _whole(reserved) and data["capacity"] > reserved:
                data.setdefault("max_per_task", data["capacity"] - reserved)
        return data

    @model_validator(mode="after")
    def _check(self) -> Resource:
        if self.max_holders == 0 or self.max_holders < -1:
            raise ValueError("max_holders: must be -1 (unlimited) or at least 1")
        if self.type == "exclusive" and self.max_holders != 1:
            raise ValueError("max_holders: an exclusive resource has max_holders 1; use shared "
                             "or pooled")
        sized = {
            "capacity": self.capacity,
            "min_per_task": self.min_per_task,
            "max_per_task": self.max_per_task,
        }
        misplaced = [k for k, v in sized.items() if v is not None and self.type not in _SIZED]
        if self.reserved is not None and self.type != "pooled":
            misplaced.append("reserved")
        if self.refill_rate is not None and self.type != "rate_limited":
            misplaced.append("refill_rate")
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} do not apply to {self.type} resources")
        if self.type == "rate_limited" and self.refill_rate is None:
            raise ValueError("a rate_limited resource needs refill_rate, e.g. 100/minute")
        if self.type == "pooled" and self.capacity is None:
            raise ValueError("a pooled resource needs capacity")
        if self.capacity is not None:
            usable = self.capacity - (self.reserved or 0)
            if usable < 1:
                raise ValueError(f"reserved: {self.reserved} leaves nothing of the capacity "
                                 f"{self.capacity}")
            if not (self.min_per_task or 1) <= (self.max_per_task or usable) <= usable:
                raise ValueError(
                    f"max_per_task: need min_per_task <= max_per_task <= {usable} "
                    "(capacity - reserved)"
                )
        return self

    @property
    def ceiling(self) -> float | None:
        """The most units one task can ever lease (``lease_ceiling``); None: no unit limit."""
        return lease_ceiling(self.type, self.capacity, self.reserved)

    @property
    def refill_per_second(self) -> float | None:
        """Tokens added per second for rate_limited resources (100/minute -> 1.666...)."""
        match = _RATE_RE.match(self.refill_rate or "")
        return int(match[1]) / _RATE_PERIOD_SECONDS[match[2]] if match else None


class ResourceRegistry(StrictDocument):
    """capabilities/resources.yaml: the resources tasks lease (CONC-REG-001)."""

    _schema_name: ClassVar[str] = "resource-registry"
    _default_version: ClassVar[str] = REGISTRY_SCHEMA_VERSION
    schema_version: str = Field(default=REGISTRY_SCHEMA_VERSION,
                                pattern=any_patch_of(REGISTRY_SCHEMA_VERSION))
    resources: list[Resource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ResourceRegistry:
        ids = [r.resource_id for r in self.resources]
        _unique_in("resources", "resource_id", ids)
        for index, res in enumerate(self.resources):
            unknown = [c for c in res.conflicts_with if c not in ids]
            if unknown:
                raise ValueError(
                    f"resources[{index}].conflicts_with: unknown resource {', '.join(unknown)}"
                )
        return self

    def get(self, resource_id: str) -> Resource | None:
        return next((r for r in self.resources if r.resource_id == resource_id), None)

    def conflicts(self, a: str, b: str) -> bool:
        """True when holders of a and b exclude each other (declared on either side)."""
        ra, rb = self.get(a), self.get(b)
        return bool(ra and b in ra.conflicts_with) or bool(rb and a in rb.conflicts_with)

    def check_requirements(self, requirements: Mapping[str, str | int]) -> list[str]:
        """Problems with a task's resource_requirements against this registry (empty = fine)."""
        problems = []
        for rid, want in requirements.items():
            res = self.get(rid)
            if res is None:
                known = ", ".join(r.resource_id for r in self.resources)
                problems.append(f"unknown resource '{rid}' (known: {known})")
            elif res.type in _SIZED and not isinstance(want, int):
                problems.append(f"'{rid}' is {res.type}: ask for a number of units, not {want!r}")
            elif res.type not in _SIZED and want != res.type:
                problems.append(f"'{rid}' is {res.type}: request it as \"{res.type}\"")
            elif isinstance(want, int) and not (
                (res.min_per_task or 1) <= want <= (res.max_per_task or want)
            ):
                problems.append(
                    f"'{rid}': asks for {want}; a task may take "
                    f"{res.min_per_task}-{res.max_per_task}"
                )
        return problems



# --- YAML registries ------------------------------------------------------------------------

Registry = CapabilityRegistry | ResourceRegistry
_REGISTRY_NAMES: dict[type, str] = {
    CapabilityRegistry: "capability registry",
    ResourceRegistry: "resource registry",
}


def _load_yaml(path: Path, model: type[Registry] | None,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Registry:
    source = str(path)
    raw = read_file(source, max_bytes=max_bytes)  # DocumentError: not a file we may read
    data, root, problems = parse_yaml(raw, source)
    if problems:
        raise DefinitionError.of_documents(source, "YAML", problems)
    keys = set(data) if isinstance(data, dict) else set()
    if model is None and keys & {"capabilities", "resources"}:
        model = CapabilityRegistry if "capabilities" in keys else ResourceRegistry
    if model is None or not isinstance(data, dict):
        expected = "a mapping" if model else "a top-level 'capabilities' or 'resources' list"
        what = _REGISTRY_NAMES[model] if model else "registry"
        raise DefinitionError(source, what, [Problem("", f"expected {expected}")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems_ = problems_from(exc, model, lambda loc: yaml_line(root, loc))
        raise DefinitionError(source, _REGISTRY_NAMES[model], problems_) from None


def load_capability_registry(path: Path) -> CapabilityRegistry:
    result = _load_yaml(path, CapabilityRegistry)
    assert isinstance(result, CapabilityRegistry)
    return result


def load_resource_registry(path: Path) -> ResourceRegistry:
    result = _load_yaml(path, ResourceRegistry)
    assert isinstance(result, ResourceRegistry)
    return result


def load_yaml_registry(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Registry:
    """Either registry, chosen by its top-level key (capabilities / resources); read through
    ``kernel.base.documents`` (a regular file of at most ``max_bytes``, strict YAML)."""
    return _load_yaml(path, None, max_bytes)


def load_default_registries() -> tuple[CapabilityRegistry, ResourceRegistry]:
    return (
        load_capability_registry(DEFAULT_CAPABILITY_REGISTRY),
        load_resource_registry(DEFAULT_RESOURCE_REGISTRY),
    )
