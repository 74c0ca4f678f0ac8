"""Metrics (OBS-001/002): .state/metrics.json, the stored samples and their retention, and the
Prometheus/OpenMetrics views, checked against the tables they are computed from.

One real `orch run` (module fixture) gives realistic rows; the windowed numbers (utilization,
"today", retention) are checked on databases whose event timestamps the test controls.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from kernel.base import clock
from kernel.observe import metrics as m
from kernel.observe import metrics_document, prometheus
from kernel.store import db, schema
from kernel.store.machines import load_machines, transition_in_tx
from kernel.store.project import Project
from tests.conftest import REPO, orch, orch_json, run_cli
from tests.e2e import ORCH, make_project, py, query, run, task

# ------------------------------------------------------------------------------ helpers


def _validate(doc: dict[str, Any]) -> None:
    """Against the generated schema file (jsonschema when installed) and the model."""
    schema = json.loads((REPO / "schemas" / "metrics.schema.json").read_text())
    assert schema["$id"] == doc["schema_url"]
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(doc, schema)
    assert m.Metrics.model_validate(doc).model_dump(mode="json") == doc
    # Every required key of the schema is present, section by section.
    assert set(schema["required"]) <= set(doc)
    for name, ref in schema["properties"].items():
        target = ref.get("$ref", "").rsplit("/", 1)[-1]
        if target:
            assert set(schema["$defs"][target]["required"]) <= set(doc[name]), name


def _by_state(conn: apsw.Connection, table: str) -> dict[str, int]:
    return {r["state"]: r["n"] for r in db.rows(
        conn, f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state")}


def _samples(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}."""
    out = {}
    for family in families:
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _secs(a: str, b: str) -> float:
    return clock.epoch(b) - clock.epoch(a)


# ------------------------------------------------------------------------ one real run


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Workstream `good` (a <- b) completes; workstream `bad` (c exits 3, one retry) fails."""
    root = tmp_path_factory.mktemp("metrics") / "p"
    make_project(root, [
        task("a", ws="good"), task("b", ws="good", deps=["a"]),
        task("c", ws="bad", command=py("import sys; sys.exit(3)"), max_retries=1,
             retry_delay=0.05),
    ])
    proc = run(root, workers=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    code, doc = orch_json("--root", str(root), "metrics")
    assert code == 0, doc
    return {"root": root, "doc": doc}


def test_metrics_json_is_written_valid_and_matches_the_printed_document(
        ran: dict[str, Any]) -> None:
    root: Path = ran["root"]
    doc = ran["doc"]
    path = root / ".state" / "metrics.json"
    assert json.loads(path.read_text()) == doc
    assert path.read_text() == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert not (root / ".state" / "metrics.json.tmp").exists()
    _validate(doc)
    assert doc["schema_version"] == m.METRICS_SCHEMA_VERSION
    stored = query(root, "SELECT document FROM metric_sample WHERE sampled_at = ?",
                   (doc["timestamp"],))
    assert [json.loads(r["document"]) for r in stored] == [doc]


def test_metrics_json_counts_equal_the_tables(ran: dict[str, Any]) -> None:
    root: Path = ran["root"]
    doc = ran["doc"]
    conn = schema.connect(root / ".state" / "kernel.db", readonly=True)
    try:
        tasks, workers, ws = (_by_state(conn, t) for t in ("task", "worker", "workstream"))
        attempts = db.rows(conn, "SELECT * FROM attempt")
        n_events = {r["event"]: r["n"] for r in db.rows(
            conn, "SELECT event, COUNT(*) AS n FROM event GROUP BY event")}
    finally:
        conn.close()
    assert tasks == {"completed": 2, "failed": 1}
    for state in m.TASK_STATES:
        assert doc["tasks"][state] == tasks.get(state, 0), state
    assert doc["tasks"]["total"] == 3
    for state in m.WORKER_STATES:
        assert doc["workers"][state] == workers.get(state, 0), state
    assert doc["workers"]["total"] == sum(n for s, n in workers.items() if s != "shutdown")
    # Every worker of the run stopped at its end (the second of the two may not have
    # registered at all: one worker can finish three quick tasks before it starts).
    assert set(workers) == {"shutdown"} and 1 <= doc["workers"]["shutdown"] <= 2
    assert 0 < doc["workers"]["avg_utilization"] <= 1
    for state in m.WORKSTREAM_STATES:
        assert doc["workstreams"][state] == ws.get(state, 0), state
    assert ws == {"completed": 1, "failed": 1}
    assert (doc["workstreams"]["completed_today"], doc["workstreams"]["failed_today"],
            doc["workstreams"]["active"]) == (1, 1, 0)
    ok = [_secs(a["started_at"], a["finished_at"]) for a in attempts
          if a["outcome"] == "succeeded"]
    assert len(ok) == 2
    assert doc["tasks"]["avg_duration_seconds"] == pytest.approx(sum(ok) / len(ok), abs=0.002)
    assert doc["tasks"]["completion_rate_per_hour"] == n_events["task_completed"] == 2
    # c failed twice (the retried attempt and the last one); its workstream failed once.
    assert doc["errors"]["Task-Failed"] == 2
    assert doc["errors"]["Workstream-Failed"] == 1
    assert sum(doc["errors"].values()) == 3


def test_the_prometheus_endpoint_serves_the_database_and_stops_on_ctrl_c(
        ran: dict[str, Any]) -> None:
    root: Path = ran["root"]
    proc = subprocess.Popen([ORCH, "--root", str(root), "metrics", "--serve", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert found, line + (proc.stderr.read() if proc.stderr else "")
        url = found.group(0)
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    samples = _samples(parse_prometheus(text))
    conn = schema.connect(root / ".state" / "kernel.db", readonly=True)
    try:
        tasks, workers = _by_state(conn, "task"), _by_state(conn, "worker")
        n_events = db.scalar(conn, "SELECT COUNT(*) FROM event")
        by_sev = {r["severity"]: r["n"] for r in db.rows(
            conn, "SELECT severity, COUNT(*) AS n FROM event GROUP BY severity")}
        attempts = db.rows(conn, "SELECT * FROM attempt")
        worker_events = db.rows(conn, "SELECT * FROM event WHERE entity_type = 'worker' "
                                      "ORDER BY entity_id, seq")
        failures = {r["mode_id"]: r["n"] for r in db.rows(
            conn, "SELECT mode_id, COUNT(*) AS n FROM failure_occurrence GROUP BY mode_id")}
        modes = [r[0] for r in conn.execute("SELECT mode_id FROM failure_mode")]
    finally:
        conn.close()
    for state in m.TASK_STATES:
        assert _value(samples, "orch_tasks", state=state) == tasks.get(state, 0)
    for state in m.WORKER_STATES:
        assert _value(samples, "orch_workers", state=state) == workers.get(state, 0)
    assert _value(samples, "orch_workstreams", state="failed") == 1
    assert _value(samples, "orch_tasks_completed_total") == 2
    assert _value(samples, "orch_tasks_failed_total") == 1
    assert sum(_value(samples, "orch_events_total", severity=s) for s in m.SEVERITIES) \
        == n_events
    for sev in m.SEVERITIES:
        assert _value(samples, "orch_events_total", severity=sev) == by_sev.get(sev, 0)
    for mode in modes:
        assert _value(samples, "orch_failures_total", mode=mode) == failures.get(mode, 0)
    assert failures == {"Task-Failed": 2, "Workstream-Failed": 1}
    # Histograms: counts and sums equal the rows they come from; buckets are cumulative.
    for outcome in ("succeeded", "failed"):
        got = [_secs(a["started_at"], a["finished_at"]) for a in attempts
               if a["outcome"] == outcome]
        assert _value(samples, "orch_task_attempt_duration_seconds_count",
                      outcome=outcome) == len(got) == 2
        assert _value(samples, "orch_task_attempt_duration_seconds_sum",
                      outcome=outcome) == pytest.approx(sum(got), abs=0.005)
        bounds = [*(prometheus._bound(b) for b in m.ATTEMPT_DURATION_BUCKETS), "+Inf"]
        counts = [_value(samples, "orch_task_attempt_duration_seconds_bucket",
                         outcome=outcome, le=b) for b in bounds]
        assert counts == sorted(counts) and counts[-1] == len(got)
    for state in ("completed", "failed"):
        assert _value(samples, "orch_workstream_duration_seconds_count", state=state) == 1
    busy_stays = sum(1 for e, nxt in zip(worker_events, worker_events[1:], strict=False)
                     if e["entity_id"] == nxt["entity_id"] and e["to_state"] == "busy")
    assert busy_stays >= 2  # three attempts ran
    assert _value(samples, "orch_worker_state_duration_seconds_count", state="busy") \
        == busy_stays


def test_the_openmetrics_file_and_the_negotiated_scrape_parse(ran: dict[str, Any],
                                                               tmp_path: Path) -> None:
    root: Path = ran["root"]
    out = tmp_path / "orch.prom"
    code, doc = orch_json("--root", str(root), "metrics", "--openmetrics", str(out))
    assert code == 0, doc
    text = out.read_text()
    assert doc == {"openmetrics": {"file": str(out), "bytes": len(text.encode())}}
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["orch_tasks_completed"].type == "counter"
    assert families["orch_task_attempt_duration_seconds"].type == "histogram"
    assert families["orch_task_attempt_duration_seconds"].unit == "seconds"
    samples = _samples(families.values())
    assert _value(samples, "orch_tasks", state="completed") == 2
    assert _value(samples, "orch_failures_total", mode="Task-Failed") == 2
    # The HTTP server speaks OpenMetrics when asked (in-process server, real socket).
    server, thread = m.start_server(Project(root), "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            scraped = _samples(parse_openmetrics(resp.read().decode()))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert _value(scraped, "orch_tasks", state="failed") == 1
    assert _value(scraped, "orch_failures_total", mode="Workstream-Failed") == 1


# ----------------------------------------------------- controlled clocks, no real run

T0 = datetime(2030, 1, 2, 10, 0, tzinfo=UTC).timestamp()  # 10:00 UTC


def _at(seconds: float) -> dict[str, Any]:
    return {"at": clock.iso(T0 + seconds)}


def _worker(conn: apsw.Connection, worker_id: str, offset: float) -> None:
    conn.execute("INSERT INTO worker (worker_id, transition_metadata) VALUES (?, ?)",
                  (worker_id, json.dumps(_at(offset))))
    transition_in_tx(conn, "worker", worker_id, "idle", "registration_complete", _at(offset))


def test_utilization_is_busy_share_of_alive_time_over_the_last_hour(
        fresh_db: apsw.Connection) -> None:
    c = fresh_db
    with db.write_tx(c):
        # Written in time order, as the kernel writes them (an event is never stamped
        # earlier than the one before it).
        # w1: alive all hour; busy 09:10-09:30 and 09:50-10:00 (still busy now) -> 30 min.
        # w2: busy since before the window, shut down at 09:30 -> 30 min alive, all busy.
        # w3: registered at 09:45, idle since -> 15 min alive, never busy.
        # w4: stopped long before the window: not counted.
        _worker(c, "w4", -9000)
        transition_in_tx(c, "worker", "w4", "shutdown", "shutdown_requested", _at(-8000))
        _worker(c, "w1", -7200)
        _worker(c, "w2", -5000)
        transition_in_tx(c, "worker", "w2", "busy", "task_assigned", _at(-4000))
        transition_in_tx(c, "worker", "w1", "busy", "task_assigned", _at(-3000))
        transition_in_tx(c, "worker", "w1", "idle", "task_completed", _at(-1800))
        transition_in_tx(c, "worker", "w2", "shutdown", "shutdown_requested", _at(-1800))
        _worker(c, "w3", -900)
        transition_in_tx(c, "worker", "w1", "busy", "task_assigned", _at(-600))
    doc = m.collect(c, T0)
    alive, busy = 3600 + 1800 + 900, 1800 + 1800
    assert doc["workers"]["avg_utilization"] == round(busy / alive, 4)
    assert (doc["workers"]["total"], doc["workers"]["busy"], doc["workers"]["idle"],
            doc["workers"]["shutdown"]) == (2, 1, 1, 2)
    # An hour later, nothing was busy in between except w1, still busy all along.
    assert m.collect(c, T0 + 3600)["workers"]["avg_utilization"] == round(3600 / 7200, 4)
    assert m.collect(fresh_db, T0 + 86400 * 365)["workers"]["avg_utilization"] == 0.5


def test_errors_count_failure_occurrences_of_today_once_each(
        db_with_workstream: apsw.Connection) -> None:
    c = db_with_workstream
    yesterday = -11 * 3600  # 23:00 UTC the day before
    with db.write_tx(c):
        transition_in_tx(c, "task", "a", "queued", "scheduler_assigned", _at(yesterday))
        transition_in_tx(c, "task", "a", "running", "worker_started", _at(yesterday),
                         worker_id="w1")
        transition_in_tx(c, "task", "a", "retrying", "task_timeout",
                         {**_at(yesterday), "failure_mode": "Task-Timeout"},
                         worker_id=None, retry_count=1)
        transition_in_tx(c, "task", "a", "queued", "retry_delay_elapsed", _at(-600))
        transition_in_tx(c, "task", "a", "running", "worker_started", _at(-500), worker_id="w1")
        transition_in_tx(c, "worker", "w1", "busy", "task_assigned", _at(-500))
        # w1 crashes: the task is handed on (same mode, not a second occurrence).
        transition_in_tx(c, "task", "a", "retrying", "worker_lost",
                         {**_at(-400), "failure_mode": "Worker-Crashed"},
                         worker_id=None, retry_count=2)
        transition_in_tx(c, "worker", "w1", "shutdown", "worker_crashed",
                         {**_at(-400), "failure_mode": "Worker-Crashed"})
        # w2 goes silent, then is shut down for it: one Worker-Unresponsive.
        transition_in_tx(c, "worker", "w2", "unresponsive", "health_check_timeout", _at(-300))
        transition_in_tx(c, "worker", "w2", "shutdown", "max_timeout_exceeded",
                         {**_at(-100), "failure_mode": "Worker-Unresponsive"})
        c.execute("INSERT INTO event (timestamp, event, event_type, severity, entity_type, "
                  "entity_id, task_id, workstream_id, trigger, metadata) VALUES "
                  "(?, 'resource_exhausted', 'resource', 'critical', 'resource', 'gpu', 'b', "
                  "'ws', 'lease_impossible', ?)",
                  (clock.iso(T0 - 50), json.dumps({"failure_mode": "Resource-Exhaustion"})))
    doc = m.collect(c, T0)
    modes = [r[0] for r in c.execute("SELECT mode_id FROM failure_mode ORDER BY mode_id")]
    assert sorted(doc["errors"]) == modes
    assert {k: v for k, v in doc["errors"].items() if v} == {
        "Worker-Crashed": 1, "Worker-Unresponsive": 1, "Resource-Exhaustion": 1}
    assert doc["window"] == {"today_since": "2030-01-02T00:00:00.000Z",
                             "last_hour_since": "2030-01-02T09:00:00.000Z"}
    # errors_since: the same counts from a moment on, or over the whole log with None.
    assert metrics_document.errors_since(c, doc["window"]["today_since"]) == doc["errors"]
    assert {k: v for k, v in metrics_document.errors_since(c, None).items() if v} == {
        "Task-Timeout": 1, "Worker-Crashed": 1, "Worker-Unresponsive": 1,
        "Resource-Exhaustion": 1}
    assert metrics_document.pairs(c, "SELECT severity, COUNT(*) FROM event WHERE seq > ? "
                                     "GROUP BY severity", (0,)) == {
        r["severity"]: r["n"] for r in db.rows(
            c, "SELECT severity, COUNT(*) AS n FROM event GROUP BY severity")}
    # The Prometheus counters are totals over the whole log: yesterday's timeout counts.
    samples = _samples(parse_openmetrics(m.render_openmetrics(c, T0).decode()))
    assert _value(samples, "orch_failures_total", mode="Task-Timeout") == 1
    assert _value(samples, "orch_failures_total", mode="Worker-Crashed") == 1
    assert _value(samples, "orch_failures_total", mode="Worker-Unresponsive") == 1
    assert _value(samples, "orch_workers", state="shutdown") == 2
    assert _value(samples, "orch_worker_state_duration_seconds_count", state="busy") == 1
    assert _value(samples, "orch_worker_state_duration_seconds_sum", state="busy") \
        == pytest.approx(100)


def test_samples_are_kept_30_days_and_older_ones_pruned(fresh_db: apsw.Connection,
                                                        tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    day = 86400.0
    for k in range(41):  # one sample a day, for 41 days
        doc = m.write_metrics(fresh_db, state_dir, T0 + k * day)
    kept = m.samples(fresh_db)
    # The last sample is day 40: days 10..40 stay (day 10 is exactly 30 days old).
    assert [d["timestamp"] for d in kept] == [clock.iso(T0 + k * day) for k in range(10, 41)]
    assert kept[-1] == doc == json.loads((state_dir / "metrics.json").read_text())
    assert not (state_dir / "metrics.json.tmp").exists()
    assert [d["timestamp"] for d in m.samples(fresh_db, since=T0 + 39 * day)] == \
        [clock.iso(T0 + 39 * day), clock.iso(T0 + 40 * day)]
    assert len(m.samples(fresh_db, since=clock.iso(T0 + 20 * day),
                         until=T0 + 29 * day)) == 10
    # A longer retention keeps more; a shorter one than 30 days is refused.
    m.write_metrics(fresh_db, state_dir, T0 + 41 * day, retention_days=45)
    assert len(m.samples(fresh_db)) == 32
    with pytest.raises(ValueError, match="at least 30 days"):
        m.write_metrics(fresh_db, state_dir, T0 + 42 * day, retention_days=7)
    with db.write_tx(fresh_db):
        assert m.prune_in_tx(fresh_db, T0 + 42 * day) == 2  # days 10 and 11 are over 30 days old
    # The history views Datasette shows: one row per sample, one per (sample, mode).
    history = db.rows(fresh_db, "SELECT * FROM metric_history ORDER BY sampled_at")
    assert len(history) == 30 and history[-1]["sampled_at"] == clock.iso(T0 + 41 * day)
    assert history[-1]["tasks_pending"] == 0 and history[-1]["errors_today"] == 0
    modes = db.scalar(fresh_db, "SELECT COUNT(*) FROM failure_mode")
    assert db.scalar(fresh_db, "SELECT COUNT(*) FROM metric_history_errors") == 30 * modes


def test_the_ticker_is_due_first_then_every_interval() -> None:
    ticker = m.MetricsTicker(60)
    assert ticker.due(1000.0)
    assert not ticker.due(1059.9)
    assert ticker.due(1060.0)
    assert not ticker.due(1100.0)
    assert ticker.due(1200.0)
    with pytest.raises(ValueError):
        m.MetricsTicker(0)


def test_the_model_has_a_field_for_every_machine_state() -> None:
    machines = load_machines()
    sections = {"task": m.TaskMetrics, "worker": m.WorkerMetrics,
                "workstream": m.WorkstreamMetrics}
    for name, model in sections.items():
        states = {s.name for s in machines[name].states}
        assert states <= set(model.model_fields), name
    assert set(m.TASK_STATES) == {s.name for s in machines["task"].states}
    assert set(m.WORKER_STATES) == {s.name for s in machines["worker"].states}
    assert set(m.WORKSTREAM_STATES) == {s.name for s in machines["workstream"].states}


# -------------------------------------------------------------------------------- the CLI


def test_cli_prints_the_document_and_lists_the_history(project: Project,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    root = str(project.root)
    assert run_cli("--root", root, "--json", "metrics") == 0
    doc = json.loads(capsys.readouterr().out)
    _validate(doc)
    assert json.loads((project.state_dir / "metrics.json").read_text()) == doc
    assert run_cli("--root", root, "metrics") == 0
    text = capsys.readouterr().out
    assert "errors today none" in text and "metrics.json" in text
    assert run_cli("--root", root, "metrics", "--history", "--json", "--since", "1h") == 0
    history = json.loads(capsys.readouterr().out)["samples"]
    assert len(history) == 2 and history[0] == doc
    assert run_cli("--root", root, "metrics", "--history", "--since", "2000-01-01T00:00:00Z") == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # header + 2 samples


@pytest.mark.parametrize(("args", "code", "error"), [
    (["--serve", "0.0.0.0:9464"], 2, "remote_address_refused"),
    (["--serve", "localhost"], 2, "usage"),
    (["--serve", "127.0.0.1:99999"], 2, "usage"),
    (["--serve", "127.0.0.1:0", "--history"], 2, "usage"),
    (["--history", "--since", "yesterday-ish"], 2, "usage"),
])
def test_cli_refuses_bad_usage_with_a_hint(project: Project, args: list[str], code: int,
                                           error: str) -> None:
    proc = orch("--root", str(project.root), "--json", "metrics", *args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["code"] == error and err["hint"]


def test_cli_parses_addresses_and_durations() -> None:
    from kernel.cli.metrics import parse_address, parse_since

    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_since("90m", 10_000.0) == 10_000.0 - 5400
    assert parse_since("2030-01-02T10:00:00.000Z", 0) == T0
    assert m.is_loopback("::1") and m.is_loopback("127.0.0.2") and m.is_loopback("localhost")
    assert not m.is_loopback("0.0.0.0") and not m.is_loopback("example.org")
