"""The kernel's promises, tried as a user would and attacked as an adversary would: work never
stalls without a reason, a task never runs twice at the same time, no process outlives its
attempt, and the log tells causes. Real projects, the real `orch` CLI, real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kernel.runtime.executors.base import ExecutionRequest
from kernel.runtime.executors.local import SubprocessExecutor
from kernel.store import db, schema
from tests.conftest import orch
from tests.e2e import (
    ORCH,
    events,
    kill_quietly,
    make_project,
    pid_gone,
    py,
    query,
    run,
    start_run,
    states,
    stop,
    task,
    wait_for,
)

# ----------------------------------------------------------------------------- never stall


def _advised(sentences: list[str]) -> list[list[str]]:
    """The `orch retry|skip|cancel ...` commands that `orch why` advises."""
    found = []
    for s in sentences:
        for cmd in re.findall(r"`orch ((?:retry|skip|cancel) [^`]+)`", s):
            found.append(cmd.split())
    return found


def test_skip_inside_a_failed_workstream_never_hangs_run_and_why_advises_what_works(
        tmp_path: Path) -> None:
    """A critical task a fails (z depends on a, y on z): the run ends with exit 1. `orch skip z`
    is bookkeeping in a failed workstream: accepted, with a note naming the retry that revives
    it. `orch run` again ends (it hung forever when "ready" had two definitions: y looked ready
    but was never queued), and every command `orch why y` advises is accepted."""
    root = make_project(tmp_path / "p", [
        task("a", command="false", critical=True),
        task("z", deps=["a"]),
        task("y", deps=["z"]),
    ])
    assert run(root, workers=1).returncode == 1
    report = json.loads(orch("--root", str(root), "--json", "skip", "z").stdout)
    assert [c["task_id"] for c in report["changed"]] == ["z"]
    assert report["notes"] == ["workstream ws runs nothing more until `orch retry a` revives "
                               "it; the skipped tasks then count as completed"]
    again = subprocess.run([ORCH, "--root", str(root), "run", "--workers", "1"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1, again.stderr
    assert states(root) == {"a": "failed", "z": "completed", "y": "pending"}
    why = json.loads(orch("--root", str(root), "--json", "why", "y").stdout)
    advised = _advised(why["sentences"])
    assert advised == [["retry", "a"]], why["sentences"]
    for cmd in advised:
        out = json.loads(orch("--root", str(root), "--json", *cmd).stdout)
        assert out["changed"], (cmd, out)
    assert states(root) == {"a": "pending", "z": "completed", "y": "pending"}


def test_min_version_as_in_the_spec_example_runs(tmp_path: Path) -> None:
    """The spec's own example value, min_version 1.0.0, against the default catalog (every
    capability at 1.0.0): the task runs (it was never claimed when the worker's package version
    0.1.0 was compared)."""
    root = make_project(tmp_path / "p", [
        task("a", worker_requirements={"capabilities": ["cap-pytest-001"],
                                       "min_version": "1.0.0"}),
    ])
    result = run(root, workers=1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert states(root) == {"a": "completed"}


def test_a_task_no_worker_can_run_is_named_by_run_and_why(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [
        task("a", worker_requirements={"capabilities": ["cap-pytest-001"],
                                       "min_version": "2.0.0"}),
        task("c"),
    ])
    result = subprocess.run([ORCH, "--root", str(root), "--json", "run", "--workers", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    summary = json.loads(result.stdout)   # one document: the summary, with the events
    assert summary["unrunnable"] == [
        {"task_id": "a",
         "reason": "no registered worker offers cap-pytest-001 >= 2.0.0 (has 1.0.0)"}]
    assert states(root) == {"a": "queued", "c": "completed"}
    why = json.loads(orch("--root", str(root), "--json", "why", "a").stdout)
    assert "cap-pytest-001 >= 2.0.0 (has 1.0.0)" in why["sentences"][0]
    logged = [e for e in events(root) if e["event"] == "task_unrunnable"]
    assert [e["task_id"] for e in logged] == ["a"]


# ----------------------------------------------------------------------------- timeouts


def _request(tmp_path: Path, command: str, **kw: object) -> ExecutionRequest:
    base: dict[str, object] = dict(
        task_id="t", workstream_id="ws", attempt_no=1, command=command, shell=False,
        cwd=tmp_path, env=dict(os.environ), timeout_seconds=None,
        log_path=tmp_path / "logs" / "t.log", placeholders={}, kill_grace_seconds=30.0)
    base.update(kw)
    return ExecutionRequest(**base)  # type: ignore[arg-type]


def test_a_timed_out_command_frees_its_worker_without_waiting_out_the_grace(
        tmp_path: Path) -> None:
    """The group leader used to stay a zombie (nobody reaped it) until the whole kill grace had
    passed: a 1 s timeout with a 30 s grace took 31 s. Reaped, the group is gone at once."""
    request = _request(tmp_path, "sleep 60", timeout_seconds=1.0, kill_grace_seconds=30.0)
    result = SubprocessExecutor().run(request, on_start=lambda pgid: None,
                                      should_stop=lambda: None)
    assert result.outcome == "timeout"
    assert result.duration_seconds < request.kill_grace_seconds


def test_a_cancelled_command_frees_its_worker_without_waiting_out_the_grace(
        tmp_path: Path) -> None:
    asked = []

    def stop() -> str | None:
        asked.append(1)
        return "cancelled" if len(asked) > 3 else None

    request = _request(tmp_path, "sleep 60", kill_grace_seconds=30.0)
    result = SubprocessExecutor().run(request, on_start=lambda pgid: None, should_stop=stop)
    assert result.outcome == "cancelled"
    assert result.duration_seconds < request.kill_grace_seconds


# ----------------------------------------------------------------------------- bad commands


@pytest.mark.parametrize("command, cwd, expect", [
    ("no-such-program-xyz --flag", None, "No such file or directory"),
    ("sh -c 'exit 0'", "missing-dir", "No such file or directory"),
    ("echo " + "x" * 200_000, None, "Argument list too long"),
    ("echo 'unbalanced", None, "cannot be parsed"),
])
def test_spawn_errors_fail_the_attempt_and_the_executor_returns(
        tmp_path: Path, command: str, cwd: str | None, expect: str) -> None:
    request = _request(tmp_path, command, cwd=tmp_path / cwd if cwd else tmp_path)
    result = SubprocessExecutor().run(request, on_start=lambda pgid: None,
                                      should_stop=lambda: None)
    assert result.outcome == "error"
    assert expect in (result.error or "")
    assert expect in request.log_path.read_text()


def test_a_nul_byte_in_a_command_fails_the_attempt_not_the_worker(tmp_path: Path) -> None:
    request = _request(tmp_path, "echo a\x00b")
    result = SubprocessExecutor().run(request, on_start=lambda pgid: None,
                                      should_stop=lambda: None)
    assert result.outcome == "error"
    assert "null" in (result.error or "").lower() or "nul" in (result.error or "").lower()


def test_a_command_that_cannot_start_fails_its_task_and_the_worker_goes_on(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [
        task("bad", command="no-such-program-xyz"),
        task("next", deps=["bad"]),
        task("other"),
    ])
    assert run(root, workers=1).returncode == 1
    assert states(root) == {"bad": "failed", "next": "pending", "other": "completed"}
    crashed = [e for e in events(root) if e["event"] in ("worker_lost",)
               or (e["metadata"] or {}).get("failure_mode") == "Worker-Crashed"]
    assert crashed == []


# ----------------------------------------------------------------------------- logs


def test_an_attempts_log_keeps_its_head_and_tail_within_the_cap(tmp_path: Path) -> None:
    lines = 20_000   # ~300 KB of output against an 8 KiB cap
    code = (f"import sys\nfor i in range({lines}):\n"
            "    sys.stdout.write(f'line {i:06d} ' + 'x' * 8 + chr(10))\n")
    request = _request(tmp_path, py(code), log_cap_bytes=8192)
    result = SubprocessExecutor().run(request, on_start=lambda pgid: None,
                                      should_stop=lambda: None)
    assert result.outcome == "succeeded"
    text = request.log_path.read_text()
    assert "line 000000" in text and f"line {lines - 1:06d}" in text
    assert "line 010000" not in text
    cut = re.search(r"\[orch: (\d+) bytes of output cut here", text)
    assert cut is not None
    total = sum(len(f"line {i:06d} xxxxxxxx\n") for i in range(lines))
    kept = total - int(cut.group(1))
    assert kept == 8192


# ----------------------------------------------------------------------------- placeholders

def _with_prompt(doc: dict, prompt: str) -> dict:
    doc["execution"]["prompt"] = prompt
    return doc


INJECTION = "x'; touch PWNED1; '\"$(touch PWNED2)\" `touch PWNED3` $(touch PWNED4)"


@pytest.mark.parametrize("command, shell", [
    ("sh -c 'printf %s {prompt} > out.txt'", False),
    ("sh -c 'printf %s \"{prompt}\" > out.txt'", False),
    ("bash -ec \"printf %s {prompt} > out.txt\"", False),
    ("printf %s {prompt} > out.txt", True),
    ("printf %s '{prompt}' > out.txt", True),
    ("printf %s \"{prompt}\" > out.txt", True),
    ("cat {prompt_file} > out.txt", True),
])
def test_placeholders_never_run_injected_text(tmp_path: Path, command: str,
                                              shell: bool) -> None:
    """A prompt full of shell syntax reaches the command as exactly that text, whatever the
    quoting around the placeholder, and none of it runs."""
    root = make_project(tmp_path / "p", [_with_prompt(task("t", command=command, shell=shell),
                                                      INJECTION)])
    result = run(root, workers=1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "out.txt").read_text() == INJECTION
    assert not list(root.glob("PWNED*"))


def test_the_prompt_file_is_private(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [
        _with_prompt(task("t", command="cp {prompt_file} copy.txt"), "secret plan")])
    assert run(root, workers=1).returncode == 0
    written = root / ".state" / "prompts" / "t-1.txt"
    assert written.read_text() == "secret plan"
    assert written.stat().st_mode & 0o777 == 0o600


# ----------------------------------------------------------------------------- leftovers

ESCAPE = (
    "import os, subprocess, sys, time\n"
    "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
    "open(sys.argv[1], 'a').write(str(p.pid) + chr(10))\n"
    "if len(sys.argv) > 2: time.sleep(float(sys.argv[2]))\n"
)


@pytest.mark.parametrize("how", ["exit", "timeout", "cancel"])
def test_no_process_outlives_its_attempt(tmp_path: Path, how: str) -> None:
    """A grandchild started in a new session (setsid) escapes the task's process group: it is
    ended all the same when the attempt ends, whether the task exited 0, timed out or was
    cancelled."""
    pids = tmp_path / "pids.txt"
    hold = {"exit": "", "timeout": " 60", "cancel": " 60"}[how]
    cmd = py(ESCAPE, str(pids)) + hold
    root = make_project(tmp_path / "p", [
        task("t", command=cmd, timeout=2 if how == "timeout" else 60)])
    proc = start_run(root, workers=1)
    if how == "cancel":
        wait_for(lambda: pids.exists() and pids.read_text().strip(), timeout=30,
                 message="the grandchild to start")
        orch("--root", str(root), "cancel", "t", check=True)
    code, out, err = stop(proc, timeout=90)
    assert code == (0 if how == "exit" else 1), out + err
    grandchild = int(pids.read_text().split()[0])
    wait_for(lambda: pid_gone(grandchild), timeout=10, message="the escaped grandchild to end")


# ----------------------------------------------------------------------------- the gate

LEDGER = (
    "import fcntl, os, sys, time\n"
    "def note(what):\n"
    "    with open(sys.argv[1], 'a') as f:\n"
    "        fcntl.flock(f, fcntl.LOCK_EX)\n"
    "        f.write(f\"{what} {os.environ['ORCH_TASK_ID']} {os.environ['ORCH_GENERATION']} "
    "{time.time():.6f}\\n\")\n"
    "note('start')\n"
    "time.sleep(float(sys.argv[2]))\n"
    "note('end')\n"
)


def _overlaps(ledger: Path) -> list[tuple[str, str, str]]:
    """Pairs of executions of one task whose [start, end] intervals overlap; an execution
    without an end (killed) is open to the end of time."""
    runs: dict[tuple[str, str], list[float]] = {}
    for line in ledger.read_text().splitlines():
        what, tid, gen, at = line.split()
        runs.setdefault((tid, gen), []).append(float(at))
    by_task: dict[str, list[tuple[float, float, str]]] = {}
    for (tid, gen), stamps in runs.items():
        end = stamps[1] if len(stamps) > 1 else float("inf")
        by_task.setdefault(tid, []).append((stamps[0], end, gen))
    bad = []
    for tid, ivs in by_task.items():
        ivs.sort()
        for (_s1, e1, g1), (s2, _e2, g2) in zip(ivs, ivs[1:], strict=False):
            if s2 < e1:
                bad.append((tid, g1, g2))
    return bad


def test_a_worker_killed_before_its_process_group_is_recorded_never_leaves_a_twin(
        tmp_path: Path) -> None:
    """The window: the command's process exists but attempt.pgid is not committed. A worker
    SIGKILLed there used to leave the command running unseen while the task was handed on and
    ran again. Behind the gate, the command never starts unless its group is recorded. (Two
    workers: `orch run` replaces a dead worker at most twice per worker it started.)"""
    ledger = tmp_path / "ledger.txt"
    tasks = [task(f"t{i}", command=py(LEDGER, str(ledger), "1.5"), max_retries=3)
             for i in range(3)]
    root = make_project(tmp_path / "p", tasks)
    env = {**os.environ, "ORCH_FAULTS": "after_spawn:sleep=2"}
    proc = subprocess.Popen([ORCH, "--root", str(root), "run", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(killed) < 3 and time.monotonic() < deadline:
            # A worker inside the window: its attempt is open and has no process group yet.
            found = [int(r["pid"]) for r in query(
                root, "SELECT w.pid FROM attempt a JOIN worker w ON w.worker_id = a.worker_id "
                      "WHERE a.finished_at IS NULL AND a.pgid IS NULL AND w.state = 'busy'")]
            for pid in sorted(set(found) - killed)[:3 - len(killed)]:  # two may be found at once
                kill_quietly(pid)
                killed.add(pid)
            time.sleep(0.05)
        code, out, err = stop(proc, timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(killed) == 3
    assert code == 0, out + err
    assert states(root) == {"t0": "completed", "t1": "completed", "t2": "completed"}
    assert _overlaps(ledger) == []
    # Each killed attempt's command never started: one execution per task in the ledger.
    starts = [ln for ln in ledger.read_text().splitlines() if ln.startswith("start")]
    assert len(starts) == 3


# ----------------------------------------------------------------------------- causes


def test_the_log_tells_causes(tmp_path: Path) -> None:
    """caused_by: a task queued when its last dependency completed points at that completion;
    a requeue at the failure that made it retry; the workstream's transitions at the task
    event that caused them."""
    flaky = tmp_path / "flaky"
    root = make_project(tmp_path / "p", [
        task("a"),
        task("b", deps=["a"]),
        task("c", deps=["b"], command=py(
            "import os, sys; p = sys.argv[1]\n"
            "if not os.path.exists(p):\n    open(p, 'w').close(); sys.exit(3)\n",
            str(flaky)), max_retries=1, retry_delay=0.1),
    ])
    assert run(root, workers=1).returncode == 0
    evs = {e["seq"]: e for e in events(root)}

    def one(task_id: str, event: str) -> dict:
        return next(e for e in evs.values() if e["task_id"] == task_id and e["event"] == event)

    assert one("b", "task_queued")["caused_by"] == one("a", "task_completed")["seq"]
    assert one("c", "task_queued")["caused_by"] == one("b", "task_completed")["seq"]
    retry = one("c", "task_retry")
    assert one("c", "task_requeued")["caused_by"] == retry["seq"]
    ws = {e["event"]: e for e in evs.values() if e["entity_type"] == "workstream"}
    assert ws["workstream_started"]["caused_by"] == one("a", "task_started")["seq"]
    completions = [e["seq"] for e in evs.values() if e["event"] == "task_completed"]
    assert ws["workstream_validating"]["caused_by"] == max(completions)
    # And the timestamps follow seq.
    stamps = [evs[s]["timestamp"] for s in sorted(evs)]
    assert stamps == sorted(stamps)


def _named(root: Path, name: str) -> list[dict]:
    return [e for e in events(root) if e["event"] == name]


def test_a_lost_workers_hand_on_names_its_loss(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("t", command=py(
        "import time; time.sleep(30)"), max_retries=1, timeout=60)])
    proc = start_run(root, workers=1)
    try:
        pid = wait_for(lambda: query(root, "SELECT w.pid FROM task t JOIN worker w "
                                           "ON w.worker_id = t.worker_id "
                                           "WHERE t.state = 'running'"), timeout=30)[0]["pid"]
        os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: _named(root, "task_retry"), timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        stop(proc, timeout=60)
    lost = _named(root, "worker_lost")
    assert len(lost) == 1
    handed = _named(root, "task_retry")[0]
    assert handed["trigger"] == "worker_lost" and handed["caused_by"] == lost[0]["seq"]
    shutdown = next(e for e in events(root) if e["entity_type"] == "worker"
                    and e["to_state"] == "shutdown" and e["trigger"] == "worker_crashed")
    assert shutdown["caused_by"] == lost[0]["seq"]


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_says_what_it_waits_for_and_a_second_stops_as_the_operator(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("t", command=py("import time; time.sleep(60)"),
                                              timeout=120)])
    proc = start_run(root, workers=1)
    wait_for(lambda: states(root).get("t") == "running", timeout=30)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    code, out, err = stop(proc, timeout=60)
    assert code == 130, out + err
    assert re.search(r"stopping: waiting up to [\d.]+ s for 1 running task "
                     r"\(Ctrl-C again to stop them now\)", out + err), out + err
    assert "Traceback" not in out + err
    assert states(root) == {"t": "queued"}
    back = [e for e in events(root, task_id="t") if e["to_state"] == "queued"][-1]
    assert back["trigger"] == "operator_interrupted"
    modes = {(e["metadata"] or {}).get("failure_mode") for e in events(root)}
    assert "Worker-Crashed" not in modes
    attempt = query(root, "SELECT outcome, error_type FROM attempt")[0]
    assert attempt == {"outcome": "lost", "error_type": "interrupted"}
    # The next run picks it up; no retry was counted.
    assert query(root, "SELECT retry_count FROM task")[0]["retry_count"] == 0


def test_ctrl_c_during_set_up_ends_in_the_interrupted_summary(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("t")])
    env = {**os.environ, "ORCH_FAULTS": "run_setup:sleep=5"}
    proc = subprocess.Popen([ORCH, "--root", str(root), "run", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    wait_for(lambda: query(root, "SELECT 1 FROM scheduler_lock"), timeout=30)
    os.killpg(proc.pid, signal.SIGINT)
    code, out, err = stop(proc, timeout=60)
    assert code == 130
    assert "Traceback" not in out + err and "UnboundLocalError" not in out + err
    assert out.startswith("interrupted:"), out + err
    assert query(root, "SELECT COUNT(*) AS n FROM scheduler_lock") == [{"n": 0}]


# ----------------------------------------------------------------------------- views


def test_views_stay_current_when_only_workers_commit(tmp_path: Path) -> None:
    """No `orch run`: tasks queued earlier are run by an `orch worker` joined by hand; its
    commits reach .state/current.json all the same (STATE-OBS-001)."""
    root = make_project(tmp_path / "p", [task("a"), task("b", deps=["a"])])
    # A run that starts no worker queues a and ends at once, leaving it queued.
    out = run(root, "--max-seconds", "1", workers=0)
    assert states(root) == {"a": "queued", "b": "pending"}, out.stdout
    subprocess.run([ORCH, "--root", str(root), "worker", "--once"], capture_output=True,
                   text=True, timeout=120, check=True)
    assert states(root) == {"a": "completed", "b": "completed"}
    current = json.loads((root / ".state" / "current.json").read_text())
    assert {t["task_id"]: t["state"] for t in current["tasks"]} == {
        "a": "completed", "b": "completed"}


def test_a_cancelled_workstream_is_archived(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("a"), task("b", deps=["a"])])
    orch("--root", str(root), "cancel", "--workstream", "ws", check=True)
    archived = json.loads((root / ".state" / "archive" / "ws" / "latest.json").read_text())
    assert archived["workstream"]["state"] == "cancelled"
    assert {t["state"] for t in archived["tasks"]} == {"cancelled"}


def test_workstream_timeout_cancels_with_its_own_trigger(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task("slow", command=py("import time; time.sleep(60)"),
                                              timeout=120)])
    conn = schema.connect(root / ".state" / "kernel.db")
    with db.write_tx(conn):
        conn.execute("UPDATE workstream SET max_duration_seconds = 1")
    conn.close()
    assert run(root, workers=1).returncode == 1
    cancel = [e for e in events(root, task_id="slow") if e["to_state"] == "cancelled"]
    assert [e["trigger"] for e in cancel] == ["workstream_timeout"]
    assert not [e for e in events(root) if e["trigger"] == "user_cancelled"]
