"""Validation rules run real commands (the test interpreter, real git) in tmp_path; no mocks."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel.base.config import RulesConfig
from kernel.runtime.rules import RULE_NAMES, RuleResult, RulesReport, run_rule, run_rules

OTHER_RULES = [name for name in RULE_NAMES if name != "git_clean"]


def py(code: str) -> str:
    """A rule command running ``code`` with this interpreter, written as in orch.toml."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True, timeout=30)
    return proc.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit and a clean work tree."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    (root / "a.py").write_text("x = 1\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return root


def _pid_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/status")
        try:
            if "State:\tZ" in status.read_text():
                return True  # killed, waiting for init to reap it
        except OSError:
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- single rules


@pytest.mark.parametrize("name", OTHER_RULES)
def test_rule_passes_when_its_command_exits_0(name: str, tmp_path: Path) -> None:
    command = py("print('all good')")
    result = run_rule(name, tmp_path, RulesConfig(**{name: command}))
    assert result.passed
    assert result == RuleResult(
        rule=name, passed=True, command=command, exit_code=0,
        reason=f"{command} exited 0", output_tail="all good\n",
        duration_seconds=result.duration_seconds,
    )
    assert result.duration_seconds >= 0


@pytest.mark.parametrize("name", OTHER_RULES)
def test_rule_fails_when_its_command_exits_nonzero(name: str, tmp_path: Path) -> None:
    command = py("import sys; print('3 problems'); print('oops', file=sys.stderr); sys.exit(1)")
    result = run_rule(name, tmp_path, RulesConfig(**{name: command}))
    assert not result.passed
    assert result.exit_code == 1
    assert result.reason == f"{command} exited 1"
    assert result.output_tail == "3 problems\noops\n"  # stdout, then stderr


def test_git_clean_passes_on_a_clean_checkout(repo: Path) -> None:
    result = run_rule("git_clean", repo, RulesConfig())
    assert result.passed, result.reason
    assert result.reason == "git status --porcelain printed nothing"


def test_git_clean_fails_on_an_untracked_file_and_names_it(repo: Path) -> None:
    (repo / "new file.txt").write_text("hello\n")
    result = run_rule("git_clean", repo, RulesConfig())
    assert not result.passed
    assert result.exit_code == 0
    assert "new file.txt" in result.reason
    assert result.reason.startswith("git status --porcelain printed 1 changed path: ")


def test_git_clean_lists_at_most_five_paths(repo: Path) -> None:
    (repo / "a.py").write_text("x = 2\n")
    for i in range(6):
        (repo / f"u{i}.txt").write_text("")
    result = run_rule("git_clean", repo, RulesConfig())
    assert not result.passed
    assert result.reason == (
        "git status --porcelain printed 7 changed paths: a.py, u0.txt, u1.txt, u2.txt, u3.txt "
        "and 2 more"
    )


def test_git_clean_fails_when_the_command_prints_even_with_exit_0(tmp_path: Path) -> None:
    config = RulesConfig(git_clean=py("print('?? stray.txt')"))
    result = run_rule("git_clean", tmp_path, config)
    assert not result.passed
    assert "stray.txt" in result.reason


def test_git_clean_fails_when_the_command_fails(tmp_path: Path) -> None:
    config = RulesConfig(git_clean=py("import sys; sys.exit(128)"))
    result = run_rule("git_clean", tmp_path, config)
    assert not result.passed
    assert result.exit_code == 128
    assert result.reason.endswith("exited 128")


def test_commands_run_in_cwd_with_env_added_and_no_stdin(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("")
    code = (
        "import os, sys\n"
        "assert os.path.exists('marker'), os.getcwd()\n"
        "assert os.environ['ORCH_TASK_ID'] == 't1'\n"
        "assert os.environ.get('PATH'), 'the current environment is kept'\n"
        "assert sys.stdin.read() == ''\n"
    )
    result = run_rule("tests_passing", tmp_path, RulesConfig(tests_passing=py(code)),
                      env={"ORCH_TASK_ID": "t1"})
    assert result.passed, result.output_tail


def test_output_tail_keeps_the_last_2000_characters(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('a' * 5000 + 'END'); sys.exit(2)"
    result = run_rule("no_lint_errors", tmp_path, RulesConfig(no_lint_errors=py(code)))
    assert len(result.output_tail) == 2000
    assert result.output_tail.endswith("aEND")


@pytest.mark.parametrize("configured", [None, "", "   "])
def test_a_rule_not_configured_fails_with_how_to_configure_it(
    configured: str | None, tmp_path: Path
) -> None:
    result = run_rule("no_security_issues", tmp_path,
                      RulesConfig(no_security_issues=configured))
    assert not result.passed
    assert result.exit_code is None
    assert result.reason == (
        "rule no_security_issues is not configured: set [rules] no_security_issues in orch.toml "
        '(e.g. "bandit -q -r src")'
    )


def test_the_default_config_leaves_no_security_issues_unconfigured(tmp_path: Path) -> None:
    result = run_rule("no_security_issues", tmp_path, RulesConfig())
    assert not result.passed
    assert "is not configured" in result.reason


def test_an_unknown_rule_fails_without_raising(tmp_path: Path) -> None:
    result = run_rule("tests_pasing", tmp_path, RulesConfig())
    assert not result.passed
    assert result.command is None
    assert result.reason.startswith("unknown rule 'tests_pasing': the rules are git_clean, ")


def test_a_missing_executable_fails_naming_it(tmp_path: Path) -> None:
    config = RulesConfig(no_lint_errors="orch-no-such-linter-xyz --strict .")
    result = run_rule("no_lint_errors", tmp_path, config)
    assert not result.passed
    assert result.exit_code is None
    assert result.reason == (
        "orch-no-such-linter-xyz was not found: install it or change [rules] no_lint_errors "
        "in orch.toml"
    )


def test_an_unparseable_command_fails(tmp_path: Path) -> None:
    result = run_rule("no_lint_errors", tmp_path, RulesConfig(no_lint_errors="ruff 'check"))
    assert not result.passed
    assert "cannot be parsed" in result.reason


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        f"while not os.path.exists({str(pid_file)!r}) or not open({str(pid_file)!r}).read():\n"
        "    time.sleep(0.01)\n"
        "print('child started', flush=True)\n"
        "time.sleep(60)\n"
    )
    command = py(parent)
    result = run_rule("tests_passing", tmp_path, RulesConfig(tests_passing=command), timeout=1.5)
    assert not result.passed
    assert result.reason == f"{command} timed out after 1.5 seconds and was killed"
    assert result.exit_code is not None and result.exit_code < 0  # killed by a signal
    assert "child started" in result.output_tail
    assert _pid_gone(int(pid_file.read_text())), "the grandchild survived the timeout"


# --------------------------------------------------------------------------- reports


def test_run_rules_reports_every_rule_and_summarises_the_failures(repo: Path) -> None:
    config = RulesConfig(
        tests_passing=py("pass"),
        no_lint_errors=py("import sys; sys.exit(1)"),
    )
    report = run_rules(["git_clean", "tests_passing", "no_lint_errors", "no_security_issues"],
                       repo, config)
    assert [r.rule for r in report.results] == [
        "git_clean", "tests_passing", "no_lint_errors", "no_security_issues",
    ]
    assert not report.passed
    assert [r.rule for r in report.failed] == ["no_lint_errors", "no_security_issues"]
    assert report.summary() == (
        f"no_lint_errors failed: {config.no_lint_errors} exited 1; "
        "no_security_issues failed: rule no_security_issues is not configured: set [rules] "
        'no_security_issues in orch.toml (e.g. "bandit -q -r src")'
    )
    as_dict = json.loads(json.dumps(report.as_dict()))
    assert as_dict["passed"] is False
    assert as_dict["summary"] == report.summary()
    assert [r["rule"] for r in as_dict["results"]] == [r.rule for r in report.results]
    assert set(as_dict["results"][0]) == {
        "rule", "passed", "command", "exit_code", "reason", "output_tail", "duration_seconds",
    }


def test_run_rules_can_stop_at_the_first_failure(tmp_path: Path) -> None:
    config = RulesConfig(tests_passing=py("import sys; sys.exit(3)"), no_lint_errors=py("pass"))
    report = run_rules(["tests_passing", "no_lint_errors"], tmp_path, config,
                       stop_at_first_failure=True)
    assert [r.rule for r in report.results] == ["tests_passing"]
    assert report.summary() == f"tests_passing failed: {config.tests_passing} exited 3"


def test_a_report_of_passing_rules_or_no_rules_passes(tmp_path: Path) -> None:
    config = RulesConfig(tests_passing=py("pass"), tests_still_passing=py("pass"))
    report = run_rules(["tests_passing", "tests_still_passing"], tmp_path, config)
    assert report.passed and report.failed == [] and report.summary() == ""
    empty = run_rules([], tmp_path, config)
    assert empty == RulesReport(())
    assert empty.passed and empty.summary() == ""
    assert empty.as_dict() == {"passed": True, "summary": "", "results": []}
