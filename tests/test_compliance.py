"""`orch compliance`: each of the 38 requirement IDs passes on a project that ran (the example
of `orch init --example`, run by `orch run`) and fails when the one artifact it guards is broken
on a copy: a view edited, a doc section deleted, a trigger dropped, a docstring section removed.
Each test case is named by its requirement ID."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from kernel.maintain.compliance import REQUIREMENTS, run_compliance
from kernel.maintain.compliance.core import CHECKS
from kernel.store.project import Project

from .conftest import REPO, orch, orch_json

IDS = [r.req_id for r in REQUIREMENTS]
LEVEL = {r.req_id: r.level for r in REQUIREMENTS}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project that ran: `orch init --example`, `orch load`, `orch run` (all completed)."""
    root = tmp_path_factory.mktemp("compliance") / "project"
    root.mkdir()
    orch("init", "--example", cwd=root, check=True)
    orch("load", cwd=root, check=True)
    run = orch("run", "--workers", "2", cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    orch("metrics", cwd=root, check=True)
    return root


class Copy:
    """A copy of the project, of orch's docs and of the kernel's source, to break one thing."""

    def __init__(self, ran: Path, tmp: Path) -> None:
        self.root = tmp / "project"
        shutil.copytree(ran, self.root, symlinks=True)
        self.docs = tmp / "docs"
        shutil.copytree(REPO / "docs", self.docs)
        self.source = tmp / "src" / "kernel"
        self.state = self.root / ".state"

    def kernel_source(self) -> Path:
        shutil.copytree(REPO / "kernel", self.source,
                        ignore=shutil.ignore_patterns("__pycache__", "_data"))
        return self.source

    def sql(self, *statements: str) -> None:
        conn = apsw.Connection(str(self.state / "kernel.db"))
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    def edit_json(self, path: Path, change: Callable[[dict], None]) -> None:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc, indent=2))

    def edit_text(self, path: Path, old: str, new: str, count: int = -1) -> None:
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, count))

    def drop_heading(self, path: Path, pattern: str) -> None:
        text = path.read_text()
        changed = re.sub(rf"^#+ .*{pattern}.*$", "", text, flags=re.M | re.I)
        assert changed != text, f"no heading matching {pattern!r} in {path}"
        path.write_text(changed)


def _first_task_state(doc: dict) -> None:
    doc["tasks"][0]["state"] = "failed" if doc["tasks"][0]["state"] != "failed" else "pending"


def _wrong_line(path: Path) -> None:
    lines = path.read_text().splitlines()
    event = json.loads(lines[2])
    event["event"] = "task_vanished"
    lines[2] = json.dumps(event)
    path.write_text("\n".join(lines) + "\n")


def _move_a_task(doc: dict) -> None:
    states = doc["statuses"]
    done = states["completed"]
    states.setdefault("failed", []).append(done.pop())


def _stale(doc: dict) -> None:
    doc["source_timestamp"] = "2000-01-01T00:00:00.000Z"


def _add_cycle(doc: dict) -> None:
    order = doc["topological_order"]
    doc["edges"].append({"from": order[-1], "to": order[0], "type": "depends_on"})


def _agent_attempt_outside(copy: Copy) -> None:
    copy.sql("UPDATE attempt SET output = json_set(output, '$.files_modified', "
             "json('[\"setup.py\"]')) WHERE attempt_id = (SELECT MIN(attempt_id) FROM attempt "
             "WHERE task_id = 'add-word-count')")


def _held_lease(copy: Copy) -> None:
    copy.sql("INSERT INTO lease (resource_id, task_id, owner, mode, amount, generation, "
             "acquired_at, expires_at) VALUES ('git_repo_read', 'lint', 'w', 'shared', 1, 1, "
             "'2026-01-01T00:00:00.000Z', '2999-01-01T00:00:00.000Z')")


def _table_lies(copy: Copy) -> None:
    copy.sql("DROP TRIGGER task_illegal_transition", "DROP TRIGGER task_transition_event",
             "UPDATE task SET state = 'failed', transition_trigger = 'execution_failed' "
             "WHERE task_id = 'lint'")


def _remove_section(source: Path) -> None:
    path = source / "base" / "clock.py"
    text = path.read_text()
    path.write_text(text.replace("Dependencies:\n", "Needs:\n", 1))


def _unregister(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(CHECKS, "OBS-002")


EM = "execution_model"
# ID -> how to break the artifact it guards (on the copy).
BREAKS: dict[str, Callable[[Copy, pytest.MonkeyPatch], None]] = {
    "STATE-OBS-001": lambda c, m: c.edit_json(c.state / "current.json", _first_task_state),
    "STATE-OBS-002": lambda c, m: _wrong_line(c.state / "transitions.jsonl"),
    "STATE-OBS-003": lambda c, m: (c.state / "current.json.tmp").write_text("{}"),
    "STATE-OBS-004": lambda c, m: c.sql(
        "INSERT INTO event (timestamp, event, event_type, severity, entity_type) VALUES "
        "('2999-01-01T00:00:00.000Z', 'made_up', 'made_up', 'info', 'system')"),
    "STATE-OBS-005": lambda c, m: c.edit_json(c.state / "by_status.json", _move_a_task),
    "STATE-OBS-006": lambda c, m: c.edit_json(c.state / "by_worker.json", _stale),
    "EXEC-DOC-001": lambda c, m: (c.docs / EM / "WORKERS.md").unlink(),
    "EXEC-DOC-002": lambda c, m: c.drop_heading(c.docs / EM / "OVERVIEW.md", "Data flow"),
    "EXEC-DOC-003": lambda c, m: c.edit_text(c.docs / EM / "STATE_MACHINE.md",
                                             "retry_delay_elapsed", "retry_delay_over"),
    "EXEC-DOC-004": lambda c, m: c.drop_heading(c.docs / EM / "SCHEDULING.md", "fairness"),
    "EXEC-DOC-005": lambda c, m: c.drop_heading(c.docs / EM / "WORKERS.md", "Health monitoring"),
    "EXEC-DOC-006": lambda c, m: c.drop_heading(c.docs / EM / "RECOVERY.md", "Decision trees"),
    "TASK-DEF-001": lambda c, m: (c.root / "tasks" / "word-count" / "lint.json").rename(
        c.root / "tasks" / "word-count" / "linting.json"),
    "TASK-DEF-002": lambda c, m: c.edit_json(
        c.root / "tasks" / "word-count" / "lint.json",
        lambda d: d["execution"].update(timeout_seconds=0)),
    "DAG-VIEW-001": lambda c, m: (c.state / "dag_word-count.json").unlink(),
    "DAG-VIEW-002": lambda c, m: c.edit_json(c.state / "dag_word-count.json", _add_cycle),
    "DAG-VIEW-003": lambda c, m: c.edit_json(c.state / "execution_plan_word-count.json",
                                             lambda d: d.update(critical_path_duration=1.5)),
    "CAP-REG-001": lambda c, m: (c.root / "capabilities" / "registry.yaml").unlink(),
    "CAP-REG-002": lambda c, m: c.edit_text(c.root / "capabilities" / "registry.yaml",
                                            "version: 1.0.0", "version: '1.0'", 1),
    "ERR-FM-001": lambda c, m: c.edit_text(c.docs / "failure_modes" / "Task-Failed.md",
                                           "**Impact**", "Impact"),
    "ERR-FM-002": lambda c, m: c.drop_heading(c.docs / "failure_modes" / "CATALOG.md",
                                              "Worker Failures"),
    "ERR-FM-003": lambda c, m: c.drop_heading(c.docs / "failure_modes" / "Task-Failed.md",
                                              "Decision tree"),
    "AIDER-INT-001": lambda c, m: c.edit_text(c.root / "orch.toml", "[agents.mini]",
                                              "[agents.other]"),
    "AIDER-INT-002": lambda c, m: _agent_attempt_outside(c),
    "AIDER-INT-003": lambda c, m: c.sql("UPDATE attempt SET output = '{\"status\": \"bogus\"}' "
                                        "WHERE attempt_id = 1"),
    "SM-DEF-001": lambda c, m: c.edit_text(c.docs / "state_machines" / "task_lifecycle.yaml",
                                           "trigger: retry_delay_elapsed",
                                           "trigger: retry_delay_over"),
    "SM-DEF-002": lambda c, m: c.sql("DROP TRIGGER task_transition_event"),
    "SM-DEF-003": lambda c, m: c.edit_text(c.docs / EM / "STATE_MACHINE.md",
                                           "worker_crashed", "worker_died"),
    "MOD-IDX-001": lambda c, m: _remove_section(c.kernel_source()),
    "CONC-REG-001": lambda c, m: (c.root / "capabilities" / "resources.yaml").unlink(),
    "CONC-REG-002": lambda c, m: _held_lease(c),
    "AUDIT-001": lambda c, m: _table_lies(c),
    "AUDIT-002": lambda c, m: c.edit_text(c.docs / "operations" / "AUDIT_RETENTION.md",
                                          "90", "60"),
    "SCHEMA-VER-001": lambda c, m: c.edit_json(c.state / "current.json",
                                               lambda d: d.pop("schema_url")),
    "SCHEMA-VER-002": lambda c, m: (c.docs / "schema_migrations" / "task_v1_to_v2.md").unlink(),
    "OBS-001": lambda c, m: c.edit_json(c.state / "metrics.json", lambda d: d.pop("tasks")),
    "OBS-002": lambda c, m: c.sql("DROP VIEW metric_history"),
    "COMPLIANCE-001": lambda c, m: _unregister(m),
}


def test_every_requirement_has_a_check_and_a_break() -> None:
    assert len(IDS) == len(set(IDS)) == 38
    assert set(CHECKS) == set(IDS) == set(BREAKS)


def test_the_project_that_ran_is_compliant_through_the_cli(ran: Path) -> None:
    proc = orch("compliance", cwd=ran)
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"^(PASS|WARN|FAIL|N/A) ", ln)]
    assert proc.returncode == 0, proc.stdout
    assert [ln.split()[1] for ln in lines] == IDS
    code, doc = orch_json("compliance", "--strict", cwd=ran)
    assert code == 0 and doc["ok"] and doc["counts"]["PASS"] == 38, doc["counts"]
    code, only = orch_json("compliance", "--only", "dag-view", cwd=ran)
    assert [r["id"] for r in only["results"]] == ["DAG-VIEW-001", "DAG-VIEW-002", "DAG-VIEW-003"]
    code, error = orch_json("compliance", "--only", "NOPE", cwd=ran)
    assert code == 2 and error["error"]["code"] == "unknown_requirement"


@pytest.mark.parametrize("req_id", IDS)
def test_requirement_passes_then_fails_when_its_artifact_breaks(
        req_id: str, ran: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Copy(ran, tmp_path)
    before = run_compliance(Project(copy.root), only=req_id, docs=copy.docs).results
    assert [(r.req_id, r.status) for r in before] == [(req_id, "PASS")], before[0].as_dict()
    assert before[0].looked_at, "a PASS must say what it looked at"
    BREAKS[req_id](copy, monkeypatch)
    source = copy.source if copy.source.exists() else None
    after = run_compliance(Project(copy.root), only=req_id, docs=copy.docs,
                           source=source).results[0]
    expected = {"FAIL"} if LEVEL[req_id] == "MUST" else {"WARN", "FAIL"}
    assert after.status in expected, after.as_dict()
    assert after.violations or after.status == "FAIL", after.as_dict()
    assert after.fix, "a failing check names a fix"
    located = [v for v in after.violations if v.file]
    if req_id.startswith(("STATE-OBS", "EXEC-DOC", "TASK-DEF", "DAG-VIEW", "ERR-FM", "MOD-IDX",
                          "CAP-REG-001", "CONC-REG-001", "SCHEMA-VER", "OBS-001")):
        assert located, f"{req_id}: the violation names no file: {after.as_dict()}"


def test_nothing_to_judge_is_not_applicable_never_a_silent_pass(tmp_path: Path) -> None:
    orch("init", cwd=tmp_path, check=True)
    report = run_compliance(Project(tmp_path))
    by_id = {r.req_id: r for r in report.results}
    assert by_id["STATE-OBS-001"].status == "N/A"
    assert "no task is loaded yet" in by_id["STATE-OBS-001"].reason
    assert by_id["TASK-DEF-001"].status == "N/A"
    assert all(r.status != "PASS" or r.looked_at for r in report.results)


def test_every_requirement_is_traced_to_paths_that_exist() -> None:
    from kernel.maintain.compliance.trace import IMPLEMENTED_BY

    assert set(IMPLEMENTED_BY) == set(IDS)
    missing = [p for paths in IMPLEMENTED_BY.values() for p in paths if not (REPO / p).exists()]
    assert missing == []
