"""One git worktree per workstream: created when it has work, merged back when it completes.

Public API:
    ``Worktree`` (frozen dataclass: ``workstream_id``, ``path``, ``branch``, ``base_branch``);
    ``is_git_repo(root) -> bool``; ``current_branch(root) -> str | None``;
    ``ensure_worktree(root, workstream_id, base_branch=None) -> Worktree``;
    ``commit_all(path, message) -> Commit | None`` (``Commit``: ``sha``, ``message``,
    ``files``, ``insertions``, ``deletions``, ``summary``); ``MergeResult`` (frozen dataclass:
    ``merged``, ``commit``, ``message``); ``merge_and_remove(root, wt) -> MergeResult``;
    ``archive_state(root, workstream_id, document) -> Path``; ``run_git(where, *args,
    input=None, env=None)`` (git with the environment cleaned of variables that point it
    elsewhere, no prompt, a timeout); ``Finished`` (frozen dataclass: ``task_id``,
    ``message``, ``holder``); ``commit_finished(path, task, holders) -> Commit | None`` (the
    group commit).

Stability Guarantees:
    The layout is a contract: the worktree of workstream ``ws`` is ``.state/worktrees/ws`` on
    branch ``orch/ws``; archives are ``.state/archive/ws/{YYYYmmddTHHMMSSZ}.json`` plus
    ``latest.json``. ``ensure_worktree`` is idempotent. ``merge_and_remove`` never leaves a merge
    half done: on a conflict it aborts the merge and keeps the worktree and the branch. A failing
    git command raises ``OrchError("git_failed")`` naming the command and git's message; a merge
    that cannot be made is a ``MergeResult(merged=False)``, not an error.
    **Group commit.** ``commit_finished`` answers every task that queued before a round
    started with one change detection (a walk of the tree against the tree git last found
    clean, ``git status`` only when it differs) and at most one commit; a task in a small tree
    whose own walk matches the clean tree returns None without the lock. A commit holds the
    dirty paths no running task of the tree (``holders()``) may still be writing, and names
    every task whose interval holds a path's change time (docs/execution_model/WORKERS.md,
    "Commits and attribution"). Its state is ``.state/worktrees/.{ws}.commits/``, removed with
    the worktree.

Integration Points:
    The scheduler calls ``ensure_worktree`` when a workstream has work to run and runs its tasks
    there; when the workstream completes it calls ``merge_and_remove``; on failure or cancel it
    keeps the worktree and calls ``archive_state``. ``.state/.gitignore`` (written by
    ``orch init``) keeps the worktrees out of the main checkout's ``git status``. The worker
    calls ``commit_finished`` when a task succeeds in a worktree, with ``holders`` from
    ``kernel.runtime.changes.tree_holders``.

Dependencies:
    ``kernel.base.errors``, ``kernel.base.git``, ``kernel.definitions.models``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from kernel.base.errors import OrchError
from kernel.base.git import (
    branch_exists,
    current_branch,
    is_git_repo,
    run_git,
)
from kernel.definitions.models import ID_PATTERN

WORKTREES_DIR = Path(".state") / "worktrees"
ARCHIVE_DIR = Path(".state") / "archive"
BRANCH_PREFIX = "orch/"
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


def _fail(proc: subprocess.CompletedProcess[str], hint: str | None = None) -> OrchError:
    detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
    return OrchError(
        "git_failed",
        f"{' '.join(str(a) for a in proc.args)} exited {proc.returncode}: {' / '.join(detail)}",
        hint=hint or "run the command yourself in that directory to see what git needs",
    )


def _git(where: Path, *args: str, config: tuple[str, ...] = (), hint: str | None = None,
         input: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = run_git(where, *args, config=config, input=input, env=env)
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
    if branch_exists(root, branch):
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
    if not branch_exists(root, base):
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
    return _commit_staged(path, message)


def _commit_staged(path: Path, message: str) -> Commit | None:
    """Commit what is staged: the commit, or None when nothing is."""
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


# --------------------------------------------------------------------------- group commit
#
# Tasks finishing in one worktree share the change detection and the commit: each finisher
# queues itself (a file in ``.{ws}.commits/queue``), then takes the worktree's commit lock;
# when it gets it, either a round that started after it queued has answered it already (its
# answer is a file in ``answers/``), or it runs the round itself: it takes every queued
# finisher, runs ONE ``git status``, and, when something changed, makes one commit that answers
# all of them. See "Commits and attribution" in docs/execution_model/WORKERS.md.

#: Commit subjects name at most this many tasks (the body names all of them).
SUBJECT_TASKS = 5
#: A worktree with more entries than this (ignored files included) is not walked: each round
#: asks git.
MAX_FAST_WALK = 20_000
#: A finishing task walks a tree of at most this many entries itself rather than wait for a
#: round (a walk of 2,000 entries costs about as much as starting one process).
MAX_OWN_WALK = 2_000
#: An entry changed this recently is not trusted to show a later change in its times.
RACY_NS = 20_000_000


@dataclass(frozen=True)
class Finished:
    """A task asking for its change to be committed: its id, the commit message it would
    get alone, and its name in the tree's register of holders
    (``kernel.runtime.changes.holder_id``)."""

    task_id: str
    message: str
    holder: str


class _Finisher(NamedTuple):
    name: str           # its queue entry
    task_id: str
    message: str
    holder: str         # its name in the tree's register
    end: int            # st_mtime_ns of its queue entry
    start: int | None = None  # st_mtime_ns of its entry in the tree's register (None: unknown)


def commit_finished(path: Path, task: Finished,
                    holders: Callable[[], dict[str, int]]) -> Commit | None:
    """Commit what ``task`` changed in the worktree at ``path``, sharing the work with the
    tasks finishing at the same time: the commit that holds its change, or None when it
    changed nothing (or what it changed waits for a neighbour that is still running).

    ``holders()`` gives the tasks in the tree now and when they started
    (``kernel.runtime.changes.tree_holders``). Raises ``OrchError("git_failed")`` when git
    fails; every task of that round gets the error."""
    group = _Group(Path(path))
    if group.unchanged():
        return None
    name = group.enqueue(task)
    with group.locked():
        answer = group.take_answer(name)
        if answer is None:
            answer = group.round(name, holders)
    if "error" in answer:
        raise OrchError("git_failed", str(answer["error"]), hint=answer.get("hint"))
    done = answer.get("commit")
    if not done:
        return None
    return Commit(done["sha"], done["message"], tuple(done["files"]), int(done["insertions"]),
                  int(done["deletions"]))


def _pid_alive(name: str) -> bool:
    pid = name.partition("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(target: Path, document: Any, tmp_dir: Path) -> None:
    """Write ``document`` to ``target`` atomically (a reader sees all of it or nothing)."""
    tmp = tmp_dir / f".{target.name}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(document, fh)
    os.replace(tmp, target)


class _Group:
    """The group-commit state of one worktree: ``.{ws}.commits/`` next to it."""

    def __init__(self, worktree: Path) -> None:
        self.worktree = worktree
        self.dir = worktree.parent / f".{worktree.name}.commits"
        self.queue = self.dir / "queue"
        self.answers = self.dir / "answers"
        self.pending = self.dir / "pending.json"
        self.state = self.dir / "tree.json"

    def enqueue(self, task: Finished) -> str:
        """Queue ``task``; its entry's modification time is when it finished."""
        self.queue.mkdir(parents=True, exist_ok=True)
        self.answers.mkdir(exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        _write_json(self.queue / name, {"task_id": task.task_id, "message": task.message,
                                        "holder": task.holder}, self.dir)
        return name

    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.dir / "lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def take_answer(self, name: str) -> dict[str, Any] | None:
        """The answer a round gave to ``name``, or None when no round has answered it yet."""
        target = self.answers / name
        try:
            with open(target, encoding="utf-8") as fh:
                answer: dict[str, Any] = json.load(fh)
        except FileNotFoundError:
            return None
        target.unlink()
        return answer

    def _queued(self) -> list[_Finisher]:
        """The queued finishers (entries of dead processes are dropped), by finishing time;
        ``start`` is filled in later."""
        found: list[_Finisher] = []
        for entry in os.scandir(self.queue):
            if not _pid_alive(entry.name):
                with suppress(OSError):
                    os.unlink(entry.path)
                continue
            with open(entry.path, encoding="utf-8") as fh:
                record = json.load(fh)
            found.append(_Finisher(entry.name, record["task_id"], record["message"],
                                   record["holder"], entry.stat().st_mtime_ns))
        return sorted(found, key=lambda f: (f.end, f.name))

    def round(self, own: str, holders: Callable[[], dict[str, int]]) -> dict[str, Any]:
        """One change detection (and at most one commit) for every queued finisher; their
        answers; ``own``'s is returned."""
        queued = self._queued()          # before the detection: it answers for all of them
        try:
            dirty = self.detect()
            answers = self._commit_round(queued, dirty, holders) if dirty else {}
            if not dirty:
                with suppress(FileNotFoundError):
                    self.pending.unlink()
        except OrchError as exc:
            answers = {f.name: {"error": exc.message, "hint": exc.hint} for f in queued}
        mine: dict[str, Any] = {"commit": None}
        for finisher in queued:
            answer = answers.get(finisher.name, {"commit": None})
            if finisher.name == own:
                mine = answer
            else:
                _write_json(self.answers / finisher.name, answer, self.dir)
            with suppress(FileNotFoundError):
                (self.queue / finisher.name).unlink()
        for entry in os.scandir(self.answers):      # answers nobody will read
            if not _pid_alive(entry.name):
                with suppress(OSError):
                    os.unlink(entry.path)
        return mine

    def _tree_state(self) -> dict[str, Any]:
        """What the rounds know of the tree: ``clean`` (the digest of the tree git last found
        clean, or None), ``big`` (too many entries to walk), ``entries``."""
        try:
            with open(self.state, encoding="utf-8") as fh:
                state: dict[str, Any] = json.load(fh)
        except (FileNotFoundError, ValueError):
            return {}
        return state

    def unchanged(self, limit: int = MAX_OWN_WALK) -> bool:
        """Whether a tree of at most ``limit`` entries is as it was when git last found it
        clean: a walk by the finishing task itself, without the lock (in parallel with the
        others')."""
        state = self._tree_state()
        if not state.get("clean") or (state.get("entries") or limit + 1) > limit:
            return False
        walk = _tree_digest(self.worktree)
        return walk is not None and walk[0] == state["clean"]

    def detect(self) -> list[str]:
        """The dirty paths. Without running git when every entry of the tree (and git's index
        and HEAD) is as it was when git last found the tree clean (``_tree_digest``)."""
        state = self._tree_state()
        walk = None if state.get("big") else _tree_digest(self.worktree)
        if walk is not None and walk[0] and walk[0] == state.get("clean"):
            return []
        dirty = _dirty(self.worktree)
        new = {"big": state.get("big") or walk is None,
               "clean": walk[0] if walk and not dirty and not walk[1] else None,
               "entries": walk[2] if walk else None}
        if new != state:
            _write_json(self.state, new, self.dir)
        return dirty

    def _commit_round(self, queued: list[_Finisher], dirty: list[str],
                      holders: Callable[[], dict[str, int]]) -> dict[str, Any]:
        """Attribute the dirty paths, commit those no running task may still be writing, and
        answer each finisher: the commit when it is named in it, else None."""
        running = holders()
        ours = {f.holder for f in queued}
        finishers = [f._replace(start=running.get(f.holder)) for f in queued]
        others = [at for holder, at in running.items() if holder not in ours]
        try:
            with open(self.pending, encoding="utf-8") as fh:
                pending: dict[str, list[list[str]]] = json.load(fh)
        except FileNotFoundError:
            pending = {}
        paths, writers, kept = _attribute(self.worktree, dirty, finishers, others, pending)
        if kept or pending:
            _write_json(self.pending, kept, self.dir)
        commit = None
        if paths:
            commit = _commit_paths(self.worktree, paths, _group_message(writers))
        if commit is None:
            return {}
        named = {tuple(w) for w in writers}
        document = {"commit": {**dataclasses.asdict(commit), "files": list(commit.files)}}
        return {f.name: document for f in finishers if (f.task_id, f.message) in named}


def _attribute(
    worktree: Path, dirty: list[str], finishers: list[_Finisher], others: list[int],
    pending: dict[str, list[list[str]]],
) -> tuple[list[str], list[list[str]], dict[str, list[list[str]]]]:
    """(paths to commit now, the tasks that may have written them as [task id, message],
    paths kept for later with the finished tasks that may have written them).

    A path was last changed at ``m`` (its modification time; for a deleted path, that of its
    nearest directory). A task that started at or before ``m`` and is still running may be
    writing it: it is kept for later. Else it is committed, naming the finishers whose
    [start, end] holds ``m`` and those remembered for it from earlier rounds; when there are
    none, the first finisher (what is dirty when a task ends is committed with it)."""
    earliest = min(others, default=None)
    paths: list[str] = []
    writers: list[list[str]] = []
    kept: dict[str, list[list[str]]] = {}
    for rel in dirty:
        m = _changed_at(worktree, rel)
        could = list(pending.get(rel, []))
        could += [[f.task_id, f.message] for f in finishers
                  if (f.start is None or f.start <= m) and m <= f.end]
        if earliest is not None and earliest <= m:
            kept[rel] = _unique(could)
            continue
        paths.append(rel)
        writers += could or [[finishers[0].task_id, finishers[0].message]]
    return paths, _unique(writers), kept


def _unique(items: list[list[str]]) -> list[list[str]]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for item in items:
        if tuple(item) not in seen:
            seen.add(tuple(item))
            out.append(list(item))
    return out


def _git_files(worktree: Path) -> list[Path]:
    """The files that say what the worktree is compared with: its index, HEAD, the branch HEAD
    names and packed-refs. (``.git`` is a file naming the git directory in a linked worktree,
    the directory itself in a main one.)"""
    dot_git = worktree / ".git"
    git_dir = dot_git
    if dot_git.is_file():
        text = dot_git.read_text(encoding="utf-8").strip()
        git_dir = (worktree / text.removeprefix("gitdir:").strip()).resolve()
    common = git_dir
    if (git_dir / "commondir").is_file():
        common = (git_dir / (git_dir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    files = [git_dir / "index", git_dir / "HEAD", common / "packed-refs"]
    head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    if head.startswith("ref:"):
        files.append(common / head.removeprefix("ref:").strip())
    return files


def _tree_digest(worktree: Path) -> tuple[str, bool, int] | None:
    """(a digest of every entry under ``worktree`` — inode, size, times, mode — and of git's
    index, HEAD and branch; whether an entry changed too recently to be trusted; the number
    of entries), or None when the tree has more than ``MAX_FAST_WALK`` entries. The digest is
    "" when an entry could not be read.

    A file changed in place changes its times; created, removed or renamed entries change
    their directory's. "Too recently" is git's racy-clean rule: the file system stamps times
    with a coarse clock, so an entry changed again within the same tick keeps its times; an
    entry stamped within ``RACY_NS`` of the walk's start may change unseen, so the walk does
    not stand for a clean tree."""
    racy_from = time.time_ns() - RACY_NS
    total = count = newest = 0
    stack = [str(worktree)]
    try:
        for path in _git_files(worktree):
            with suppress(FileNotFoundError):
                st = path.stat()
                total += hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
                newest = max(newest, st.st_ctime_ns)
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.name == ".git":
                        continue
                    st = entry.stat(follow_symlinks=False)
                    # Hashes of int tuples are the same in every process (str's are salted).
                    total += hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                   st.st_mode))
                    count += 1
                    if st.st_ctime_ns > newest:
                        newest = st.st_ctime_ns
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
            if count > MAX_FAST_WALK:
                return None
    except OSError:
        return "", True, count
    return f"{total & 0xFFFFFFFFFFFFFFFF:016x}-{count}", newest >= racy_from, count


def _changed_at(worktree: Path, rel: str) -> int:
    """When ``rel`` was last changed: its modification time, or for a path that is gone that
    of its nearest existing directory (removing a file changes its directory)."""
    path = worktree / rel
    while True:
        try:
            return path.lstat().st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            if path == worktree or path.parent == path:
                return 0
            path = path.parent


def _dirty(worktree: Path) -> list[str]:
    """The paths ``git status`` reports as differing from HEAD (modified, staged, deleted,
    untracked), relative to the worktree. It does not refresh the index (it takes no lock)."""
    proc = run_git(worktree, "status", "--porcelain=v1", "-z", "--untracked-files=all",
                   "--no-renames", env={"GIT_OPTIONAL_LOCKS": "0"})
    if proc.returncode != 0:
        raise _fail(proc, "run `git status` in the worktree to see what git needs")
    return [entry[3:] for entry in proc.stdout.split("\0") if len(entry) > 3]


def _commit_paths(worktree: Path, paths: list[str], message: str) -> Commit | None:
    """Stage ``paths`` (added, modified or deleted) and commit: the commit, or None."""
    _git(worktree, "add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul",
         input="\0".join(paths), env={"GIT_LITERAL_PATHSPECS": "1"})
    return _commit_staged(worktree, message)


def _group_message(writers: list[list[str]]) -> str:
    """One task's own message; for several, a subject naming them and each one's message."""
    if len(writers) == 1:
        return writers[0][1]
    ids = [task_id for task_id, _ in writers]
    subject = ", ".join(ids[:SUBJECT_TASKS])
    if len(ids) > SUBJECT_TASKS:
        subject += f" and {len(ids) - SUBJECT_TASKS} more"
    return f"orch: {len(ids)} tasks: {subject}\n\n" + "\n\n".join(m for _, m in writers)


def _remove(root: Path, wt: Worktree) -> None:
    shutil.rmtree(_Group(wt.path).dir, ignore_errors=True)
    if wt.path.exists():
        _git(root, "worktree", "remove", "--force", str(wt.path))
    else:
        _git(root, "worktree", "prune")
    if branch_exists(root, wt.branch):
        _git(root, "branch", "-D", wt.branch)


def merge_and_remove(root: Path, wt: Worktree) -> MergeResult:
    """Merge the workstream's branch into its base, then remove the worktree and the branch.

    Leftover changes in the worktree are committed first (without running git when the tree is
    as a group-commit round last found it clean). When the base is checked out (at
    ``root`` or in another worktree) it gets a ``--no-ff`` merge commit there; a conflict aborts
    the merge. Otherwise the base is fast-forwarded, if it can be. When the merge cannot be made
    the worktree and the branch are kept and ``merged`` is False.
    """
    root = Path(root).resolve()
    ws = wt.workstream_id
    if wt.path.exists() and not _Group(wt.path).unchanged(MAX_FAST_WALK):
        commit_all(wt.path, f"orch: leftover changes of workstream {ws}")
    if not branch_exists(root, wt.branch):
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
    if not branch_exists(root, wt.base_branch):
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
