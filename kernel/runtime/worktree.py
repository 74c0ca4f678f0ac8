"""One git worktree per workstream: created when it has work, merged back when it completes.

Public API:
    ``Worktree`` (frozen dataclass: ``workstream_id``, ``path``, ``branch``, ``base_branch``);
    ``is_git_repo(root) -> bool``; ``current_branch(root) -> str | None``;
    ``ensure_worktree(root, workstream_id, base_branch=None) -> Worktree``;
    ``commit_all(path, message) -> Commit | None`` (``Commit``: ``sha``, ``message``,
    ``files``, ``insertions``, ``deletions``, ``summary``); ``MergeResult`` (frozen dataclass:
    ``merged``, ``commit``, ``message``); ``merge_and_remove(root, wt) -> MergeResult``;
    ``archive_state(root, workstream_id, document) -> Path``; ``run_git(where, *args)`` (git
    with the environment cleaned of variables that point it elsewhere, no prompt, a timeout).

Stability Guarantees:
    The layout is a contract: the worktree of workstream ``ws`` is ``.state/worktrees/ws`` on
    branch ``orch/ws``; archives are ``.state/archive/ws/{YYYYmmddTHHMMSSZ}.json`` plus
    ``latest.json``. ``ensure_worktree`` is idempotent. ``merge_and_remove`` never leaves a merge
    half done: on a conflict it aborts the merge and keeps the worktree and the branch. A failing
    git command raises ``OrchError("git_failed")`` naming the command and git's message; a merge
    that cannot be made is a ``MergeResult(merged=False)``, not an error.

Integration Points:
    The scheduler calls ``ensure_worktree`` when a workstream has work to run and runs its tasks
    there; when the workstream completes it calls ``merge_and_remove``; on failure or cancel it
    keeps the worktree and calls ``archive_state``. ``.state/.gitignore`` (written by
    ``orch init``) keeps the worktrees out of the main checkout's ``git status``.

Dependencies:
    ``kernel.base.errors``, ``kernel.definitions.models``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernel.base.errors import OrchError
from kernel.definitions.models import ID_PATTERN

WORKTREES_DIR = Path(".state") / "worktrees"
ARCHIVE_DIR = Path(".state") / "archive"
BRANCH_PREFIX = "orch/"
GIT_TIMEOUT_SECONDS = 120

# Variables that would point git at another repository than the one we pass with -C (they are
# set inside git hooks, for example).
_GIT_LOCATION_VARS = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX",
)


@dataclass(frozen=True)
class Worktree:
    workstream_id: str
    path: Path
    branch: str
    base_branch: str


@dataclass(frozen=True)
class Commit:
    """What ``commit_all`` committed: the sha, the message, the paths (relative to the
    worktree) and the line counts (binary files count no lines)."""

    sha: str
    message: str
    files: tuple[str, ...]
    insertions: int
    deletions: int

    @property
    def summary(self) -> str:
        """git's ``--shortstat`` line: "2 files changed, 5 insertions(+), 1 deletion(-)"."""
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        return (f"{plural(len(self.files), 'file')} changed, "
                f"{plural(self.insertions, 'insertion')}(+), "
                f"{plural(self.deletions, 'deletion')}(-)")


@dataclass(frozen=True)
class MergeResult:
    merged: bool
    commit: str | None
    message: str


# --------------------------------------------------------------------------- running git


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def run_git(
    where: Path, *args: str, config: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``git -C where ARGS``: never prompts, never follows GIT_DIR & co., times out."""
    cmd = ["git", *config, "-C", str(where), *args]
    try:
        return subprocess.run(
            cmd, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=GIT_TIMEOUT_SECONDS,
        )
    except FileNotFoundError as exc:
        raise OrchError(
            "git_failed", f"cannot run {' '.join(cmd)}: git is not installed",
            hint="install git (https://git-scm.com) and make sure it is on PATH",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise OrchError(
            "git_failed",
            f"{' '.join(cmd)} did not finish within {GIT_TIMEOUT_SECONDS} seconds",
            hint="check for a lock file (.git/index.lock) or a hook waiting for input",
        ) from exc


def _fail(proc: subprocess.CompletedProcess[str], hint: str | None = None) -> OrchError:
    detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
    return OrchError(
        "git_failed",
        f"{' '.join(str(a) for a in proc.args)} exited {proc.returncode}: {' / '.join(detail)}",
        hint=hint or "run the command yourself in that directory to see what git needs",
    )


def _git(where: Path, *args: str, config: tuple[str, ...] = (), hint: str | None = None) -> str:
    proc = run_git(where, *args, config=config)
    if proc.returncode != 0:
        raise _fail(proc, hint)
    return proc.stdout.strip()


def _identity(where: Path) -> tuple[str, ...]:
    """``-c`` options giving a fixed author when git has no identity configured there."""
    config: list[str] = []
    for key, value in (("user.email", "orch@localhost"), ("user.name", "orch")):
        if not run_git(where, "config", key).stdout.strip():
            config += ["-c", f"{key}={value}"]
    return tuple(config)


def _branch_exists(root: Path, branch: str) -> bool:
    return run_git(root, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}").returncode == 0


def _rev(where: Path, ref: str) -> str:
    return _git(where, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def _worktrees(root: Path) -> list[dict[str, str]]:
    """``git worktree list --porcelain`` as one dict per worktree (``worktree``, ``branch`` ...)."""
    entries: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in _git(root, "worktree", "list", "--porcelain").splitlines() + [""]:
        if not line:
            if current:
                entries.append(current)
            current = {}
            continue
        key, _, value = line.partition(" ")
        current[key] = value
    return entries


def _same_path(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _checked_out_at(root: Path, branch: str) -> Path | None:
    """The worktree (the main one included) that has ``branch`` checked out, if any."""
    for entry in _worktrees(root):
        if entry.get("branch") == f"refs/heads/{branch}" and "worktree" in entry:
            return Path(entry["worktree"])
    return None


# --------------------------------------------------------------------------- public API


def is_git_repo(root: Path) -> bool:
    """Whether ``root`` is inside a git work tree that has at least one commit."""
    if not Path(root).is_dir():
        return False
    try:
        inside = run_git(root, "rev-parse", "--is-inside-work-tree")
    except OrchError:
        return False
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return False
    return run_git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").returncode == 0


def current_branch(root: Path) -> str | None:
    """The branch checked out at ``root``; ``None`` when HEAD is detached or not a repository."""
    proc = run_git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _check_workstream_id(root: Path, workstream_id: str) -> str:
    branch = f"{BRANCH_PREFIX}{workstream_id}"
    valid = re.match(ID_PATTERN, workstream_id) is not None
    if valid:
        valid = run_git(root, "check-ref-format", f"refs/heads/{branch}").returncode == 0
    if not valid:
        raise OrchError(
            "invalid_workstream_id",
            f"workstream id {workstream_id!r} cannot name a worktree and a git branch "
            f"({branch})",
            hint="use letters, digits, '_', '-' and single dots (no '..', no trailing '.' or "
            "'.lock')",
        )
    return branch


def ensure_worktree(root: Path, workstream_id: str, base_branch: str | None = None) -> Worktree:
    """The worktree of ``workstream_id``: ``root/.state/worktrees/{ws}`` on branch ``orch/{ws}``.

    Created from ``base_branch`` (default: the branch checked out at ``root``) unless the branch
    exists already, in which case that branch is checked out there. Returns the existing worktree
    when it is registered and present; re-creates it when its directory vanished.
    """
    root = Path(root).resolve()
    if not is_git_repo(root):
        raise OrchError(
            "git_failed",
            f"{root} is not a git repository with at least one commit",
            hint="run `git init` and make a first commit, or run orch in your repository",
        )
    branch = _check_workstream_id(root, workstream_id)
    base = _base_branch(root, workstream_id, base_branch)
    path = root / WORKTREES_DIR / workstream_id
    if _registered(root, path, branch):
        return Worktree(workstream_id, path, branch, base)
    # Forget worktrees whose directory vanished (this one's included), so their branch is free.
    _git(root, "worktree", "prune")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Belt and braces next to .state/.gitignore: worktrees never show in the main checkout.
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Written by orch: workstream worktrees.\n*\n", encoding="utf-8")
    if _branch_exists(root, branch):
        _git(root, "worktree", "add", str(path), branch,
             hint=f"{branch} may be checked out elsewhere: see `git worktree list`")
    else:
        _git(root, "worktree", "add", "-b", branch, str(path), base)
    return Worktree(workstream_id, path, branch, base)


def _base_branch(root: Path, workstream_id: str, base_branch: str | None) -> str:
    """``base_branch``, or the branch checked out at ``root``; it must exist."""
    base = base_branch or current_branch(root)
    if base is None:
        raise OrchError(
            "git_failed",
            f"HEAD is detached at {root}, so there is no branch to start workstream "
            f"{workstream_id} from",
            hint="check out a branch (git switch main) or pass the base branch explicitly",
        )
    if not _branch_exists(root, base):
        raise OrchError(
            "git_failed",
            f"the base branch {base!r} of workstream {workstream_id} does not exist in {root}",
            hint="create the branch or name an existing one",
        )
    return base


def _registered(root: Path, path: Path, branch: str) -> bool:
    """True when ``path`` is a registered worktree that is present with ``branch`` checked
    out; False when it must be (re-)created. Raises when the directory is in the way or holds
    another branch."""
    registered = next(
        (e for e in _worktrees(root) if _same_path(e.get("worktree", ""), path)), None
    )
    if registered is not None:
        if not path.is_dir():
            return False
        if registered.get("branch") != f"refs/heads/{branch}":
            raise OrchError(
                "git_failed",
                f"the worktree {path} is registered but does not have {branch} checked out "
                f"({registered.get('branch') or 'detached HEAD'})",
                hint=f"check out {branch} there, or remove it: git worktree remove {path}",
            )
        return True
    if path.exists():
        raise OrchError(
            "git_failed",
            f"{path} exists but is not a registered git worktree",
            hint="move or delete that directory; orch re-creates the worktree there",
        )
    return False


def commit_all(path: Path, message: str) -> Commit | None:
    """Stage everything in the worktree at ``path`` and commit it: what was committed, or
    ``None`` when there was nothing to commit. (``--numstat`` of the staged change costs the
    same git call as asking whether there is one.)"""
    path = Path(path)
    _git(path, "add", "-A")
    files, insertions, deletions = _staged(path)
    if not files:
        return None
    _git(path, "commit", "--quiet", "-m", message, config=_identity(path),
         hint="a commit hook may have rejected the commit; run `git commit` there to see why")
    return Commit(_git(path, "rev-parse", "HEAD"), message, tuple(files), insertions, deletions)


def _staged(path: Path) -> tuple[list[str], int, int]:
    """(paths, lines added, lines removed) of the staged change; renames count as their new
    path."""
    out = _git(path, "diff", "--cached", "--numstat", "-z", "--no-renames")
    files: list[str] = []
    added = removed = 0
    for record in out.split("\0"):
        parts = record.split("\t", 2)
        if len(parts) != 3:
            continue
        files.append(parts[2])
        added += int(parts[0]) if parts[0].isdigit() else 0
        removed += int(parts[1]) if parts[1].isdigit() else 0
    return files, added, removed


def _remove(root: Path, wt: Worktree) -> None:
    if wt.path.exists():
        _git(root, "worktree", "remove", "--force", str(wt.path))
    else:
        _git(root, "worktree", "prune")
    if _branch_exists(root, wt.branch):
        _git(root, "branch", "-D", wt.branch)


def merge_and_remove(root: Path, wt: Worktree) -> MergeResult:
    """Merge the workstream's branch into its base, then remove the worktree and the branch.

    Leftover changes in the worktree are committed first. When the base is checked out (at
    ``root`` or in another worktree) it gets a ``--no-ff`` merge commit there; a conflict aborts
    the merge. Otherwise the base is fast-forwarded, if it can be. When the merge cannot be made
    the worktree and the branch are kept and ``merged`` is False.
    """
    root = Path(root).resolve()
    ws = wt.workstream_id
    if wt.path.exists():
        commit_all(wt.path, f"orch: leftover changes of workstream {ws}")
    if not _branch_exists(root, wt.branch):
        raise OrchError(
            "git_failed", f"the branch {wt.branch} of workstream {ws} does not exist in {root}",
            hint="it was deleted by hand; nothing is left to merge",
        )
    head = _rev(root, f"refs/heads/{wt.branch}")
    checkout = _checked_out_at(root, wt.base_branch)
    if checkout is not None:
        done = _merge_at(checkout, wt)
    else:
        done = _fast_forward(root, wt, head)
    if isinstance(done, MergeResult):
        return done
    _remove(root, wt)
    return MergeResult(True, done, f"merged {wt.branch} into {wt.base_branch} at {done[:12]}")


def _merge_at(checkout: Path, wt: Worktree) -> str | MergeResult:
    """A ``--no-ff`` merge of the branch into the base checked out at ``checkout``: the merge
    commit, or why it could not be made (a conflict is aborted)."""
    merge = run_git(
        checkout, "merge", "--no-ff", "--no-edit", "-m",
        f"orch: merge workstream {wt.workstream_id}", wt.branch, config=_identity(checkout),
    )
    if merge.returncode == 0:
        return _git(checkout, "rev-parse", "HEAD")
    in_progress = run_git(checkout, "rev-parse", "--verify", "--quiet", "MERGE_HEAD")
    if in_progress.returncode == 0:
        conflicted = _git(checkout, "diff", "--name-only", "--diff-filter=U").splitlines()
        _git(checkout, "merge", "--abort")
        return MergeResult(
            False, None,
            f"merging {wt.branch} into {wt.base_branch} conflicts in "
            f"{', '.join(conflicted) or 'the index'}; the merge was aborted and the "
            f"worktree {wt.path} and branch {wt.branch} are kept",
        )
    detail = " / ".join(
        (merge.stderr.strip() or merge.stdout.strip() or "no output").splitlines()
    )
    return MergeResult(
        False, None,
        f"git refused to merge {wt.branch} into {wt.base_branch} at {checkout}: "
        f"{detail}; the worktree {wt.path} and branch {wt.branch} are kept",
    )


def _fast_forward(root: Path, wt: Worktree, head: str) -> str | MergeResult:
    """The base branch (checked out nowhere) moved to ``head``: the new base commit, or why it
    cannot be fast-forwarded."""
    base_ref = f"refs/heads/{wt.base_branch}"
    if not _branch_exists(root, wt.base_branch):
        raise OrchError(
            "git_failed",
            f"the base branch {wt.base_branch} of workstream {wt.workstream_id} does not exist "
            f"in {root}",
            hint=f"create it (git branch {wt.base_branch} {wt.branch}) and merge again",
        )
    base_sha = _rev(root, base_ref)
    ancestry = run_git(root, "merge-base", "--is-ancestor", base_sha, head)
    if ancestry.returncode == 1:
        return MergeResult(
            False, None,
            f"{wt.base_branch} has commits that {wt.branch} does not, and it is not checked "
            f"out, so it cannot be fast-forwarded; the worktree {wt.path} and branch "
            f"{wt.branch} are kept",
        )
    if ancestry.returncode != 0:
        raise _fail(ancestry)
    _git(root, "update-ref", "-m", f"orch: fast-forward to workstream {wt.workstream_id}",
         base_ref, head, base_sha)
    return head


def archive_state(root: Path, workstream_id: str, document: dict[str, Any]) -> Path:
    """Write ``document`` to ``root/.state/archive/{ws}/{UTC timestamp}.json`` and ``latest.json``
    (sorted keys, indent 2); the timestamped path. A second archive within the same second gets
    a ``-1``, ``-2`` ... suffix rather than overwriting the first."""
    if re.match(ID_PATTERN, workstream_id) is None:
        raise OrchError(
            "invalid_workstream_id",
            f"workstream id {workstream_id!r} cannot name an archive directory",
            hint="use letters, digits, '_', '-' and '.'",
        )
    directory = Path(root) / ARCHIVE_DIR / workstream_id
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, sort_keys=True, indent=2, default=str) + "\n"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"{stamp}.json"
    n = 0
    while True:
        try:
            with open(target, "x", encoding="utf-8") as fh:
                fh.write(text)
            break
        except FileExistsError:
            n += 1
            target = directory / f"{stamp}-{n}.json"
    latest_tmp = directory / f".latest.{os.getpid()}.tmp"
    latest_tmp.write_text(text, encoding="utf-8")
    os.replace(latest_tmp, directory / "latest.json")
    return target
