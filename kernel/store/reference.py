"""Reference data the kernel holds as rows: the failure-mode catalog (SPEC ERR-FM).

Public API:
    ``load_failure_modes(path=None) -> FailureModeCatalog``; ``ensure_failure_modes(conn)`` syncs
    ``docs/failure_modes/failure_modes.yaml`` into ``failure_mode`` and
    ``failure_mode_relation`` when the file changed; ``FailureMode`` and ``DecisionTree``
    (frozen pydantic models); ``FailureModeCatalog.related_of(mode_id)`` (the symmetric
    related-failure links, sorted).

Stability Guarantees:
    Mode ids (``Task-Timeout``, ...) are stable: attempts and events refer to them. Modes are only
    added.

Integration Points:
    ``kernel.store.schema.connect`` calls ``ensure_failure_modes`` after migrating; the scheduler
    classifies failures with these ids; the failure-mode docs are generated from the same YAML.

Dependencies:
    apsw, pydantic, yaml; ``kernel.base.data``, ``kernel.store.db``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import apsw
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kernel.base.data import failure_modes_file

_HASH_KEY = "failure_modes_sha256"


class DecisionStep(BaseModel):
    """One automatic attempt of a decision tree: ``if`` the condition holds, ``then`` this."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    when: str = Field(alias="if", min_length=1)
    then: str = Field(min_length=1)


class DecisionTree(BaseModel):
    """ERR-FM-003: detection, the automatic attempts in order, escalation, and when a person
    must step in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detect: str = Field(min_length=1)
    automatic: tuple[DecisionStep, ...] = ()
    escalate: str = Field(min_length=1)
    person: str = Field(min_length=1)


class FailureMode(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode_id: str
    category: Literal["task", "worker", "workstream", "system"]
    event: str
    severity: Literal["info", "warning", "error", "critical"]
    probability: str
    impact: str
    retryable: bool
    detection: str
    automatic_recovery: str
    manual_intervention: str
    related: tuple[str, ...] = ()
    event_metadata: tuple[str, ...] = ()
    decision_tree: DecisionTree


class FailureModeCatalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    modes: tuple[FailureMode, ...]
    source_sha256: str = ""

    @model_validator(mode="after")
    def _related_known(self) -> FailureModeCatalog:
        ids = {m.mode_id for m in self.modes}
        for mode in self.modes:
            unknown = set(mode.related) - ids
            if unknown:
                raise ValueError(f"{mode.mode_id}: related modes {sorted(unknown)} are unknown")
        return self

    def by_id(self) -> dict[str, FailureMode]:
        return {m.mode_id: m for m in self.modes}

    def related_of(self, mode_id: str) -> list[str]:
        """The modes linked to ``mode_id`` either way (links are symmetric: Task-Timeout <->
        Worker-Unresponsive whichever of the two lists the other)."""
        return sorted({other for pair in self.relations() if pair[0] == mode_id
                       for other in pair[1:]})

    def relations(self) -> set[tuple[str, str]]:
        """Every related-failure link, both directions (the ``failure_mode_relation`` rows)."""
        return {pair for mode in self.modes for other in mode.related
                for pair in ((mode.mode_id, other), (other, mode.mode_id))}


def load_failure_modes(path: Path | None = None) -> FailureModeCatalog:
    raw = (path or failure_modes_file()).read_bytes()
    data = yaml.safe_load(raw)
    data["source_sha256"] = hashlib.sha256(raw).hexdigest()
    return FailureModeCatalog.model_validate(data)


def ensure_failure_modes(conn: apsw.Connection) -> bool:
    from kernel.store.db import upsert_sql, write_tx

    digest = hashlib.sha256(failure_modes_file().read_bytes()).hexdigest()
    stored = conn.execute("SELECT value FROM kernel_info WHERE key = ?", (_HASH_KEY,)).fetchone()
    if stored and stored[0] == digest:  # unchanged: skip parsing the YAML (runs on every open)
        return False
    catalog = load_failure_modes()
    with write_tx(conn):
        for mode in catalog.modes:
            conn.execute(
                upsert_sql("failure_mode", "mode_id", (
                    "mode_id", "category", "event", "severity", "probability", "impact",
                    "detection", "automatic_recovery", "manual_intervention", "retryable")),
                (
                    mode.mode_id, mode.category, mode.event, mode.severity, mode.probability,
                    mode.impact, mode.detection, mode.automatic_recovery,
                    mode.manual_intervention, int(mode.retryable),
                ),
            )
        conn.execute("DELETE FROM failure_mode_relation")
        conn.executemany(
            "INSERT INTO failure_mode_relation (mode_id, related_mode_id) VALUES (?, ?)",
            sorted(catalog.relations()),
        )
        conn.execute(
            upsert_sql("kernel_info", "key", ("key", "value")),
            (_HASH_KEY, catalog.source_sha256),
        )
    return True
