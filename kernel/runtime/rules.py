"""Validation rules: the commands run before and after a task's own command.

Public API:
    ``RULE_NAMES`` (the fixed set: ``git_clean``, ``tests_passing``, ``tests_still_passing``,
    ``no_lint_errors``, ``no_security_issues``); ``RuleResult`` and ``RulesReport`` (frozen
    dataclasses; ``RulesReport.passed``, ``.failed``, ``.summary()``, ``.as_dict()``);
    ``run_rule(name, cwd, config, *, env=None, timeout=600) -> RuleResult``;
    ``run_rules(names, cwd, config, *, env=None, timeout=600, stop_at_first_failure=False)
    -> RulesReport``.

Stability Guarantees:
    A rule never raises for a failing, missing, unknown or unconfigured command: the outcome is a
    ``RuleResult`` with ``passed=False`` and a one-sentence ``reason``. A rule that is not
    configured fails; it never passes silently. The keys of ``as_dict()`` are only added, never
    renamed. Rule names are only added.

Integration Points:
    The worker runs a task's pre rules before its command (any failure: the task does not
    start) and its post rules after it (any failure: Validation-Failed, no retry);
    ``RulesReport.as_dict()`` goes into the event's metadata and ``summary()`` into its message.
    The commands come from ``[rules]`` in ``orch.toml`` (``kernel.base.config.RulesConfig``).

Dependencies:
    ``kernel.base.config``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kernel.base.config import RulesConfig

RULE_NAMES: tuple[str, ...] = (
    "git_clean",
    "tests_passing",
    "tests_still_passing",
    "no_lint_errors",
    "no_security_issues",
)

OUTPUT_TAIL_CHARS = 2000
_MAX_LISTED_PATHS = 5
_EXAMPLES = {
    "git_clean": "git status --porcelain",
    "tests_passing": "python -m pytest -q",
    "tests_still_passing": "python -m pytest -q",
    "no_lint_errors": "ruff check .",
    "no_security_issues": "bandit -q -r src",
}


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    command: str | None
    exit_code: int | None
    reason: str
    output_tail: str
    duration_seconds: float


@dataclass(frozen=True)
class RulesReport:
    results: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """``"<rule> failed: <reason>"`` for each failed rule, joined by ``"; "``; ``""`` when
        every rule passed."""
        return "; ".join(f"{r.rule} failed: {r.reason}" for r in self.failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "results": [asdict(r) for r in self.results],
        }


def _result(
    name: str,
    passed: bool,
    reason: str,
    *,
    command: str | None = None,
    exit_code: int | None = None,
    output: str = "",
    started: float | None = None,
) -> RuleResult:
    return RuleResult(
        rule=name,
        passed=passed,
        command=command,
        exit_code=exit_code,
        reason=reason,
        output_tail=output[-OUTPUT_TAIL_CHARS:],
        duration_seconds=round(time.monotonic() - started, 3) if started is not None else 0.0,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The leader is not reaped yet (alive or a zombie), so its pid still names our group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _changed_paths(stdout: str) -> list[str]:
    paths = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        # `git status --porcelain`: "XY path" (or "XY old -> new"); anything else: the line.
        if len(line) > 3 and line[2] == " ":
            paths.append(line[3:].strip())
        else:
            paths.append(line.strip())
    return paths


def _describe_paths(paths: list[str]) -> str:
    listed = ", ".join(paths[:_MAX_LISTED_PATHS])
    more = len(paths) - _MAX_LISTED_PATHS
    if more > 0:
        listed += f" and {more} more"
    noun = "changed path" if len(paths) == 1 else "changed paths"
    return f"{len(paths)} {noun}: {listed}"


def run_rule(
    name: str,
    cwd: Path,
    config: RulesConfig,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
) -> RuleResult:
    """Run one rule's configured command in ``cwd`` and judge it.

    ``env`` holds variables added to (overriding) the current environment. ``timeout`` is in
    seconds (``None``: no limit); on timeout the command's whole process group is killed and the
    rule fails.
    """
    found = _command_of(name, config)
    if isinstance(found, RuleResult):
        return found
    command, argv = found
    full_env = {**os.environ, **env} if env is not None else None
    started = time.monotonic()
    proc = _start(name, command, argv, cwd, full_env, started)
    if isinstance(proc, RuleResult):
        return proc
    out_b, err_b, timed_out = _communicate(proc, timeout)
    stdout = out_b.decode("utf-8", errors="replace")
    output = stdout + err_b.decode("utf-8", errors="replace")
    code = proc.returncode

    def judged(passed: bool, reason: str) -> RuleResult:
        return _result(name, passed, reason, command=command, exit_code=code, output=output,
                       started=started)

    if timed_out:
        return judged(False, f"{command} timed out after {timeout:g} seconds and was killed")
    if code != 0:
        return judged(False, f"{command} exited {code}")
    if name == "git_clean":
        paths = _changed_paths(stdout)
        if paths:
            return judged(False, f"{command} printed {_describe_paths(paths)}")
        return judged(True, f"{command} printed nothing")
    return judged(True, f"{command} exited 0")


def _command_of(name: str, config: RulesConfig) -> tuple[str, list[str]] | RuleResult:
    """The rule's command and its argv, or the failed result of a rule that cannot run: an
    unknown name, no command configured, a command that does not parse."""
    if name not in RULE_NAMES:
        return _result(
            name, False,
            f"unknown rule {name!r}: the rules are {', '.join(RULE_NAMES)}",
        )
    command: str | None = getattr(config, name)
    not_configured = (f"rule {name} is not configured: set [rules] {name} in orch.toml "
                      f'(e.g. "{_EXAMPLES[name]}")')
    if not command or not command.strip():
        return _result(name, False, not_configured, command=command or None)
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return _result(
            name, False,
            f"the command of rule {name} ({command}) cannot be parsed: {exc}; "
            f"fix [rules] {name} in orch.toml",
            command=command,
        )
    if not argv:
        return _result(name, False, not_configured, command=command)
    return command, argv


def _start(name: str, command: str, argv: list[str], cwd: Path,
           env: Mapping[str, str] | None, started: float) -> subprocess.Popen[bytes] | RuleResult:
    """The command started in its own session, or the failed result of a command that could
    not start (no such program, no such directory, not executable)."""
    try:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
    except FileNotFoundError as exc:
        if not Path(cwd).is_dir():
            reason = f"cannot run {command}: the directory {cwd} does not exist"
        else:
            reason = (
                f"{argv[0]} was not found: install it or change [rules] {name} in orch.toml"
            )
        return _result(name, False, reason, command=command, output=str(exc), started=started)
    except OSError as exc:
        return _result(
            name, False,
            f"cannot run {argv[0]} ({exc.strerror or exc}): fix it or change [rules] {name} "
            "in orch.toml",
            command=command, output=str(exc), started=started,
        )


def _communicate(proc: subprocess.Popen[bytes],
                 timeout: float | None) -> tuple[bytes, bytes, bool]:
    """(stdout, stderr, timed out): on timeout the whole process group is killed."""
    try:
        out_b, err_b = proc.communicate(timeout=timeout)
        return out_b, err_b, False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
    try:
        out_b, err_b = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        # Something outside the group still holds the pipes open; give up on the output.
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait()
        out_b, err_b = b"", b""
    return out_b, err_b, True


def run_rules(
    names: Sequence[str],
    cwd: Path,
    config: RulesConfig,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    stop_at_first_failure: bool = False,
) -> RulesReport:
    """Run ``names`` in order (``timeout`` applies to each); a report of every rule run."""
    results: list[RuleResult] = []
    for name in names:
        result = run_rule(name, cwd, config, env=env, timeout=timeout)
        results.append(result)
        if stop_at_first_failure and not result.passed:
            break
    return RulesReport(tuple(results))
