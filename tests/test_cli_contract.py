"""The command-line contract (docs/CLI.md), for every command: with `--json` exactly one JSON
document on stdout and the documented exit code, on success and on an error; one exit code per
error code (the table in kernel/base/errors.py); an example in every --help; piped tables whole
and tab-separated.

Every command is run as a user types it: the installed `orch`, in a subprocess, on a copy of a
real project that ran. CASES holds a success and an error case for each command of
LAZY_COMMANDS; a command added without a case fails `test_every_command_has_a_case` with the
name to add.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

import kernel
from kernel.base.errors import ERROR_CODES, EXIT_MEANINGS, OrchError, exit_code_for
from kernel.base.words import plural
from kernel.cli import EXAMPLES, LAZY_COMMANDS, cli
from kernel.runtime.runner import RunSummary, summary_text
from tests.e2e import make_project, py, task

ORCH = str(Path(sys.executable).parent / "orch")
KERNEL = Path(kernel.__file__).parent
LONG_ID = "a-task-id-long-enough-to-be-cut-by-any-table-that-fits-a-terminal-of-80-columns"


@dataclass(frozen=True)
class Call:
    """``orch --json ARGS`` in a copy of the template project (``where="project"``) or in an
    empty directory (``where="empty"``). ``{root}`` in an argument is that directory.
    ``error``: the error code expected (its exit code is the table's); else exit 0."""

    args: tuple[str, ...]
    error: str | None = None
    where: str = "project"
    setup: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Case:
    success: Call | None   # None only for a long-running command: say why in ``note``
    error: Call
    note: str = ""


def _text_database(root: Path) -> None:
    (root / ".state").mkdir()
    (root / ".state" / "kernel.db").write_text("not a database\n")


def _broken_task_file(root: Path) -> None:
    (root / "tasks" / "ws" / "broken.json").write_text("{\n")


def _a_backup(root: Path) -> None:
    subprocess.run([ORCH, "--root", str(root), "backup", str(root / "b.db")], check=True,
                   capture_output=True)


def C(*args: str, error: str | None = None, where: str = "project",
      setup: Callable[[Path], None] | None = None) -> Call:
    return Call(args, error, where, setup)


# Template project: workstream ws (a -> b, c) ran and completed; workstream bad holds f
# (pending, its command fails) and g (cancelled).
CASES: dict[str, Case] = {
    "init": Case(C("init", where="empty"),
                 C("init", error="database_unreadable", where="empty", setup=_text_database)),
    "doctor": Case(C("doctor"), C("doctor", error="not_initialised", where="empty")),
    "validate": Case(C("validate"), C("validate", "no/such/dir", error="invalid_definitions")),
    "load": Case(C("load"), C("load", error="invalid_definitions", setup=_broken_task_file)),
    "migrate-tasks": Case(C("migrate-tasks", "--from", "1.0.0", "--to", "2.0.0", "--dry-run"),
                          C("migrate-tasks", "--from", "9.9.9", "--to", "2.0.0",
                            error="usage")),
    "plan": Case(C("plan"), C("plan", "nope", error="unknown_workstream")),
    "run": Case(C("run", "--workstream", "ws", "--workers", "1"),
                C("run", "--workstream", "nope", error="unknown_workstream"),
                note="--forever is not run: it never returns"),
    "worker": Case(C("worker", "--once", "--workstream", "ws"),
                   C("worker", "--capability", "nope", error="unknown_capability")),
    "cancel": Case(C("cancel", "f"), C("cancel", "nope", error="unknown_task")),
    "retry": Case(C("retry", "g"), C("retry", "a", error="cannot_act")),
    "skip": Case(C("skip", "f"), C("skip", "a", error="cannot_act")),
    "status": Case(C("status", "--all", "--state", "completed"),
                   C("status", "--workstream", "nope", error="unknown_workstream")),
    "show": Case(C("show", "a"), C("show", "nope", error="unknown_task")),
    "why": Case(C("why", "f"), C("why", "nope", error="unknown_task")),
    "ready": Case(C("ready"), C("ready", "--workstream", "nope", error="unknown_workstream")),
    "next": Case(C("next"), C("next", "--workstream", "nope", error="unknown_workstream")),
    "prime": Case(C("prime"), C("prime", "--task", "nope", error="unknown_task")),
    "capabilities": Case(C("capabilities"), C("capabilities", "--bogus", error="usage")),
    "events": Case(C("events", "--workstream", "ws", "--severity", "info"),
                   C("events", "--follow", error="usage")),
    "export": Case(C("export"), C("export", error="not_initialised", where="empty")),
    "replay": Case(C("replay", "--at", "2030-01-01"),
                   C("replay", "--at", "garbage", error="bad_timestamp")),
    "audit": Case(C("audit"), C("audit", "nope", error="usage")),
    "metrics": Case(C("metrics"),
                    C("metrics", "--serve", "0.0.0.0:1", error="remote_address_refused"),
                    note="--serve is not run: it serves until Ctrl-C"),
    "backup": Case(C("backup", "{root}/copy.db"),
                   C("backup", "{root}/orch.toml", error="destination_exists")),
    "bundle": Case(C("bundle", "{root}/bug.tar.gz"),
                   C("bundle", "{root}", error="destination_is_directory")),
    "restore": Case(C("restore", "{root}/b.db", "--force", setup=_a_backup),
                    C("restore", "{root}/nope.db", error="backup_missing")),
    "bench": Case(None, C("bench", "--only", "nope", error="usage"),
                  note="long-running (minutes): the error case only"),
    "demo": Case(None, C("demo", "--dir", "{root}", error="demo_dir_not_empty"),
                 note="long-running (a whole run): the error case only; tests/test_demo.py "
                      "runs it"),
    "completion": Case(C("completion", "bash"), C("completion", "tcsh", error="usage")),
    "browse": Case(None, C("browse", "--port", "99999", error="usage"),
                   note="long-running (serves until Ctrl-C): the error case only; "
                        "tests/test_browse*.py serve it"),
    "compliance": Case(C("compliance", "--only", "DAG-VIEW"),
                       C("compliance", "--only", "NOPE", error="unknown_requirement")),
    "resources": Case(C("resources", "--all"),
                      C("resources", error="not_initialised", where="empty")),
    "failure-modes": Case(C("failure-modes", "Task-Timeout"),
                          C("failure-modes", "Nope", error="unknown_failure_mode")),
    "index": Case(C("index"), C("index", error="not_initialised", where="empty")),
    "new": Case(C("new", "more/h", "--cmd", "true"),
                C("new", "ws/a", "--cmd", "true", error="task_exists")),
}

# Subcommands and the group's own options: the same contract.
MORE_CASES: dict[str, Case] = {
    "audit report": Case(C("audit", "report"),
                         C("audit", "report", "--since", "x", error="bad_timestamp")),
    "audit rotate": Case(C("audit", "rotate", "--dry-run"),
                         C("audit", "rotate", "--older-than", "1d",
                           error="retention_too_short")),
    "audit query": Case(C("audit", "query", "--event", "task_completed"),
                        C("audit", "query", "--since-seq", "-1", error="usage")),
    "audit verify": Case(C("audit", "verify"),
                         C("audit", "verify", error="not_initialised", where="empty")),
    "orch": Case(C("--version"), C("--no-such-option", error="usage")),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("contract") / "template", [
        task("a"), task("b", deps=["a"]), task("c", executor="noop"),
        task("f", ws="bad", command=py("import sys; sys.exit(5)")),
        task("g", ws="bad", executor="noop")])
    for args in (("run", "--workstream", "ws", "--workers", "1"), ("cancel", "g")):
        subprocess.run([ORCH, "--root", str(root), *args], check=True, capture_output=True)
    return root


def _run(call: Call, template: Path, where: Path) -> subprocess.CompletedProcess[str]:
    if call.where == "project":
        shutil.copytree(template, where, symlinks=True)
    else:
        where.mkdir(parents=True)
    if call.setup is not None:
        call.setup(where)
    args = [a.replace("{root}", str(where)) for a in call.args]
    return subprocess.run([ORCH, "--root", str(where), "--json", *args], cwd=where,
                          capture_output=True, text=True, timeout=300)


def _check(call: Call, proc: subprocess.CompletedProcess[str]) -> None:
    what = f"orch --json {' '.join(call.args)}"
    assert proc.stdout.endswith("\n"), f"{what}: nothing on stdout ({proc.stderr})"
    try:
        doc = json.loads(proc.stdout)   # one document: a second one is "Extra data"
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{what}: stdout is not one JSON document: {exc}\n"
                             f"{proc.stdout[:500]}") from None
    error = doc.get("error") if isinstance(doc, dict) else None
    if call.error is None:
        assert proc.returncode == 0 and not error, (what, proc.returncode, error, proc.stderr)
    else:
        assert call.error in ERROR_CODES, f"{call.error}: not in ERROR_CODES"
        assert error and error["code"] == call.error, (what, proc.returncode, doc)
        assert proc.returncode == exit_code_for(call.error), (what, proc.returncode, error)
    assert "Traceback" not in proc.stderr, (what, proc.stderr)


def test_every_command_has_a_case() -> None:
    missing = sorted(set(LAZY_COMMANDS) - set(CASES))
    assert not missing, (
        f"no contract case for {', '.join(missing)}: add a success and an error case to CASES "
        "in tests/test_cli_contract.py (for a command that never returns, the error case "
        "alone, with a note)")
    assert not set(CASES) - set(LAZY_COMMANDS), "CASES names commands that are gone"
    for name, case in {**CASES, **MORE_CASES}.items():
        assert case.success is not None or case.note, f"{name}: no success case and no note"


@pytest.mark.parametrize("name", sorted({*LAZY_COMMANDS, *MORE_CASES}))
@pytest.mark.parametrize("kind", ["success", "error"])
def test_json_is_one_document_with_the_documented_exit_code(
        name: str, kind: str, template: Path, tmp_path: Path) -> None:
    case = CASES.get(name) or MORE_CASES.get(name)
    if case is None:
        pytest.fail(f"no contract case for {name!r}: add one to CASES")
    call = case.success if kind == "success" else case.error
    if call is None:
        pytest.skip(f"{name}: {case.note}")
    _check(call, _run(call, template, tmp_path / "p"))


def test_an_unknown_workstream_is_one_code_whichever_command(template: Path,
                                                             tmp_path: Path) -> None:
    codes = set()
    for n, command in enumerate((("run",), ("plan",), ("status",), ("ready",))):
        args = (*command, "--workstream", "nope") if command[0] != "plan" else (*command, "nope")
        proc = _run(C(*args), template, tmp_path / f"p{n}")
        codes.add((proc.returncode, json.loads(proc.stdout)["error"]["code"]))
    assert codes == {(exit_code_for("unknown_workstream"), "unknown_workstream")}
    assert exit_code_for("not_initialised") != 3   # 3: a locked or unreadable database
    assert {code for code, (exit, _) in ERROR_CODES.items() if exit == 3} >= {
        "database_locked", "database_unreadable", "database_damaged"}


def _error_classes() -> set[str]:
    for info in pkgutil.walk_packages([str(KERNEL)], "kernel."):
        importlib.import_module(info.name)
    found, todo = set(), [OrchError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


def _raised_codes() -> list[tuple[str, str]]:
    """(code or f-string pattern, where) for every OrchError (or subclass) built in kernel/,
    and every ``code="..."`` passed to a helper that builds one."""
    classes = _error_classes()
    found = []
    for path in sorted(KERNEL.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # super().__init__("code", ...) in a subclass of OrchError counts as that class.
        inits = {id(call) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef)
                 and cls.name in classes for call in ast.walk(cls)
                 if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "__init__"}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            name = "OrchError" if id(node) in inits else name
            where = f"{path.relative_to(KERNEL.parent)}:{node.lineno}"
            first = node.args[0] if node.args else None
            if name in classes and first is not None and len(node.args) >= 2:
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append((first.value, where))
                elif isinstance(first, ast.JoinedStr):
                    found.append((ast.unparse(first), where))
            for kw in node.keywords:
                if kw.arg == "code" and isinstance(kw.value, ast.Constant) \
                        and isinstance(kw.value.value, str):
                    found.append((kw.value.value, where))
    return found


def test_every_error_code_the_kernel_raises_is_in_the_one_table() -> None:
    raised = _raised_codes()
    assert len(raised) > 100
    missing = []
    for code, where in raised:
        if code.startswith("f'") or code.startswith('f"'):   # e.g. f"{role}_missing"
            pattern = re.sub(r"\\{[^}]*\\}", ".+", re.escape(code[2:-1]))
            if not any(re.fullmatch(pattern, known) for known in ERROR_CODES):
                missing.append(f"{where}: {code}")
        elif code not in ERROR_CODES:
            missing.append(f"{where}: {code}")
    assert not missing, "add these codes to ERROR_CODES in kernel/base/errors.py:\n" + \
        "\n".join(missing)
    assert set(exit for exit, _ in ERROR_CODES.values()) <= set(EXIT_MEANINGS)


def test_the_table_wins_over_the_class_and_the_argument() -> None:
    assert OrchError("unknown_workstream", "x", exit_code=2).exit_code == 1
    assert OrchError("database_locked", "x").exit_code == 3
    assert OrchError("not_in_the_table", "x", exit_code=2).exit_code == 2


def _all_commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in cli.load_all().items():
        found[name] = command
        if isinstance(command, click.Group):
            found.update({f"{name} {sub}": c for sub, c in command.commands.items()})
    return found


def test_every_help_carries_one_example() -> None:
    missing = sorted(set(LAZY_COMMANDS) - set(EXAMPLES))
    assert not missing, f"add an example to EXAMPLES in kernel/cli/__init__.py: {missing}"
    for path in _all_commands():
        proc = subprocess.run([ORCH, *path.split(), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, (path, proc.stderr)
        examples = [line for line in proc.stdout.splitlines()
                    if line.strip().startswith("Example: ")]
        assert len(examples) == 1, f"orch {path} --help: {examples}"
    assert "Example: orch --json status" in subprocess.run(
        [ORCH, "--help"], capture_output=True, text=True).stdout


def test_version_and_a_bare_group_honour_json() -> None:
    for args in (("--json", "--version"), ("--version", "--json")):
        proc = subprocess.run([ORCH, *args], capture_output=True, text=True)
        assert proc.returncode == 0 and json.loads(proc.stdout)["name"] == "orch"
    assert subprocess.run([ORCH, "--version"], capture_output=True,
                          text=True).stdout.startswith("orch, version ")
    proc = subprocess.run([ORCH, "--json", "audit"], capture_output=True, text=True)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and sorted(doc["commands"]) == [
        "query", "report", "rotate", "verify"]


def test_piped_tables_are_whole_tab_separated_and_without_trailing_spaces(
        tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", [task(LONG_ID, command=py("import sys; sys.exit(1)")),
                                         task("next-one", deps=[LONG_ID])])
    subprocess.run([ORCH, "--root", str(root), "run", "--workers", "1"], capture_output=True)
    subprocess.run([ORCH, "--root", str(root), "skip", "next-one"], capture_output=True)
    out = subprocess.run([ORCH, "--root", str(root), "status", "--all"], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "40"}).stdout
    lines = out.splitlines()
    assert all(line == line.rstrip() for line in lines), [ln for ln in lines if ln.rstrip() != ln]
    assert f"{LONG_ID}\tws\tfailed\t0/0\t\tTask-Failed: exit code 1" in lines
    assert "next-one\tws\tskipped\t0/0" in lines
    workers = lines[lines.index("Workers") + 2:]
    assert workers and all(row.split("\t")[1] == "shutdown" for row in workers)
    live_only = subprocess.run([ORCH, "--root", str(root), "status"], capture_output=True,
                               text=True).stdout
    assert "Workers" not in live_only and "--all" in live_only


def test_counts_are_singular_or_plural() -> None:
    assert (plural(1, "task"), plural(2, "task"), plural(0, "error")) == (
        "1 task", "2 tasks", "0 errors")
    one = RunSummary(counts={"completed": 1}, total=1, elapsed_seconds=0.5,
                     workstreams={"ws": "completed"})
    assert summary_text(one).startswith("all tasks completed: 1 completed (1 task, 0.5 s)")
    none = RunSummary(counts={}, total=0, elapsed_seconds=0.1, workstreams={})
    assert summary_text(none).startswith("nothing to run: no tasks loaded in scope")
    # No count of one with a plural noun left in the command line's f-strings.
    bad = re.compile(r"\{[^}]*\} (tasks|errors|warnings|workstreams|events|files|workers)\b")
    for path in sorted((KERNEL / "cli").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "{len(report.written)} files" in line:
                continue   # orch init --example: always many files (and another's command)
            assert not bad.search(line), f"{path.name}:{n}: use plural(): {line.strip()}"


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    """What ``args`` prints when its stdout is a terminal (a pseudo-terminal)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=cwd, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:   # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode()


def test_a_worker_says_it_joined_on_a_terminal_and_summarises_with_json(
        template: Path, tmp_path: Path) -> None:
    root = tmp_path / "p"
    shutil.copytree(template, root, symlinks=True)
    out = _on_a_terminal([ORCH, "worker", "--once", "--capability", "cap-git-001"], root)
    first, second = out.splitlines()[:2]
    assert re.fullmatch(r"joined as w-\S+ \(cap-git-001\); Ctrl-C to leave", first), out
    assert re.fullmatch(r"worker w-\S+ left: 0 attempts", second), out
    piped = subprocess.run([ORCH, "worker", "--once", "--workstream", "bad"], cwd=root,
                           capture_output=True, text=True)   # nothing queued: no claim
    assert re.fullmatch(r"worker w-\S+ left: 0 attempts\n", piped.stdout), piped.stdout
    doc = json.loads(subprocess.run([ORCH, "--json", "worker", "--once"], cwd=root,
                                    capture_output=True, text=True).stdout)
    assert doc["attempts"] == {} and doc["tasks"] == [] and "cap-git-001" in doc["capabilities"]


def test_events_filters(template: Path) -> None:
    def events(*args: str) -> list[dict]:
        proc = subprocess.run([ORCH, "--root", str(template), "--json", "events", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["events"]

    every = events()
    assert {e["workstream_id"] for e in events("--workstream", "bad")} == {"bad"}
    assert {e["event"] for e in events("--event", "task_completed")} == {"task_completed"}
    assert [e for e in every if e["severity"] == "warning"] == events("--severity", "warning")
    both = events("--workstream", "ws", "--event", "task_completed")
    assert sorted(e["task_id"] for e in both) == ["a", "b", "c"]
    lines = subprocess.run([ORCH, "--root", str(template), "events", "--jsonl"],
                           capture_output=True, text=True).stdout.splitlines()
    assert [json.loads(line) for line in lines] == every
