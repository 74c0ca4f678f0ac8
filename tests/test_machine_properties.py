"""A hypothesis stateful test: random transition requests against a real kernel database.

The Python model below knows the YAML transition table and the SQL guards (dependencies
completed before queued, a live and free worker for running, running <=> worker_id, retries
counted and bounded, retry_count monotonic, a worker keeps its running task until it is handed
on, created_at <= started_at <= completed_at). Every request, legal or not, is sent through
``kernel.store.machines.transition_in_tx`` and the database must decide exactly as the model
predicts; the invariants are checked against the database after every step.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kernel.base.errors import IllegalTransition
from kernel.store import db, schema
from kernel.store.machines import ENTITY, TransitionDef, load_machines, transition_in_tx

MACHINES = load_machines()
LEGAL = {
    name: {(t.from_state, t.to_state, t.trigger) for t in m.transitions}
    for name, m in MACHINES.items()
}
TASKS = ("t0", "t1", "t2", "t3", "t4")
WORKERS = ("w0", "w1", "w2")
WORKSTREAM = "ws"
LIVE = ("idle", "busy")
TERMINAL = {"completed", "failed", "cancelled"}
OMIT = object()  # a column left out of the UPDATE
T = TypeVar("T")


@functools.cache
def migrated_template() -> Path:
    """One freshly migrated database, shared by all examples (each works on a copy)."""
    directory = Path(tempfile.mkdtemp(prefix="orch-sm-template-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    schema.connect(directory / "kernel.db", create=True).close()
    return directory / "kernel.db"


def detour(t: TransitionDef) -> bool:
    """Operator overrides, cancellations and shutdowns: rows a scheduler takes rarely."""
    return t.operator_override or t.to_state in ("cancelled", "shutdown")


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def timestamps_ordered(created: str, started: str | None, completed: str | None) -> bool:
    """The task_timestamps_ordered CHECK, in Python."""
    return (started is None or started >= created) and (
        completed is None or completed >= (started or created)
    )


class TransitionMachine(RuleBasedStateMachine):
    """Random transition requests (mostly illegal) and scheduler-like legal steps."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="orch-sm-"))
        shutil.copyfile(migrated_template(), self.directory / "kernel.db")
        # The copy's machine tables are in sync with the YAML: skip re-reading it.
        self.conn = db.open_connection(self.directory / "kernel.db")
        self.state: dict[tuple[str, str], str] = {}
        self.deps: dict[str, tuple[str, ...]] = {}
        self.max_retries: dict[str, int] = {}
        self.retry_count: dict[str, int] = {}
        self.worker_of: dict[str, str | None] = {}
        self.times: dict[str, dict[str, str | None]] = {}
        self.clock = ""
        self.created = 0
        self.accepted = 0
        self.seen_retry_count: dict[str, int] = {}
        self.turn = 0  # see pick()

    def teardown(self) -> None:
        self.conn.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # ----------------------------------------------------------------------- set-up

    @initialize(
        edges=st.sets(st.tuples(st.sampled_from(TASKS), st.sampled_from(TASKS)), max_size=6),
        max_retries=st.lists(
            st.sampled_from([1, 2, 0]), min_size=len(TASKS), max_size=len(TASKS)
        ),
    )
    def create_entities(self, edges: set[tuple[str, str]], max_retries: list[int]) -> None:
        """One workstream, the workers, and the tasks with a random DAG (an edge always points
        from a later task to an earlier one, so it cannot form a cycle)."""
        deps = {t: tuple(sorted(d for a, d in edges if a == t and d < t)) for t in TASKS}
        with db.write_tx(self.conn):
            self.conn.execute("INSERT INTO workstream (workstream_id) VALUES (?)", (WORKSTREAM,))
            for worker in WORKERS:
                self.conn.execute("INSERT INTO worker (worker_id) VALUES (?)", (worker,))
            for task, retries in zip(TASKS, max_retries, strict=True):
                self.conn.execute(
                    "INSERT INTO task (task_id, workstream_id, max_retries) VALUES (?, ?, ?)",
                    (task, WORKSTREAM, retries),
                )
                self.max_retries[task] = retries
            for task, needs in deps.items():
                for dep in needs:
                    self.conn.execute("INSERT INTO task_dependency VALUES (?, ?)", (task, dep))
        self.deps = deps
        self.state = {("workstream", WORKSTREAM): "planned"}
        self.state |= {("worker", w): "initializing" for w in WORKERS}
        self.state |= {("task", t): "pending" for t in TASKS}
        self.created = len(self.state)
        for task in TASKS:
            self.retry_count[task] = self.seen_retry_count[task] = 0
            self.worker_of[task] = None
            created = self.conn.execute(
                "SELECT created_at FROM task WHERE task_id = ?", (task,)
            ).fetchone()[0]
            self.times[task] = {"created_at": created, "started_at": None, "completed_at": None}
            self.clock = max(self.clock, created)
        for worker in WORKERS[:-1]:  # the last one is left to register (or not) by the rules
            self.request("worker", worker, "idle", "registration_complete", {})

    # ----------------------------------------------------------------------- the model

    def now(self) -> str:
        """A wall-clock timestamp that never goes backwards within the run."""
        self.clock = max(self.clock, stamp(datetime.now(UTC)))
        return self.clock

    def running_on(self, worker: str) -> list[str]:
        return [t for t, w in self.worker_of.items() if w == worker]

    def rejection(self, machine: str, entity: str, to: str, trigger: str, cols: dict) -> str | None:
        """Why the kernel must refuse this request, or None when it must accept it."""
        frm = self.state[(machine, entity)]
        if (frm, to, trigger) not in LEGAL[machine]:
            return "not in the transition table"
        if machine == "worker":
            if to in ("idle", "shutdown") and self.running_on(entity):
                return "the worker still runs a task"
            return None
        if machine == "workstream":
            return None
        worker = cols.get("worker_id", self.worker_of[entity])
        count = cols.get("retry_count", self.retry_count[entity])
        times = {k: cols.get(k, v) for k, v in self.times[entity].items()}
        deps_done = all(self.state[("task", d)] == "completed" for d in self.deps[entity])
        if to == "queued" and not deps_done:
            return "a dependency is not completed"
        if to == "running" and (worker is None or self.state[("worker", worker)] not in LIVE):
            return "no live worker"
        if to == "retrying" and count != self.retry_count[entity] + 1:
            return "the retry is not counted"
        if count < self.retry_count[entity]:
            return "retry_count decreases"
        if (to == "running") != (worker is not None):
            return "running_iff_worker"
        if count > self.max_retries[entity]:
            return "retry_count above max_retries"
        if worker is not None and any(t != entity for t in self.running_on(worker)):
            return "the worker already runs a task"
        if not timestamps_ordered(times["created_at"], times["started_at"], times["completed_at"]):
            return "timestamps out of order"
        return None

    def pick(self, data: st.DataObject, rows: list[T], weights: list[int] | None = None) -> T:
        """One of ``rows`` (weighted). In long stateful runs hypothesis mostly draws the first
        element (running -> validating; a retry or a failure hardly ever), so the drawn index is
        offset by a turn counter and a run of "simplest" draws cycles through the rows. It all
        stays deterministic, so failures replay and shrink."""
        pool = [
            row for row, weight in zip(rows, weights or [1] * len(rows), strict=True)
            for _ in range(weight)
        ]
        index = data.draw(st.integers(0, len(pool) - 1), label="row")
        self.turn += 1
        return pool[(index + self.turn) % len(pool)]

    def task_columns(self, data: st.DataObject, task: str, to: str, mode: str) -> dict:
        """The columns set with a task transition. ``scheduler``: what a correct scheduler sets
        (a worker to run on, the counted retry, the timestamps); ``sloppy``: the same with one
        mistake (a column forgotten or wrong); ``noise``: arbitrary worker and retry_count."""
        frm = self.state[("task", task)]
        count = self.retry_count[task]
        if mode == "noise":
            raw = {
                "worker_id": data.draw(st.sampled_from([OMIT, None, *WORKERS]), label="worker"),
                "retry_count": data.draw(
                    st.sampled_from([OMIT, count + 1, count - 1]), label="retry_count"
                ),
            }
            return {k: v for k, v in raw.items() if v is not OMIT}
        cols: dict[str, Any] = {}
        if to == "running":
            # Mostly a live, free worker as the scheduler picks, sometimes any worker.
            free = [
                w for w in WORKERS if self.state[("worker", w)] in LIVE and not self.running_on(w)
            ]
            cols["worker_id"] = data.draw(st.sampled_from(free + list(WORKERS)), label="worker")
            cols["started_at"] = self.now()
        elif frm == "running":
            cols["worker_id"] = None
        if to == "retrying":
            cols["retry_count"] = count + 1
        if to in TERMINAL:
            cols["completed_at"] = self.now()
        if to == "pending":
            cols["started_at"] = cols["completed_at"] = None
        if mode == "sloppy":
            # One mistake in a column this transition needs (or a decreasing retry_count).
            mistakes: dict[str, list[tuple[str, Any]]] = {}
            if to == "retrying":
                mistakes["retry"] = [("retry_count", OMIT), ("retry_count", count + 2)]
            if "worker_id" in cols:
                mistakes["worker"] = [("worker_id", w) for w in (OMIT, None, *WORKERS)]
            if "completed_at" in cols or "started_at" in cols:
                mistakes["time"] = [("completed_at", "2000-01-01T00:00:00.000Z")]
            if count > 0 or not mistakes:
                mistakes["decrease"] = [("retry_count", count - 1)]
            kind = data.draw(st.sampled_from(sorted(mistakes)), label="mistake")
            column, value = data.draw(st.sampled_from(mistakes[kind]), label=kind)
            cols.pop(column, None)
            if value is not OMIT:
                cols[column] = value
        return cols

    def request(self, machine: str, entity: str, to: str, trigger: str, cols: dict) -> None:
        """Send the request, check the kernel decided as the model predicts, follow it."""
        expected = self.rejection(machine, entity, to, trigger, cols)
        before_state = self.state[(machine, entity)]
        before_log = self.conn.execute("SELECT MAX(seq), COUNT(*) FROM event").fetchone()
        try:
            with db.write_tx(self.conn):
                transition_in_tx(self.conn, machine, entity, to, trigger, **cols)
        except IllegalTransition as exc:
            assert expected is not None, (
                f"legal request refused: {machine} {entity} {before_state} -> {to} "
                f"({trigger}) {cols}: {exc.message}"
            )
            table, key = ENTITY[machine]
            now_state = self.conn.execute(
                f"SELECT state FROM {table} WHERE {key} = ?", (entity,)
            ).fetchone()[0]
            assert now_state == before_state
            after_log = self.conn.execute("SELECT MAX(seq), COUNT(*) FROM event").fetchone()
            assert after_log == before_log
            return
        assert expected is None, (
            f"request accepted although {expected}: {machine} {entity} {before_state} -> {to} "
            f"({trigger}) {cols}"
        )
        assert (before_state, to, trigger) in LEGAL[machine]
        self.accepted += 1
        self.state[(machine, entity)] = to
        if machine == "task":
            self.worker_of[entity] = cols.get("worker_id", self.worker_of[entity])
            self.retry_count[entity] = cols.get("retry_count", self.retry_count[entity])
            for key in self.times[entity]:
                self.times[entity][key] = cols.get(key, self.times[entity][key])
        last = self.conn.execute(
            "SELECT entity_type, entity_id, from_state, to_state, trigger FROM event "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        assert last == (machine, entity, before_state, to, trigger)

    # ----------------------------------------------------------------------- rules

    @rule(data=st.data())
    def random_request(self, data: st.DataObject) -> None:
        """Any entity, any other state of its machine, any trigger of its machine. (The current
        state is left out: an UPDATE that keeps the state is no transition; no trigger fires.)"""
        machine, entity = self.pick(data, sorted(self.state))
        m = MACHINES[machine]
        here = self.state[(machine, entity)]
        to = self.pick(data, [s for s in m.state_names if s != here])
        trigger = self.pick(data, m.triggers)
        cols: dict = {}
        if machine == "task":
            mode = data.draw(st.sampled_from(["scheduler", "noise"]), label="mode")
            cols = self.task_columns(data, entity, to, mode)
        self.request(machine, entity, to, trigger, cols)

    @rule(data=st.data())
    def legal_request(self, data: st.DataObject) -> None:
        """A transition the table allows from the entity's state, with scheduler columns (its
        SQL guards may still refuse it: a dependency, a dead or busy worker, max_retries)."""
        self.legal_step(data, ("task", "worker", "workstream"))

    @rule(data=st.data())
    def advance_task(self, data: st.DataObject) -> None:
        """The same, for tasks only: it drives tasks deep into their lifecycle."""
        self.legal_step(data, ("task",))

    @rule(data=st.data())
    def sloppy_task(self, data: st.DataObject) -> None:
        """A legal row of a queued or running task requested with one mistake in its columns."""
        self.legal_step(data, ("task",), mode="sloppy", states=frozenset({"queued", "running"}))

    @precondition(lambda self: any(w is not None for w in self.worker_of.values()))
    @rule(data=st.data())
    def end_attempt(self, data: st.DataObject) -> None:
        """A running task's attempt ends (validating, retrying, failed or cancelled), requested
        correctly or with one mistake: the guards on leaving running get exercised."""
        running = sorted(t for t, w in self.worker_of.items() if w is not None)
        task = data.draw(st.sampled_from(running), label="task")
        exits = [t for t in MACHINES["task"].transitions if t.from_state == "running"]
        t = self.pick(data, exits)
        mode = data.draw(st.sampled_from(["scheduler", "sloppy"]), label="mode")
        cols = self.task_columns(data, task, t.to_state, mode)
        self.request("task", task, t.to_state, t.trigger, cols)

    @precondition(lambda self: any(w is not None for w in self.worker_of.values()))
    @rule(data=st.data())
    def worker_with_task_moves(self, data: st.DataObject) -> None:
        """A worker running a task takes one of its legal exits: only unresponsive may be
        accepted (idle and shutdown wait until the task is handed on)."""
        worker = data.draw(
            st.sampled_from(sorted({w for w in self.worker_of.values() if w is not None})),
            label="worker",
        )
        here = self.state[("worker", worker)]
        exits = [t for t in MACHINES["worker"].transitions if t.from_state == here]
        if exits:
            t = self.pick(data, exits)
            self.request("worker", worker, t.to_state, t.trigger, {})

    def legal_step(
        self,
        data: st.DataObject,
        machines: tuple[str, ...],
        mode: str = "scheduler",
        states: frozenset[str] | None = None,
    ) -> None:
        """One legal table row from some entity's current state (machine first, then entity,
        then the row, forward rows three times as likely as detours)."""
        options = {
            entity: [t for t in MACHINES[entity[0]].transitions if t.from_state == here]
            for entity, here in sorted(self.state.items())
            if entity[0] in machines and (states is None or here in states)
        }
        movable = [entity for entity, rows in options.items() if rows]
        if not movable:
            return
        machine = data.draw(st.sampled_from(sorted({e[0] for e in movable})), label="machine")
        entity = data.draw(st.sampled_from([e[1] for e in movable if e[0] == machine]))
        rows = options[(machine, entity)]
        t = self.pick(data, rows, [1 if detour(t) else 3 for t in rows])
        cols = self.task_columns(data, entity, t.to_state, mode) if machine == "task" else {}
        self.request(machine, entity, t.to_state, t.trigger, cols)

    # ----------------------------------------------------------------------- invariants

    @invariant()
    def states_match_the_model(self) -> None:
        for machine in MACHINES:
            table, key = ENTITY[machine]
            for entity, state, trig, meta in self.conn.execute(
                f"SELECT {key}, state, transition_trigger, transition_metadata FROM {table}"
            ):
                assert self.state[(machine, entity)] == state
                assert (trig, meta) == (None, None), "transition columns not cleared at rest"

    @invariant()
    def task_invariants(self) -> None:
        if not self.max_retries:
            return
        rows = db.rows(self.conn, "SELECT * FROM task")
        running_workers = [r["worker_id"] for r in rows if r["worker_id"] is not None]
        assert len(running_workers) == len(set(running_workers)), "a worker runs two tasks"
        for r in rows:
            task = r["task_id"]
            assert (r["state"] == "running") == (r["worker_id"] is not None)
            assert r["worker_id"] == self.worker_of[task]
            assert 0 <= r["retry_count"] <= r["max_retries"]
            assert r["retry_count"] == self.retry_count[task]
            assert r["retry_count"] >= self.seen_retry_count[task], "retry_count decreased"
            self.seen_retry_count[task] = r["retry_count"]
            assert timestamps_ordered(r["created_at"], r["started_at"], r["completed_at"])
            if r["state"] in ("queued", "running", "validating"):
                assert all(self.state[("task", d)] == "completed" for d in self.deps[task]), (
                    f"{task} is {r['state']} before its dependencies completed"
                )

    @invariant()
    def event_log_invariants(self) -> None:
        events = self.conn.execute(
            "SELECT seq, timestamp, entity_type, entity_id, to_state FROM event ORDER BY seq"
        ).fetchall()
        assert len(events) == self.created + self.accepted
        assert [e[0] for e in events] == list(range(1, len(events) + 1)), "seq has gaps"
        stamps = [e[1] for e in events]
        assert stamps == sorted(stamps), "event timestamps go backwards"
        last_to_state = {(e[2], e[3]): e[4] for e in events}
        for entity, state in self.state.items():
            assert last_to_state[entity] == state


TransitionMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # No explain phase: on a failure it replays the shrunk run ~2000 times (minutes here).
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestTransitionMachine = TransitionMachine.TestCase
