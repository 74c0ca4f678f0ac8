"""``orch demo``: what the kernel does today, end to end, on a generated example project.

Public API:
    ``run_demo(directory=None, *, on_step=None) -> DemoReport``; ``DemoReport`` (``as_dict()``
    is the ``orch demo --json`` document); ``DemoStep(key, title, seconds)``;
    ``example_project_files() -> dict[str, str]`` (the tiny Python project);
    ``example_task_files(workstream_id=WORKSTREAM) -> dict[str, dict]`` (file name -> JSON);
    ``ILLEGAL_TRANSITION`` (the transition the demo asks for and the database refuses);
    ``WORKSTREAM``.

Stability Guarantees:
    The demo never runs a task and never says it did: every task stays ``pending``
    (``tasks_run`` is 0) until the scheduler (``orch run``) exists. Everything happens in a new
    temporary directory that is removed at the end, even on failure, or in ``directory`` (must
    be missing or empty; ``demo_dir_not_empty`` otherwise, exit 2), which is kept. Example
    definitions are generated here, so an installed wheel needs nothing from ``docs/``. Keys of
    ``as_dict()`` are only added. Nothing is printed: progress goes to ``on_step``.

Integration Points:
    ``kernel.cli.demo`` prints the report. Uses the library exactly as the commands do:
    ``kernel.project.init_project`` (orch init), ``kernel.load.load`` (orch validate + load),
    ``kernel.plan`` (orch plan), ``kernel.machines.transition`` and the SQL triggers,
    ``kernel.doctor.diagnose`` (orch doctor). git (optional: without it the example project is
    simply not a repository) makes the project look like a user's.

Dependencies:
    standard library (tempfile, shutil, subprocess); ``kernel.db``, ``kernel.doctor``,
    ``kernel.errors``, ``kernel.machines``, ``kernel.plan``, ``kernel.project``; ``kernel.load``
    (imported when the demo runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernel import db
from kernel.doctor import diagnose
from kernel.errors import IllegalTransition, OrchError, UsageError
from kernel.machines import transition
from kernel.plan import plan_document
from kernel.project import Project, init_project

WORKSTREAM = "shout-flag"
# Asked for on purpose: pending -> completed skips queued, running and validating.
ILLEGAL_TRANSITION = {"task_id": "pytest", "to_state": "completed", "trigger": "validation_passed"}
_GIT_IDENTITY = ("-c", "user.name=orch demo", "-c", "user.email=demo@orch.invalid",
                 "-c", "commit.gpgsign=false")


@dataclass(frozen=True)
class DemoStep:
    key: str
    title: str
    seconds: float


@dataclass
class DemoReport:
    project: Path
    kept: bool
    removed: bool = False
    git_commit: str | None = None
    workstream_id: str = WORKSTREAM
    tasks_loaded: int = 0
    validation: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    workstream_state: str = ""
    task_states: dict[str, str] = field(default_factory=dict)
    ready_tasks: list[str] = field(default_factory=list)
    blocked_tasks: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    illegal_transition: dict[str, Any] = field(default_factory=dict)
    doctor: dict[str, Any] = field(default_factory=dict)
    steps: list[DemoStep] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    @property
    def where_to_look(self) -> list[dict[str, str]]:
        return [
            {"what": ".state/kernel.db", "why": "the single source of truth (any SQLite client)"},
            {"what": "orch events", "why": "the audit log: one event per accepted transition"},
            {"what": "orch plan", "why": "stages and critical path; --format mermaid|dot draws it"},
            {"what": "sqlite3 .state/kernel.db 'SELECT * FROM ready_task'",
             "why": "what may run next, straight from the view the scheduler will read"},
            {"what": "orch run", "why": "running the tasks arrives with the scheduler"},
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": str(self.project),
            "kept": self.kept,
            "removed": self.removed,
            "git_commit": self.git_commit,
            "workstream_id": self.workstream_id,
            "tasks_loaded": self.tasks_loaded,
            "tasks_run": 0,
            "validation": self.validation,
            "load": self.load,
            "plan": self.plan,
            "workstream_state": self.workstream_state,
            "task_states": self.task_states,
            "ready_tasks": self.ready_tasks,
            "blocked_tasks": self.blocked_tasks,
            "event_count": self.event_count,
            "illegal_transition": self.illegal_transition,
            "doctor": self.doctor,
            "where_to_look": self.where_to_look,
            "steps": [{"step": s.key, "title": s.title, "seconds": round(s.seconds, 3)}
                      for s in self.steps],
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


# --------------------------------------------------------------------------- example content

_GREET_PY = '''\
"""greet: a tiny command-line greeter (the example project of `orch demo`)."""

from __future__ import annotations

import argparse


def greeting(name: str) -> str:
    return f"Hello, {name}!"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a greeting.")
    parser.add_argument("name", nargs="?", default="world")
    args = parser.parse_args(argv)
    print(greeting(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''

_TEST_GREET_PY = '''\
from greet import greeting, main


def test_greeting() -> None:
    assert greeting("Ada") == "Hello, Ada!"


def test_main_prints_the_greeting(capsys) -> None:
    assert main(["Ada"]) == 0
    assert capsys.readouterr().out == "Hello, Ada!\\n"
'''

_README = """\
# greeter

A tiny command-line greeter: `python greet.py Ada` prints `Hello, Ada!`.

Generated by `orch demo` as an example project; tasks/shout-flag/ describes a change to it.
"""


def example_project_files() -> dict[str, str]:
    """Relative path -> text of the tiny Python project the demo commits."""
    return {
        "greet.py": _GREET_PY,
        "test_greet.py": _TEST_GREET_PY,
        "README.md": _README,
        ".gitignore": "__pycache__/\n*.pyc\n",
    }


def _task(task_id: str, workstream_id: str, name: str, description: str, type_: str, *,
          command: str, seconds: float, dependencies: list[str], capabilities: list[str],
          resources: dict[str, Any], critical: bool = False, priority: int = 0,
          prompt: str | None = None, context: dict[str, Any] | None = None,
          rules: dict[str, list[str]] | None = None) -> dict[str, Any]:
    execution: dict[str, Any] = {
        "command": command,
        "working_directory": ".",
        "timeout_seconds": max(60, int(seconds * 4)),
        "max_retries": 2 if type_ == "aider" else 1,
        "retry_delay_seconds": 30,
        "estimated_duration_seconds": seconds,
    }
    if prompt is not None:
        execution["prompt"] = prompt
    doc: dict[str, Any] = {
        "schema_version": "2.0.0",
        "task_id": task_id,
        "workstream_id": workstream_id,
        "name": name,
        "description": description,
        "type": type_,
        "critical": critical,
        "priority": priority,
        "dependencies": dependencies,
        "worker_requirements": {"capabilities": capabilities},
        "execution": execution,
        "resource_requirements": resources,
    }
    if context is not None:
        doc["context_requirements"] = context
    if rules is not None:
        doc["validation_rules"] = rules
    return doc


def example_task_files(workstream_id: str = WORKSTREAM) -> dict[str, dict[str, Any]]:
    """File name -> JSON document of the example workstream (tasks/{workstream_id}/).

    add-shout-flag (aider, critical) -> test-shout-flag (aider) and update-readme (aider), two
    branches in parallel -> lint and pytest (critical) after the tests; at most two at once.
    """
    ws = workstream_id
    tasks = [
        _task("add-shout-flag", ws, "Add a --shout flag",
              "Give greet.py a --shout option that prints the greeting in capitals.", "aider",
              command="aider --yes-always --message {prompt} greet.py",
              prompt="Add a --shout flag to greet.py's main() that upper-cases the greeting. "
                     "Keep greeting() unchanged.",
              seconds=300, dependencies=[], capabilities=["cap-aider-001"], critical=True,
              priority=10, resources={"api_quota_openai": 10, "git_repo_read": "shared"},
              context={"max_context_tokens": 8000, "required_files": ["greet.py"],
                       "optional_files": ["README.md"],
                       "exclude_patterns": ["__pycache__", "*.pyc", ".state"]},
              rules={"pre_execution": ["git_clean"], "post_execution": ["no_lint_errors"]}),
        _task("test-shout-flag", ws, "Test the --shout flag",
              "Add tests for --shout to test_greet.py.", "aider",
              command="aider --yes-always --message {prompt} test_greet.py",
              prompt="Add a test to test_greet.py that main(['--shout', 'Ada']) prints "
                     "'HELLO, ADA!'.",
              seconds=240, dependencies=["add-shout-flag"], capabilities=["cap-aider-001"],
              resources={"api_quota_openai": 10},
              context={"max_context_tokens": 6000, "required_files": ["test_greet.py"],
                       "optional_files": ["greet.py"],
                       "exclude_patterns": ["__pycache__", "*.pyc", ".state"]}),
        _task("update-readme", ws, "Document --shout",
              "Mention the new flag in README.md.", "aider",
              command="aider --yes-always --message {prompt} README.md",
              prompt="Document the --shout flag of greet.py in README.md, with an example.",
              seconds=90, dependencies=["add-shout-flag"], capabilities=["cap-aider-001"],
              resources={"api_quota_openai": 5},
              context={"max_context_tokens": 4000, "required_files": ["README.md"],
                       "optional_files": ["greet.py"], "exclude_patterns": ["*.pyc"]}),
        _task("lint", ws, "Lint with ruff", "ruff over the whole project.", "lint",
              command="ruff check .", seconds=15, dependencies=["test-shout-flag"],
              capabilities=["cap-ruff-001"], resources={"cpu_cores": 1}),
        _task("pytest", ws, "Run the tests", "The full test suite must pass.", "pytest",
              command="python -m pytest -q", seconds=30, dependencies=["test-shout-flag"],
              capabilities=["cap-pytest-001"], critical=True, resources={"cpu_cores": 2},
              rules={"pre_execution": [], "post_execution": ["tests_passing"]}),
    ]
    files: dict[str, dict[str, Any]] = {
        "workstream.json": {
            "schema_version": "1.0.0",
            "workstream_id": ws,
            "name": "Add a --shout flag to the greeter",
            "description": "An agent edit, its tests and docs, then lint and tests.",
            "max_parallelism": 2,
        }
    }
    files.update({f"{t['task_id']}.json": t for t in tasks})
    return files


# --------------------------------------------------------------------------- the steps


def _prepare(directory: Path | None) -> tuple[Path, bool]:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="orch-demo-")).resolve(), False
    directory = directory.expanduser().resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(
            "demo_dir_not_empty",
            f"{directory} {'is not a directory' if not directory.is_dir() else 'is not empty'}; "
            "the demo writes a whole new project there",
            file=str(directory),
            hint="pass a new or empty directory to --keep, or leave --keep out to use a "
            "temporary one",
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory, True


def _git(root: Path, *args: str) -> str:
    # GIT_* variables from a surrounding hook or worktree would point git elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    proc = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise OrchError("demo_git_failed",
                        f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout}",
                        hint="check that git works here (git --version)")
    return proc.stdout.strip()


def _write_project(root: Path) -> str | None:
    for rel, text in example_project_files().items():
        (root / rel).write_text(text, encoding="utf-8")
    if shutil.which("git") is None:
        return None
    _git(root, "-c", "init.defaultBranch=main", "init", "-q")
    return _commit(root, "greeter: a tiny CLI and its test")


def _commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, *_GIT_IDENTITY, "commit", "-q", "--no-verify", "-m", message)
    return _git(root, "rev-parse", "--short", "HEAD")


def _write_tasks(project: Project, workstream_id: str) -> list[Path]:
    folder = project.tasks_dir / workstream_id
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in example_task_files(workstream_id).items():
        path = folder / name
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _validate_and_load(project: Project) -> tuple[dict[str, Any], dict[str, Any]]:
    """``orch validate`` then ``orch load``: (validation document, load report document)."""
    # Imported here: written beside this module, and only the demo needs them.
    from kernel.definitions import validate
    from kernel.load import load

    result = validate(project)
    if not result.ok:  # the example is generated by this module: a bug, say so plainly
        first = next(p for p in result.problems if p.severity == "error")
        raise OrchError("demo_definitions_invalid",
                        f"the demo's own task files do not validate: [{first.code}] "
                        f"{first.message}", file=first.file, line=first.line, hint=first.hint)
    return result.as_dict(), load(project).as_dict()


_STATES_SQL = "SELECT task_id, state FROM task WHERE workstream_id = ? ORDER BY task_id"
_READY_SQL = "SELECT task_id FROM ready_task WHERE workstream_id = ? ORDER BY task_id"
_BLOCKED_SQL = (
    "SELECT task_id, blocked_by, reason FROM blocked_task WHERE workstream_id = ? "
    "ORDER BY task_id, blocked_by"
)


def _observe(conn: Any, report: DemoReport) -> None:
    ws = report.workstream_id
    with db.read_tx(conn):
        report.task_states = dict(conn.execute(_STATES_SQL, (ws,)).fetchall())
        report.tasks_loaded = len(report.task_states)
        report.ready_tasks = [r[0] for r in conn.execute(_READY_SQL, (ws,))]
        report.blocked_tasks = db.rows(conn, _BLOCKED_SQL, (ws,))
        report.workstream_state = db.scalar(
            conn, "SELECT state FROM workstream WHERE workstream_id = ?", (ws,))
        report.event_count = int(db.scalar(conn, "SELECT COUNT(*) FROM event"))


def _try_illegal_transition(conn: Any) -> dict[str, Any]:
    task_id, to_state, trigger = (ILLEGAL_TRANSITION[k] for k in ("task_id", "to_state",
                                                                   "trigger"))
    before = db.scalar(conn, "SELECT state FROM task WHERE task_id = ?", (task_id,))
    events_before = int(db.scalar(conn, "SELECT COUNT(*) FROM event"))
    attempt = {
        "task_id": task_id,
        "from_state": before,
        "to_state": to_state,
        "trigger": trigger,
        "sql": f"UPDATE task SET state = '{to_state}', transition_trigger = '{trigger}' "
               f"WHERE task_id = '{task_id}'",
    }
    try:
        with db.write_tx(conn):
            transition(conn, "task", task_id, to_state, trigger)
    except IllegalTransition as exc:
        attempt.update(rejected=True, code=exc.code, message=exc.message)
    else:  # the state machine would be broken; say so rather than hide it
        attempt.update(rejected=False, code=None, message="the database ACCEPTED it")
    attempt["state_after"] = db.scalar(conn, "SELECT state FROM task WHERE task_id = ?",
                                       (task_id,))
    attempt["events_written"] = int(db.scalar(conn, "SELECT COUNT(*) FROM event")) - events_before
    return attempt


def _doctor(project: Project) -> dict[str, Any]:
    checks = diagnose(project)
    return {
        "ok": not any(c.status == "fail" for c in checks),
        "checks": len(checks),
        "failed": [c.name for c in checks if c.status == "fail"],
        "warned": [c.name for c in checks if c.status == "warn"],
    }


def run_demo(
    directory: Path | None = None, *, on_step: Callable[[DemoStep], None] | None = None
) -> DemoReport:
    """Generate, initialise, load, plan and inspect an example project; see the module doc."""
    started = time.perf_counter()
    root, keep = _prepare(directory)
    report = DemoReport(project=root, kept=keep)
    clock = [started]

    def step(key: str, title: str) -> None:
        now = time.perf_counter()
        done = DemoStep(key, title, now - clock[0])
        clock[0] = now
        report.steps.append(done)
        if on_step is not None:
            on_step(done)

    try:
        report.git_commit = _write_project(root)
        step("project", "wrote a tiny Python CLI (greet.py) and its test" + (
            f", committed to a new git repository ({report.git_commit})"
            if report.git_commit else " (git not found: not a repository)"))
        project = Project(root)
        init = init_project(root)
        step("init", f"orch init: {len(init.created)} files and folders, schema version "
                     f"{init.schema_version}, state in .state/kernel.db")
        files = _write_tasks(project, report.workstream_id)
        if report.git_commit is not None:
            # Committed like a user would, so the aider task's git_clean rule would hold.
            report.git_commit = _commit(root, f"orch: init, and the {report.workstream_id} "
                                              "workstream")
        step("tasks", f"wrote {len(files) - 1} task definitions and workstream.json to "
                      f"tasks/{report.workstream_id}/" + (" and committed them"
                                                          if report.git_commit else ""))
        report.validation, report.load = _validate_and_load(project)
        conn = project.connect()
        try:
            _observe(conn, report)
            counts = report.validation.get("counts", {})
            step("load", f"orch validate: {counts.get('errors', 0)} errors, "
                         f"{counts.get('warnings', 0)} warnings; orch load: "
                         f"{report.tasks_loaded} tasks, their dependencies and the registries, "
                         "in one transaction")
            report.plan = plan_document(conn, report.workstream_id, datetime.now(UTC))
            step("plan", f"planned {len(report.plan['stages'])} stages; critical path "
                         f"{' -> '.join(report.plan['critical_path_tasks'])}")
            report.illegal_transition = _try_illegal_transition(conn)
            step("state_machine", "asked the database for an illegal transition: "
                 + ("rejected" if report.illegal_transition["rejected"] else "ACCEPTED"))
            _observe(conn, report)
        finally:
            conn.close()
        report.doctor = _doctor(project)
        step("doctor", "orch doctor: " + ("all checks passed" if report.doctor["ok"]
                                          else f"FAILED {', '.join(report.doctor['failed'])}"))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
            report.removed = not root.exists()
    report.elapsed_seconds = time.perf_counter() - started
    return report
