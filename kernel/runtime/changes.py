"""What an attempt changed in its working tree, whether it kept to its files, and undoing it.

Public API:
    ``Snapshot`` (``take(base) -> Snapshot``; ``changed() -> list[str]``; ``revert(paths)``;
    ``diff_text(paths) -> str``); ``tree_lock(lock_dir, key, exclusive, should_stop)`` (a
    context manager; yields the reason when ``should_stop`` ended the wait, else None);
    ``tree_holders(lock_dir, key) -> dict[str, int]``; ``holder_id() -> str``;
    ``outside(paths, allowed) -> list[str]``.

Stability Guarantees:
    **What changed.** In a git work tree a snapshot is ``git status --porcelain -z
    --untracked-files=all`` (``.gitignore``d files and ``.state/`` are never counted), with the
    content of every path already dirty kept aside, so ``changed()`` names exactly the paths
    whose content (or existence) differs from the snapshot: a file the attempt created,
    modified, deleted, or put back to HEAD. Outside a git repository the snapshot is a walk of
    the tree (size and modification time of each file, at most ``MAX_WALK_FILES`` files,
    skipping ``.git``, ``.state`` and ``__pycache__``).
    **Undo.** ``revert(paths)`` puts each path back as it was in the snapshot: a file clean
    at the snapshot comes back from ``HEAD`` (or is removed when it did not exist), a file
    dirty at the snapshot gets its kept content back. Outside git nothing can be reverted:
    ``revert`` raises ``OrchError("cannot_revert")`` naming the files.
    **One tree, one agent.** ``tree_lock`` is a readers–writer lock on a working tree
    (``flock`` on ``{lock_dir}/tree-{key}.lock``): every task holds it shared while it runs and
    commits, an agent task holds it exclusive from its start to its commit or undo, so the
    changes an agent attempt is judged on (and may revert) are its own, never those of a
    command running next to it in the same worktree. The wait polls ``should_stop`` so a
    cancel reaches a waiting task too.
    **Who is in the tree.** While it holds the lock, a task is registered as
    ``{lock_dir}/tree-{key}.running/{holder_id()}`` (``pid-thread``), an empty file whose
    modification time is when it took the lock, on the file system's clock (the clock file
    modification times are compared with). ``tree_holders`` lists the live holders and their
    start times, dropping the entries of processes that died; the group commit of
    ``kernel.runtime.worktree`` uses it to leave a file for later while a task that may have
    written it is still running.

Integration Points:
    ``kernel.runtime.worker`` takes ``tree_lock`` around each task; the agent executors
    (``kernel.runtime.executors.agentkit``) snapshot before the agent starts, judge the diff
    against the task's files and revert what an attempt that failed changed.

Dependencies:
    ``kernel.base.errors``, ``kernel.base.processes``, ``kernel.runtime.worktree``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kernel.base.errors import OrchError
from kernel.base.processes import pid_alive
from kernel.runtime.worktree import is_git_repo, run_git

__all__ = ["MAX_WALK_FILES", "Snapshot", "holder_id", "outside", "tree_holders", "tree_lock"]

MAX_WALK_FILES = 50_000
_SKIP_DIRS = {".git", ".state", "__pycache__"}
#: Files dirty at the snapshot larger than this are not kept aside (they cannot be reverted).
MAX_KEPT_BYTES = 16 * 1024 * 1024
_ABSENT = "absent"


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return _ABSENT
    except IsADirectoryError:
        return "directory"
    except OSError as exc:
        return f"unreadable: {exc.errno}"


def _status(base: Path, prefix: str) -> list[str]:
    """Paths under ``base`` (relative to it) that git reports as differing from HEAD
    (modified, staged, deleted, untracked). ``prefix``: ``base`` relative to the repository's
    top (porcelain paths are relative to the top)."""
    proc = run_git(base, "status", "--porcelain=v1", "-z", "--untracked-files=all",
                   "--no-renames", "--", ".", ":(exclude).state")
    if proc.returncode != 0:
        raise OrchError("git_failed", f"git status failed in {base}: {proc.stderr.strip()}",
                        hint="run `git status` there to see what git needs")
    return [entry[3 + len(prefix):] for entry in proc.stdout.split("\0")
            if len(entry) > 3 and entry[3:].startswith(prefix)]


def _walk(base: Path) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                st = path.lstat()
                found[path.relative_to(base).as_posix()] = (st.st_size, st.st_mtime_ns)
            if len(found) >= MAX_WALK_FILES:
                return found
    return found


@dataclass
class Snapshot:
    """The state of a working tree before an attempt (see the module docstring)."""

    base: Path
    git: bool
    prefix: str = ""
    dirty: dict[str, str] = field(default_factory=dict)        # path -> digest (git)
    kept: dict[str, bytes | None] = field(default_factory=dict)  # path -> content (git)
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> stat (no git)

    @classmethod
    def take(cls, base: Path) -> Snapshot:
        base = Path(base)
        if not is_git_repo(base):
            return cls(base, False, files=_walk(base))
        snap = cls(base, True, run_git(base, "rev-parse", "--show-prefix").stdout.strip())
        for rel in _status(base, snap.prefix):
            path = base / rel
            snap.dirty[rel] = _digest(path)
            if snap.dirty[rel] == _ABSENT:
                snap.kept[rel] = None
            elif path.is_file() and path.stat().st_size <= MAX_KEPT_BYTES:
                snap.kept[rel] = path.read_bytes()
        return snap

    def changed(self) -> list[str]:
        """The paths whose content or existence differs from the snapshot, sorted."""
        if not self.git:
            now = _walk(self.base)
            return sorted(p for p in set(now) | set(self.files)
                          if now.get(p) != self.files.get(p))
        dirty_now = set(_status(self.base, self.prefix))
        out = []
        for rel in dirty_now | set(self.dirty):
            if rel not in self.dirty:
                out.append(rel)                       # clean before, dirty now
            elif rel not in dirty_now or _digest(self.base / rel) != self.dirty[rel]:
                out.append(rel)                       # back to HEAD, or changed again
        return sorted(out)

    def revert(self, paths: Iterable[str]) -> None:
        """Put ``paths`` back as they were at the snapshot."""
        paths = sorted(set(paths))
        if not paths:
            return
        if not self.git:
            raise OrchError("cannot_revert",
                            f"cannot undo changes outside a git repository: {', '.join(paths)}",
                            hint="run agents in a git repository (orch uses a worktree there)")
        from_head = [p for p in paths if p not in self.dirty]
        lost = [p for p in paths if p in self.dirty and p not in self.kept]
        for rel in paths:
            if rel in self.kept:
                _put_back(self.base / rel, self.kept[rel])
        if from_head:
            self._from_head(from_head)
        if lost:
            raise OrchError("cannot_revert",
                            f"cannot undo changes to files that were already modified and over "
                            f"{MAX_KEPT_BYTES} bytes: {', '.join(lost)}",
                            hint="commit or remove large uncommitted files before the run")

    def _from_head(self, paths: Sequence[str]) -> None:
        tracked = set(run_git(self.base, "ls-files", "-z", "--", *paths).stdout.split("\0"))
        for rel in paths:
            if rel not in tracked:
                _put_back(self.base / rel, None)
        restore = [p for p in paths if p in tracked]
        if restore:
            proc = run_git(self.base, "checkout", "HEAD", "--", *restore)
            if proc.returncode != 0:
                raise OrchError("git_failed", f"could not restore {', '.join(restore)} from "
                                f"HEAD: {proc.stderr.strip()}",
                                hint="run `git checkout HEAD -- FILE` there")

    def diff_text(self, paths: Sequence[str]) -> str:
        """A unified diff of ``paths`` against HEAD (git), for a person to review; empty
        outside git."""
        if not self.git or not paths:
            return ""
        untracked = [p for p in paths if (self.base / p).is_file()]
        run_git(self.base, "add", "--intent-to-add", "--", *untracked)
        proc = run_git(self.base, "diff", "HEAD", "--", *paths)
        run_git(self.base, "reset", "--quiet", "--", *paths)
        return proc.stdout


def _put_back(path: Path, content: bytes | None) -> None:
    if content is None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def outside(paths: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The ``paths`` (relative to the tree, POSIX) not among ``allowed``."""
    ok = {os.path.normpath(a) for a in allowed}
    return sorted(p for p in paths if os.path.normpath(p) not in ok)


def holder_id() -> str:
    """This task's name in a tree's register of holders: ``{pid}-{thread id}``."""
    return f"{os.getpid()}-{threading.get_ident()}"


def _registry(lock_dir: Path, key: str) -> Path:
    return lock_dir / f"tree-{key}.running"


def tree_holders(lock_dir: Path, key: str) -> dict[str, int]:
    """The tasks holding the tree's lock now: ``holder_id`` -> when it took the lock
    (``st_mtime_ns`` of its register entry). Entries of dead processes are removed."""
    holders: dict[str, int] = {}
    try:
        entries = list(os.scandir(_registry(lock_dir, key)))
    except FileNotFoundError:
        return holders
    for entry in entries:
        pid = entry.name.partition("-")[0]
        if not pid.isdigit() or not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
            continue
        with contextlib.suppress(FileNotFoundError):
            holders[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
    return holders


@contextlib.contextmanager
def _registered(lock_dir: Path, key: str) -> Iterator[None]:
    registry = _registry(lock_dir, key)
    registry.mkdir(exist_ok=True)
    entry = registry / holder_id()
    os.close(os.open(entry, os.O_WRONLY | os.O_CREAT, 0o600))
    os.utime(entry)   # a stale entry of a reused pid gets the time of now, too
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


@contextlib.contextmanager
def tree_lock(lock_dir: Path, key: str, exclusive: bool,
              should_stop: Callable[[], str | None] = lambda: None,
              poll: float = 0.05, register: bool = True) -> Iterator[str | None]:
    """Hold the working tree's lock (see the module docstring); yields None once held, or the
    reason ``should_stop`` gave while waiting (the lock is then not held). With ``register``
    the holder is listed for ``tree_holders`` (what a worktree's commits are attributed by;
    a tree without commits, the project root, needs no register)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(lock_dir / f"tree-{key}.lock", "a+b") as fh:
        while True:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                reason = should_stop()
                if reason is not None:
                    yield reason
                    return
                time.sleep(poll)
        try:
            with _registered(lock_dir, key) if register else contextlib.nullcontext():
                yield None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
