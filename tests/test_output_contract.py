"""The output contract of every attempt (AIDER-INT-003) and the cost accounting of the audit
report (AUDIT-001): ``result_document``, the ``attempt_usage`` view (sql/0006_usage.sql) and its
migration, ``orch show``, ``orch audit report`` and ``.state/current.json``.

The usage data comes from real runs: the real Aider CLI (its own venv, tests/aider_venv.py)
against the scripted model server (kernel.demo.model_server) as a real process on 127.0.0.1,
with a model-metadata file that gives the test model a price so that Aider reports a cost; and
plain command tasks, which report no usage and must count as unknown, never as zero."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kernel.definitions.fields import ATTEMPT_OUTPUT_SCHEMA_VERSION
from kernel.definitions.models import AttemptOutput
from kernel.demo.model_server import whole_file
from kernel.runtime.attempts import OUTPUT_SCHEMA_VERSION, result_document
from kernel.store import db, schema
from kernel.store.machines import ensure_machines
from kernel.store.reference import ensure_failure_modes
from tests.aider_venv import ModelServer
from tests.conftest import REPO, git, orch, orch_json
from tests.e2e import write_tasks

OUTPUT_SCHEMA = json.loads((REPO / "schemas" / "attempt-output.schema.json").read_text())


def valid_output(doc: dict[str, Any]) -> None:
    """The document conforms to the model and to the committed JSON Schema."""
    AttemptOutput.model_validate(doc)
    jsonschema.validate(doc, OUTPUT_SCHEMA)


# --------------------------------------------------------------------------- result_document


def test_the_contract_fields_come_from_the_details() -> None:
    details = {"files_modified": ["src/b.py", "a.py", "src/b.py"],
               "diff_summary": " 2 files changed, 3 insertions(+), 1 deletion(-)",
               "commit_message": "orch: edit: edit hello", "commit": "0123abcd" * 5,
               "tokens": {"sent": 700, "received": 30}, "cost": 0.00076,
               "model": "openai/test-model", "agent": "aider", "context": {"max_tokens": 4000}}
    out = result_document("success", "passed", 1.23456, None, dict(details))
    assert out["schema_version"] == OUTPUT_SCHEMA_VERSION
    assert out["files_modified"] == ["a.py", "src/b.py"]          # sorted, no duplicates
    assert out["diff_summary"] == details["diff_summary"]
    assert out["commit_message"] == "orch: edit: edit hello"
    assert out["metadata"] == {"tokens_used": 730, "tokens": {"sent": 700, "received": 30},
                               "cost": 0.00076, "model": "openai/test-model",
                               "agent": "aider", "commit": "0123abcd" * 5,
                               "duration_seconds": 1.235}
    assert out["details"] == details          # the executor's report, kept as it came
    valid_output(out)


def test_an_explicit_tokens_used_wins_over_the_split() -> None:
    out = result_document("success", "passed", 0.5, None,
                          {"tokens_used": 1000, "tokens": {"sent": 700, "received": 30}})
    assert out["metadata"]["tokens_used"] == 1000
    valid_output(out)


def test_without_usage_the_tokens_are_unknown_not_zero() -> None:
    out = result_document("failure", "pending", 0.25, "exit code 3", {"executor": "subprocess"})
    assert out["metadata"] == {"tokens_used": None, "duration_seconds": 0.25}
    assert (out["files_modified"], out["diff_summary"], out["commit_message"]) == ([], "", None)
    assert out["details"] == {"executor": "subprocess"}
    valid_output(out)
    bare = result_document("failure", "pending", 0.0, "worker lost")
    assert "details" not in bare and bare["metadata"]["tokens_used"] is None
    valid_output(bare)


@pytest.mark.parametrize("bad", [
    {"tokens_used": -5}, {"tokens_used": "730"}, {"tokens_used": True},
    {"tokens": {"sent": 700}}, {"tokens": [700, 30]}, {"cost": "0.1"}, {"cost": -1.0},
    {"cost": float("inf")}, {"model": 7}, {"files_modified": "a.py"},
    {"files_modified": [1, None]}, {"diff_summary": ["x"]}, {"commit_message": 3},
])
def test_a_value_of_the_wrong_type_stays_in_the_details_only(bad: dict[str, Any]) -> None:
    """What an executor reports wrongly never breaks the stored document's schema."""
    out = result_document("success", "passed", 1.0, None, bad)
    assert out["details"] == bad
    assert out["metadata"]["tokens_used"] is None
    assert "cost" not in out["metadata"] and "model" not in out["metadata"]
    assert out["files_modified"] == [] and out["diff_summary"] == ""
    assert out["commit_message"] is None
    valid_output(out)


def test_the_runtime_writes_the_version_of_the_published_schema() -> None:
    assert OUTPUT_SCHEMA_VERSION == ATTEMPT_OUTPUT_SCHEMA_VERSION
    assert OUTPUT_SCHEMA["x-schema-version"] == OUTPUT_SCHEMA_VERSION
    # A 1.0.0 document (no schema_version, no usage keys) still conforms.
    valid_output({"status": "success", "files_modified": [], "diff_summary": "",
                  "validation_status": "passed", "commit_message": None, "error": None,
                  "metadata": {"tokens_used": None, "duration_seconds": 0.1}})


# --------------------------------------------------------------------------- the view, migrated


def _database_at(path: Path, version: int) -> None:
    """A database built by the real migrations 0001..``version`` only (what an older orch
    wrote), with the machines and failure modes loaded."""
    conn = db.open_connection(path, create=True)
    for migration in db.migrations()[:version]:
        with db.write_tx(conn):
            conn.execute(migration.sql)
            conn.pragma("application_id", db.APPLICATION_ID)
            conn.pragma("user_version", migration.number)
    ensure_machines(conn)
    ensure_failure_modes(conn)
    conn.close()


def _old_outputs() -> list[dict[str, Any] | None]:
    return [
        {"status": "success", "files_modified": [], "diff_summary": "",
         "validation_status": "passed", "commit_message": None, "error": None,
         "metadata": {"tokens_used": None, "duration_seconds": 0.5}},
        {"status": "success", "files_modified": ["a.py"], "diff_summary": "",
         "validation_status": "passed", "commit_message": None, "error": None,
         "metadata": {"tokens_used": 900, "duration_seconds": 2.0},
         "details": {"model": "m1"}},
        None,                                                   # an attempt still open
    ]


def test_the_usage_view_is_added_by_a_migration_and_reads_older_attempts(
        tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    _database_at(path, 5)
    conn = db.open_connection(path)
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id, name) VALUES ('ws', 'ws')")
        conn.execute("INSERT INTO task (task_id, workstream_id, name, type, definition) "
                     "VALUES ('t', 'ws', 't', 'custom', '{}')")
        for no, output in enumerate(_old_outputs(), start=1):
            conn.execute("INSERT INTO attempt (task_id, attempt_no, generation, started_at, "
                         "output) VALUES ('t', ?, ?, ?, ?)",
                         (no, no, f"2026-01-0{no}T00:00:00.000Z",
                          json.dumps(output) if output else None))
    assert not db.rows(conn, "SELECT name FROM sqlite_schema WHERE name = 'attempt_usage'")
    conn.close()
    migrated = schema.connect(path)                    # the migration runs here
    assert db.schema_version(migrated) == db.latest_schema_version() >= 6
    rows = db.rows(migrated, "SELECT attempt_no, workstream_id, tokens_used, has_usage, model, "
                             "cost, duration_seconds FROM attempt_usage ORDER BY attempt_no")
    migrated.close()
    assert rows == [
        {"attempt_no": 1, "workstream_id": "ws", "tokens_used": None, "has_usage": 0,
         "model": None, "cost": None, "duration_seconds": 0.5},
        {"attempt_no": 2, "workstream_id": "ws", "tokens_used": 900, "has_usage": 1,
         "model": None, "cost": None, "duration_seconds": 2.0},
        {"attempt_no": 3, "workstream_id": "ws", "tokens_used": None, "has_usage": 0,
         "model": None, "cost": None, "duration_seconds": None},
    ]
    # Python's own sqlite3 (the system library, what Datasette uses) reads the view too.
    with sqlite3.connect(path) as plain:
        total = plain.execute("SELECT sum(tokens_used), count(*) - count(tokens_used) "
                              "FROM attempt_usage").fetchone()
    assert total == (900, 2)


# --------------------------------------------------------------------------- real runs: Aider

HELLO = 'print("old")\n'
NEW_HELLO = 'def greet() -> str:\n    return "hello"\n'
NEW_OTHER = 'def answer() -> int:\n    return 42\n'
MODEL = "openai/test-model"
# A price for the test model, as a user gives one to a model Aider does not know
# (Aider's --model-metadata-file, litellm's format): it makes Aider report a cost.
# Prices that make each cost a round number: Aider prints two significant digits.
PRICE_IN, PRICE_OUT = 0.000001, 0.00001


def _aider_task(task_id: str, path: str, deps: list[str]) -> dict[str, Any]:
    return {"schema_version": "2.0.0", "task_id": task_id, "workstream_id": "agents",
            "name": f"edit {path}", "type": "aider", "dependencies": deps,
            "execution": {"command": "aider", "executor": "aider", "timeout_seconds": 300,
                          "prompt": f"Rewrite {path}."},
            "context_requirements": {"max_context_tokens": 4000, "required_files": [path]},
            "validation_rules": {"pre_execution": [], "post_execution": []}}


def _plain_task(task_id: str, command: str) -> dict[str, Any]:
    return {"schema_version": "2.0.0", "task_id": task_id, "workstream_id": "plain",
            "name": task_id, "type": "custom", "execution": {"command": command},
            "validation_rules": {"pre_execution": [], "post_execution": []}}


def make_project(root: Path, venv: Path, url: str, metadata_file: Path | None) -> Path:
    """Workstream ``agents``: two Aider tasks in a chain (edit1 on hello.py, then edit2 on
    other.py); workstream ``plain``: a command task, which reports no usage."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    orch("--root", str(root), "init", check=True)
    extra = ["--model-metadata-file", str(metadata_file)] if metadata_file else []
    config = (root / "orch.toml").read_text().replace(
        'executable = "aider"',
        f'executable = {json.dumps(str(venv / "bin" / "aider"))}\n'
        f'model = "{MODEL}"\napi_base = {json.dumps(url)}\nedit_format = "whole"'
    ).replace("\nextra_args = []", f"\nextra_args = {json.dumps(extra)}")
    (root / "orch.toml").write_text(config)
    (root / "hello.py").write_text(HELLO)
    (root / "other.py").write_text("x = 1\n")
    write_tasks(root, [_aider_task("edit1", "hello.py", []),
                       _aider_task("edit2", "other.py", ["edit1"]),
                       _plain_task("probe", f"{sys.executable} -c 'print(1)'")])
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    orch("--root", str(root), "load", check=True)
    return root


def run(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-dummy"}
    return subprocess.run([str(Path(sys.executable).parent / "orch"), "--root", str(root),
                           "run", "--workers", "1"], capture_output=True, text=True, env=env)


SCRIPT = [
    {"content": "Done.\n\n" + whole_file("hello.py", NEW_HELLO),
     "prompt_tokens": 700, "completion_tokens": 30},
    {"content": "Done.\n\n" + whole_file("other.py", NEW_OTHER),
     "prompt_tokens": 1200, "completion_tokens": 80},
]


@pytest.fixture(scope="module")
def priced_run(aider_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real `orch run` of the project, the test model priced; the database is only read
    afterwards."""
    tmp = tmp_path_factory.mktemp("contract")
    metadata = tmp / "model-metadata.json"
    metadata.write_text(json.dumps({MODEL: {
        "max_tokens": 4096, "max_input_tokens": 32000, "max_output_tokens": 4096,
        "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT,
        "litellm_provider": "openai", "mode": "chat"}}))
    server = ModelServer(tmp / "server", SCRIPT)
    try:
        root = make_project(tmp / "proj", aider_venv, server.url, metadata)
        proc = run(root)
        logs = "".join(p.read_text() for p in (root / ".state" / "logs").glob("*.log"))
        assert proc.returncode == 0, proc.stdout + proc.stderr + logs
        assert len(server.requests()) == 2, logs
        yield root
    finally:
        server.stop()


def show(root: Path, task_id: str) -> dict[str, Any]:
    code, data = orch_json("--root", str(root), "show", task_id)
    assert code == 0, data
    return data


def test_orch_show_carries_the_contract_of_an_aider_attempt(priced_run: Path) -> None:
    data = show(priced_run, "edit1")
    assert data["state"] == "completed"
    out = data["attempts"][-1]["output"]
    valid_output(out)
    assert out["status"] == "success" and out["validation_status"] == "passed"
    assert out["files_modified"] == ["hello.py"]
    # The worker committed the change: its message, its sha and git's summary of it.
    head = git(priced_run, "log", "--no-merges", "--format=%H%n%B", "-n", "1", "main", "--",
               "hello.py").strip().split("\n", 1)
    assert out["metadata"]["commit"] == head[0]
    assert out["commit_message"] == head[1].strip()
    assert out["commit_message"].startswith("orch: edit1: edit hello.py")
    assert out["diff_summary"] == "1 file changed, 2 insertions(+), 1 deletion(-)"
    meta = out["metadata"]
    assert meta["tokens_used"] == 730
    assert meta["tokens"] == {"sent": 700, "received": 30}
    assert meta["model"] == MODEL and meta["agent"] == "aider"
    assert meta["cost"] == pytest.approx(700 * PRICE_IN + 30 * PRICE_OUT, rel=1e-6)
    assert meta["duration_seconds"] > 0
    text = orch("--root", str(priced_run), "show", "edit1", check=True).stdout
    assert "result: success, validation passed" in text
    assert "files modified: hello.py" in text
    assert "diff: 1 file changed, 2 insertions(+), 1 deletion(-)" in text
    assert f"commit: orch: edit1: edit hello.py ({head[0][:12]})" in text
    assert f"usage: tokens 730 (700 sent, 30 received), cost $0.001; model {MODEL} (aider)" in text


def test_the_audit_report_sums_tokens_and_cost_per_task_workstream_and_model(
        priced_run: Path) -> None:
    code, rep = orch_json("--root", str(priced_run), "audit", "report")
    assert code == 0, rep
    cost1 = show(priced_run, "edit1")["attempts"][-1]["output"]["metadata"]["cost"]
    cost2 = show(priced_run, "edit2")["attempts"][-1]["output"]["metadata"]["cost"]
    assert cost2 == pytest.approx(1200 * PRICE_IN + 80 * PRICE_OUT, rel=1e-6)
    tasks = rep["tasks"]
    assert (tasks["edit1"]["tokens_used"], tasks["edit2"]["tokens_used"]) == (730, 1280)
    assert tasks["edit1"]["cost"] == pytest.approx(cost1)
    assert tasks["edit2"]["usage"]["tokens_sent"] == 1200
    assert tasks["edit2"]["usage"]["tokens_received"] == 80
    agents = rep["workstreams"]["agents"]
    assert agents["tokens_used"] == 2010
    assert agents["cost"] == pytest.approx(cost1 + cost2)
    assert agents["usage"]["attempts_without_usage"] == 0
    model = rep["usage"]["by_model"][MODEL]
    assert (model["attempts"], model["tokens_used"]) == (2, 2010)
    assert model["cost"] == pytest.approx(cost1 + cost2)
    assert list(rep["usage"]["by_model"]) == [MODEL]   # the plain task names no model
    # The plain command reported nothing: unknown, not zero, and said so.
    probe = tasks["probe"]
    assert probe["tokens_used"] is None and probe["cost"] is None
    assert probe["usage"]["attempts_without_usage"] == 1
    assert rep["workstreams"]["plain"]["tokens_used"] is None
    totals = rep["usage"]["totals"]
    assert (totals["attempts"], totals["attempts_with_usage"], totals["tokens_used"]) == \
        (3, 2, 2010)
    assert rep["usage"]["tasks_without_usage"] == 1
    s = rep["summary"]
    assert (s["tokens_used"], s["tasks_without_usage"], s["attempts_without_usage"]) == \
        (2010, 1, 1)
    assert s["cost"] == pytest.approx(cost1 + cost2)
    text = orch("--root", str(priced_run), "audit", "report", check=True).stdout
    assert "tokens 2010, cost $0.003, " in text
    assert f"model {MODEL}: tokens 2,010 (1,900 sent, 110 received), cost $0.003, 2 attempts" \
        in text
    assert "workstream agents: tokens 2,010" in text
    assert "1 tasks without usage data (1 attempts): counted as unknown, not zero" in text
    assert "edit2 (agents): completed; attempts 1 [succeeded]" in text


def test_the_report_reads_the_one_view(priced_run: Path) -> None:
    """What the report sums is what any SQL client sums over attempt_usage."""
    with sqlite3.connect(priced_run / ".state" / "kernel.db") as plain:
        by_model = plain.execute(
            "SELECT model, sum(tokens_used), count(*) FROM attempt_usage "
            "WHERE model IS NOT NULL GROUP BY model").fetchall()
    assert by_model == [(MODEL, 2010, 2)]


def test_current_json_shows_each_tasks_last_result(priced_run: Path) -> None:
    current = json.loads((priced_run / ".state" / "current.json").read_text())
    rows = {t["task_id"]: t for t in current["tasks"]}
    assert rows["edit2"]["last_result"] == {
        "status": "success", "validation_status": "passed", "files_modified": ["other.py"],
        "diff_summary": "1 file changed, 2 insertions(+), 1 deletion(-)",
        "commit_message": show(priced_run, "edit2")["attempts"][-1]["output"]["commit_message"],
        "tokens_used": 1280, "cost": pytest.approx(1200 * PRICE_IN + 80 * PRICE_OUT, rel=1e-6),
        "model": MODEL}
    assert rows["probe"]["last_result"]["tokens_used"] is None
    assert rows["probe"]["last_result"]["model"] is None


def test_without_a_price_aider_reports_tokens_and_no_cost(aider_venv: Path,
                                                          tmp_path: Path) -> None:
    """Aider knows no price for the test model: the tokens are counted, the cost is unknown
    (None), never zero."""
    server = ModelServer(tmp_path / "server", SCRIPT)
    try:
        root = make_project(tmp_path / "proj", aider_venv, server.url, None)
        proc = run(root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        server.stop()
    meta = show(root, "edit1")["attempts"][-1]["output"]["metadata"]
    assert meta["tokens_used"] == 730 and "cost" not in meta
    code, rep = orch_json("--root", str(root), "audit", "report")
    assert code == 0
    model = rep["usage"]["by_model"][MODEL]
    assert (model["tokens_used"], model["attempts_with_cost"], model["cost"]) == (2010, 0, None)
    text = orch("--root", str(root), "audit", "report", check=True).stdout
    assert f"model {MODEL}: tokens 2,010 (1,900 sent, 110 received), cost unknown" in text
    assert "cost unknown" in orch("--root", str(root), "show", "edit2", check=True).stdout


# --------------------------------------------------------------------------- plain commands


def test_a_run_without_usage_data_counts_as_unknown(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    orch("--root", str(root), "init", check=True)
    write_tasks(root, [_plain_task("one", "true"), _plain_task("two", "false")])
    orch("--root", str(root), "load", check=True)
    proc = subprocess.run([str(Path(sys.executable).parent / "orch"), "--root", str(root),
                           "run", "--workers", "1"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr       # "two" fails
    code, rep = orch_json("--root", str(root), "audit", "report")
    assert code == 0
    assert rep["summary"]["tokens_used"] is None and rep["summary"]["cost"] is None
    assert rep["summary"]["tasks_without_usage"] == 2
    assert rep["usage"]["totals"]["attempts_with_usage"] == 0
    assert rep["usage"]["by_model"] == {}
    text = orch("--root", str(root), "audit", "report", check=True).stdout
    assert "total: tokens unknown" in text
    assert "2 tasks without usage data" in text
    for task_id, status in (("one", "success"), ("two", "failure")):
        out = show(root, task_id)["attempts"][-1]["output"]
        valid_output(out)
        assert out["status"] == status and out["metadata"]["tokens_used"] is None
    text = orch("--root", str(root), "show", "two", check=True).stdout
    assert "result: failure, validation pending" in text
    assert "usage: tokens unknown (not reported)" in text
    assert "error: exit code 1" in text



# --------------------------------------------------------------------------- the generic agent

TINY_AGENT = """\
import sys
from pathlib import Path
tokens, cost = sys.argv[1], sys.argv[2]
for name in sys.argv[3:]:
    path = Path(name)
    path.write_text(path.read_text() + "# touched by the tiny agent\\n")
print(f"done. tokens: {tokens} cost: ${cost}")
"""


def test_two_models_are_summed_apart(tmp_path: Path) -> None:
    """Two agent CLIs (a small script of ours behind the generic ``agent`` executor), each with
    its own model, and a plain command: the report sums per model and per workstream, and the
    plain task is the one without usage data."""
    root = tmp_path / "p"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    orch("--root", str(root), "init", check=True)
    script = tmp_path / "tiny_agent.py"
    script.write_text(TINY_AGENT)
    patterns = "tokens_pattern = 'tokens: (\\d+)'\ncost_pattern = 'cost: \\$([\\d.]+)'\n"
    agents = "".join(
        f"\n[agents.{name}]\nmodel = \"{model}\"\n{patterns}command = "
        + json.dumps([sys.executable, str(script), tokens, cost, "{files}"]) + "\n"
        for name, model, tokens, cost in (("tiny", "tiny-1", "300", "0.004"),
                                          ("tinier", "tiny-2", "50", "0.0005")))
    (root / "orch.toml").write_text((root / "orch.toml").read_text() + agents)
    tasks = [_plain_task("probe", "true")]
    for task_id, agent, path, ws in (("a1", "tiny", "a.py", "left"),
                                     ("a2", "tiny", "b.py", "left"),
                                     ("b1", "tinier", "c.py", "right")):
        (root / path).write_text("x = 1\n")
        tasks.append({"schema_version": "2.0.0", "task_id": task_id, "workstream_id": ws,
                      "name": task_id, "type": "custom",
                      "execution": {"executor": "agent", "agent": agent,
                                    "prompt": f"touch {path}", "timeout_seconds": 60},
                      "context_requirements": {"required_files": [path]},
                      "validation_rules": {"pre_execution": [], "post_execution": []}})
    write_tasks(root, tasks)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    orch("--root", str(root), "load", check=True)
    proc = run(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code, rep = orch_json("--root", str(root), "audit", "report")
    assert code == 0, rep
    by_model = rep["usage"]["by_model"]
    assert {m: (u["attempts"], u["tokens_used"], u["cost"]) for m, u in by_model.items()} == {
        "tiny-1": (2, 600, 0.008), "tiny-2": (1, 50, 0.0005)}
    assert (rep["workstreams"]["left"]["tokens_used"], rep["workstreams"]["right"]["cost"]) == \
        (600, 0.0005)
    assert rep["tasks"]["a2"]["usage"]["tokens_used"] == 300
    assert rep["summary"]["tokens_used"] == 650
    assert rep["summary"]["cost"] == pytest.approx(0.0085)
    assert rep["usage"]["tasks_without_usage"] == 1 and rep["tasks"]["probe"]["cost"] is None
    out = show(root, "b1")["attempts"][-1]["output"]
    valid_output(out)
    assert out["files_modified"] == ["c.py"] and out["metadata"]["model"] == "tiny-2"
    assert out["commit_message"] and "1 file changed" in out["diff_summary"]
    text = orch("--root", str(root), "audit", "report", check=True).stdout
    assert "model tiny-1: tokens 600, cost $0.008, 2 attempts" in text
    assert "model tiny-2: tokens 50, cost $0.0005, 1 attempts" in text
