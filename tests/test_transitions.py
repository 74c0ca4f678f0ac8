"""The three state machines, transition by transition, against the YAML that defines them.

``docs/state_machines/*_lifecycle.yaml`` is the oracle. Every legal transition is applied to an
entity brought into its from-state by a legal path and must write exactly one matching event.
Every other (from, to) pair, and every legal pair with a wrong trigger, must be rejected by all
three clients the kernel promises to guard against (apsw through
``kernel.store.machines.transition_in_tx``,
Python's ``sqlite3`` module and the ``sqlite3`` shell) without changing the entity or the log.
Then the SQL guards beyond the table, and the event log's append-only, gapless contract.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import apsw
import pytest

from kernel.base.errors import IllegalTransition
from kernel.store import db, schema
from kernel.store.machines import (
    ENTITY,
    MachineDef,
    TransitionDef,
    claimed_states,
    ensure_machines,
    load_machines,
    states_allowing,
    stored_matches_yaml,
    terminal_states,
    transition_in_tx,
)

MACHINES = load_machines()
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WORKSTREAM = "ws"  # the workstream every task built by these helpers belongs to
SQLITE3_SHELL = shutil.which("sqlite3")
NO_SHELL = "the sqlite3 command-line shell is not on PATH (shutil.which('sqlite3') is None)"


# --------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One freshly migrated database, closed (so its WAL is checkpointed into the file)."""
    path = tmp_path_factory.mktemp("template") / "kernel.db"
    schema.connect(path, create=True).close()
    return path


@pytest.fixture
def fresh_db(migrated_template: Path, tmp_path: Path) -> Iterator[apsw.Connection]:
    """conftest's fresh_db, made cheaper: a copy of the migrated template opened with the
    kernel's pragmas. ``db.open_connection`` only skips re-parsing the YAML, which is already in
    sync (the same source_sha256), so the connection is what ``schema.connect`` would give."""
    path = tmp_path / "kernel.db"
    shutil.copyfile(migrated_template, path)
    conn = db.open_connection(path)
    yield conn
    conn.close()


# --------------------------------------------------------------------------- legal paths


def path_to(m: MachineDef, state: str) -> list[TransitionDef]:
    """The shortest legal path (first in YAML order) from the initial state to ``state``."""
    came_by: dict[str, TransitionDef | None] = {m.initial_state: None}
    queue = deque([m.initial_state])
    while queue:
        here = queue.popleft()
        for t in m.transitions:
            if t.from_state == here and t.to_state not in came_by:
                came_by[t.to_state] = t
                queue.append(t.to_state)
    if state not in came_by:
        raise AssertionError(f"{m.machine}: {state} is unreachable from {m.initial_state}")
    path: list[TransitionDef] = []
    while (step := came_by[state]) is not None:
        path.append(step)
        state = step.from_state
    return path[::-1]


def retries_in(path: list[TransitionDef]) -> int:
    """How many times a path enters retrying: the max_retries a task needs to walk it. A task
    failing from running on this budget has exhausted its retries, as the scheduler requires."""
    return sum(t.to_state == "retrying" for t in path)


# --------------------------------------------------------------------------- entities


def state_of(conn: apsw.Connection, machine: str, entity_id: str) -> str:
    table, key = ENTITY[machine]
    return conn.execute(f"SELECT state FROM {table} WHERE {key} = ?", (entity_id,)).fetchone()[0]


def log_position(conn: apsw.Connection) -> tuple[int, int]:
    """(MAX(seq), COUNT(*)) of the event log."""
    return conn.execute("SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM event").fetchone()


def create(conn: apsw.Connection, machine: str, entity_id: str, *, max_retries: int = 0) -> None:
    """Insert an entity in its machine's initial state (tasks join workstream ``ws``)."""
    table, key = ENTITY[machine]
    with db.write_tx(conn):
        if machine == "task":
            # Not ON CONFLICT DO NOTHING: entity tables refuse every insert of an existing id.
            conn.execute(
                "INSERT INTO workstream (workstream_id) SELECT ? WHERE NOT EXISTS "
                "(SELECT 1 FROM workstream WHERE workstream_id = ?)",
                (WORKSTREAM, WORKSTREAM),
            )
            conn.execute(
                "INSERT INTO task (task_id, workstream_id, max_retries) VALUES (?, ?, ?)",
                (entity_id, WORKSTREAM, max_retries),
            )
        else:
            conn.execute(f"INSERT INTO {table} ({key}) VALUES (?)", (entity_id,))


def live_worker(conn: apsw.Connection, worker_id: str) -> str:
    """An idle worker (registered on first use)."""
    if conn.execute("SELECT 1 FROM worker WHERE worker_id = ?", (worker_id,)).fetchone() is None:
        create(conn, "worker", worker_id)
        with db.write_tx(conn):
            transition_in_tx(conn, "worker", worker_id, "idle", "registration_complete")
    return worker_id


def hand_on(conn: apsw.Connection, worker_id: str, worker_trigger: str) -> None:
    """Move the task running on a worker on, as the scheduler must before the worker may go idle
    (its task finished: running -> validating) or shut down (lost: running -> failed)."""
    found = conn.execute("SELECT task_id FROM task WHERE worker_id = ?", (worker_id,)).fetchone()
    if found is None:
        return
    to_state, trigger = (
        ("validating", "execution_completed")
        if worker_trigger == "task_completed"
        else ("failed", "worker_lost")
    )
    with db.write_tx(conn):
        transition_in_tx(conn, "task", found[0], to_state, trigger, worker_id=None)


def run_task_on(conn: apsw.Connection, worker_id: str) -> None:
    """Give a busy worker a running task, as the scheduler does when it assigns one."""
    task_id = f"task-on-{worker_id}"
    create(conn, "task", task_id)
    with db.write_tx(conn):
        transition_in_tx(conn, "task", task_id, "queued", "scheduler_assigned")
        transition_in_tx(conn, "task", task_id, "running", "worker_started", worker_id=worker_id)


def prepare(conn: apsw.Connection, machine: str, entity_id: str, t: TransitionDef) -> dict:
    """Satisfy the SQL guards of ``t``: set up what must exist first (in separate transactions)
    and return the columns a scheduler sets in the same UPDATE as the transition."""
    columns: dict[str, Any] = {}
    if machine == "task":
        if t.to_state == "running":
            columns["worker_id"] = live_worker(conn, f"w-{entity_id}")
        if t.from_state == "running":
            columns["worker_id"] = None
        if t.to_state == "retrying":
            columns["retry_count"] = ("sql", "retry_count + 1")
    elif machine == "worker" and t.to_state in ("idle", "shutdown"):
        hand_on(conn, entity_id, t.trigger)
    return columns


def step(conn: apsw.Connection, machine: str, entity_id: str, t: TransitionDef) -> None:
    """Apply one legal transition with its guards satisfied."""
    columns = prepare(conn, machine, entity_id, t)
    with db.write_tx(conn):
        transition_in_tx(conn, machine, entity_id, t.to_state, t.trigger, **columns)
    if machine == "worker" and t.to_state == "busy":
        run_task_on(conn, entity_id)


def reach(conn: apsw.Connection, machine: str, entity_id: str, state: str) -> None:
    """Create an entity and walk it to ``state`` along a legal path."""
    path = path_to(MACHINES[machine], state)
    create(conn, machine, entity_id, max_retries=retries_in(path) + 1)
    for t in path:
        step(conn, machine, entity_id, t)
    assert state_of(conn, machine, entity_id) == state


def expect_rejected(
    conn: apsw.Connection,
    machine: str,
    entity_id: str,
    to_state: str,
    trigger: str,
    match: str,
    **columns: Any,
) -> IllegalTransition:
    """Request a transition that must be refused with ``match`` in the message, and check that
    the entity kept its state and the log gained nothing."""
    before_state, before_log = state_of(conn, machine, entity_id), log_position(conn)
    with pytest.raises(IllegalTransition, match=re.escape(match)) as info, db.write_tx(conn):
        transition_in_tx(conn, machine, entity_id, to_state, trigger, **columns)
    assert state_of(conn, machine, entity_id) == before_state
    assert log_position(conn) == before_log
    assert conn.get_autocommit(), "the write transaction was not rolled back"
    return info.value


# --------------------------------------------------------------------------- the table itself


def test_database_transition_table_matches_the_yaml(fresh_db: apsw.Connection) -> None:
    """machine_transition holds exactly the YAML's transitions (the oracle of this file)."""
    assert stored_matches_yaml(fresh_db, MACHINES) == []
    assert ensure_machines(fresh_db) is False, "the template database is not in sync"
    count = fresh_db.execute("SELECT COUNT(*) FROM machine_transition").fetchone()[0]
    assert count == sum(len(m.transitions) for m in MACHINES.values())


@pytest.mark.parametrize("machine", list(MACHINES))
def test_every_state_is_reachable_from_the_initial_state(machine: str) -> None:
    """No state of a machine is dead: each has a legal path from the initial state."""
    m = MACHINES[machine]
    for state in m.state_names:
        path = path_to(m, state)
        assert [t.from_state for t in path[:1]] in ([], [m.initial_state])
        assert (path[-1].to_state if path else m.initial_state) == state


def test_state_sets_are_read_from_the_yaml() -> None:
    """The one home of each state set the kernel uses: what the YAML says, nothing restated."""
    task = MACHINES["task"]
    assert terminal_states("task") == tuple(s.name for s in task.states if s.terminal) == (
        "completed", "failed", "cancelled")
    assert states_allowing("task", "operator_skip") == ("pending",)
    assert states_allowing("task", "operator_reset", "pending") == ("cancelled", "failed")
    assert states_allowing("task", "workstream_failed", "cancelled") == ("queued", "retrying")
    # Claimed: the states a worker holds a task in, handed on when it is lost or interrupted.
    assert claimed_states() == ("running", "validating")
    assert claimed_states() == states_allowing("task", "operator_interrupted", "queued")
    assert states_allowing("task", "no_such_trigger") == ()


# --------------------------------------------------------------------------- legal transitions

LEGAL = [
    pytest.param(name, t, id=f"{name}:{t.from_state}->{t.to_state}:{t.trigger}")
    for name, m in MACHINES.items()
    for t in m.transitions
]


@pytest.mark.parametrize(("machine", "t"), LEGAL)
def test_legal_transition_is_accepted_with_exactly_one_event(
    fresh_db: apsw.Connection, machine: str, t: TransitionDef
) -> None:
    """Each YAML transition, requested from its from-state with its guards satisfied, is
    accepted and writes one event carrying the transition row's event, type and severity."""
    m = MACHINES[machine]
    entity_id = f"{machine}-under-test"
    path = path_to(m, t.from_state)
    create(fresh_db, machine, entity_id, max_retries=retries_in([*path, t]))
    for earlier in path:
        step(fresh_db, machine, entity_id, earlier)
    assert state_of(fresh_db, machine, entity_id) == t.from_state

    columns = prepare(fresh_db, machine, entity_id, t)
    last_seq, count = log_position(fresh_db)
    with db.write_tx(fresh_db):
        transition_in_tx(fresh_db, machine, entity_id, t.to_state, t.trigger, **columns)

    assert state_of(fresh_db, machine, entity_id) == t.to_state
    assert log_position(fresh_db) == (last_seq + 1, count + 1)
    event = db.row(fresh_db, "SELECT * FROM event WHERE seq = ?", (last_seq + 1,))
    assert event is not None
    row = db.row(
        fresh_db,
        "SELECT event, event_type, severity FROM machine_transition WHERE machine = ? "
        "AND from_state = ? AND to_state = ? AND trigger = ?",
        (machine, t.from_state, t.to_state, t.trigger),
    )
    assert row == {"event": t.event, "event_type": m.event_type(t), "severity": t.severity}
    assert {k: event[k] for k in row} == row
    assert (event["entity_type"], event["entity_id"]) == (machine, entity_id)
    assert (event["from_state"], event["to_state"], event["trigger"]) == (
        t.from_state, t.to_state, t.trigger,
    )
    expected_scope = {
        "task": (WORKSTREAM, entity_id),
        "workstream": (entity_id, None),
        "worker": (None, None),
    }[machine]
    assert (event["workstream_id"], event["task_id"]) == expected_scope
    assert TIMESTAMP.match(event["timestamp"]), event["timestamp"]
    assert isinstance(json.loads(event["metadata"]), dict)
    table, key = ENTITY[machine]
    at_rest = fresh_db.execute(
        f"SELECT transition_trigger, transition_metadata FROM {table} WHERE {key} = ?",
        (entity_id,),
    ).fetchone()
    assert at_rest == (None, None)


# --------------------------------------------------------------------------- illegal, 3 clients


def _illegal_cases() -> Iterator[Any]:
    """Every ordered pair of distinct states without a legal transition (tried with a trigger
    that leads into the target elsewhere), and every legal pair with a wrong trigger (one of the
    machine's other triggers, and one that exists nowhere)."""
    for name, m in MACHINES.items():
        for src in m.state_names:
            for dst in m.state_names:
                if src == dst:
                    continue
                allowed = m.allowed(src, dst)
                if allowed:
                    sibling = next(t for t in m.triggers if t not in allowed)
                    triggers = [sibling, "no_such_trigger"]
                else:
                    into = [t.trigger for t in m.transitions if t.to_state == dst]
                    triggers = [into[0] if into else m.triggers[0]]
                for trigger in triggers:
                    yield pytest.param(name, src, dst, trigger, id=f"{name}:{src}->{dst}:{trigger}")


ILLEGAL = list(_illegal_cases())


class Snapshot(NamedTuple):
    state: str
    transition_trigger: str | None
    transition_metadata: str | None
    max_seq: int
    events: int


def snapshot_sql(machine: str) -> str:
    table, key = ENTITY[machine]
    return (
        f"SELECT state, transition_trigger, transition_metadata, "
        f"(SELECT COALESCE(MAX(seq), 0) FROM event), (SELECT COUNT(*) FROM event) "
        f"FROM {table} WHERE {key} = ?"
    )


def update_sql(machine: str, entity_id: str, to_state: str, trigger: str) -> str:
    table, key = ENTITY[machine]
    return (
        f"UPDATE {table} SET state = '{to_state}', transition_trigger = '{trigger}' "
        f"WHERE {key} = '{entity_id}'"
    )


class ApswClient:
    """The kernel's own path: ``transition_in_tx()`` on an apsw connection."""

    def __init__(self, path: Path) -> None:
        self.conn = schema.connect(path)

    def snapshot(self, machine: str, entity_id: str) -> Snapshot:
        return Snapshot(*self.conn.execute(snapshot_sql(machine), (entity_id,)).fetchone())

    def reject(self, machine: str, entity_id: str, src: str, dst: str, trigger: str) -> None:
        with pytest.raises(IllegalTransition) as info, db.write_tx(self.conn):
            transition_in_tx(self.conn, machine, entity_id, dst, trigger)
        message = info.value.message
        assert message.startswith(f"illegal {machine} transition: {src} -> {dst}"), message
        assert repr(entity_id) in message and f"trigger {trigger}" in message, message
        assert self.conn.get_autocommit()

    def close(self) -> None:
        self.conn.close()


class Sqlite3ModuleClient:
    """Python's standard ``sqlite3`` module (the system SQLite, 3.40 here), autocommit."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def snapshot(self, machine: str, entity_id: str) -> Snapshot:
        return Snapshot(*self.conn.execute(snapshot_sql(machine), (entity_id,)).fetchone())

    def reject(self, machine: str, entity_id: str, src: str, dst: str, trigger: str) -> None:
        with pytest.raises(sqlite3.IntegrityError) as info:
            self.conn.execute(update_sql(machine, entity_id, dst, trigger))
        message = str(info.value)
        assert message.startswith(f"illegal {machine} transition: {src} -> {dst}"), message
        assert not self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


class Sqlite3ShellClient(Sqlite3ModuleClient):
    """The ``sqlite3`` command-line shell, one process per statement; its file is read back
    through the sqlite3 module (never while the shell runs a statement)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.path = path

    def reject(self, machine: str, entity_id: str, src: str, dst: str, trigger: str) -> None:
        assert SQLITE3_SHELL is not None
        proc = subprocess.run(
            [SQLITE3_SHELL, "-bail", str(self.path), update_sql(machine, entity_id, dst, trigger)],
            capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode != 0, proc
        assert f"illegal {machine} transition: {src} -> {dst}" in proc.stderr, proc.stderr


CLIENTS = {
    "apsw": ApswClient,
    "sqlite3-module": Sqlite3ModuleClient,
    "sqlite3-shell": Sqlite3ShellClient,
}


@pytest.fixture(scope="module")
def one_entity_per_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database (closed, WAL checkpointed) holding, for every machine and every state, the
    entity ``<machine>-<state>`` brought there by a legal path."""
    path = tmp_path_factory.mktemp("states") / "base.db"
    conn = schema.connect(path, create=True)
    for name, m in MACHINES.items():
        for state in m.state_names:
            reach(conn, name, f"{name}-{state}", state)
    conn.close()
    return path


@pytest.fixture(scope="module")
def clients(
    one_entity_per_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Each client on its own copy of the per-state database (apsw and sqlite3 never share a
    file in one process). Rejected updates change nothing, so the copies are reused."""
    opened: dict[str, Any] = {}
    directory = tmp_path_factory.mktemp("clients")
    for name, client in CLIENTS.items():
        if name == "sqlite3-shell" and SQLITE3_SHELL is None:
            continue
        copy = directory / f"{name}.db"
        shutil.copyfile(one_entity_per_state, copy)
        opened[name] = client(copy)
    yield opened
    for client in opened.values():
        client.close()


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize(("machine", "src", "dst", "trigger"), ILLEGAL)
def test_illegal_transition_is_rejected_by_every_client(
    clients: dict[str, Any], client: str, machine: str, src: str, dst: str, trigger: str
) -> None:
    """A (from, to, trigger) not in the YAML is refused whichever SQLite client asks, with a
    message naming the machine and both states; the entity and the event log are unchanged."""
    if client not in clients:
        pytest.skip(NO_SHELL)
    c = clients[client]
    entity_id = f"{machine}-{src}"
    before = c.snapshot(machine, entity_id)
    assert before.state == src
    assert before.transition_trigger is None
    c.reject(machine, entity_id, src, dst, trigger)
    assert c.snapshot(machine, entity_id) == before


def test_illegal_cases_cover_every_pair() -> None:
    """The parametrization above is complete: every distinct (from, to) pair appears, the
    legal ones only with wrong triggers."""
    for name, m in MACHINES.items():
        pairs = {(p.values[1], p.values[2]) for p in ILLEGAL if p.values[0] == name}
        n = len(m.state_names)
        assert len(pairs) == n * (n - 1)
        for p in ILLEGAL:
            if p.values[0] == name:
                assert p.values[3] not in m.allowed(p.values[1], p.values[2])


@pytest.mark.parametrize("machine", list(MACHINES))
def test_state_change_without_trigger_or_to_unknown_state_is_rejected(
    fresh_db: apsw.Connection, machine: str
) -> None:
    """A raw UPDATE of state without transition_trigger, or to a state the machine lacks, is
    refused with a message saying which."""
    m = MACHINES[machine]
    table, key = ENTITY[machine]
    create(fresh_db, machine, "x")
    first = m.transitions[0]
    before = log_position(fresh_db)
    with pytest.raises(apsw.ConstraintError, match="a state change needs a trigger"):
        fresh_db.execute(f"UPDATE {table} SET state = ? WHERE {key} = 'x'", (first.to_state,))
    with pytest.raises(apsw.ConstraintError, match=f"unknown {machine} state"):
        fresh_db.execute(
            f"UPDATE {table} SET state = 'bogus', transition_trigger = ? WHERE {key} = 'x'",
            (first.trigger,),
        )
    assert state_of(fresh_db, machine, "x") == m.initial_state
    assert log_position(fresh_db) == before


@pytest.mark.parametrize("machine", ["task", "workstream", "worker"])
def test_state_change_needs_a_trigger_in_the_same_update(
    fresh_db: apsw.Connection, machine: str
) -> None:
    """The trigger must come with the state change ("set transition_trigger in the same UPDATE"):
    a transition request without a state change is refused, so none can stay behind at rest and
    authorise a later bare UPDATE of state. (Found by this suite: it used to be left behind.)"""
    table, key = ENTITY[machine]
    m = MACHINES[machine]
    create(fresh_db, machine, "t")
    legal = next(t for t in m.transitions if t.from_state == m.initial_state)
    before = log_position(fresh_db)
    for column, value in (("transition_trigger", legal.trigger),
                          ("transition_metadata", '{"forged": 1}')):
        with pytest.raises(apsw.ConstraintError, match="set only in the UPDATE that changes state"):
            fresh_db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = 't'", (value,))
    with (
        pytest.raises(IllegalTransition, match="set only in the UPDATE that changes state"),
        db.write_tx(fresh_db),
    ):
        transition_in_tx(fresh_db, machine, "t", m.initial_state, legal.trigger, {"forged": 1})
    with pytest.raises(apsw.ConstraintError, match="a state change needs a trigger"):
        fresh_db.execute(f"UPDATE {table} SET state = ? WHERE {key} = 't'", (legal.to_state,))
    assert state_of(fresh_db, machine, "t") == m.initial_state
    assert log_position(fresh_db) == before


# --------------------------------------------------------------------------- SQL guards


def queue(conn: apsw.Connection, task_id: str) -> None:
    with db.write_tx(conn):
        transition_in_tx(conn, "task", task_id, "queued", "scheduler_assigned")


def start(conn: apsw.Connection, task_id: str, worker_id: str) -> None:
    with db.write_tx(conn):
        transition_in_tx(conn, "task", task_id, "running", "worker_started", worker_id=worker_id)


def retry(conn: apsw.Connection, task_id: str) -> None:
    """running -> retrying (counted) -> queued."""
    with db.write_tx(conn):
        transition_in_tx(
            conn, "task", task_id, "retrying", "execution_failed",
            worker_id=None, retry_count=("sql", "retry_count + 1"),
        )
        transition_in_tx(conn, "task", task_id, "queued", "retry_delay_elapsed")


def test_queue_waits_for_every_dependency(db_with_workstream: apsw.Connection) -> None:
    """pending -> queued is refused while a dependency is not completed, accepted after."""
    conn = db_with_workstream
    expect_rejected(conn, "task", "b", "queued", "scheduler_assigned", "dependencies are completed")
    queue(conn, "a")  # a is queued, still not completed
    expect_rejected(conn, "task", "b", "queued", "scheduler_assigned", "dependencies are completed")
    start(conn, "a", "w1")
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "validating", "execution_completed", worker_id=None)
    expect_rejected(conn, "task", "b", "queued", "scheduler_assigned", "dependencies are completed")
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "completed", "validation_passed")
    queue(conn, "b")
    assert state_of(conn, "task", "b") == "queued"


def test_operator_skip_unblocks_dependents(db_with_workstream: apsw.Connection) -> None:
    """A dependency completed by operator_skip counts as completed for its dependents."""
    conn = db_with_workstream
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "completed", "operator_skip")
    queue(conn, "b")
    assert state_of(conn, "task", "b") == "queued"


def test_running_needs_a_worker_in_the_same_update(db_with_workstream: apsw.Connection) -> None:
    """queued -> running without worker_id is refused."""
    queue(db_with_workstream, "a")
    expect_rejected(db_with_workstream, "task", "a", "running", "worker_started", "live")


def test_running_iff_worker_check(db_with_workstream: apsw.Connection) -> None:
    """CHECK running_iff_worker: a worker_id on a task that is not running is refused, and a
    task cannot leave running while keeping its worker_id."""
    conn = db_with_workstream
    queue(conn, "a")
    with pytest.raises(apsw.ConstraintError, match="running_iff_worker"):
        conn.execute("UPDATE task SET worker_id = 'w1' WHERE task_id = 'a'")
    start(conn, "a", "w1")
    expect_rejected(conn, "task", "a", "validating", "execution_completed", "running_iff_worker")
    with pytest.raises(apsw.ConstraintError, match="running_iff_worker"):
        conn.execute("UPDATE task SET worker_id = NULL WHERE task_id = 'a'")
    assert conn.execute("SELECT state, worker_id FROM task WHERE task_id = 'a'").fetchone() == (
        "running", "w1",
    )


@pytest.mark.parametrize("worker_state", ["initializing", "unresponsive", "shutdown", "missing"])
def test_running_needs_a_live_worker(
    db_with_workstream: apsw.Connection, worker_state: str
) -> None:
    """A task cannot start on a worker that is initializing, unresponsive, shut down or absent."""
    conn = db_with_workstream
    if worker_state != "missing":
        reach(conn, "worker", "w3", worker_state)
    queue(conn, "a")
    expect_rejected(conn, "task", "a", "running", "worker_started", "live", worker_id="w3")


def test_one_running_task_per_worker(db_with_workstream: apsw.Connection) -> None:
    """A second task cannot start on a worker that already runs one (unique index); it can on
    another worker."""
    conn = db_with_workstream
    create(conn, "task", "d")
    queue(conn, "a")
    queue(conn, "d")
    start(conn, "a", "w1")
    expect_rejected(conn, "task", "d", "running", "worker_started", "UNIQUE", worker_id="w1")
    start(conn, "d", "w2")
    assert state_of(conn, "task", "d") == "running"


def test_entering_retrying_counts_exactly_one_retry(db_with_workstream: apsw.Connection) -> None:
    """running -> retrying without retry_count + 1 (or with + 2) is refused."""
    conn = db_with_workstream
    queue(conn, "a")
    start(conn, "a", "w1")
    for columns in ({}, {"retry_count": ("sql", "retry_count + 2")}):
        expect_rejected(
            conn, "task", "a", "retrying", "execution_failed", "counts a retry",
            worker_id=None, **columns,
        )
    retry(conn, "a")
    assert conn.execute("SELECT retry_count FROM task WHERE task_id = 'a'").fetchone()[0] == 1


def test_retrying_beyond_max_retries_is_rejected(db_with_workstream: apsw.Connection) -> None:
    """Task a (max_retries 2) retries twice; a third retry is refused and it fails instead."""
    conn = db_with_workstream
    queue(conn, "a")
    for _ in range(2):
        start(conn, "a", "w1")
        retry(conn, "a")
    start(conn, "a", "w1")
    for trigger in ("execution_failed", "task_timeout", "worker_lost"):
        expect_rejected(
            conn, "task", "a", "retrying", trigger, "retry_count_within_max_retries",
            worker_id=None, retry_count=("sql", "retry_count + 1"),
        )
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "failed", "execution_failed", worker_id=None)
    assert conn.execute("SELECT state, retry_count FROM task WHERE task_id = 'a'").fetchone() == (
        "failed", 2,
    )


def test_retry_count_never_decreases(db_with_workstream: apsw.Connection) -> None:
    """retry_count cannot go down: not by a plain UPDATE, not with an operator reset."""
    conn = db_with_workstream
    queue(conn, "a")
    start(conn, "a", "w1")
    retry(conn, "a")
    with pytest.raises(apsw.ConstraintError, match="retry_count never decreases"):
        conn.execute("UPDATE task SET retry_count = 0 WHERE task_id = 'a'")
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "cancelled", "user_cancelled")
    expect_rejected(
        conn, "task", "a", "pending", "operator_reset", "never decreases", retry_count=0
    )
    assert conn.execute("SELECT retry_count FROM task WHERE task_id = 'a'").fetchone()[0] == 1


def test_worker_with_a_running_task_cannot_go_idle_or_shut_down(
    db_with_workstream: apsw.Connection,
) -> None:
    """While a task runs on it a worker may become unresponsive but neither idle nor shut down;
    once the task is handed on (worker_lost) it may shut down."""
    conn = db_with_workstream
    queue(conn, "a")
    start(conn, "a", "w1")
    with db.write_tx(conn):
        transition_in_tx(conn, "worker", "w1", "busy", "task_assigned")
    for to_state, trigger in (
        ("idle", "task_completed"), ("shutdown", "shutdown_requested"),
        ("shutdown", "worker_crashed"),
    ):
        expect_rejected(conn, "worker", "w1", to_state, trigger, "still has a running task")
    with db.write_tx(conn):
        transition_in_tx(conn, "worker", "w1", "unresponsive", "health_check_timeout")
    expect_rejected(conn, "worker", "w1", "idle", "health_check_recovered", "running task")
    expect_rejected(conn, "worker", "w1", "shutdown", "max_timeout_exceeded", "running task")
    with db.write_tx(conn):
        transition_in_tx(
            conn, "task", "a", "retrying", "worker_lost",
            worker_id=None, retry_count=("sql", "retry_count + 1"),
        )
        transition_in_tx(conn, "worker", "w1", "shutdown", "max_timeout_exceeded")
    assert (state_of(conn, "task", "a"), state_of(conn, "worker", "w1")) == ("retrying", "shutdown")


NON_INITIAL = [
    pytest.param(name, state, id=f"{name}:{state}")
    for name, m in MACHINES.items()
    for state in m.state_names
    if state != m.initial_state
]


@pytest.mark.parametrize(("machine", "state"), NON_INITIAL)
def test_insert_must_start_in_the_initial_state(
    fresh_db: apsw.Connection, machine: str, state: str
) -> None:
    """An entity inserted in any state but its machine's initial one is refused, unlogged."""
    table, key = ENTITY[machine]
    create(fresh_db, "workstream", "home")
    before = log_position(fresh_db)
    values = {key: "new", "state": state}
    if machine == "task":
        values["workstream_id"] = "home"
    insert = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
    with pytest.raises(apsw.ConstraintError, match="must start in the"):
        fresh_db.execute(insert, list(values.values()))
    assert fresh_db.execute(f"SELECT COUNT(*) FROM {table} WHERE {key} = 'new'").fetchone() == (0,)
    assert log_position(fresh_db) == before


OPERATOR = [
    pytest.param("failed", "pending", "operator_reset", id="failed->pending:operator_reset"),
    pytest.param("cancelled", "pending", "operator_reset", id="cancelled->pending:operator_reset"),
    pytest.param("pending", "completed", "operator_skip", id="pending->completed:operator_skip"),
]


@pytest.mark.parametrize(("src", "dst", "trigger"), OPERATOR)
def test_operator_transitions_are_accepted_as_warnings(
    fresh_db: apsw.Connection, src: str, dst: str, trigger: str
) -> None:
    """The documented operator overrides are accepted and logged with severity warning."""
    reach(fresh_db, "task", "t", src)
    last_seq, _ = log_position(fresh_db)
    with db.write_tx(fresh_db):
        transition_in_tx(fresh_db, "task", "t", dst, trigger)
    event = db.row(fresh_db, "SELECT * FROM event WHERE seq > ?", (last_seq,))
    assert event is not None
    assert (event["from_state"], event["to_state"], event["trigger"]) == (src, dst, trigger)
    assert event["severity"] == "warning"
    override = fresh_db.execute(
        "SELECT operator_override FROM machine_transition WHERE machine = 'task' "
        "AND from_state = ? AND to_state = ? AND trigger = ?",
        (src, dst, trigger),
    ).fetchone()
    assert override == (1,)


TERMINAL = [
    pytest.param(name, s.name, id=f"{name}:{s.name}")
    for name, m in MACHINES.items()
    for s in m.states
    if s.terminal
]


@pytest.mark.parametrize(("machine", "terminal"), TERMINAL)
def test_nothing_leaves_a_terminal_state_but_operator_overrides(
    fresh_db: apsw.Connection, machine: str, terminal: str
) -> None:
    """From a terminal state every (to, trigger) is refused except the YAML's operator
    overrides; in particular nothing at all leaves task completed."""
    m = MACHINES[machine]
    reach(fresh_db, machine, "t", terminal)
    overrides = {(t.to_state, t.trigger) for t in m.transitions if t.from_state == terminal}
    assert all(t.operator_override for t in m.transitions if t.from_state == terminal)
    if (machine, terminal) == ("task", "completed"):
        assert overrides == set()
    for to_state in m.state_names:
        for trigger in m.triggers:
            if to_state != terminal and (to_state, trigger) not in overrides:
                expect_rejected(fresh_db, machine, "t", to_state, trigger, f"{terminal} -> ")


def test_insert_or_replace_cannot_silently_leave_completed(
    fresh_db: apsw.Connection, tmp_path: Path
) -> None:
    """From another client (recursive_triggers off), INSERT OR REPLACE of a completed task's id is
    refused: it would delete the row unlogged and bring the task back as pending. (Found by this
    suite.)"""
    reach(fresh_db, "task", "t", "completed")
    fresh_db.close()  # never both libraries on one file in one process
    other = sqlite3.connect(tmp_path / "kernel.db", isolation_level=None)
    try:
        before = other.execute("SELECT MAX(seq) FROM event").fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError, match="would erase its history"):
            other.execute("INSERT OR REPLACE INTO task (task_id, workstream_id) VALUES ('t', 'ws')")
        state = other.execute("SELECT state FROM task WHERE task_id = 't'").fetchone()[0]
        after = other.execute("SELECT MAX(seq) FROM event").fetchone()[0]
    finally:
        other.close()
    assert state == "completed"
    assert after == before


# --------------------------------------------------------------------------- the event log


def test_event_log_is_append_only_for_apsw(db_with_workstream: apsw.Connection) -> None:
    """UPDATE and DELETE on event fail on the kernel's own connection."""
    conn = db_with_workstream
    before = db.rows(conn, "SELECT * FROM event ORDER BY seq")
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        conn.execute("UPDATE event SET severity = 'critical' WHERE seq = 1")
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        conn.execute("DELETE FROM event WHERE seq = 1")
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        conn.execute("DELETE FROM event")
    assert db.rows(conn, "SELECT * FROM event ORDER BY seq") == before


def test_event_log_is_append_only_for_sqlite3_module(
    fresh_db: apsw.Connection, tmp_path: Path
) -> None:
    """UPDATE and DELETE on event fail through Python's sqlite3 module too."""
    create(fresh_db, "worker", "w")
    fresh_db.close()  # never both libraries on one file in one process
    other = sqlite3.connect(tmp_path / "kernel.db", isolation_level=None)
    try:
        before = other.execute("SELECT * FROM event ORDER BY seq").fetchall()
        assert before
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            other.execute("UPDATE event SET event = 'forged'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            other.execute("DELETE FROM event")
        assert other.execute("SELECT * FROM event ORDER BY seq").fetchall() == before
    finally:
        other.close()


def test_explicit_seq_must_be_the_next_one(fresh_db: apsw.Connection) -> None:
    """An INSERT that skips seq numbers fails; the next number itself is accepted."""
    create(fresh_db, "worker", "w")
    last, _ = log_position(fresh_db)
    insert = (
        "INSERT INTO event (seq, timestamp, event, event_type, severity, entity_type) "
        "VALUES (?, '2026-01-01T00:00:00.000Z', 'note', 'note', 'info', 'system')"
    )
    for ahead in (last + 2, last + 100):
        with pytest.raises(apsw.ConstraintError, match="gapless"):
            fresh_db.execute(insert, (ahead,))
    assert log_position(fresh_db) == (last, last)
    fresh_db.execute(insert, (last + 1,))
    fresh_db.execute(insert.replace("seq, ", "").replace("?, ", ""))
    assert log_position(fresh_db) == (last + 2, last + 2)


def test_seq_is_gapless_after_transitions_and_rejections(
    db_with_workstream: apsw.Connection,
) -> None:
    """After a mix of accepted and rejected transitions seq runs 1..N; a rejection uses no
    number (the next accepted event takes the next one)."""
    conn = db_with_workstream
    queue(conn, "a")
    last, _ = log_position(conn)
    expect_rejected(conn, "task", "b", "queued", "scheduler_assigned", "dependencies")
    expect_rejected(conn, "task", "a", "completed", "validation_passed", "queued -> completed")
    start(conn, "a", "w1")
    assert log_position(conn)[0] == last + 1
    retry(conn, "a")
    seqs = [r[0] for r in conn.execute("SELECT seq FROM event ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_transition_metadata_sets_timestamp_caused_by_and_metadata(
    db_with_workstream: apsw.Connection,
) -> None:
    """transition_metadata's "at" and "caused_by" become the event's timestamp and caused_by;
    the other keys land in the event's metadata; the column is NULL again afterwards."""
    conn = db_with_workstream
    at = "2099-03-04T05:06:07.890Z"   # later than every event so far: kept as given
    meta = {"at": at, "caused_by": 2, "reason": "manual", "attempt": 7}
    last, _ = log_position(conn)
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "queued", "scheduler_assigned", metadata=meta)
    event = db.row(conn, "SELECT * FROM event WHERE seq = ?", (last + 1,))
    assert event is not None
    assert (event["timestamp"], event["caused_by"]) == (at, 2)
    metadata = json.loads(event["metadata"])
    assert metadata["reason"] == "manual" and metadata["attempt"] == 7
    assert "at" not in metadata and "caused_by" not in metadata
    assert {"worker_id", "retry_count"} <= metadata.keys()
    assert conn.execute(
        "SELECT transition_trigger, transition_metadata, updated_at FROM task WHERE task_id = 'a'"
    ).fetchone() == (None, None, at)


def test_event_time_never_runs_backwards_against_seq(db_with_workstream: apsw.Connection
                                                     ) -> None:
    """A caller that read its clock before it had the write lock asks for an earlier time than
    the event before it: the event is stamped with the previous event's time instead, so
    timestamp order is seq order (trigger-written and catalog events alike)."""
    from kernel.store import events

    conn = db_with_workstream
    with db.write_tx(conn):
        transition_in_tx(conn, "task", "a", "queued", "scheduler_assigned",
                         metadata={"at": "2099-01-01T00:00:00.000Z"})
        transition_in_tx(conn, "task", "a", "cancelled", "user_cancelled",
                         metadata={"at": "2001-01-01T00:00:00.000Z"})
        events.emit_event_in_tx(conn, "task_unrunnable", entity_id="b", task_id="b",
                          at="2001-01-01T00:00:00.000Z", metadata={"reason": "test"})
    stamps = [r[0] for r in conn.execute("SELECT timestamp FROM event ORDER BY seq")]
    assert stamps == sorted(stamps)
    assert stamps[-3:] == ["2099-01-01T00:00:00.000Z"] * 3
