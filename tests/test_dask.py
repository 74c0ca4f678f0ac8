"""`orch run --executor dask`: the same tasks on a real Dask cluster of worker processes.

Two clusters, both real: the LocalCluster that `orch run --executor dask` starts by itself, and
one started as a user starts one across machines (`dask scheduler`, `dask worker`), which
`--scheduler-address` joins. Every command is the real `orch` CLI; the state is read back from
the database and the event log.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import orch
from tests.e2e import (
    ORCH,
    PY,
    events,
    make_project,
    pid_gone,
    query,
    resource,
    states,
    stop,
    task,
    wait_for,
)
from tools.dask_kill_campaign import DaskCluster
from tools.kill_campaign import LEDGER_SCRIPT

distributed = pytest.importorskip("distributed")  # the dask extra (installed by the tests)


def _ledger(tmp_path: Path) -> tuple[Path, Callable[[float], str]]:
    """The kill campaign's ledger: a task command that holds a lock on its own file while it
    runs (a second run of it at the same time writes "overlap"); (the ledger, the command for
    a task of that many seconds)."""
    locks = tmp_path / "locks"
    locks.mkdir()
    script = tmp_path / "ledger_task.py"
    script.write_text(LEDGER_SCRIPT)
    ledger = tmp_path / "ledger.txt"
    return ledger, lambda seconds: f"{PY} {script} {ledger} {locks} {seconds}"


def _run_on(root: Path, cluster: DaskCluster) -> subprocess.Popen[str]:
    """`orch run` on the cluster, in the background."""
    return subprocess.Popen([ORCH, "--root", str(root), "run", "--executor", "dask",
                             "--scheduler-address", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    found = DaskCluster(tmp_path)
    try:
        yield found
    finally:
        found.close()


def _shape(root: Path) -> collections.Counter[tuple[str, str, str]]:
    """The event log's shape: how many events of each kind each task and workstream had."""
    return collections.Counter(
        (e["entity_type"], e["event_type"], e.get("trigger") or "")
        for e in events(root) if e["entity_type"] in ("task", "workstream"))


def _dag(n: int) -> list[dict[str, Any]]:
    """``n`` tasks in 3 workstreams: chains, fan-outs and fan-ins."""
    tasks = []
    for i in range(n):
        ws = f"ws{i % 3}"
        deps = [f"t{j:03d}" for j in (i - 3, i - 6) if j >= 0 and (i - j) % 3 == 0 and i % 4]
        tasks.append(task(f"t{i:03d}", ws=ws, deps=deps, command="true"))
    return tasks


def test_a_300_task_dag_runs_on_a_local_cluster_with_the_local_event_shape(
        tmp_path: Path) -> None:
    local = make_project(tmp_path / "local", _dag(300))
    on_dask = make_project(tmp_path / "dask", _dag(300))
    assert orch("--root", str(local), "run", "--workers", "2").returncode == 0
    done = orch("--root", str(on_dask), "--json", "run", "--executor", "dask", "--workers", "2")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["counts"] == {"completed": 300}
    assert _shape(on_dask) == _shape(local)
    workers = query(on_dask, "SELECT name, executor FROM worker")
    assert len(workers) == 2 and all(w["name"].startswith("dask:tcp://") and
                                     w["executor"] == "dask" for w in workers)
    ran = query(on_dask, "SELECT DISTINCT w.name FROM attempt a JOIN worker w "
                         "ON w.worker_id = a.worker_id")
    assert len(ran) == 2                    # both Dask workers ran tasks
    log = (on_dask / ".state" / "logs" / "t299.log").read_text()
    assert log.startswith("==== on Dask worker tcp://") and "attempt 1 ended: exit 0" in log


def test_killing_a_dask_worker_mid_task_hands_it_on_with_no_overlap(
        tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(2)
    ledger, ledger_cmd = _ledger(tmp_path)
    tasks = [task(f"t{i:02d}", command=ledger_cmd(1.5), max_retries=3,
                  retry_delay=0.05) for i in range(8)]
    root = make_project(tmp_path / "proj", tasks)
    proc = _run_on(root, cluster)
    # The Dask worker running the first task to start is killed (SIGKILL) mid-task.
    first = wait_for(lambda: query(root, "SELECT a.task_id, a.pgid, w.name FROM attempt a "
                                         "JOIN worker w ON w.worker_id = a.worker_id "
                                         "WHERE a.pgid IS NOT NULL AND a.finished_at IS NULL "
                                         "LIMIT 1"), timeout=60)[0]
    time.sleep(0.3)
    victim = cluster.pids()[first["name"].removeprefix("dask:")]
    os.kill(victim, signal.SIGKILL)
    code, out, err = stop(proc, timeout=120)
    assert code == 0, err
    assert set(states(root).values()) == {"completed"}
    lines = ledger.read_text().splitlines()
    assert not [ln for ln in lines if ln.startswith("overlap")]
    lost = events(root, event="worker_lost")
    assert len(lost) == 1 and "left the cluster" in lost[0]["metadata"]["reason"]
    assert first["task_id"] in lost[0]["metadata"]["tasks_handed_on"]
    again = query(root, "SELECT generation, attempt_no FROM attempt WHERE task_id = ? "
                        "ORDER BY attempt_no", (first["task_id"],))
    assert [a["generation"] for a in again] == [1, 2]
    assert pid_gone(first["pgid"])           # the killed worker's command died with it
    starts = [ln.split() for ln in lines if ln.startswith("start")]
    assert len(starts) == 9                  # 8 tasks, one of them twice


def test_cancel_reaches_the_remote_process(tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(1)
    pidfile = tmp_path / "pid"
    root = make_project(tmp_path / "proj", [
        task("slow", command=f"{PY} -c \"import os,time; open('{pidfile}','w')"
                             f".write(str(os.getpid())); time.sleep(120)\"", timeout=300)])
    proc = _run_on(root, cluster)
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=60))
    assert orch("--root", str(root), "cancel", "slow").returncode == 0
    wait_for(lambda: pid_gone(pid), timeout=30)
    code, _, err = stop(proc, timeout=60)
    assert code == 1 and states(root) == {"slow": "cancelled"}, err
    log = (root / ".state" / "logs" / "slow.log").read_text()
    assert "cancelled" in log and "process group killed" in log


def test_a_timeout_is_enforced_on_the_worker_and_a_long_log_comes_back_whole(
        tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(1)
    chatty = f"{PY} -c \"import sys; sys.stdout.write('x' * 6_000_000 + '\\nEND\\n')\""
    root = make_project(tmp_path / "proj", [task("slow", command="sleep 60", timeout=1),
                                            task("chatty", command=chatty)])
    code, _, err = stop(_run_on(root, cluster), timeout=90)
    assert code == 1 and states(root) == {"slow": "failed", "chatty": "completed"}, err
    log = (root / ".state" / "logs" / "chatty.log").read_text()
    assert log.count("x") >= 6_000_000 and "\nEND\n" in log and "ended: exit 0" in log
    attempt = query(root, "SELECT outcome, error_message FROM attempt "
                          "WHERE task_id = 'slow'")[0]
    assert attempt["outcome"] == "timeout" and "timed out after 1 s" in attempt["error_message"]
    assert "timed out after 1 s; process group killed" in \
        (root / ".state" / "logs" / "slow.log").read_text()


def test_a_task_asking_for_two_cores_lands_only_on_a_worker_advertising_them(
        tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(1, "cpu_cores=1")
    cluster.add_workers(1, "cpu_cores=4")
    big = {a for a, w in cluster.workers().items() if w["resources"].get("cpu_cores") == 4}
    tasks = [task(f"big{i}", command="true", resources={"cpu_cores": 2}) for i in range(6)]
    tasks += [task(f"small{i}", command="true", resources={"cpu_cores": 1}) for i in range(6)]
    root = make_project(tmp_path / "proj", tasks)
    proc = _run_on(root, cluster)
    code, _, err = stop(proc, timeout=120)
    assert code == 0, err
    ran = query(root, "SELECT a.task_id, w.name FROM attempt a JOIN worker w "
                      "ON w.worker_id = a.worker_id")
    assert {r["name"].removeprefix("dask:") for r in ran if r["task_id"].startswith("big")} \
        == big
    advertised = query(root, "SELECT w.name, r.resource_id, r.amount FROM worker_resource r "
                             "JOIN worker w ON w.worker_id = r.worker_id")
    assert sorted(a["amount"] for a in advertised) == [1.0, 4.0]
    assert {a["resource_id"] for a in advertised} == {"cpu_cores"}
    # Asking for more than any Dask worker advertises: the run ends and says why.
    huge = make_project(tmp_path / "huge", [task("huge", command="true",
                                                 resources={"cpu_cores": 6})],
                        resources=lambda doc: resource(doc, "cpu_cores").update(max_per_task=8))
    proc = _run_on(huge, cluster)
    code, out, err = stop(proc, timeout=120)
    why = "no registered worker advertises enough cpu_cores (it asks 6, the most a worker " \
          "advertises is 4)"
    assert code == 1 and states(huge) == {"huge": "queued"} and why in out, (out, err)


def test_a_working_directory_missing_on_the_worker_is_a_clear_error(
        tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(1)
    doc = task("here", command="true")
    doc["execution"]["working_directory"] = "generated"
    root = make_project(tmp_path / "proj", [doc])
    proc = _run_on(root, cluster)
    code, _, _ = stop(proc, timeout=60)
    assert code == 1 and states(root) == {"here": "failed"}
    error = query(root, "SELECT error_message FROM attempt WHERE task_id = 'here'"
                  )[0]["error_message"]
    assert "does not exist on Dask worker tcp://" in error
    assert "setup_command" in error and "shared file system" in error
    # The set-up command makes it there, and the same task runs.
    (root / "orch.toml").write_text((root / "orch.toml").read_text() +
                                    '\n[executors.dask]\nsetup_command = '
                                    '"mkdir -p \\"$ORCH_WORKTREE/generated\\""\n')
    assert orch("--root", str(root), "retry", "here").returncode == 0
    proc = _run_on(root, cluster)
    code, _, err = stop(proc, timeout=60)
    assert code == 0 and states(root) == {"here": "completed"}, err
    assert "==== set-up on" in (root / ".state" / "logs" / "here.log").read_text()


def test_an_unreachable_scheduler_is_a_clear_error_and_nothing_runs(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", [task("a")],
                        toml_extra="\n[executors.dask]\nconnect_timeout_seconds = 2\n")
    done = orch("--root", str(root), "run", "--scheduler-address", "tcp://127.0.0.1:9")
    assert done.returncode == 1
    assert "could not reach the Dask scheduler at tcp://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
    assert states(root) == {"a": "pending"} or states(root) == {"a": "queued"}


@pytest.mark.parametrize("args, message", [
    (["--scheduler-address", "10.0.0.5:8786"], "is not a Dask address"),
    (["--executor", "local", "--scheduler-address", "tcp://h:1"], "is for --executor dask"),
    (["--executor", "dask", "--workers", "0"], "would start none"),
])
def test_dask_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    root = make_project(tmp_path / "proj", [task("a")])
    done = orch("--root", str(root), "run", *args)
    assert done.returncode == 2 and message in done.stderr


def test_without_the_dask_extra_the_error_says_how_to_install_it(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", [task("a")])
    # An interpreter where `distributed` cannot be imported: a package of that name that fails
    # first on the path, as it fails where the extra is not installed.
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    done = subprocess.run([sys.executable, "-m", "kernel", "--root", str(root), "run",
                           "--executor", "dask"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert "pip install 'orch-kernel[dask]'" in done.stderr and "Traceback" not in done.stderr
    assert states(root) == {"a": "pending"} or states(root) == {"a": "queued"}


def test_the_example_project_runs_unchanged_on_dask_agents_and_commits_included(
        tmp_path: Path) -> None:
    root = tmp_path / "example"
    root.mkdir()
    assert orch("--root", str(root), "init", "--example").returncode == 0
    assert orch("--root", str(root), "load").returncode == 0
    done = orch("--root", str(root), "run", "--executor", "dask", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert set(states(root).values()) == {"completed"}
    agents = query(root, "SELECT a.task_id, w.name FROM attempt a JOIN worker w "
                         "ON w.worker_id = a.worker_id JOIN task t ON t.task_id = a.task_id "
                         "WHERE t.type = 'aider' OR t.definition LIKE '%\"agent\"%'")
    assert agents and all(a["name"].startswith("dask:tcp://") for a in agents)
    subjects = subprocess.run(["git", "log", "--format=%s", "main"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
    assert "orch: merge workstream word-count" in subjects


def test_a_dask_worker_the_scheduler_stops_hearing_from_goes_unresponsive_then_lost(
        tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(2)
    ledger, ledger_cmd = _ledger(tmp_path)
    root = make_project(tmp_path / "proj", [
        task("long", command=ledger_cmd(20), max_retries=2, timeout=120),
        task("after", deps=["long"], command="true")])
    proc = _run_on(root, cluster)
    first = wait_for(lambda: query(root, "SELECT a.pgid, w.name, w.worker_id FROM attempt a "
                                         "JOIN worker w ON w.worker_id = a.worker_id "
                                         "WHERE a.pgid IS NOT NULL"), timeout=60)[0]
    frozen = cluster.pids()[first["name"].removeprefix("dask:")]
    os.kill(frozen, signal.SIGSTOP)       # alive, but silent: the scheduler stops hearing it
    try:
        wait_for(lambda: query(root, "SELECT 1 FROM event WHERE entity_id = ? AND trigger = "
                                     "'health_check_timeout'", (first["worker_id"],)),
                 timeout=60)
        code, _, err = stop(proc, timeout=120)
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert code == 0 and set(states(root).values()) == {"completed"}, err
    assert not [ln for ln in ledger.read_text().splitlines() if ln.startswith("overlap")]
    lost = events(root, event="worker_lost")
    assert [e["entity_id"] for e in lost] == [first["worker_id"]]
    assert lost[0]["metadata"]["failure_mode"] == "Worker-Unresponsive"
    assert pid_gone(first["pgid"])


def test_a_small_dask_kill_campaign_finds_nothing_wrong(tmp_path: Path) -> None:
    """tools/dask_kill_campaign.py: Dask workers and `orch run` SIGKILLed mid-task."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "tools"
                                               / "dask_kill_campaign.py"),
                           "--tasks", "40", "--kills", "5", "--workers", "2", "--seed", "7",
                           "--keep", str(tmp_path / "campaign"), "--json"],
                          capture_output=True, text=True, timeout=900)
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["problems"] == [], result
    assert result["kills"] == 5 and result["overlaps"] == 0
    assert result["tasks"] == 40 and result["lost_attempts"] >= 1


def test_a_capability_declared_as_a_dask_resource_is_offered_by_that_worker_only(
        tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(1)
    cluster.add_workers(1, "cap-special-001=1")
    declared = {a for a, w in cluster.workers().items() if "cap-special-001" in w["resources"]}

    def add_capability(root: Path) -> None:
        path = root / "capabilities" / "registry.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["capabilities"].append({
            "capability_id": "cap-special-001", "name": "Special", "version": "1.0.0",
            "description": "Needs a program no machine here has.", "provider": "test",
            "stability": "stable", "since_version": "0.1.0", "deprecated_by": None,
            "requirements": {"dependencies": ["no-such-program-for-orch-tests"]},
            "operations": []})
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    tasks = [task(f"s{i}", command="true",
                  worker_requirements={"capabilities": ["cap-special-001"]}) for i in range(4)]
    root = make_project(tmp_path / "proj", tasks, load=False)
    add_capability(root)
    assert orch("--root", str(root), "load").returncode == 0
    code, _, err = stop(_run_on(root, cluster), timeout=120)
    assert code == 0, err
    ran = query(root, "SELECT DISTINCT w.name FROM attempt a JOIN worker w "
                      "ON w.worker_id = a.worker_id")
    assert {r["name"].removeprefix("dask:") for r in ran} == declared


def test_validate_warns_when_orch_toml_asks_for_dask_and_it_is_missing(tmp_path: Path) -> None:
    # The fast orch.toml of the tests ends with its [run] section.
    root = make_project(tmp_path / "proj", [task("a")], toml_extra='executor = "dask"\n')
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    done = subprocess.run([ORCH, "--root", str(root), "--json", "validate"], capture_output=True,
                          text=True, env=env, timeout=120)
    found = [p for p in json.loads(done.stdout)["problems"] if p["code"] == "dask_missing"]
    assert done.returncode == 0 and len(found) == 1 and found[0]["severity"] == "warning"
    assert "pip install 'orch-kernel[dask]'" in found[0]["hint"]
    clean = orch("--root", str(root), "--json", "validate")
    assert not [p for p in json.loads(clean.stdout)["problems"] if p["code"] == "dask_missing"]


def test_with_forever_a_dask_worker_that_joins_runs_what_no_worker_could(
        tmp_path: Path, cluster: DaskCluster) -> None:
    cluster.add_workers(1, "cpu_cores=4")
    root = make_project(tmp_path / "proj", [task("huge", command="true",
                                                 resources={"cpu_cores": 6})],
                        resources=lambda doc: resource(doc, "cpu_cores").update(max_per_task=8))
    proc = subprocess.Popen([ORCH, "--root", str(root), "run", "--forever",
                             "--scheduler-address", cluster.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: query(root, "SELECT 1 FROM event WHERE event = 'task_unrunnable'"),
                 timeout=60)
        why = orch("--root", str(root), "why", "huge").stdout
        assert "no registered worker advertises enough cpu_cores" in why
        assert 'dask worker ADDRESS --resources "NAME=AMOUNT"' in why
        cluster.add_workers(1, "cpu_cores=8")
        wait_for(lambda: states(root) == {"huge": "completed"}, timeout=60)
    finally:
        proc.terminate()
        stop(proc, timeout=60)
    ran = query(root, "SELECT w.name FROM attempt a JOIN worker w ON w.worker_id = a.worker_id")
    big = [a for a, w in cluster.workers().items() if w["resources"].get("cpu_cores") == 8]
    assert [r["name"].removeprefix("dask:") for r in ran] == big
