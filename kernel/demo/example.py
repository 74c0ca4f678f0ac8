"""``orch init --example``: a runnable starting project, the demo's, left for you to run.

Public API:
    ``write_example(root, *, python=None) -> ExampleReport`` (``written``: the paths, ``git``:
    what was done with git, ``committed``: the commit or None, ``tools``: ``DemoTools``);
    ``example_paths(python=None) -> list[str]`` (what it would write).

Stability Guarantees:
    It writes the demo's project (the textstats package, its tests, ``orch.toml``) and its
    workstream ``tasks/word-count/`` (six tasks: three agent edits, tests, a smoke test that
    fails once and is retried, lint), then runs ``orch init``. It never overwrites: when any
    of its files exists it writes nothing and raises ``OrchError("example_exists")`` (exit 1)
    naming them. The agent edits are made by a scripted stand-in
    (``kernel.demo.mini_agent --script``: prepared edits, no model, no key, no network), and
    ``orch.toml`` says how to put a real agent in its place. Outside a git repository it runs
    ``git init`` (branch ``main``) and commits everything, so ``orch run`` can use worktrees at
    once; inside one it commits nothing, and ``orch validate`` then warns about the
    uncommitted files.

Integration Points:
    ``orch init --example`` (kernel.cli.core); the files come from ``kernel.demo``
    (``example_project_files``, ``example_task_files``) and the edits from
    ``kernel/demo/edits.json``, which the demo's scripted model serves.

Dependencies:
    ``kernel.base.errors``, ``kernel.base.git``, ``kernel.demo``, ``kernel.demo.agents``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from kernel.base.errors import OrchError
from kernel.base.git import run_git
from kernel.demo import (
    BASE_BRANCH,
    WORKSTREAM,
    DemoTools,
    detect_tools,
    example_project_files,
    example_task_files,
)
from kernel.demo.agents import EDITS_FILE, SCRIPT_PATH
from kernel.store.project import init_project

__all__ = ["ExampleReport", "example_paths", "write_example"]

_IDENTITY = (("user.name", "orch example"), ("user.email", "example@orch.invalid"))


@dataclass
class ExampleReport:
    root: Path
    tools: DemoTools
    written: list[str] = field(default_factory=list)
    git: str = ""
    committed: str | None = None
    workstream: str = WORKSTREAM

    def as_dict(self) -> dict[str, object]:
        return {"root": str(self.root), "written": self.written, "git": self.git,
                "committed": self.committed, "workstream": WORKSTREAM,
                "tools": self.tools.as_dict()}


def _files(tools: DemoTools) -> dict[str, str]:
    files = example_project_files(tools)
    files[SCRIPT_PATH] = EDITS_FILE.read_text(encoding="utf-8")
    docs = example_task_files(tools)
    docs["workstream.json"].pop("base_branch", None)   # the branch you are on
    for name, doc in docs.items():
        files[f"tasks/{WORKSTREAM}/{name}"] = json.dumps(doc, indent=2) + "\n"
    return files


def _tools(python: str | None) -> DemoTools:
    return dataclasses.replace(detect_tools(python), agent="scripted")


def example_paths(python: str | None = None) -> list[str]:
    return sorted(_files(_tools(python)))


def _inside_work_tree(root: Path) -> bool:
    try:
        proc = run_git(root, "rev-parse", "--is-inside-work-tree")
    except OrchError:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def _git(root: Path, *args: str, config: tuple[str, ...] = ()) -> str:
    proc = run_git(root, *args, config=config)
    if proc.returncode != 0:
        raise OrchError("example_git_failed",
                        f"git {' '.join(args)} failed in {root}: "
                        f"{proc.stderr.strip() or proc.stdout.strip()}",
                        hint="the files are written; commit them yourself "
                             "(git add -A && git commit -m 'orch example')")
    return proc.stdout.strip()


def _commit(root: Path) -> str:
    config: list[str] = []
    for key, value in _IDENTITY:   # only where git has no identity of its own
        if not run_git(root, "config", key).stdout.strip():
            config += ["-c", f"{key}={value}"]
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "--no-verify", "-m",
         "orch example: textstats and the word-count workstream", config=tuple(config))
    return _git(root, "rev-parse", "--short", "HEAD")


def write_example(root: Path, *, python: str | None = None) -> ExampleReport:
    """Write the example project into ``root`` (all of it or nothing), ``orch init`` it, and
    commit it when ``root`` was not in a git repository."""
    root = root.resolve()
    report = ExampleReport(root, _tools(python))
    files = _files(report.tools)
    clash = sorted(rel for rel in files if (root / rel).exists() or (root / rel).is_symlink())
    if clash:
        raise OrchError(
            "example_exists",
            f"{root} already has {', '.join(clash[:3])}"
            + (f" and {len(clash) - 3} more" if len(clash) > 3 else "")
            + ": orch init --example writes a whole project and never overwrites a file",
            file=str(root / clash[0]),
            hint="run it in a new, empty directory (mkdir my-project && cd my-project && "
                 "orch init --example)")
    repo = _inside_work_tree(root)
    if not repo:
        _git(root, "init", "-q")
        _git(root, "symbolic-ref", "HEAD", f"refs/heads/{BASE_BRANCH}")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        report.written.append(rel)
    init_project(root)
    if repo:
        report.git = "inside an existing git repository: nothing was committed"
    else:
        report.committed = _commit(root)
        report.git = f"new git repository on branch {BASE_BRANCH}"
    return report
