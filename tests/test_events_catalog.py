"""Every event the kernel writes is declared once (docs/operations/EVENTS.md lists them): the
transition events in the state-machine YAML, the row-lifecycle events of the SQL triggers in
``kernel.store.events.LIFECYCLE``, and the kernel's own events in ``kernel.store.events.CATALOG``.
An event written by code or SQL but declared nowhere fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel.store import db, events
from kernel.store.machines import shipped
from tests.conftest import orch
from tests.e2e import make_project, query, run, task, write_tasks

REPO = Path(__file__).resolve().parent.parent
KERNEL = REPO / "kernel"

# emit_event_in_tx(conn, "name", ...) / emit_events_in_tx(conn, "name", ...)
EMIT = re.compile(r"emit_events?_in_tx\(\s*\w+\s*,\s*(?P<q>[\"'])(?P<name>[^\"']+)(?P=q)")
# the event, event_type and severity literals of an INSERT INTO event in a trigger
SQL_EVENT = re.compile(r"'([a-z_]+)',\s*'([a-z_]+)',\s*'(info|warning|error|critical)'")


def transition_events() -> set[str]:
    return {t.event for m in shipped().values() for t in m.transitions}


def declared() -> set[str]:
    return transition_events() | set(events.LIFECYCLE) | set(events.CATALOG)


def emitted_in_code(root: Path) -> dict[str, list[str]]:
    """Event names passed as literals to the emit functions, with where."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        for match in EMIT.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group("name"), []).append(f"{path.name}:{line}")
    return found


def emit_calls_without_literal(root: Path) -> list[str]:
    """Emit calls whose event name is not a literal cannot be checked: there are none."""
    calls = re.compile(r"emit_events?_in_tx\(\s*\w+\s*,\s*(?![\s\"'])")
    out = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "events.py":
            continue
        text = path.read_text()
        out += [f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}"
                for m in calls.finditer(text)]
    return out


def written_by_triggers(conn) -> set[str]:
    names = set()
    for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'"):
        names.update(m.group(1) for m in SQL_EVENT.finditer(sql or ""))
    return names


def test_every_event_the_code_emits_is_in_the_catalog() -> None:
    found = emitted_in_code(KERNEL)
    assert found, "the scan found no emit call at all: the pattern is broken"
    assert {n: w for n, w in found.items() if n not in events.CATALOG} == {}
    assert emit_calls_without_literal(KERNEL) == []


def test_every_catalog_event_is_emitted_somewhere() -> None:
    assert set(events.CATALOG) - set(emitted_in_code(KERNEL)) == set()


def test_every_event_a_trigger_writes_is_declared(fresh_db) -> None:
    names = written_by_triggers(fresh_db)
    assert names >= {"task_created", "task_deleted"}, names
    assert names - set(events.LIFECYCLE) == set()
    assert set(events.LIFECYCLE) - names == set()


def test_no_name_is_declared_twice() -> None:
    kinds = [transition_events(), set(events.LIFECYCLE), set(events.CATALOG)]
    assert [a & b for i, a in enumerate(kinds) for b in kinds[i + 1:]] == [set(), set(), set()]


def test_a_planted_undeclared_event_is_caught(tmp_path: Path) -> None:
    (tmp_path / "sneaky.py").write_text(
        'events.emit_event_in_tx(conn, "task_vanished", entity_id="a")\n'
        "events.emit_event_in_tx(conn, name)\n")
    found = emitted_in_code(tmp_path)
    assert found == {"task_vanished": ["sneaky.py:1"]}
    assert "task_vanished" not in events.CATALOG
    assert emit_calls_without_literal(tmp_path) == ["sneaky.py:2"]


def test_an_undeclared_name_is_refused_at_run_time(fresh_db) -> None:
    with pytest.raises(KeyError), db.write_tx(fresh_db):
        events.emit_event_in_tx(fresh_db, "task_vanished")
    assert db.scalar(fresh_db, "SELECT COUNT(*) FROM event WHERE event = 'task_vanished'") == 0


def test_a_real_run_writes_only_declared_events(tmp_path: Path) -> None:
    """A user's steps: a project with a success, a failure with a retry, a cancelled workstream
    and a changed definition; every event in the log is on the events page."""
    root = make_project(tmp_path / "proj", [
        task("ok"), task("bad", deps=["ok"], command="false", max_retries=1, retry_delay=0),
        task("x", ws="other")])
    changed = task("x", ws="other", description="changed")
    write_tasks(root, [changed])
    assert orch("--root", str(root), "load").returncode == 0
    assert orch("--root", str(root), "cancel", "--workstream", "other").returncode == 0
    result = run(root, workers=1)
    assert result.returncode == 1, result.stdout + result.stderr  # bad failed for good
    seen = {r["event"] for r in query(root, "SELECT DISTINCT event FROM event")}
    assert {"task_created", "task_completed", "task_retry", "task_failed", "worker_started",
            "task_definition_updated", "workstream_cancelled"} <= seen, seen
    assert seen - declared() == set()
