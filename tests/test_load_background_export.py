"""A large ``orch load`` brings the views up to date in a detached process: the command returns
after printing its result, and the views then agree with the database."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kernel.cli import definitions as cli_definitions
from kernel.definitions.load import load
from kernel.observe import exports
from kernel.store import db
from kernel.store.project import Project, init_project

from .test_validate import task_doc, write_task


def test_the_background_export_leaves_views_that_agree_with_the_database(
        tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    init_project(root)
    project = Project(root)
    for i in range(6):
        write_task(project, task_doc(f"t{i}", ws="ws", dependencies=[f"t{i - 1}"] if i else []))
    load(project, workers=1)
    conn = project.connect(readonly=True)
    try:
        last = db.scalar(conn, "SELECT max(seq) FROM event")
    finally:
        conn.close()
    current = project.state_dir / exports.CURRENT
    assert not current.exists()
    cli_definitions._export_in_background(project)  # returns once the detached child exists
    transitions = project.state_dir / exports.TRANSITIONS
    plan = project.state_dir / "execution_plan_ws.json"

    def done() -> bool:  # the plan files are written last (kernel.observe.exports)
        return (current.exists() and transitions.exists() and plan.exists()
                and json.loads(current.read_text())["last_event_seq"] == last)

    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, "the background export never finished"
        time.sleep(0.05)
    lines = transitions.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, last + 1))
