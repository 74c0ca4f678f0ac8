"""ERR-FM-001..003: the failure-mode catalog as data (docs/failure_modes/failure_modes.yaml), the
pages generated from it, ``orch failure-modes``, and the four modes that used to be silent now
each logged as an event: Dependency-Cycle (``orch load``), State-Corruption (``orch doctor``),
Database-Locked (the busy timeout, recorded by the next writer). Context-Overflow is covered
where agents run: tests/test_agents_generic.py::test_over_budget_fails_before_the_agent_starts
and tests/test_agents_aider.py check its ``context_overflow`` event with required_tokens and
max_tokens; here, that the event is the mode's."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import apsw
import pytest

from kernel.maintain.doctor import doctor_report
from kernel.observe.failure_modes import (
    CATEGORY_SECTIONS,
    REQUIRED_FIELDS,
    failure_mode_docs,
    mode_report,
)
from kernel.store import db, events
from kernel.store.lockrecord import pending_path, record_pending
from kernel.store.machines import shipped
from kernel.store.project import Project
from kernel.store.reference import load_failure_modes
from tests.conftest import logical_dump, orch, orch_json
from tests.e2e import make_project, query, task, write_tasks

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "failure_modes"
MODES = [m.mode_id for m in load_failure_modes().modes]


def kernel_events(root: Path, name: str) -> list[dict]:
    rows = query(root, "SELECT * FROM event WHERE event = ? ORDER BY seq", (name,))
    for r in rows:
        r["metadata"] = json.loads(r["metadata"])
    return rows


# ----------------------------------------------------------------------------- the catalog


def test_the_twelve_modes_are_complete() -> None:
    catalog = load_failure_modes()
    assert len(MODES) == 12 == len(set(MODES))
    for mode in catalog.modes:
        for field in ("detection", "probability", "impact", "event", "severity",
                      "automatic_recovery", "manual_intervention"):
            assert getattr(mode, field).strip(), (mode.mode_id, field)
        tree = mode.decision_tree
        assert tree.detect and tree.escalate and tree.person, mode.mode_id
        assert mode.event_metadata and "failure_mode" in mode.event_metadata, mode.mode_id
    assert {m.category for m in catalog.modes} == set(CATEGORY_SECTIONS)


def test_every_mode_event_is_one_the_kernel_declares() -> None:
    """Each mode is detectable: its event is a transition event of the state machines or a
    kernel event of the catalogue (none is a name nothing writes)."""
    transitions = {t.event: t.severity for m in shipped().values() for t in m.transitions}
    for mode in load_failure_modes().modes:
        declared = transitions.get(mode.event) or (
            events.CATALOG[mode.event].severity if mode.event in events.CATALOG else None)
        assert declared is not None, f"{mode.mode_id}: {mode.event} is never written"
    assert transitions["context_overflow"] == "error"
    for name in ("dependency_cycle_detected", "state_corruption", "database_locked"):
        mode = next(m for m in load_failure_modes().modes if m.event == name)
        assert events.CATALOG[name].severity == mode.severity


def test_related_links_are_symmetric_in_the_table_and_the_report(fresh_db) -> None:
    catalog = load_failure_modes()
    rows = set(fresh_db.execute("SELECT mode_id, related_mode_id FROM failure_mode_relation"))
    assert rows == catalog.relations()
    assert "Task-Failed" in catalog.related_of("Task-Timeout")      # listed by Task-Failed only
    assert "Task-Timeout" in catalog.related_of("Task-Failed")
    for mode_id in MODES:
        for other in catalog.related_of(mode_id):
            assert mode_id in catalog.related_of(other)


def test_each_page_has_the_required_fields_and_the_catalog_every_section() -> None:
    docs = failure_mode_docs()
    assert set(docs) == {"CATALOG.md", *(f"{m}.md" for m in MODES)}
    for mode_id in MODES:
        text = (DOCS / f"{mode_id}.md").read_text()
        for field in REQUIRED_FIELDS:
            assert re.search(rf"^\*\*{field}\*\*: \S", text, re.M), (mode_id, field)
        assert "## Decision tree" in text and "```mermaid" in text
        assert f"`{load_failure_modes().by_id()[mode_id].event}`" in text
    catalog = (DOCS / "CATALOG.md").read_text()
    headings = re.findall(r"^## (.+)$", catalog, re.M)
    assert headings[:4] == ["Task Failures", "Worker Failures", "Workstream Failures",
                            "System Failures"]
    for mode in load_failure_modes().modes:
        section = catalog.split(f"## {CATEGORY_SECTIONS[mode.category]}\n")[1].split("\n## ")[0]
        assert f"[{mode.mode_id}]({mode.mode_id}.md)" in section


# --------------------------------------------------------------------- orch failure-modes


def test_orch_failure_modes_lists_every_mode_by_section() -> None:
    code, doc = orch_json("failure-modes")
    assert code == 0
    assert [m["mode_id"] for m in doc["modes"]] == MODES
    assert [s["section"] for s in doc["sections"]] == list(CATEGORY_SECTIONS.values())
    assert sum((s["modes"] for s in doc["sections"]), []) == sorted(
        MODES, key=lambda m: list(CATEGORY_SECTIONS).index(
            next(s["category"] for s in doc["sections"] if m in s["modes"])))
    text = orch("failure-modes").stdout
    for mode_id in MODES:
        assert mode_id in text
    assert text.index("Task Failures") < text.index("System Failures")


def test_orch_failure_modes_shows_one_mode_with_related_modes_and_tree() -> None:
    code, doc = orch_json("failure-modes", "Task-Timeout")
    assert code == 0
    assert doc == mode_report("Task-Timeout")
    assert doc["event"] == "task_timeout" and doc["severity"] == "warning"
    assert {r["mode_id"] for r in doc["related_modes"]} >= {
        "Worker-Unresponsive", "Resource-Exhaustion", "Task-Failed"}
    assert [s["if"] for s in doc["decision_tree"]["automatic"]][0] == "always"
    text = orch("failure-modes", "Database-Locked").stdout
    assert "Related modes:" in text and "State-Corruption" in text
    assert "Decision tree:" in text and "4. a person:" in text


def test_an_unknown_mode_is_exit_1_with_the_known_ones() -> None:
    proc = orch("failure-modes", "Task-Timout")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Task-Timeout" in proc.stderr and "Database-Locked" in proc.stderr
    code, doc = orch_json("failure-modes", "nope")
    assert code == 1 and doc["error"]["code"] == "unknown_failure_mode"
    assert all(m in doc["error"]["message"] for m in MODES)


# ----------------------------------------------------------------------- Dependency-Cycle


def without_events(dump: str) -> str:
    """A logical dump without the rows of ``event`` and ``sqlite_sequence`` (its seq)."""
    return "\n".join(line for line in dump.split("\n")
                     if not line.startswith(("event: ", "sqlite_sequence: ")))


def test_a_load_with_a_cycle_writes_one_critical_event_and_nothing_else(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("ok")])
    write_tasks(root, [task("a", deps=["c"]), task("b", deps=["a"]), task("c", deps=["b"])])
    dbfile = root / ".state" / "kernel.db"
    before = logical_dump(dbfile)
    seen = query(root, "SELECT COUNT(*) AS n FROM event")[0]["n"]

    validated = orch("--root", str(root), "validate")
    assert validated.returncode == 1 and "dependency cycle" in validated.stdout
    assert logical_dump(dbfile) == before       # orch validate never writes

    code, doc = orch_json("--root", str(root), "load")
    assert code == 1
    assert doc["error"]["file"] and doc["error"]["hint"]
    assert "dependency cycle: a -> b -> c -> a" in doc["error"]["message"]
    after = logical_dump(dbfile)
    assert without_events(after) == without_events(before)
    assert query(root, "SELECT COUNT(*) AS n FROM event")[0]["n"] == seen + 1
    [event] = kernel_events(root, "dependency_cycle_detected")
    assert event["severity"] == "critical" and event["seq"] == seen + 1
    assert event["metadata"]["cycle"] == ["a", "b", "c"]
    assert event["metadata"]["failure_mode"] == "Dependency-Cycle"
    assert event["metadata"]["file"] == doc["error"]["file"]
    assert (event["workstream_id"], event["task_id"]) == ("ws", "a")
    # The catalog's error counts see it (the view that joins events to failure modes).
    assert query(root, "SELECT 1 FROM task WHERE task_id = 'a'") == []


# ----------------------------------------------------------------------- State-Corruption


def drop_trigger(root: Path, name: str) -> None:
    conn = sqlite3.connect(root / ".state" / "kernel.db")
    try:
        conn.execute(f"DROP TRIGGER {name}")
        conn.commit()
    finally:
        conn.close()


def test_doctor_logs_state_corruption_once_per_distinct_finding(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a")])
    assert orch("--root", str(root), "doctor").returncode == 0
    assert kernel_events(root, "state_corruption") == []          # a sound database: nothing

    drop_trigger(root, "task_insert_initial_state")
    assert orch("--root", str(root), "doctor").returncode == 1
    assert orch("--root", str(root), "doctor").returncode == 1    # the same finding again
    [first] = kernel_events(root, "state_corruption")
    assert first["severity"] == "critical"
    assert first["metadata"]["checks"] == ["schema_matches_shipped"]
    assert "task_insert_initial_state" in first["metadata"]["findings"]["schema_matches_shipped"]

    # A different finding (an invariant broken by a client writing around the triggers):
    # `orch bundle`'s report (doctor_report) records nothing; `orch doctor` does.
    conn = sqlite3.connect(root / ".state" / "kernel.db")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("INSERT INTO task_dependency (task_id, depends_on) VALUES ('a', 'ghost')")
    conn.commit()
    conn.close()
    assert doctor_report(Project(root))["ok"] is False
    assert len(kernel_events(root, "state_corruption")) == 1
    assert orch("--root", str(root), "doctor").returncode == 1
    events_now = kernel_events(root, "state_corruption")
    assert len(events_now) == 2
    assert "schema_matches_shipped" in events_now[1]["metadata"]["checks"]
    assert len(events_now[1]["metadata"]["checks"]) > 1


# ------------------------------------------------------------------------ Database-Locked


def test_a_busy_timeout_is_recorded_by_the_next_writer(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a"), task("b")],
                        toml_extra="\n[database]\nbusy_timeout_ms = 200\n")
    holder = sqlite3.connect(root / ".state" / "kernel.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")       # another client holds the write lock
    try:
        first = orch("--root", str(root), "cancel", "a")
        code, doc = orch_json("--root", str(root), "skip", "b")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert first.returncode == 3 and code == 3
    assert doc["error"]["code"] == "database_locked"
    note = json.loads(pending_path(root / ".state" / "kernel.db").read_text())
    assert (note["command"], note["last_command"], note["occurrences"]) == ("cancel", "skip", 2)
    assert kernel_events(root, "database_locked") == []    # a locked database records nothing

    assert orch("--root", str(root), "cancel", "a").returncode == 0   # writable again
    [event] = kernel_events(root, "database_locked")
    assert event["severity"] == "warning"
    assert event["metadata"]["failure_mode"] == "Database-Locked"
    assert event["metadata"]["occurrences"] == 2
    assert not pending_path(root / ".state" / "kernel.db").exists()
    assert orch("--root", str(root), "retry", "a").returncode == 0
    assert len(kernel_events(root, "database_locked")) == 1   # recorded once


def test_a_note_waits_while_the_database_stays_locked(tmp_path: Path) -> None:
    from kernel.store import schema
    from kernel.store.lockrecord import note_locked

    root = make_project(tmp_path / "p", [task("a")])
    path = root / ".state" / "kernel.db"
    assert note_locked(path, "load")
    conn = schema.connect(path, busy_timeout_ms=50)   # records the note on opening
    try:
        assert db.scalar(conn, "SELECT COUNT(*) FROM event WHERE event = 'database_locked'") == 1
        assert note_locked(path, "run")
        # Another client holds the write lock (apsw: the SQLite of this process, whose locks
        # see each other; a second SQLite library in one process would not see them).
        holder = apsw.Connection(str(path))
        holder.execute("BEGIN IMMEDIATE")
        try:
            assert record_pending(conn, path) is None        # still locked: kept for later
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert pending_path(path).exists()
        assert record_pending(conn, path) is not None
        assert not pending_path(path).exists()
    finally:
        conn.close()


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_an_unreadable_note_is_still_recorded(tmp_path: Path, text: str) -> None:
    root = make_project(tmp_path / "p", [task("a")])
    pending_path(root / ".state" / "kernel.db").write_text(text)
    assert orch("--root", str(root), "cancel", "a").returncode == 0
    [event] = kernel_events(root, "database_locked")
    assert event["metadata"]["note_unreadable"] is True
