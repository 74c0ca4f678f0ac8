"""``orch demo``: orch running a realistic workstream end to end on a generated project.

Public API:
    ``run_demo(directory=None, *, on_step=None, progress=None, workers=WORKERS, tools=None)
    -> DemoReport``
    (the three phases in one call: ``prepare``, ``execute``, ``cleanup``);
    ``prepare(directory=None, *, on_step=None, tools=None) -> DemoReport`` (project, git,
    ``orch init``, task files, ``orch load``, plan); ``execute(report, *, progress=None,
    workers=WORKERS, on_step=None) -> DemoReport`` (``orch run``, then reads back what
    happened); ``cleanup(report) -> bool`` (removes a temporary project after a good run);
    ``DemoReport`` (``as_dict()`` is the ``orch demo --json`` document); ``DemoStep(key, title,
    seconds)``; ``DemoTools`` and ``detect_tools(python=sys.executable)`` (which test runner
    and linter the tasks use); ``example_project_files(tools=None) -> dict[str, str]``;
    ``example_task_files(tools=None) -> dict[str, dict]``; ``WORKSTREAM``, ``FLAKY_TASK``,
    ``BRANCHES``, ``WORKERS``; re-exports ``AGENT_TASKS`` and ``DemoModel`` of
    ``kernel.demo.agents``.

Stability Guarantees:
    The demo runs real processes: ``orch run`` with ``WORKERS`` worker processes executes every
    task in a git worktree and merges the workstream's branch into ``main``. It needs git (else
    ``demo_needs_git``, exit 1). The project is a new temporary directory, or ``directory``
    (must be missing or empty; ``demo_dir_not_empty`` otherwise, exit 2), which is always kept.
    A temporary project is removed by ``cleanup`` only after a run in which every task
    completed; a failed or interrupted run keeps it (``DemoReport.kept``) so it can be
    inspected. The example project's files ship in the package (``kernel/demo/project/``), so an
    installed wheel needs nothing from ``docs/``. The commands in the generated project use the
    absolute path of the Python running orch, with pytest and ruff when that Python has them,
    else ``unittest`` and ``compileall`` (``DemoTools`` says which). Keys of ``as_dict()`` are
    only added. Nothing is printed here: steps go to ``on_step``, the run's progress to
    ``progress``.

Integration Points:
    ``kernel.cli.demo`` prints the report. Uses the library exactly as the commands do:
    ``kernel.store.project.init_project`` (orch init), ``kernel.definitions.load.load`` (orch
    validate + load),
    ``kernel.planning.plan`` (orch plan), ``kernel.runtime.runner.run`` (orch run),
    ``kernel.observe.audit`` (orch
    events), ``kernel.maintain.doctor.diagnose`` (orch doctor). The task commands read
    ``ORCH_ROOT`` and
    ``ORCH_TASK_ID`` set by ``kernel.runtime.worker``.

Dependencies:
    ``kernel.base.clock``, ``kernel.base.data``, ``kernel.base.errors``,
    ``kernel.definitions.check``, ``kernel.definitions.load``, ``kernel.demo.agents``,
    ``kernel.maintain.doctor``, ``kernel.planning.plan``, ``kernel.runtime.runner``,
    ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernel.base import clock
from kernel.base.data import schema_url
from kernel.base.errors import OrchError, UsageError
from kernel.demo.agents import (
    AGENT_TASKS,
    DemoModel,
    agent_execution,
    agents_toml,
    find_agent,
    read_back,
)
from kernel.demo.agents import context as agent_context
from kernel.maintain.doctor import diagnose
from kernel.planning.plan import plan_document
from kernel.runtime.runner import Progress, RunOptions, RunSummary
from kernel.store import db
from kernel.store.project import Project, init_project

WORKSTREAM = "word-count"
FLAKY_TASK = "smoke-test-cli"
# Two chains that run side by side once add-word-count is in.
BRANCHES: dict[str, tuple[str, ...]] = {
    "tests": ("test-word-count", "run-tests"),
    "cli": ("add-cli", "smoke-test-cli"),
}
WORKERS = 3
THINK_SECONDS = 1.5        # how long the scripted model "thinks", so there is something to watch
MAX_RUN_SECONDS = 180.0    # a demo that hangs is stopped (and its project kept)
BASE_BRANCH = "main"
FLAKY_MARKER = ".state/demo-flaky"
_GIT_IDENTITY = {"user.name": "orch demo", "user.email": "demo@orch.invalid",
                 "commit.gpgsign": "false"}


@dataclass(frozen=True)
class DemoTools:
    python: str          # absolute path of the interpreter the commands use
    tests: str           # "pytest" or "unittest"
    tests_command: str
    lint: str            # "ruff" or "compileall"
    lint_command: str
    agent: str = "mini"  # who makes the edits: "mini" (kernel.demo.mini_agent) or "aider"
    aider: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"python": self.python, "tests": self.tests, "tests_command": self.tests_command,
                "lint": self.lint, "lint_command": self.lint_command, "agent": self.agent,
                "aider": self.aider}


def detect_tools(python: str | None = None, agent: str = "mini") -> DemoTools:
    """pytest and ruff when the Python running orch has them (the test extra), else fallbacks
    from the standard library: ``unittest`` and ``compileall``; the agent's program (``aider``
    must be on PATH for ``agent="aider"``)."""
    aider = find_agent(agent) if agent == "aider" else None
    python = python or sys.executable
    q = shlex.quote(python)
    if importlib.util.find_spec("pytest") is not None:
        tests, tests_command = "pytest", f"{q} -m pytest -q"
    else:
        tests, tests_command = "unittest", f"{q} -m unittest discover -q -s tests"
    ruff_bin = shutil.which("ruff")
    if importlib.util.find_spec("ruff") is not None:
        lint, lint_command = "ruff", f"{q} -m ruff check ."
    elif ruff_bin:
        lint, lint_command = "ruff", f"{shlex.quote(ruff_bin)} check ."
    else:
        lint, lint_command = "compileall", f"{q} -m compileall -q textstats tests scripts"
    return DemoTools(python, tests, tests_command, lint, lint_command, agent, aider)


@dataclass(frozen=True)
class DemoStep:
    key: str
    title: str
    seconds: float


@dataclass
class DemoReport:
    project: Path
    kept: bool
    tools: DemoTools
    removed: bool = False
    git_commit: str | None = None
    workstream_id: str = WORKSTREAM
    tasks_loaded: int = 0
    load: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    summary: RunSummary | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    workstream_state: str = ""
    flaky: dict[str, Any] = field(default_factory=dict)
    parallel: list[dict[str, Any]] = field(default_factory=list)
    merge: dict[str, Any] = field(default_factory=dict)
    git_log: list[str] = field(default_factory=list)
    event_count: int = 0
    doctor: dict[str, Any] = field(default_factory=dict)
    agents: list[dict[str, Any]] = field(default_factory=list)
    model_requests: int = 0
    model: DemoModel | None = field(default=None, repr=False)
    steps: list[DemoStep] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    _started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def ok(self) -> bool:
        return (self.summary is not None and self.summary.ok
                and self.workstream_state == "completed" and bool(self.merge.get("merged")))

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.summary.counts) if self.summary is not None else {}

    @property
    def where_to_look(self) -> list[dict[str, str]]:
        root = shlex.quote(str(self.project))
        failed = [t for t, v in self.tasks.items() if v.get("state") in ("failed", "cancelled")]
        why_task = failed[0] if failed else FLAKY_TASK
        why = ("in plain words: why it did not complete, and what would move it on" if failed
               else "in plain words: failed once, retried, completed")
        return [
            {"what": f"{self.project / '.state' / 'kernel.db'}",
             "why": "the single source of truth: every task, attempt, lease and event "
                    "(any SQLite client reads it)"},
            {"what": f"{self.project / '.state' / 'logs'}/",
             "why": "one log per task (every attempt) and per worker"},
            {"what": f"orch --root {root} status",
             "why": "workstreams, task counts and workers"},
            {"what": f"orch --root {root} why {why_task}", "why": why},
            {"what": f"orch --root {root} events",
             "why": "the audit log: one event per accepted transition"},
            {"what": f"orch --root {root} show add-word-count",
             "why": "an agent task: what it was given, what it changed, its tokens and commit"},
            {"what": f"orch --root {root} audit report",
             "why": "who did what: time, attempts, and the agents' tokens per task and model"},
            {"what": f"orch --root {root} browse --open",
             "why": "the history in your browser (Datasette, read-only): canned queries, each "
                    "task's timeline, the DAG picture"},
            {"what": f"git -C {root} log --oneline --graph",
             "why": f"one commit per edit task, merged into {BASE_BRANCH}"},
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "project": str(self.project),
            "kept": self.kept,
            "removed": self.removed,
            "git_commit": self.git_commit,
            "workstream_id": self.workstream_id,
            "workstream_state": self.workstream_state,
            "tasks_loaded": self.tasks_loaded,
            "counts": self.counts,
            "summary": self.summary.as_dict() if self.summary is not None else None,
            "tasks": self.tasks,
            "flaky_task": self.flaky,
            "parallel": self.parallel,
            "merge": self.merge,
            "git_log": self.git_log,
            "event_count": self.event_count,
            "tools": self.tools.as_dict(),
            "plan": self.plan,
            "load": self.load,
            "doctor": self.doctor,
            "agents": self.agents,
            "model_requests": self.model_requests,
            "where_to_look": self.where_to_look,
            "steps": [{"step": s.key, "title": s.title, "seconds": round(s.seconds, 3)}
                      for s in self.steps],
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


# --------------------------------------------------------------------------- example content

#: The example project, as files shipped in the package (kernel/demo/project/). ``@NAME@`` in a
#: file is replaced by the value of NAME below; "gitignore" is written as ".gitignore".
PROJECT_DIR = Path(__file__).resolve().parent / "project"
_RENAMED = {"gitignore": ".gitignore"}


def _template_values() -> dict[str, str]:
    return {"@FLAKY_MARKER@": FLAKY_MARKER}


def _orch_toml(tools: DemoTools, model_url: str = "http://127.0.0.1:9/v1") -> str:
    def s(text: str) -> str:  # a TOML basic string (JSON escapes are valid TOML escapes)
        return json.dumps(text)

    return f"""\
# orch configuration of the demo project: quick heartbeats and ticks, so a small workstream
# runs in seconds. The rule commands use the Python that ran `orch demo`
# ({tools.tests} for tests, {tools.lint} for lint).

[workers]
heartbeat_seconds = 1
kill_grace_seconds = 1
retry_backoff_cap_seconds = 5

[run]
worktrees = true
tick_seconds = 0.1

[rules]
git_clean = "git status --porcelain"
tests_passing = {s(tools.tests_command)}
tests_still_passing = {s(tools.tests_command)}
no_lint_errors = {s(tools.lint_command)}
""" + agents_toml(tools.agent, model_url, tools.python, tools.aider)


def example_project_files(tools: DemoTools | None = None,
                          model_url: str = "http://127.0.0.1:9/v1") -> dict[str, str]:
    """Relative path -> text of the project the demo commits (orch.toml included; its agents
    talk to the model at ``model_url``)."""
    tools = tools or detect_tools()
    files = {}
    for path in sorted(PROJECT_DIR.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        rel = path.relative_to(PROJECT_DIR).as_posix()
        text = path.read_text(encoding="utf-8")
        for name, value in _template_values().items():
            text = text.replace(name, value)
        files[_RENAMED.get(rel, rel)] = text
    files["orch.toml"] = _orch_toml(tools, model_url)
    return files


def _task(task_id: str, name: str, description: str, type_: str, *, command: str,
          seconds: float, dependencies: list[str], resources: dict[str, Any],
          capabilities: list[str] | None = None, critical: bool = False, priority: int = 0,
          max_retries: int = 0, executor: str | None = None,
          rules: dict[str, list[str]] | None = None,
          agent: str | None = None) -> dict[str, Any]:
    execution: dict[str, Any] = {
        **({"command": command} if command else agent_execution(task_id, agent or "mini")),
        "working_directory": ".",
        "timeout_seconds": 120,
        "max_retries": max_retries,
        "retry_delay_seconds": 0.5,
        "estimated_duration_seconds": seconds,
    }
    if executor is not None:
        execution["executor"] = executor
    doc: dict[str, Any] = {
        "schema_version": "2.0.0",
        "schema_url": schema_url("task", "2.0.0"),
        "task_id": task_id,
        "workstream_id": WORKSTREAM,
        "name": name,
        "description": description,
        "type": type_,
        "critical": critical,
        "priority": priority,
        "dependencies": dependencies,
        "worker_requirements": {"capabilities": capabilities or []},
        "execution": execution,
        "resource_requirements": resources,
    }
    if rules is not None:
        doc["validation_rules"] = rules
    if not command:
        doc["context_requirements"] = agent_context(task_id)
    return doc


def example_task_files(tools: DemoTools | None = None) -> dict[str, dict[str, Any]]:
    """File name -> JSON document of the example workstream (tasks/word-count/).

    add-word-count, then two branches side by side: test-word-count -> run-tests, and
    add-cli -> smoke-test-cli (fails once, retried); lint joins them. Edits lease
    git_repo_write exclusively, so they take turns; checks run beside them.
    """
    tools = tools or detect_tools()
    py = shlex.quote(tools.python)
    edit = {"git_repo_write": "exclusive"}
    seconds = THINK_SECONDS + 2.0
    agent = tools.agent
    kind = "aider" if agent == "aider" else "custom"
    tasks = [
        _task("add-word-count", AGENT_TASKS["add-word-count"].name,
              "An agent adds word_count(text) to textstats/core.py and exports it.",
              kind, command="", seconds=seconds, agent=agent,
              dependencies=[], resources=edit, critical=True, priority=10,
              rules={"pre_execution": ["git_clean"], "post_execution": ["tests_still_passing"]}),
        _task("test-word-count", AGENT_TASKS["test-word-count"].name,
              "An agent writes tests/test_word_count.py; the new tests must pass.",
              kind, command="", seconds=seconds, agent=agent,
              dependencies=["add-word-count"], resources=edit, priority=5,
              rules={"pre_execution": [], "post_execution": ["tests_passing"]}),
        _task("run-tests", "Run the test suite",
              f"The whole suite ({tools.tests}) after the new tests.",
              "pytest" if tools.tests == "pytest" else "custom", command=tools.tests_command,
              seconds=1, dependencies=["test-word-count"], resources={"cpu_cores": 1},
              capabilities=["cap-pytest-001"] if tools.tests == "pytest" else [],
              critical=True, max_retries=1,
              # The task is the test run: no second run as a post-execution rule.
              rules={"pre_execution": [], "post_execution": []}),
        _task("add-cli", AGENT_TASKS["add-cli"].name,
              "An agent adds textstats/__main__.py: python -m textstats FILE...",
              kind, command="", seconds=seconds, agent=agent,
              dependencies=["add-word-count"], resources=edit, priority=4,
              rules={"pre_execution": ["git_clean"], "post_execution": ["no_lint_errors"]}),
        _task(FLAKY_TASK, "Smoke-test the command line",
              "Run python -m textstats README.md. Its first attempt fails on purpose (a "
              "stand-in for a network hiccup); orch retries it half a second later.",
              "custom", command=f"{py} scripts/smoke_test_cli.py", seconds=1,
              dependencies=["add-cli"], resources={"cpu_cores": 1}, max_retries=2),
        _task("lint", "Lint the project", f"{tools.lint} over the whole project, last.",
              "lint", command=tools.lint_command, seconds=1,
              dependencies=["run-tests", FLAKY_TASK], resources={"cpu_cores": 1},
              capabilities=["cap-ruff-001"] if tools.lint == "ruff" else [],
              executor=None if tools.lint == "ruff" else "subprocess"),
    ]
    files: dict[str, dict[str, Any]] = {
        "workstream.json": {
            "schema_version": "1.0.0",
            "schema_url": schema_url("workstream", "1.0.0"),
            "workstream_id": WORKSTREAM,
            "name": "Count words in textstats",
            "description": "word_count(), its tests and a command line, checked and linted; "
                           "merged into main when everything passed.",
            "base_branch": BASE_BRANCH,
        }
    }
    files.update({f"{t['task_id']}.json": t for t in tasks})
    return files


# --------------------------------------------------------------------------- the steps


def _prepare_dir(directory: Path | None) -> tuple[Path, bool]:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="orch-demo-")).resolve(), False
    directory = directory.expanduser().resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(
            "demo_dir_not_empty",
            f"{directory} {'is not a directory' if not directory.is_dir() else 'is not empty'}; "
            "the demo writes a whole new project there",
            file=str(directory),
            hint="pass a new or empty directory to --dir, or leave --dir out to use a new "
            "orch-demo directory",
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory, True


def _git(root: Path, *args: str, check: bool = True) -> str:
    # GIT_* variables from a surrounding hook or worktree would point git elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    proc = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise OrchError("demo_git_failed",
                        f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout}",
                        hint="check that git works here (git --version)")
    return proc.stdout.strip()


def _git_init(root: Path) -> None:
    if shutil.which("git") is None:
        raise OrchError("demo_needs_git",
                        "the demo runs a workstream in a git worktree, but git is not installed",
                        hint="install git (https://git-scm.com) and run `orch demo` again")
    _git(root, "init", "-q")
    _git(root, "symbolic-ref", "HEAD", f"refs/heads/{BASE_BRANCH}")
    for key, value in _GIT_IDENTITY.items():
        _git(root, "config", key, value)
    # The user's global hooks (core.hooksPath) have no business in a throwaway project.
    _git(root, "config", "core.hooksPath", os.devnull)


def _commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "--no-verify", "-m", message)
    return _git(root, "rev-parse", "--short", "HEAD")


def _write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _validate_and_load(project: Project) -> dict[str, Any]:
    """``orch validate`` then ``orch load``: the load report document."""
    from kernel.definitions.check import validate
    from kernel.definitions.load import load

    result = validate(project)
    if not result.ok:  # the example is generated by this module: a bug, say so plainly
        first = next(p for p in result.problems if p.severity == "error")
        raise OrchError("demo_definitions_invalid",
                        f"the demo's own task files do not validate: [{first.code}] "
                        f"{first.message}", file=first.file, line=first.line, hint=first.hint)
    return load(project).as_dict()


def prepare(directory: Path | None = None, *, on_step: Callable[[DemoStep], None] | None = None,
            tools: DemoTools | None = None) -> DemoReport:
    """Write the project, commit it, ``orch init``, write and ``orch load`` the workstream,
    plan it. A temporary directory is removed again if this fails."""
    root, keep = _prepare_dir(directory)
    report = DemoReport(project=root, kept=keep, tools=tools or detect_tools())
    try:
        _steps(report, on_step)
    except BaseException:
        if report.model is not None:
            report.model.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
            report.removed = True
        raise
    return report


def _step(report: DemoReport, on_step: Callable[[DemoStep], None] | None, key: str,
          title: str) -> None:
    now = time.perf_counter()
    last = sum(s.seconds for s in report.steps)
    done = DemoStep(key, title, now - report._started - last)
    report.steps.append(done)
    if on_step is not None:
        on_step(done)


def _steps(report: DemoReport, on_step: Callable[[DemoStep], None] | None) -> None:
    root, tools = report.project, report.tools
    report.model = DemoModel(THINK_SECONDS).start()
    files = example_project_files(tools, report.model.url)
    project_files = {k: v for k, v in files.items() if k != "orch.toml"}
    _git_init(root)
    _write_files(root, project_files)
    report.git_commit = _commit(root, "textstats: line and character counts, with tests")
    agent = ("the real Aider CLI" if tools.agent == "aider"
             else "a minimal agent CLI (kernel/demo/mini_agent.py; `aider` is not on PATH)"
             if shutil.which("aider") is None else
             "a minimal agent CLI (kernel/demo/mini_agent.py)")
    _step(report, on_step, "project",
          f"wrote textstats (a small Python package and its tests), committed on "
          f"{BASE_BRANCH} in a new git repository ({report.git_commit}); its edits are made "
          f"by {agent} talking to a scripted model on {report.model.url}")
    _write_files(root, {"orch.toml": files["orch.toml"]})
    init = init_project(root)
    _step(report, on_step, "init",
          f"orch init: .state/kernel.db (schema version {init.schema_version}), "
          f"capabilities/, orch.toml with 1 s heartbeats; tests: {tools.tests}, lint: "
          f"{tools.lint}" + ("" if tools.tests == "pytest" and tools.lint == "ruff"
                             else " (pytest or ruff is not installed for this Python: the `test` "
                                  "extra has them)"))
    folder = root / "tasks" / WORKSTREAM
    folder.mkdir(parents=True, exist_ok=True)
    task_files = example_task_files(tools)
    for name, doc in task_files.items():
        (folder / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    report.git_commit = _commit(root, f"orch: the {WORKSTREAM} workstream")
    _step(report, on_step, "tasks",
          f"wrote {len(task_files) - 1} tasks to tasks/{WORKSTREAM}/ and committed them: "
          f"{len(AGENT_TASKS)} agent edits, tests, lint, a flaky smoke test (max_retries 2), "
          "two branches")
    project = Project(root)
    report.load = _validate_and_load(project)
    conn = project.connect()
    try:
        report.tasks_loaded = int(db.scalar(conn, "SELECT COUNT(*) FROM task WHERE "
                                                  "workstream_id = ?", (WORKSTREAM,)) or 0)
        report.plan = plan_document(conn, WORKSTREAM, datetime.now(UTC))
    finally:
        conn.close()
    _step(report, on_step, "load",
          f"orch validate + orch load: {report.tasks_loaded} tasks in one transaction; "
          f"planned {len(report.plan['stages'])} stages")


def execute(report: DemoReport, *, progress: Progress | None = None, workers: int = WORKERS,
            on_step: Callable[[DemoStep], None] | None = None) -> DemoReport:
    """``orch run`` with ``workers`` workers, then read back what happened."""
    from kernel.runtime.runner import run

    project = Project(report.project)
    # Scoped to the demo's workstream, the only one in the project (as `orch run --workstream`).
    options = RunOptions(workers=workers, workstream=WORKSTREAM, max_seconds=MAX_RUN_SECONDS)
    try:
        report.summary = run(project, options, progress)
    finally:
        if report.model is not None:   # the agents are done with the model
            report.model_requests = report.model.requests
            report.model.stop()
    _observe(project, report)
    _step(report, on_step, "run",
          f"orch run: {report.summary.counts.get('completed', 0)} of {report.summary.total} "
          f"tasks completed in {report.summary.elapsed_seconds:.1f} s")
    report.doctor = _doctor(project)
    report.elapsed_seconds = time.perf_counter() - report._started
    return report


def cleanup(report: DemoReport) -> bool:
    """Remove a temporary project after a good run; True if it was removed. A kept directory,
    or any run that did not complete, stays."""
    if report.kept or report.removed:
        return report.removed
    if not report.ok:
        report.kept = True
        return False
    shutil.rmtree(report.project, ignore_errors=True)
    report.removed = not report.project.exists()
    return report.removed


def run_demo(directory: Path | None = None, *,
             on_step: Callable[[DemoStep], None] | None = None,
             progress: Progress | None = None, workers: int = WORKERS,
             tools: DemoTools | None = None) -> DemoReport:
    """``prepare``, ``execute`` and ``cleanup`` in one call."""
    report = prepare(directory, on_step=on_step, tools=tools)
    try:
        execute(report, progress=progress, workers=workers, on_step=on_step)
    finally:
        cleanup(report)
    return report


# --------------------------------------------------------------------------- reading back


def _overlaps(tasks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs of tasks of different branches whose runs overlapped in time."""
    out = []
    left, right = BRANCHES["tests"], BRANCHES["cli"]
    for a in left:
        for b in right:
            ta, tb = tasks.get(a, {}), tasks.get(b, {})
            if not all(t.get("started_at") and t.get("completed_at") for t in (ta, tb)):
                continue
            a0, a1 = clock.epoch(ta["started_at"]), clock.epoch(ta["completed_at"])
            b0, b1 = clock.epoch(tb["started_at"]), clock.epoch(tb["completed_at"])
            shared = min(a1, b1) - max(a0, b0)
            if shared >= 0.05:  # more than the few milliseconds between two claims
                out.append({"tasks": [a, b], "seconds": round(shared, 3)})
    return out


def _observe(project: Project, report: DemoReport) -> None:
    conn = project.connect(readonly=True)
    try:
        tasks: dict[str, dict[str, Any]] = {}
        for r in db.rows(conn, "SELECT t.task_id, t.state, t.retry_count, t.started_at, "
                               "t.completed_at, (SELECT COUNT(*) FROM attempt a "
                               "WHERE a.task_id = t.task_id) AS attempts FROM task t "
                               "WHERE t.workstream_id = ? ORDER BY t.task_id", (WORKSTREAM,)):
            tasks[r.pop("task_id")] = r
        report.tasks = tasks
        report.parallel = _overlaps(tasks)
        report.workstream_state = str(db.scalar(
            conn, "SELECT state FROM workstream WHERE workstream_id = ?", (WORKSTREAM,)) or "")
        retries = db.rows(conn, "SELECT seq, metadata FROM event WHERE event = 'task_retry' "
                                "AND task_id = ? ORDER BY seq", (FLAKY_TASK,))
        flaky = tasks.get(FLAKY_TASK, {})
        report.flaky = {
            "task_id": FLAKY_TASK, "state": flaky.get("state"),
            "attempts": flaky.get("attempts", 0), "retry_events": len(retries),
            "retry_delay_seconds": (json.loads(retries[0]["metadata"]).get("delay_seconds")
                                    if retries else None),
        }
        merged = db.scalar(conn, "SELECT metadata FROM event WHERE entity_type = 'workstream' "
                                 "AND entity_id = ? AND to_state = 'completed' "
                                 "ORDER BY seq DESC LIMIT 1", (WORKSTREAM,))
        report.event_count = int(db.scalar(conn, "SELECT COUNT(*) FROM event") or 0)
        report.agents = read_back(conn)
    finally:
        conn.close()
    meta = json.loads(merged) if merged else {}
    root = report.project
    worktree = root / ".state" / "worktrees" / WORKSTREAM
    branch_left = _git(root, "branch", "--list", f"orch/{WORKSTREAM}", check=False)
    on_main = _git(root, "show", f"{BASE_BRANCH}:textstats/core.py", check=False)
    report.merge = {
        "merged": bool(merged) and "def word_count" in on_main,
        "message": meta.get("merge"),
        "commit": meta.get("merge_commit"),
        "base_branch": BASE_BRANCH,
        "branch": f"orch/{WORKSTREAM}",
        "worktree_removed": not worktree.exists() and not branch_left,
    }
    report.git_log = _git(root, "log", "--oneline", "-n", "12", BASE_BRANCH,
                          check=False).splitlines()


def _doctor(project: Project) -> dict[str, Any]:
    checks = diagnose(project)
    return {
        "ok": not any(c.status == "fail" for c in checks),
        "checks": len(checks),
        "failed": [c.name for c in checks if c.status == "fail"],
        "warned": [c.name for c in checks if c.status == "warn"],
    }
