"""``orch load`` prints its result once the load has committed, then brings the views up to date
before it exits; a full export may plan its workstreams in worker processes and writes the same
files as one process does (docs/PERFORMANCE.md, "Load once")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kernel.observe import exports
from kernel.store import db, schema
from tests.conftest import orch
from tests.e2e import make_project, task

STAMP = "2026-01-01T00:00:00.000Z"


def _tasks() -> list[dict]:
    """Three workstreams; dependencies cross them."""
    out = []
    for ws in ("alpha", "beta", "gamma"):
        for i in range(4):
            deps = [f"{ws}-{i - 1}"] if i else (["alpha-3"] if ws == "gamma" else [])
            out.append(task(f"{ws}-{i}", ws=ws, deps=deps))
    return out


def test_load_leaves_the_views_in_agreement_with_the_database(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", _tasks(), load=False)
    proc = orch("--root", str(root), "--json", "load")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON document, the load's report
    assert report["ok"] and report["tasks"]["created"] == 12
    state = root / ".state"
    current = json.loads((state / exports.CURRENT).read_text())
    lines = (state / exports.TRANSITIONS).read_text().splitlines()
    conn = schema.connect(state / "kernel.db", readonly=True)
    try:
        last_seq = db.scalar(conn, "SELECT max(seq) FROM event")
        assert current["last_event_seq"] == last_seq == json.loads(lines[-1])["seq"]
        assert len(lines) == db.scalar(conn, "SELECT count(*) FROM event")
        assert sorted(t["task_id"] for t in current["tasks"]) == sorted(
            r[0] for r in conn.execute("SELECT task_id FROM task"))
    finally:
        conn.close()
    for ws in ("alpha", "beta", "gamma"):
        assert (state / f"dag_{ws}.json").exists()
        assert (state / f"execution_plan_{ws}.json").exists()
    again = orch("--root", str(root), "--json", "load")  # unchanged files: nothing to export
    assert again.returncode == 0 and json.loads(again.stdout)["tasks"]["unchanged"] == 12


def _per_workstream_files(state: Path) -> dict[str, str]:
    names = [p for p in state.iterdir() if p.name.startswith(("dag_", "execution_plan_"))]
    names += list((state / "checkpoints").iterdir())
    return {str(p.relative_to(state)): p.read_text() for p in names}


def test_a_full_export_in_worker_processes_writes_what_one_process_writes(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", _tasks())
    state = root / ".state"
    one, many = tmp_path / "one", tmp_path / "many"
    conn = schema.connect(state / "kernel.db", readonly=True)
    try:
        for target, workers in ((one, 1), (many, 3)):
            target.mkdir()
            shutil.copy(state / exports.TRANSITIONS, target / exports.TRANSITIONS)
            report = exports.export(conn, target, now=STAMP, workers=workers)
            assert not report.warnings
            assert {f for f in report.files_written if f.startswith("dag_")} == {
                "dag_alpha.json", "dag_beta.json", "dag_gamma.json"}
    finally:
        conn.close()
    files = _per_workstream_files(one)
    assert len(files) == 9
    assert files == _per_workstream_files(many)
    # gamma's DAG names its prerequisite in another workstream
    gamma = json.loads(files["dag_gamma.json"])
    assert gamma["external_dependencies"]
