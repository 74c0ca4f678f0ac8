"""Running git for the kernel: one way to call it, and the few questions every layer asks.

Public API:
    ``run_git(where, *args, config=(), input=None, env=None) -> CompletedProcess[str]``
    (``git [config] -C where ARGS``); ``git_env(extra=None) -> dict`` (the environment it runs
    with); ``is_git_repo(root) -> bool``; ``current_branch(root) -> str | None``;
    ``branch_exists(root, branch) -> bool``; ``GIT_TIMEOUT_SECONDS``.

Stability Guarantees:
    git never prompts (``GIT_TERMINAL_PROMPT=0``), never follows the variables that point it at
    another repository (``GIT_DIR`` & co., set inside hooks), reads no standard input unless
    given ``input``, and is stopped after ``GIT_TIMEOUT_SECONDS``. A missing git or a timeout
    raises ``OrchError("git_failed")`` naming the command and what to do; any other failure is
    the returned process's ``returncode`` for the caller to judge.
    ``is_git_repo`` is true only inside a work tree with at least one commit (a repository with
    no commit has nothing a worktree could be made from).

Integration Points:
    ``kernel.runtime.worktree`` (worktrees, commits, merges) and ``kernel.runtime.changes``
    run every git command through ``run_git``; ``kernel.definitions.preflight`` (``orch
    validate``) asks the same questions the run will ask, before it runs.

Dependencies:
    ``kernel.base.errors``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kernel.base.errors import OrchError

__all__ = ["GIT_TIMEOUT_SECONDS", "branch_exists", "current_branch", "git_env", "is_git_repo",
           "run_git"]

GIT_TIMEOUT_SECONDS = 120

# Variables that would point git at another repository than the one we pass with -C (they are
# set inside git hooks, for example).
_GIT_LOCATION_VARS = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX",
)


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment git runs with: this one, without the location variables, no prompt."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.update(extra or {})
    return env


def run_git(
    where: Path, *args: str, config: tuple[str, ...] = (), input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``git -C where ARGS``: never prompts, never follows GIT_DIR & co., times out.
    ``input`` is its standard input (default: none); ``env`` is added to its environment."""
    cmd = ["git", *config, "-C", str(where), *args]
    try:
        return subprocess.run(
            cmd, env=git_env(env), input=input,
            stdin=subprocess.DEVNULL if input is None else None, capture_output=True,
            text=True, timeout=GIT_TIMEOUT_SECONDS,
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


def branch_exists(root: Path, branch: str) -> bool:
    return run_git(root, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}").returncode == 0
