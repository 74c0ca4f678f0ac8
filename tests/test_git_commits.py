"""Commits of command tasks in a workstream's worktree: real git, real `orch run`, real worker
processes; the group commit (one change detection answers every task that finished before it)
in real concurrent processes."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kernel.runtime.worktree import _Group
from tests.e2e import make_project, query, run, task


def git(where: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def git_project(root: Path, tasks: list[dict[str, Any]]) -> Path:
    root.mkdir(parents=True)
    for args in (("init", "-q", "-b", "main"), ("config", "user.name", "Test"),
                 ("config", "user.email", "test@example.com")):
        git(root, *args)
    (root / "README").write_text("hello\n")
    make_project(root, tasks, worktrees=True, load=False)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    subprocess.run([str(Path(sys.executable).parent / "orch"), "--root", str(root), "load"],
                   check=True, capture_output=True, timeout=120)
    return root


def outputs(root: Path) -> dict[str, dict[str, Any]]:
    """Each task's last attempt output."""
    rows = query(root, "SELECT task_id, output FROM attempt ORDER BY attempt_no")
    return {r["task_id"]: json.loads(r["output"] or "{}") for r in rows}


def commits_touching(root: Path, path: str) -> list[tuple[str, str]]:
    """(sha, message) of every non-merge commit on main that changed ``path``."""
    out = git(root, "log", "main", "--no-merges", "--format=%H%x00%B%x01", "--", path)
    return [tuple(entry.strip().split("\0", 1)) for entry in out.split("\1")  # type: ignore
            if entry.strip()]


def test_a_quiet_task_makes_no_commit_and_a_writing_task_commits_exactly_its_files(
        tmp_path: Path) -> None:
    root = git_project(tmp_path / "repo", [
        task("quiet", command="true"),
        task("write", deps=["quiet"], shell=True,
             command="echo made > made.txt && echo more >> README"),
        task("quiet2", deps=["write"], command="true"),
    ])
    before = git(root, "rev-list", "--count", "main").strip()
    proc = run(root, workers=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = outputs(root)

    assert out["quiet"]["files_modified"] == [] and out["quiet2"]["files_modified"] == []
    assert "commit" not in out["quiet"]["metadata"] and out["quiet"]["commit_message"] is None
    write = out["write"]
    assert write["files_modified"] == ["README", "made.txt"]
    assert write["diff_summary"] == "2 files changed, 2 insertions(+), 0 deletions(-)"
    assert write["commit_message"] == "orch: write: write"
    sha = write["metadata"]["commit"]
    assert sorted(git(root, "show", "--name-only", "--format=", sha).split()) == \
        ["README", "made.txt"]
    assert git(root, "log", "-1", "--format=%B", sha).strip() == "orch: write: write"
    # Merged: main gained the task's commit and the merge commit, nothing for the quiet ones.
    assert int(git(root, "rev-list", "--count", "main")) == int(before) + 2
    assert git(root, "merge-base", "--is-ancestor", sha, "main") == ""
    assert (root / "made.txt").read_text() == "made\n"
    assert git(root, "status", "--porcelain") == ""


def test_twenty_tasks_four_workers_every_written_file_committed_once_by_its_writer(
        tmp_path: Path) -> None:
    tasks = []
    for i in range(20):
        if i % 2:
            tasks.append(task(f"t{i:02d}", shell=True, command="sleep 0.05"))
        elif i % 4:
            tasks.append(task(f"t{i:02d}", shell=True,
                              command=f"echo {i} > f{i:02d}.txt && sleep 0.1"))
        else:
            tasks.append(task(f"t{i:02d}", shell=True,
                              command=f"sleep 0.05 && mkdir -p d && echo {i} > d/f{i:02d}.txt"))
    root = git_project(tmp_path / "repo", tasks)
    proc = run(root, workers=4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = outputs(root)
    assert len(out) == 20

    for i in range(0, 20, 2):
        path = f"f{i:02d}.txt" if i % 4 else f"d/f{i:02d}.txt"
        assert (root / path).read_text() == f"{i}\n"
        touching = commits_touching(root, path)
        assert len(touching) == 1, (path, touching)
        sha, message = touching[0]
        assert f"t{i:02d}" in message, (path, message)
        # Whoever's details name this commit lists the file in it.
        for task_id, doc in out.items():
            if doc["metadata"].get("commit") == sha:
                assert path in doc["files_modified"], (task_id, path)
    # Nothing was swept up by the merge's leftover commit, and nothing is left over.
    assert "leftover" not in git(root, "log", "main", "--format=%s")
    assert git(root, "status", "--porcelain") == ""


# --------------------------------------------------------------------------- the group commit

FINISHER = r"""
import json, os, sys
from pathlib import Path
from kernel.runtime.changes import holder_id, tree_holders, tree_lock
from kernel.runtime.worktree import Finished, commit_finished

worktree, locks, task_id, write = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
with tree_lock(locks, "ws", False):
    if write != "-":
        (worktree / write).write_text(task_id + "\n")
    (locks / f"ready-{task_id}").write_text("")
    commit = commit_finished(worktree, Finished(task_id, f"orch: {task_id}: x", holder_id()),
                             lambda: tree_holders(locks, "ws"))
print(json.dumps(commit and {"sha": commit.sha, "files": list(commit.files),
                             "message": commit.message}))
"""


def counting_git(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `git` logs its subcommand to a file, then runs the real git."""
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True,
                          check=True).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "git.log"
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do case "$a" in -*|/*) ;; *) '
                       f'echo "$a" >> {log}; break;; esac; done\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


def test_six_finishers_queued_behind_one_round_cost_one_git_status(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test")
    git(repo, "config", "user.email", "test@example.com")
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    worktree = tmp_path / "worktrees" / "ws"
    git(repo, "worktree", "add", "-q", "-b", "orch/ws", str(worktree))
    locks = tmp_path / "locks"
    locks.mkdir()
    env, log = counting_git(tmp_path)
    group = _Group(worktree)
    group.dir.mkdir(parents=True)
    writes = {"w1": "one.txt", "w2": "two.txt", "w3": "three.txt"}
    names = ["q1", "w1", "q2", "w2", "q3", "w3"]

    with open(group.dir / "lock", "a+b") as held:      # a round in progress
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = {n: subprocess.Popen(
            [sys.executable, "-c", FINISHER, str(worktree), str(locks), n, writes.get(n, "-")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in names}
        deadline = time.monotonic() + 60
        while len(list((group.dir / "queue").glob("*"))) < len(names):
            assert time.monotonic() < deadline, "the finishers never queued"
            assert all(p.poll() is None for p in procs.values()), \
                [p.communicate() for p in procs.values() if p.poll() is not None]
            time.sleep(0.02)
        fcntl.flock(held, fcntl.LOCK_UN)
    results = {}
    for n, p in procs.items():
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        results[n] = json.loads(stdout)

    assert log.read_text().split().count("status") == 1
    assert log.read_text().split().count("commit") == 1
    sha = git(worktree, "rev-parse", "HEAD").strip()
    assert sorted(git(worktree, "show", "--name-only", "--format=", sha).split()) == \
        sorted(writes.values())
    message = git(worktree, "log", "-1", "--format=%B").strip()
    for writer in writes:
        assert results[writer] == {"sha": sha, "files": sorted(writes.values()),
                                   "message": message}
        assert writer in message
    for quiet in ("q1", "q2", "q3"):
        assert results[quiet] in (None, results["w1"])   # named only if it may have written
    assert git(worktree, "status", "--porcelain") == ""
    assert list((group.dir / "queue").iterdir()) == []
    assert list((group.dir / "answers").iterdir()) == []
