"""The three state machines as data: loaded from YAML, checked, synced into SQLite.

Public API:
    ``load_machines(directory=None) -> dict[str, MachineDef]`` (task, workstream, worker);
    ``MachineDef`` / ``StateDef`` / ``TransitionDef`` (frozen pydantic models);
    ``ensure_machines(conn)`` syncs the YAML into ``machine``, ``machine_state`` and
    ``machine_transition`` and (re)creates the ``<machine>_illegal_transition`` triggers when
    the YAML changed; ``illegal_transition_trigger_sql(machine)``; ``transition_in_tx(conn,
    machine, entity_id, to_state, trigger, metadata=None, **columns)`` requests one transition
    inside the caller's write transaction and turns a rejection into ``IllegalTransition``
    naming the entity. The state sets, the one home of each, read from the YAML:
    ``terminal_states(machine)``, ``states_allowing(machine, trigger, to_state=None)``,
    ``claimed_states()``; as SQL lists ``in_list_sql(states)``, ``terminal_sql(machine)``;
    ``shipped()`` (the machines of this version); ``CANCELLED_ERROR``.

Stability Guarantees:
    ``docs/state_machines/*.yaml`` is the single source of truth: states and transitions are
    only added or changed there (with a CHANGELOG entry), and the database follows on the next
    open. Trigger messages start with ``illegal <machine> transition:`` or
    ``<machine> guard failed:``.

Integration Points:
    ``kernel.store.schema.connect`` calls ``ensure_machines`` after migrating. The scheduler, the
    CLI
    and
    any SQLite client request transitions by updating ``state`` with ``transition_trigger``.
    ``tools/gen_docs.py`` renders STATE_MACHINE.md from ``load_machines()``.

Dependencies:
    apsw, pydantic, yaml; ``kernel.base.data``, ``kernel.base.errors``, ``kernel.store.db``.

Why the trigger messages are generated: SQLite 3.40 (the ``sqlite3`` shell, Python's sqlite3
and Datasette) only accepts a constant string in ``RAISE()``. So each machine gets one trigger
whose WHEN clause looks the transition up in ``machine_transition`` (the fast path costs one
index probe) and whose body holds one constant message per case, naming the machine, both
states and the trigger. A constant cannot name the row, so the entity id is added by
``transition_in_tx()`` for the kernel's own updates; a shell user sees the row they updated.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import apsw
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kernel.base.data import state_machine_dir
from kernel.base.errors import IllegalTransition

MACHINES = ("task", "workstream", "worker")
Severity = Literal["info", "warning", "error", "critical"]

# Table and key column of each machine's entities.
ENTITY = {
    "task": ("task", "task_id"),
    "workstream": ("workstream", "workstream_id"),
    "worker": ("worker", "worker_id"),
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class StateDef(_Frozen):
    name: str
    description: str
    terminal: bool = False
    entry_actions: tuple[str, ...] = ()


class TransitionDef(_Frozen):
    from_state: str = Field(alias="from")
    to_state: str = Field(alias="to")
    trigger: str
    event: str
    event_type: str | None = None
    severity: Severity = "info"
    guard: str | None = None
    guard_enforced_by: Literal["sql", "scheduler", "operator"] | None = None
    operator_override: bool = False
    description: str | None = None


class InvariantDef(_Frozen):
    id: str
    description: str
    enforced_by: str


class MachineDef(_Frozen):
    machine: Literal["task", "workstream", "worker"]
    version: str
    description: str
    entity_table: str
    initial_state: str
    states: tuple[StateDef, ...]
    transitions: tuple[TransitionDef, ...]
    invariants: tuple[InvariantDef, ...] = ()
    event_schema: dict[str, Any] = Field(default_factory=dict)
    source_sha256: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> MachineDef:
        names = [s.name for s in self.states]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.machine}: duplicate state names in {names}")
        if self.initial_state not in names:
            raise ValueError(f"{self.machine}: initial_state {self.initial_state!r} is not a state")
        terminal = {s.name for s in self.states if s.terminal}
        seen = set()
        for t in self.transitions:
            for end in (t.from_state, t.to_state):
                if end not in names:
                    raise ValueError(f"{self.machine}: transition names unknown state {end!r}")
            key = (t.from_state, t.to_state, t.trigger)
            if key in seen:
                raise ValueError(f"{self.machine}: duplicate transition {key}")
            seen.add(key)
            if t.from_state == t.to_state:
                raise ValueError(f"{self.machine}: self-transition {key} is not a state change")
            if t.from_state in terminal and not t.operator_override:
                raise ValueError(
                    f"{self.machine}: {t.from_state} is terminal; only operator overrides "
                    f"may leave it ({key})"
                )
        return self

    def state(self, name: str) -> StateDef:
        return next(s for s in self.states if s.name == name)

    @property
    def state_names(self) -> list[str]:
        return [s.name for s in self.states]

    @property
    def triggers(self) -> list[str]:
        return sorted({t.trigger for t in self.transitions})

    def event_type(self, t: TransitionDef) -> str:
        return t.event_type or f"{self.machine}_state_transition"

    def allowed(self, from_state: str, to_state: str) -> list[str]:
        return sorted(
            t.trigger
            for t in self.transitions
            if t.from_state == from_state and t.to_state == to_state
        )


def load_machine(path: Path) -> MachineDef:
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    data["source_sha256"] = hashlib.sha256(raw).hexdigest()
    return MachineDef.model_validate(data)


def source_hashes(directory: Path | None = None) -> dict[str, str]:
    directory = directory or state_machine_dir()
    return {
        name: hashlib.sha256((directory / f"{name}_lifecycle.yaml").read_bytes()).hexdigest()
        for name in MACHINES
    }


@functools.cache
def shipped() -> dict[str, MachineDef]:
    """The machines this version ships (read once per process)."""
    return load_machines()


#: The ``last_error`` of a task an operator cancelled (replay reconstructs it from the event).
CANCELLED_ERROR = "cancelled by an operator"


@functools.cache
def terminal_states(machine: str) -> tuple[str, ...]:
    """The terminal states of ``machine``, from its YAML: the one home of "terminal"."""
    return tuple(s.name for s in shipped()[machine].states if s.terminal)


@functools.cache
def states_allowing(machine: str, trigger: str, to_state: str | None = None) -> tuple[str, ...]:
    """The states from which ``trigger`` (to ``to_state``) is allowed, read from the YAML: what
    an operator may cancel (``user_cancelled``), retry (``operator_reset``) or skip
    (``operator_skip``), what a failed workstream cancels (``workstream_failed``)."""
    return tuple(sorted({t.from_state for t in shipped()[machine].transitions
                         if t.trigger == trigger and (to_state is None or t.to_state == to_state)}))


def claimed_states() -> tuple[str, ...]:
    """The task states in which a worker holds the task's claim (running, validating): the
    states a lost worker's task is handed on from (trigger ``worker_lost``)."""
    return states_allowing("task", "worker_lost")


def in_list_sql(states: tuple[str, ...]) -> str:
    """``('a', 'b')`` for SQL from states of the machine tables (never from user input)."""
    return "(" + ", ".join(f"'{s}'" for s in states) + ")"


def terminal_sql(machine: str) -> str:
    """``('completed', 'failed', 'cancelled')`` for the task machine: ``terminal_states`` as an
    SQL list, for ``state IN ...`` / ``state NOT IN ...``."""
    return in_list_sql(terminal_states(machine))


def load_machines(directory: Path | None = None) -> dict[str, MachineDef]:
    directory = directory or state_machine_dir()
    machines: dict[str, MachineDef] = {}
    for name in MACHINES:
        machine = load_machine(directory / f"{name}_lifecycle.yaml")
        if machine.machine != name:
            raise ValueError(f"{name}_lifecycle.yaml declares machine {machine.machine!r}")
        machines[name] = machine
    return machines


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def illegal_transition_trigger_sql(m: MachineDef) -> str:
    """The BEFORE UPDATE trigger that rejects every (from, to, trigger) not in the table."""
    table, _key = ENTITY[m.machine]
    prefix = f"illegal {m.machine} transition: "
    checks: list[tuple[str, str]] = [
        (
            "NEW.transition_trigger IS NULL",
            prefix + "a state change needs a trigger: set transition_trigger in the same UPDATE "
            "(see machine_transition)",
        ),
        (
            f"NOT EXISTS (SELECT 1 FROM machine_state WHERE machine = '{m.machine}' "
            "AND state = NEW.state)",
            prefix + f"unknown {m.machine} state (the states are listed in machine_state)",
        ),
    ]
    for src in m.state_names:
        for dst in m.state_names:
            if src == dst:
                continue
            where = f"OLD.state = '{src}' AND NEW.state = '{dst}'"
            allowed = m.allowed(src, dst)
            if allowed:
                listed = ", ".join(allowed)
                for trig in m.triggers:
                    if trig not in allowed:
                        checks.append((
                            f"{where} AND NEW.transition_trigger = '{trig}'",
                            f"{prefix}{src} -> {dst} (trigger {trig}); allowed triggers: {listed}",
                        ))
                checks.append((
                    where,
                    f"{prefix}{src} -> {dst} (trigger not in the {m.machine} machine); "
                    f"allowed triggers: {listed}",
                ))
            else:
                why = f"{src} is terminal" if m.state(src).terminal else "no trigger allows it"
                checks.append((where, f"{prefix}{src} -> {dst} ({why})"))
    checks.append(("1", prefix + "not in machine_transition"))
    body = "\n".join(
        f"    SELECT RAISE(ABORT, {_sql_text(msg)}) WHERE {cond};" for cond, msg in checks
    )
    return (
        f"CREATE TRIGGER {m.machine}_illegal_transition BEFORE UPDATE OF state ON {table}\n"
        "WHEN NEW.state IS NOT OLD.state AND NOT EXISTS (\n"
        f"    SELECT 1 FROM machine_transition WHERE machine = '{m.machine}'\n"
        "       AND from_state = OLD.state AND to_state = NEW.state\n"
        "       AND trigger = NEW.transition_trigger)\n"
        f"BEGIN\n{body}\nEND"
    )


def _stored_hashes(conn: apsw.Connection) -> dict[str, str]:
    found = conn.execute("SELECT machine, source_sha256 FROM machine").fetchall()
    return {str(name): str(digest) for name, digest in found}


def ensure_machines(
    conn: apsw.Connection, machines: Mapping[str, MachineDef] | None = None
) -> bool:
    """Sync the YAML into the database if it changed. Returns True when it wrote."""
    from kernel.store.db import write_tx

    # Hash the files first and parse the YAML only when it changed: this runs on every open.
    if machines is None and _stored_hashes(conn) == source_hashes():
        return False
    machines = machines or load_machines()
    if _stored_hashes(conn) == {n: m.source_sha256 for n, m in machines.items()}:
        return False
    with write_tx(conn):
        stored = _stored_hashes(conn)
        for name, m in machines.items():
            if stored.get(name) == m.source_sha256:
                continue
            _replace_machine_in_tx(conn, m)
    return True


def _replace_machine_in_tx(conn: apsw.Connection, m: MachineDef) -> None:
    conn.execute("DELETE FROM machine_transition WHERE machine = ?", (m.machine,))
    conn.execute("DELETE FROM machine_state WHERE machine = ?", (m.machine,))
    from kernel.store.db import upsert_sql

    conn.execute(
        upsert_sql("machine", "machine",
                   ("machine", "version", "description", "initial_state", "source_sha256")),
        (m.machine, m.version, m.description.strip(), m.initial_state, m.source_sha256),
    )
    conn.executemany(
        "INSERT INTO machine_state (machine, state, description, terminal, entry_actions) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (m.machine, s.name, s.description, int(s.terminal), json.dumps(list(s.entry_actions)))
            for s in m.states
        ],
    )
    conn.executemany(
        "INSERT INTO machine_transition (machine, from_state, to_state, trigger, event, "
        "event_type, severity, guard, guard_enforced_by, operator_override, description) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                m.machine, t.from_state, t.to_state, t.trigger, t.event, m.event_type(t),
                t.severity, t.guard, t.guard_enforced_by, int(t.operator_override),
                t.description,
            )
            for t in m.transitions
        ],
    )
    conn.execute(f"DROP TRIGGER IF EXISTS {m.machine}_illegal_transition")
    conn.execute(illegal_transition_trigger_sql(m))


def stored_matches_yaml(conn: apsw.Connection, machines: Mapping[str, MachineDef]) -> list[str]:
    """Differences between the transition table and the YAML (for orch doctor)."""
    problems = []
    for name, m in machines.items():
        want = {
            (t.from_state, t.to_state, t.trigger, t.event, m.event_type(t), t.severity)
            for t in m.transitions
        }
        have = set(
            conn.execute(
                "SELECT from_state, to_state, trigger, event, event_type, severity "
                "FROM machine_transition WHERE machine = ?",
                (name,),
            ).fetchall()
        )
        for extra in sorted(have - want):
            problems.append(f"{name}: transition {extra[0]} -> {extra[1]} ({extra[2]}) is in "
                            "the database but not in the YAML")
        for missing in sorted(want - have):
            problems.append(f"{name}: transition {missing[0]} -> {missing[1]} ({missing[2]}) "
                            "is in the YAML but not in the database")
    return problems


def transition_in_tx(
    conn: apsw.Connection,
    machine: str,
    entity_id: str,
    to_state: str,
    trigger: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    expect: Mapping[str, Any] | None = None,
    **columns: Any,
) -> bool:
    """Request one transition (the caller holds the write transaction).

    ``columns`` are set in the same UPDATE (e.g. ``worker_id``, ``retry_count``, ``started_at``);
    a column value given as ``("sql", expression, *params)`` is inlined as SQL (``retry_count +
    1``, ``COALESCE(started_at, ?)`` with the value as a parameter: never format values into the
    expression, or every call prepares a new statement, triggers and all: about 0.7 ms).
    ``expect`` makes it a compare-and-set: the row changes only if those columns still hold those
    values (e.g. ``{"state": "running", "generation": 7}``); then a row that no longer matches
    returns False instead of raising.
    """
    table, key = ENTITY[machine]
    sets = ["state = ?", "transition_trigger = ?", "transition_metadata = ?"]
    params: list[Any] = [to_state, trigger, json.dumps(dict(metadata)) if metadata else None]
    for column, value in columns.items():
        if not column.isidentifier():
            raise ValueError(f"bad column name {column!r}")
        if isinstance(value, tuple) and len(value) >= 2 and value[0] == "sql":
            # ("sql", expression, *parameters): keep values out of the SQL text, so the
            # statement (with every trigger compiled into it) is prepared once and cached.
            sets.append(f"{column} = {value[1]}")
            params.extend(value[2:])
        else:
            sets.append(f"{column} = ?")
            params.append(value)
    params.append(entity_id)
    where = f"{key} = ?"
    for column, value in (expect or {}).items():
        if not column.isidentifier():
            raise ValueError(f"bad column name {column!r}")
        where += f" AND {column} IS ?"
        params.append(value)
    try:
        changed = conn.execute(
            f"UPDATE {table} SET {', '.join(sets)} WHERE {where} RETURNING 1", params
        ).fetchall()
    except apsw.ConstraintError as exc:
        raise IllegalTransition(
            "illegal_transition",
            f"{exc.args[0] if exc.args else exc} [{machine} {entity_id!r}, -> {to_state}, "
            f"trigger {trigger}]",
            hint=f"the legal transitions are in docs/state_machines/{machine}_lifecycle.yaml",
        ) from exc
    if not changed:
        if expect:
            return False
        raise IllegalTransition("unknown_entity", f"no {machine} {entity_id!r}")
    return True
