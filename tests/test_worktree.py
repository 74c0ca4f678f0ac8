"""Workstream worktrees in real git repositories in tmp_path; no mocks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kernel.base.errors import OrchError
from kernel.runtime.worktree import (
    MergeResult,
    Worktree,
    archive_state,
    commit_all,
    current_branch,
    ensure_worktree,
    is_git_repo,
    merge_and_remove,
)


def git(where: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def branch_exists(root: Path, branch: str) -> bool:
    proc = subprocess.run(["git", "-C", str(root), "show-ref", "--verify", "--quiet",
                           f"refs/heads/{branch}"], timeout=30)
    return proc.returncode == 0


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    # What `orch init` writes: the kernel's state never shows in `git status`.
    (root / ".state").mkdir()
    (root / ".state" / ".gitignore").write_text("*\n")
    (root / "a.txt").write_text("one\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository on branch main with one commit (a.txt) and orch's .state/.gitignore."""
    return make_repo(tmp_path / "repo").resolve()


def commit_file(where: Path, name: str, text: str, message: str = "change") -> str:
    (where / name).write_text(text)
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", message)
    return git(where, "rev-parse", "HEAD")


# --------------------------------------------------------------------------- inspecting


def test_is_git_repo_needs_a_work_tree_with_a_commit(repo: Path, tmp_path: Path) -> None:
    assert is_git_repo(repo)
    (repo / "sub").mkdir()
    assert is_git_repo(repo / "sub")
    assert not is_git_repo(tmp_path / "missing")
    empty = tmp_path / "plain"
    empty.mkdir()
    assert not is_git_repo(empty)
    git(empty, "init", "-q", "-b", "main")
    assert not is_git_repo(empty), "no commit yet"


def test_current_branch_is_none_when_detached(repo: Path) -> None:
    assert current_branch(repo) == "main"
    git(repo, "checkout", "-q", "--detach")
    assert current_branch(repo) is None


# --------------------------------------------------------------------------- ensure_worktree


def test_ensure_worktree_creates_it_once(repo: Path) -> None:
    wt = ensure_worktree(repo, "ws1")
    assert wt == Worktree("ws1", repo / ".state" / "worktrees" / "ws1", "orch/ws1", "main")
    assert (wt.path / "a.txt").read_text() == "one\n"
    assert current_branch(wt.path) == "orch/ws1"
    assert git(repo, "status", "--porcelain") == "", "the worktree dirties the main checkout"

    (wt.path / "work.txt").write_text("in progress\n")
    again = ensure_worktree(repo, "ws1")
    assert again == wt
    assert (wt.path / "work.txt").exists(), "an existing worktree is left alone"
    assert git(repo, "worktree", "list", "--porcelain").count("branch refs/heads/orch/ws1") == 1


def test_ensure_worktree_recreates_a_vanished_directory(repo: Path) -> None:
    wt = ensure_worktree(repo, "ws1")
    sha = commit_file(wt.path, "b.txt", "two\n")
    shutil.rmtree(wt.path)
    again = ensure_worktree(repo, "ws1")
    assert again == wt
    assert git(wt.path, "rev-parse", "HEAD") == sha, "the branch (and its commit) is reused"
    assert (wt.path / "b.txt").read_text() == "two\n"


def test_ensure_worktree_reuses_a_branch_kept_from_an_earlier_run(repo: Path) -> None:
    git(repo, "switch", "-q", "-c", "orch/ws3")
    sha = commit_file(repo, "kept.txt", "from before\n")
    git(repo, "switch", "-q", "main")
    wt = ensure_worktree(repo, "ws3")
    assert wt.branch == "orch/ws3"
    assert git(wt.path, "rev-parse", "HEAD") == sha
    assert (wt.path / "kept.txt").read_text() == "from before\n"


def test_ensure_worktree_starts_from_the_given_base(repo: Path) -> None:
    git(repo, "branch", "release")
    commit_file(repo, "main-only.txt", "x\n")
    wt = ensure_worktree(repo, "ws2", base_branch="release")
    assert wt.base_branch == "release"
    assert git(wt.path, "rev-parse", "HEAD") == git(repo, "rev-parse", "release")
    assert not (wt.path / "main-only.txt").exists()


def test_ensure_worktree_errors(repo: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(OrchError) as not_repo:
        ensure_worktree(plain, "ws1")
    assert not_repo.value.code == "git_failed"
    with pytest.raises(OrchError) as no_base:
        ensure_worktree(repo, "ws1", base_branch="no-such-branch")
    assert no_base.value.code == "git_failed" and "no-such-branch" in no_base.value.message
    with pytest.raises(OrchError) as bad_id:
        ensure_worktree(repo, "a..b")
    assert bad_id.value.code == "invalid_workstream_id"
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(OrchError) as detached:
        ensure_worktree(repo, "ws1")
    assert "detached" in detached.value.message


def test_a_failing_git_command_names_itself(repo: Path) -> None:
    wt = ensure_worktree(repo, "ws1")
    shutil.rmtree(wt.path)
    git(repo, "worktree", "prune")
    git(repo, "worktree", "add", "-q", str(repo.parent / "holder"), "orch/ws1")
    with pytest.raises(OrchError) as exc:
        ensure_worktree(repo, "ws1")  # orch/ws1 is checked out in another worktree
    assert exc.value.code == "git_failed"
    assert "worktree add" in exc.value.message and "orch/ws1" in exc.value.message


# --------------------------------------------------------------------------- commit_all


def test_commit_all_returns_none_when_nothing_changed(repo: Path) -> None:
    wt = ensure_worktree(repo, "ws1")
    assert commit_all(wt.path, "nothing") is None
    (wt.path / "new.txt").write_text("new\nline\n")
    (wt.path / "a.txt").unlink()
    commit = commit_all(wt.path, "work")
    assert commit is not None and commit.sha == git(wt.path, "rev-parse", "HEAD")
    assert git(wt.path, "log", "-1", "--format=%s") == "work"
    # What was committed, as the output contract reports it (files_modified, diff_summary).
    assert commit.files == ("a.txt", "new.txt")
    assert (commit.insertions, commit.deletions) == (2, 1)        # a.txt was "one\n"
    assert commit.summary == "2 files changed, 2 insertions(+), 1 deletion(-)"
    assert git(wt.path, "status", "--porcelain") == ""
    assert commit_all(wt.path, "again") is None


def test_commit_all_uses_a_fixed_author_without_a_git_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "none"))
    for var in ("EMAIL", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "anon"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    no_email = subprocess.run(["git", "-C", str(root), "config", "user.email"], timeout=30)
    assert no_email.returncode != 0, "the test environment still has a git identity"
    (root / "f.txt").write_text("x\n")
    sha = commit_all(root, "anonymous")
    assert sha is not None
    assert git(root, "log", "-1", "--format=%an <%ae>") == "orch <orch@localhost>"


# --------------------------------------------------------------------------- merge_and_remove


def test_merge_into_the_checked_out_base(repo: Path) -> None:
    wt = ensure_worktree(repo, "ws1")
    commit_file(wt.path, "done.txt", "committed\n")
    (wt.path / "leftover.txt").write_text("not committed by the task\n")
    result = merge_and_remove(repo, wt)
    assert result.merged, result.message
    assert result.commit == git(repo, "rev-parse", "HEAD")
    assert git(repo, "log", "-1", "--format=%s") == "orch: merge workstream ws1"
    assert git(repo, "rev-list", "--count", "--merges", "HEAD") == "1"
    assert (repo / "done.txt").read_text() == "committed\n"
    assert (repo / "leftover.txt").read_text() == "not committed by the task\n"
    assert "orch: leftover changes of workstream ws1" in git(repo, "log", "--format=%s")
    assert not wt.path.exists()
    assert not branch_exists(repo, "orch/ws1")
    assert "orch/ws1" not in git(repo, "worktree", "list", "--porcelain")
    assert git(repo, "status", "--porcelain") == ""


def test_a_merge_conflict_keeps_the_worktree_and_the_branch(repo: Path) -> None:
    wt = ensure_worktree(repo, "ws1")
    commit_file(wt.path, "a.txt", "theirs\n")
    main_sha = commit_file(repo, "a.txt", "ours\n")
    result = merge_and_remove(repo, wt)
    assert result == MergeResult(False, None, result.message)
    assert "conflicts in a.txt" in result.message
    assert git(repo, "rev-parse", "HEAD") == main_sha
    assert (repo / "a.txt").read_text() == "ours\n"
    assert git(repo, "status", "--porcelain") == "", "the merge was not aborted"
    assert wt.path.is_dir() and (wt.path / "a.txt").read_text() == "theirs\n"
    assert branch_exists(repo, "orch/ws1")


def test_a_base_not_checked_out_is_fast_forwarded(repo: Path) -> None:
    git(repo, "branch", "release")
    main_sha = git(repo, "rev-parse", "main")
    wt = ensure_worktree(repo, "ws2", base_branch="release")
    sha = commit_file(wt.path, "feature.txt", "f\n")
    result = merge_and_remove(repo, wt)
    assert result.merged, result.message
    assert result.commit == sha
    assert git(repo, "rev-parse", "release") == sha
    assert git(repo, "rev-parse", "main") == main_sha
    assert current_branch(repo) == "main"
    assert not wt.path.exists() and not branch_exists(repo, "orch/ws2")


def test_a_base_that_moved_on_and_is_not_checked_out_is_not_merged(repo: Path) -> None:
    git(repo, "branch", "release")
    wt = ensure_worktree(repo, "ws2", base_branch="release")
    commit_file(wt.path, "feature.txt", "f\n")
    moved = commit_file(repo, "hotfix.txt", "h\n")
    git(repo, "branch", "-f", "release", "main")
    result = merge_and_remove(repo, wt)
    assert not result.merged and result.commit is None
    assert "cannot be fast-forwarded" in result.message
    assert git(repo, "rev-parse", "release") == moved
    assert wt.path.is_dir() and branch_exists(repo, "orch/ws2")


# --------------------------------------------------------------------------- archive_state


def test_archive_state_writes_a_timestamped_file_and_latest(repo: Path) -> None:
    first = archive_state(repo, "ws1", {"b": 2, "a": {"z": 1, "y": [1, 2]}})
    assert first.parent == repo / ".state" / "archive" / "ws1"
    assert re.fullmatch(r"\d{8}T\d{6}Z\.json", first.name), first.name
    text = first.read_text()
    assert json.loads(text) == {"a": {"y": [1, 2], "z": 1}, "b": 2}
    assert text.index('"a"') < text.index('"b"') and '\n  "a": {\n    "y"' in text
    assert (first.parent / "latest.json").read_text() == text

    second = archive_state(repo, "ws1", {"state": "failed"})
    assert second != first and first.exists(), "a second archive never overwrites the first"
    assert json.loads((first.parent / "latest.json").read_text()) == {"state": "failed"}
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(
        [first.name, second.name, "latest.json"]
    )
