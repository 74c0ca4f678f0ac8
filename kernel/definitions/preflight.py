"""What ``orch validate`` can tell before a run that the run would trip over: programs that are
not installed, a git repository whose worktrees would not hold the project, a base branch
that does not exist.

Public API:
    ``preflight(project, defs) -> list[ValidationProblem]`` (warnings only);
    ``program_of(command) -> str | None`` (the program a command line runs, as a worker would
    split it).

Stability Guarantees:
    Every finding is a warning: the definitions are valid, the run would fail. Codes:
    ``program_not_found`` (a task's command or one of its validation rules names a program that
    is neither on PATH nor a file, one warning per program, naming the first task file and how
    many others); ``uncommitted_changes`` (worktrees are on, and files the worktrees would not
    have are not committed; orch's own ``.state/``, ``orch.toml``, ``capabilities/`` and
    ``tasks/``, read from the project root, are not counted); ``base_branch_missing`` (a workstream
    names a base branch the repository does not have); ``dask_missing`` (``[run] executor =
    "dask"`` and dask.distributed is not installed). Nothing is written, and nothing runs
    but ``git status``/``git show-ref``. A project that is not a git repository, or has
    ``[run] worktrees = false``, gets no git warnings: its tasks run in the project directory.

Integration Points:
    ``kernel.definitions.check.validate`` (``orch validate``) adds these to its problems; the
    same questions are asked at run time by the local executor (a missing program is a start
    error), by ``kernel.runtime.rules`` and by ``kernel.runtime.worktree`` (through
    ``kernel.base.git``).

Dependencies:
    ``kernel.base.config``, ``kernel.base.errors``, ``kernel.base.git``,
    ``kernel.definitions.collect``, ``kernel.definitions.executors``,
    ``kernel.definitions.records``, ``kernel.store.project``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path

from kernel.base.config import Config
from kernel.base.errors import OrchError
from kernel.base.git import branch_exists, current_branch, is_git_repo, run_git
from kernel.definitions.collect import Definitions
from kernel.definitions.executors import AGENT_EXECUTORS, effective_executor
from kernel.definitions.records import TaskRecord, ValidationProblem
from kernel.store.project import Project

__all__ = ["preflight", "program_of"]

# The first word of a shell script that is not a program on PATH.
_SHELL_WORDS = frozenset({
    ".", ":", "[", "alias", "break", "case", "cd", "command", "continue", "echo", "eval", "exec",
    "exit", "export", "false", "for", "if", "printf", "pwd", "read", "return", "set", "shift",
    "test", "times", "trap", "true", "type", "ulimit", "umask", "unset", "until", "wait",
    "while", "{", "(", "!",
})
_SIMPLE_WORD = re.compile(r"[A-Za-z0-9_./+@%:,-]+")
_SHOWN = 3
_ORCH_FILES = (".state", "orch.toml", "capabilities", "tasks")


def program_of(command: str) -> str | None:
    """The program a command line runs (its first word, split as shlex splits it), or None
    when there is nothing to look up: an empty or unparsable command, a placeholder, an
    environment assignment or a shell word."""
    match = _SIMPLE_WORD.match(command.lstrip())
    rest = command.lstrip()[match.end():] if match else ""
    if match and (not rest or rest[0].isspace()):
        first = match.group(0)
    else:
        try:
            words = shlex.split(command)
        except ValueError:
            return None
        if not words:
            return None
        first = words[0]
    if "{" in first or "=" in first or first in _SHELL_WORDS:
        return None
    return first


def _found(program: str, cwd: Path) -> bool:
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(program) is not None


def _needs_lookup(rec: TaskRecord) -> bool:
    command = rec.columns[-1]
    executor = None
    if command and ('"executor"' in rec.definition):
        executor = json.loads(rec.definition)["execution"].get("executor")
    kind = effective_executor(executor, rec.columns[2])
    return bool(command) and kind not in AGENT_EXECUTORS and kind != "noop"


def _task_programs(project: Project, defs: Definitions) -> dict[str, list[tuple[str, str]]]:
    """Program -> [(task file, where it was named)] for every program that is not found."""
    missing: dict[str, list[tuple[str, str]]] = {}
    seen: dict[tuple[str, str], bool] = {}
    for rec in defs.tasks:
        if not _needs_lookup(rec):
            continue
        program = program_of(rec.columns[-1])
        if program is None:
            continue
        cwd = project.root
        if "/" in program and not os.path.isabs(program):
            execution = json.loads(rec.definition)["execution"]
            cwd = project.root / execution.get("working_directory", ".")
        key = (program, str(cwd))
        if key not in seen:
            seen[key] = _found(program, cwd)
        if not seen[key]:
            missing.setdefault(program, []).append((rec.file, "execution.command"))
    return missing


def _rule_programs(project: Project, defs: Definitions,
                   config: Config) -> dict[str, list[tuple[str, str]]]:
    """The same for the ``[rules]`` commands that some task's validation rules use."""
    used: dict[str, str] = {}
    for rec in defs.tasks:
        if '"validation_rules"' not in rec.definition:
            continue
        rules = json.loads(rec.definition).get("validation_rules") or {}
        for phase in ("pre_execution", "post_execution"):
            for name in rules.get(phase) or []:
                used.setdefault(name, rec.file)
    missing: dict[str, list[tuple[str, str]]] = {}
    for name, file in sorted(used.items()):
        command = getattr(config.rules, name, None)
        program = program_of(command) if isinstance(command, str) else None
        if program is not None and not _found(program, project.root):
            missing.setdefault(program, []).append((file, f"[rules] {name} in orch.toml"))
    return missing


def _programs(project: Project, defs: Definitions,
              config: Config | None) -> list[ValidationProblem]:
    missing = _task_programs(project, defs)
    for program, uses in (_rule_programs(project, defs, config) if config else {}).items():
        missing.setdefault(program, []).extend(uses)
    out = []
    for program, uses in sorted(missing.items()):
        file, where = uses[0]
        others = len({f for f, _ in uses}) - 1
        also = f" (and {others} other task file{'s' if others != 1 else ''})" if others else ""
        own = where == "execution.command"
        out.append(ValidationProblem(
            "program_not_found", file, "execution.command" if own else "validation_rules",
            f"{program!r} ({where}) is not on PATH{also}: "
            + ("the task would fail to start" if own else "the rule would fail, and the task "
               "with it"),
            f"install {program}, or run orch where it is on PATH (a virtual environment's "
            "programs are on PATH once it is activated)"))
    return out


def _dirty_paths(root: Path) -> list[str]:
    # orch's own files are read from the project root, never from a worktree.
    proc = run_git(root, "status", "--porcelain", "--untracked-files=normal", "--", ".",
                   *(f":(exclude){name}" for name in _ORCH_FILES))
    if proc.returncode != 0:
        return []
    return sorted(line[3:] for line in proc.stdout.splitlines() if len(line) > 3)


def _git_problems(project: Project, defs: Definitions) -> list[ValidationProblem]:
    root = project.root
    if not defs.tasks or not is_git_repo(root):
        return []
    out = []
    dirty = _dirty_paths(root)
    if dirty:
        shown = ", ".join(dirty[:_SHOWN]) + (f" and {len(dirty) - _SHOWN} more"
                                             if len(dirty) > _SHOWN else "")
        out.append(ValidationProblem(
            "uncommitted_changes", None, "",
            f"{len(dirty)} path{'s are' if len(dirty) != 1 else ' is'} not committed "
            f"({shown}): each workstream runs in a git worktree made from its base branch's "
            "last commit, which does not have them",
            "commit them (git add -A && git commit -m '...'), or run in the project directory "
            "with `worktrees = false` under [run] in orch.toml"))
    here = current_branch(root)
    for ws in sorted(defs.workstreams.values(), key=lambda w: w.workstream_id):
        base = ws.definition.base_branch
        if base and base != here and not branch_exists(root, base):
            out.append(ValidationProblem(
                "base_branch_missing", ws.file, "base_branch",
                f"workstream {ws.workstream_id} is based on branch {base!r}, which this "
                f"repository does not have" + (f" (it is on {here!r})" if here else ""),
                "leave base_branch out to use the current branch, or create it "
                f"(git branch {base})"))
    return out


def _importable(module: str) -> bool:
    """Whether ``module`` imports (asked only when the configuration needs it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def preflight(project: Project, defs: Definitions) -> list[ValidationProblem]:
    """The warnings about what a run of these definitions would trip over on this machine."""
    try:
        config = None if defs.config_invalid else project.config
    except OrchError:
        config = None
    out = _programs(project, defs, config)
    if config is not None and config.run.executor == "dask" and not _importable("distributed"):
        out.append(ValidationProblem(
            "dask_missing", "orch.toml", "run.executor",
            "orch.toml runs tasks on Dask ([run] executor = \"dask\"), but dask.distributed "
            "is not installed here",
            "pip install 'orch-kernel[dask]' (here and on every Dask worker), or set "
            "executor = \"local\""))
    if config is None or config.run.worktrees:
        try:
            out += _git_problems(project, defs)
        except OrchError:   # no git at all: the run uses the project directory
            pass
    return out
