"""`orch run` end to end: real projects, real worker processes, real commands.

Every ordering and timing claim is read back from the event log (seq is the database's commit
order; timestamps are the writers' clocks), never assumed from sleeps. Worker-loss and
scheduler-crash recovery are in tests/test_recovery.py.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kernel.base import clock
from tests.conftest import orch
from tests.e2e import (
    PY,
    Interval,
    barrier_cmd,
    events,
    first,
    group_gone,
    intervals,
    make_project,
    max_concurrency,
    pid_gone,
    py,
    query,
    resource,
    run,
    sleep_cmd,
    start_run,
    states,
    stop,
    task,
    wait_for,
)

FAIL = f"{PY} -c 'import sys; sys.exit(1)'"


def assert_dependency_order(root: Path, deps: dict[str, list[str]]) -> None:
    """Each task started (seq and time) only after every dependency completed."""
    evs = events(root)
    started = {e["task_id"]: e for e in evs if e["event"] == "task_started"}
    completed = {e["task_id"]: e for e in evs if e["event"] == "task_completed"}
    assert set(completed) == set(deps), "every task completed"
    for tid, parents in deps.items():
        for p in parents:
            assert completed[p]["seq"] < started[tid]["seq"], (p, tid)
            assert completed[p]["timestamp"] <= started[tid]["timestamp"], (p, tid)


# ----------------------------------------------------------------------------- DAGs


def test_diamond_dag_runs_in_dependency_order_with_parallel_branches(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    make_project(root, [
        task("a", command=sleep_cmd(0.05)),
        task("b", deps=["a"], command=barrier_cmd(root, "b", "c")),
        task("c", deps=["a"], command=barrier_cmd(root, "b", "c")),
        task("d", deps=["b", "c"], command=sleep_cmd(0.05)),
    ])
    proc = run(root, workers=4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert states(root) == dict.fromkeys(deps, "completed")
    assert_dependency_order(root, deps)
    ivs = {i.task_id: i for i in intervals(events(root))}
    assert ivs["b"].overlaps(ivs["c"]), "the two branches ran at the same time"
    ws = query(root, "SELECT state FROM workstream")
    assert ws == [{"state": "completed"}]


def test_random_dag_of_200_tasks_completes_in_order_and_in_parallel(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    root = tmp_path / "p"
    root.mkdir()
    names = [f"t{i:03d}" for i in range(200)]
    deps: dict[str, list[str]] = {names[0]: []}
    tasks = [task(names[0], executor="noop")]
    for i in range(1, 200):
        if i <= 2:   # two tasks that wait for each other: two workers must run them at once
            parents, kw = [names[0]], {"command": barrier_cmd(root, *names[1:3])}
        else:
            lo = max(0, i - 30)
            parents = sorted(rng.sample(names[lo:i], min(i - lo, rng.randint(1, 3))))
            kw = {"command": "sleep 0.02"} if rng.random() < 0.15 else {"executor": "noop"}
        deps[names[i]] = parents
        tasks.append(task(names[i], deps=parents, **kw))
    make_project(root, tasks)
    proc = run(root, workers=4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(states(root).values()) == {"completed"}
    assert_dependency_order(root, deps)
    ivs = intervals(events(root))
    assert len(ivs) == 200, "each task ran exactly once"
    assert max_concurrency(ivs) >= 2
    pair = {i.task_id: i for i in ivs if i.task_id in names[1:3]}
    assert pair[names[1]].overlaps(pair[names[2]])
    workers = {r["worker_id"] for r in query(root, "SELECT worker_id FROM attempt")}
    assert len(workers) >= 2, "the work was spread over several workers"


# ----------------------------------------------------------------------------- failures

FLAKY = """\
import pathlib, sys
p = pathlib.Path(sys.argv[1])
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
sys.exit(1 if n <= 2 else 0)
"""

# A command whose child ignores SIGTERM: only SIGKILL of the whole process group stops it.
STUBBORN = """\
import os, subprocess, sys, time
child = '''
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
'''
with open(sys.argv[2], "w") as f:
    f.write(str(os.getpid()))
subprocess.Popen([sys.executable, "-c", child, sys.argv[1]])
time.sleep(60)
"""


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of five independent workstreams that fail (or nearly fail) in different ways."""
    root = tmp_path_factory.mktemp("failures") / "p"
    root.mkdir()
    toml = (f'[rules]\nno_lint_errors = "{FAIL}"\ntests_passing = "{FAIL}"\n')
    make_project(root, [
        task("flaky", ws="retry", command=py(FLAKY, str(root / "flaky.count")),
             max_retries=2, retry_delay=0.2),
        task("doomed", ws="exhaust", command=py("import sys; sys.exit(3)"), max_retries=1,
             retry_delay=0.05),
        task("stuck", ws="timeout", command=py(STUBBORN, str(root / "child.pid"),
                                               str(root / "parent.pid")), timeout=1),
        task("linted", ws="post", post=["no_lint_errors"], max_retries=2),
        task("guarded", ws="pre", pre=["tests_passing"], max_retries=2,
             command=f"touch {root / 'guarded.ran'}"),
    ], toml_extra=toml)
    proc = run(root, workers=4)
    return {"root": root, "proc": proc, "events": events(root), "states": states(root),
            "tasks": {r["task_id"]: r for r in query(root, "SELECT * FROM task")},
            "attempts": query(root, "SELECT * FROM attempt ORDER BY task_id, attempt_no")}


def _attempts(f: dict[str, Any], task_id: str) -> list[dict[str, Any]]:
    return [a for a in f["attempts"] if a["task_id"] == task_id]


def test_the_failure_run_exits_1_and_every_workstream_settles(failures: dict[str, Any]) -> None:
    proc = failures["proc"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert failures["states"] == {"flaky": "completed", "doomed": "failed", "stuck": "failed",
                                  "linted": "failed", "guarded": "failed"}


def test_retries_back_off_exponentially_then_succeed(failures: dict[str, Any]) -> None:
    evs = [e for e in failures["events"] if e["task_id"] == "flaky"]
    retries = [e for e in evs if e["event"] == "task_retry"]
    assert len(retries) == 2
    assert [e["trigger"] for e in retries] == ["execution_failed"] * 2
    for k, retry in enumerate(retries):
        requeued = next(e for e in evs if e["event"] == "task_requeued" and e["seq"] > retry["seq"])
        gap = clock.epoch(requeued["timestamp"]) - clock.epoch(retry["timestamp"])
        want = 0.2 * 2 ** k
        assert retry["metadata"]["delay_seconds"] == pytest.approx(want)
        # Timestamps have millisecond resolution: allow the one millisecond of rounding.
        assert gap >= want - 0.001, (k, gap)
        assert requeued["timestamp"] >= retry["metadata"]["next_attempt_at"]
    assert failures["states"]["flaky"] == "completed"
    assert [a["outcome"] for a in _attempts(failures, "flaky")] == ["failed", "failed",
                                                                    "succeeded"]
    assert failures["tasks"]["flaky"]["retry_count"] == 2


def test_exhausted_retries_fail_the_task_with_its_exit_code(failures: dict[str, Any]) -> None:
    t = failures["tasks"]["doomed"]
    assert (t["state"], t["failure_mode"], t["retry_count"]) == ("failed", "Task-Failed", 1)
    attempts = _attempts(failures, "doomed")
    assert [(a["outcome"], a["exit_code"], a["failure_mode"]) for a in attempts] == \
        [("failed", 3, "Task-Failed")] * 2
    last = [e for e in failures["events"] if e["task_id"] == "doomed"][-1]
    assert (last["event"], last["metadata"]["exit_code"]) == ("task_failed", 3)


def test_a_timeout_kills_the_whole_process_group(failures: dict[str, Any]) -> None:
    root: Path = failures["root"]
    t = failures["tasks"]["stuck"]
    assert (t["state"], t["failure_mode"]) == ("failed", "Task-Timeout")
    ev = first(failures["events"], "task_timeout", "stuck")
    assert ev["trigger"] == "task_timeout" and ev["to_state"] == "failed"
    assert [a["outcome"] for a in _attempts(failures, "stuck")] == ["timeout"]
    # The child ignored SIGTERM; it is gone anyway (SIGKILL to the group after the grace).
    child, parent = (int((root / n).read_text()) for n in ("child.pid", "parent.pid"))
    assert pid_gone(parent)
    assert wait_for(lambda: pid_gone(child), timeout=2, message="the SIGTERM-proof child")


def test_a_failed_post_rule_fails_the_task_without_retry(failures: dict[str, Any]) -> None:
    t = failures["tasks"]["linted"]
    assert (t["state"], t["failure_mode"], t["retry_count"]) == \
        ("failed", "Validation-Failed", 0)
    assert [a["outcome"] for a in _attempts(failures, "linted")] == ["validation_failed"]
    ev = first(failures["events"], "validation_failed", "linted")
    assert "no_lint_errors" in ev["metadata"]["error"]


def test_a_failed_pre_rule_keeps_the_command_from_running(failures: dict[str, Any]) -> None:
    root: Path = failures["root"]
    assert not (root / "guarded.ran").exists()
    t = failures["tasks"]["guarded"]
    assert (t["state"], t["failure_mode"], t["retry_count"]) == \
        ("failed", "Validation-Failed", 0)
    assert [a["outcome"] for a in _attempts(failures, "guarded")] == ["not_started"]
    ev = first(failures["events"], "task_failed", "guarded")
    assert ev["metadata"]["rule"] == "tests_passing"
    assert ev["metadata"]["phase"] == "pre_execution"
    why = orch("--root", str(root), "why", "guarded")
    assert "tests_passing" in why.stdout, why.stdout


# ----------------------------------------------------------------------------- operators


def test_cancel_kills_a_running_task_from_another_process(tmp_path: Path) -> None:
    root = tmp_path / "p"
    pidfile = root / "sleeper.pid"
    make_project(root, [task("sleeper", command=f"sh -c 'echo $$ > {pidfile}; exec sleep 30'",
                             timeout=60)])
    proc = start_run(root, workers=1)
    try:
        pgid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(),
                            message="the task to start"))
        cancel = orch("--root", str(root), "cancel", "sleeper")
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        wait_for(lambda: group_gone(pgid), timeout=2, message="the process group to die")
        code, out, err = stop(proc, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 1, out + err
    assert states(root) == {"sleeper": "cancelled"}
    evs = events(root, task_id="sleeper")
    cancelled = first(evs, "task_cancelled", "sleeper")
    assert (cancelled["from_state"], cancelled["trigger"]) == ("running", "user_cancelled")
    # The worker's own report came after the cancel and was refused (fencing).
    stale = first(evs, "stale_result_rejected", "sleeper")
    assert stale["seq"] > cancelled["seq"]
    assert query(root, "SELECT outcome FROM attempt") == [{"outcome": "cancelled"}]


def test_retry_and_skip_let_a_failed_run_finish(tmp_path: Path) -> None:
    root = tmp_path / "p"
    flag = root / "flag"
    make_project(root, [
        task("x", ws="again", command=f"test -e {flag}"),
        task("a", ws="skipped", command="false"),
        task("b", ws="skipped", deps=["a"], command=f"touch {root / 'b.ran'}"),
    ])
    first_run = run(root, workers=2)
    assert first_run.returncode == 1
    assert states(root) == {"x": "failed", "a": "failed", "b": "pending"}

    flag.touch()
    assert orch("--root", str(root), "retry", "x", "a").returncode == 0
    assert orch("--root", str(root), "skip", "a").returncode == 0
    second = run(root, workers=2)
    assert second.returncode == 0, second.stdout + second.stderr
    assert states(root) == dict.fromkeys("xab", "completed")
    assert (root / "b.ran").exists()
    attempts = query(root, "SELECT task_id, COUNT(*) AS n FROM attempt GROUP BY task_id")
    assert {r["task_id"]: r["n"] for r in attempts} == {"x": 2, "a": 1, "b": 1}
    evs = events(root)
    skip = first(evs, "task_skipped", "a")
    assert first(evs, "task_started", "b")["seq"] > skip["seq"]
    assert first(evs, "task_reset", "x")["trigger"] == "operator_reset"


# ----------------------------------------------------------------------------- leases


@pytest.fixture(scope="module")
def contended(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of three groups of tasks fighting over an exclusive resource, a pool of 4 cpu
    cores (2 per task; cpu-0 and cpu-1 wait for each other) and a token bucket (capacity 2,
    5 tokens per second)."""
    root = tmp_path_factory.mktemp("leases") / "p"
    root.mkdir()

    def small(doc: list[dict[str, Any]]) -> None:
        resource(doc, "cpu_cores").update(capacity=4, max_per_task=4)
        resource(doc, "api_quota_openai").update(capacity=2, refill_rate="5/second")

    tasks = [task(f"ex-{i}", command="sleep 0.05", resources={"git_repo_write": "exclusive"})
             for i in range(8)]
    tasks += [task(f"cpu-{i}", resources={"cpu_cores": 2},
                   command=barrier_cmd(root, "cpu-0", "cpu-1") if i < 2 else "sleep 0.1")
              for i in range(6)]
    tasks += [task(f"rate-{i}", executor="noop", resources={"api_quota_openai": 1})
              for i in range(8)]
    make_project(root, tasks, resources=small)
    proc = run(root, workers=4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evs = events(root)
    return {"root": root, "events": evs, "intervals": intervals(evs)}


def _group(c: dict[str, Any], prefix: str) -> list[Interval]:
    return [i for i in c["intervals"] if i.task_id.startswith(prefix)]


def test_an_exclusive_resource_never_has_two_holders(contended: dict[str, Any]) -> None:
    ivs = _group(contended, "ex-")
    assert len(ivs) == 8
    assert all(i.resources == {"git_repo_write": "exclusive"} for i in ivs)
    for a in ivs:
        for b in ivs:
            assert a is b or not a.overlaps(b), (a, b)


def test_a_pool_never_gives_out_more_units_than_it_has(contended: dict[str, Any]) -> None:
    ivs = _group(contended, "cpu-")
    assert len(ivs) == 6
    held, peak = 0.0, 0.0
    for _, delta in sorted([(i.start, i.resources["cpu_cores"]) for i in ivs]
                           + [(i.end, -i.resources["cpu_cores"]) for i in ivs]):
        held += delta
        peak = max(peak, held)
        assert held <= 4, "more than the pool's 4 units were held at once"
    assert peak == 4, "cpu-0 and cpu-1 shared the pool"


def test_a_rate_limit_never_admits_more_than_its_bucket(contended: dict[str, Any]) -> None:
    starts = [e for e in contended["events"]
              if e["event"] == "task_started" and e["task_id"].startswith("rate-")]
    assert len(starts) == 8
    # Claims are stamped under the write lock, so start times increase with seq; the bucket then
    # allows, in any window of starts i..j, at most capacity + rate * (t_j - t_i) of them.
    times = [clock.epoch(e["timestamp"]) for e in starts]
    assert times == sorted(times)
    all_starts = [e["timestamp"] for e in contended["events"] if e["event"] == "task_started"]
    assert all_starts == sorted(all_starts)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= 2 + 5 * (times[j] - times[i]) + 1e-3, (i, j, times)
    assert times[-1] - times[0] >= (8 - 2) / 5 - 1e-3


# ----------------------------------------------------------------------------- the lock


def test_a_second_run_exits_1_and_names_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "p"
    release = root / "release"
    make_project(root, [task("hold", command=f"sh -c 'while [ ! -e {release} ]; do "
                                             f"sleep 0.02; done'")])
    proc = start_run(root, workers=1)
    try:
        wait_for(lambda: query(root, "SELECT pid FROM scheduler_lock"), message="the lock")
        second = orch("--root", str(root), "run", "--workers", "1")
        assert second.returncode == 1
        assert f"pid {proc.pid}" in second.stdout + second.stderr, second.stderr
        as_json = orch("--root", str(root), "--json", "run", "--workers", "1")
        assert as_json.returncode == 1
        error = json.loads(as_json.stdout)["error"]
        assert error["code"] == "scheduler_running" and str(proc.pid) in error["message"]
        release.touch()
        code, out, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, out + err
    assert states(root) == {"hold": "completed"}
    assert query(root, "SELECT * FROM scheduler_lock") == []


# ----------------------------------------------------------------------------- worktrees


def git(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                          timeout=30)


def test_workstreams_run_in_worktrees_merge_on_success_and_keep_failures(
        tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for args in (("init", "-q", "-b", "main"), ("config", "user.name", "Test"),
                 ("config", "user.email", "test@example.com")):
        assert git(root, *args).returncode == 0
    (root / "README").write_text("hello\n")
    make_project(root, [
        task("write", ws="good", command="sh -c 'echo made by orch > out.txt'"),
        task("boom", ws="bad", command="sh -c 'echo partial > bad.txt; exit 1'", critical=True),
        task("after", ws="bad", deps=["boom"]),
    ], worktrees=True, load=False)
    assert git(root, "add", "-A").returncode == 0
    assert git(root, "commit", "-q", "-m", "project").returncode == 0
    orch("--root", str(root), "load", check=True)

    proc = run(root, workers=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    ws = {r["workstream_id"]: r for r in query(root, "SELECT * FROM workstream")}
    logs = "".join(p.read_text() for p in (root / ".state" / "logs").glob("worker-*.log"))
    assert (ws["good"]["state"], ws["bad"]["state"]) == ("completed", "failed"), \
        proc.stdout + proc.stderr + logs + json.dumps(events(root), default=str)[-4000:]

    # The good workstream: merged into main, worktree and branch gone.
    assert (root / "out.txt").read_text() == "made by orch\n"
    assert git(root, "show", "main:out.txt").stdout == "made by orch\n"
    assert not (root / ".state" / "worktrees" / "good").exists()
    assert git(root, "branch", "--list", "orch/good").stdout.strip() == ""
    # The failed one: nothing merged, worktree and branch kept, state archived.
    assert not (root / "bad.txt").exists()
    assert (root / ".state" / "worktrees" / "bad" / "bad.txt").exists()
    assert git(root, "branch", "--list", "orch/bad").stdout.strip() != ""
    archive = json.loads((root / ".state" / "archive" / "bad" / "latest.json").read_text())
    assert archive["workstream"]["state"] == "failed"
    assert {t["task_id"]: t["state"] for t in archive["tasks"]} == \
        {"boom": "failed", "after": "pending"}
    assert git(root, "status", "--porcelain").stdout == ""
