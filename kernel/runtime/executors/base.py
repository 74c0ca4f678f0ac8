"""The executor interface: what turns a claimed task into an outcome. One module per executor.

Public API:
    ``ExecutionRequest``, ``ExecutionResult``, ``Executor`` (protocol: ``name`` and
    ``run(request, on_start, should_stop) -> ExecutionResult``), ``substitute(template, values,
    shell)``, ``PLACEHOLDERS``.

Stability Guarantees:
    Adding an executor is adding a module with a class that satisfies ``Executor`` and one line
    in ``kernel.runtime.executors.EXECUTORS``. Outcomes are ``succeeded``, ``failed``, ``timeout``,
    ``cancelled`` and ``error`` (could not start: not retryable).

Integration Points:
    ``kernel.runtime.worker`` builds the request from the claim (working directory in the
    workstream's
    worktree, environment, timeout, log file) and drives the task's state machine from the
    result; ``should_stop`` is how a cancel or a lost claim reaches a running command.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Outcome = Literal["succeeded", "failed", "timeout", "cancelled", "error"]

PLACEHOLDERS = ("prompt", "prompt_file", "task_id", "workstream_id", "attempt", "root",
                "worktree")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
#: The environment variable that carries each placeholder's value into a shell script.
PLACEHOLDER_ENV = {"prompt": "ORCH_PROMPT", "prompt_file": "ORCH_PROMPT_FILE",
                   "task_id": "ORCH_TASK_ID", "workstream_id": "ORCH_WORKSTREAM_ID",
                   "attempt": "ORCH_ATTEMPT", "root": "ORCH_ROOT", "worktree": "ORCH_WORKTREE"}
#: Programs whose ``-c`` argument is a shell script: placeholders in it are filled as shell
#: parameter expansions, never as text the shell would parse.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"})


@dataclass(frozen=True)
class ExecutionRequest:
    task_id: str
    workstream_id: str
    attempt_no: int
    command: str
    shell: bool
    cwd: Path
    env: Mapping[str, str]
    timeout_seconds: float | None
    log_path: Path
    placeholders: Mapping[str, str]
    kill_grace_seconds: float = 5.0
    definition: Mapping[str, Any] = field(default_factory=dict)
    log_cap_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class ExecutionResult:
    outcome: Outcome
    exit_code: int | None = None
    error: str | None = None
    duration_seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    name: str

    def run(self, request: ExecutionRequest, on_start: Callable[[int], None],
            should_stop: Callable[[], str | None]) -> ExecutionResult:
        """Run the task. ``on_start(pgid)`` once its process group exists; ``should_stop()``
        returns a reason (e.g. "cancelled") when the run must be killed, else None."""
        ...


def uses_placeholder(template: str, name: str) -> bool:
    return "{" + name + "}" in template


def shell_safe(script: str, values: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """Fill the placeholders of a shell script so that no value is ever parsed by the shell:
    each becomes a quoted parameter expansion (``"${ORCH_PROMPT}"``) of an environment variable
    that carries the value. The quoting context of each placeholder decides the form: bare,
    inside double quotes, or inside single quotes (closed and reopened around it). Returns the
    script and the variables to add to the environment."""
    out: list[str] = []
    env: dict[str, str] = {}
    quote = ""          # "", "'" or '"'
    i = 0
    while i < len(script):
        ch = script[i]
        if ch == "\\" and quote != "'":
            out.append(script[i:i + 2])
            i += 2
            continue
        m = _PLACEHOLDER.match(script, i)
        if m:
            var = PLACEHOLDER_ENV[m.group(1)]
            env[var] = values.get(m.group(1), "")
            out.append({"": f'"${{{var}}}"', '"': f"${{{var}}}",
                        "'": f"'\"${{{var}}}\"'"}[quote])
            i = m.end()
            continue
        if quote == "" and ch in "'\"":
            quote = ch
        elif ch == quote:
            quote = ""
        out.append(ch)
        i += 1
    return "".join(out), env


def _shell_script_index(argv: list[str]) -> int | None:
    """The index of the script argument when ``argv`` runs a shell with ``-c`` (``sh -c``,
    ``bash -lc``, ``/bin/sh -ec``, ``env sh -c``), else None."""
    start = 1 if argv and Path(argv[0]).name == "env" else 0
    if len(argv) <= start or Path(argv[start]).name not in SHELLS:
        return None
    for i in range(start + 1, len(argv) - 1):
        arg = argv[i]
        if not arg.startswith("-") or arg == "--":
            return None
        if not arg.startswith("--") and "c" in arg[1:]:
            return i + 1
    return None


def substitute(template: str, values: Mapping[str, str], *, shell: bool
               ) -> tuple[list[str] | str, dict[str, str]]:
    """Fill {prompt}, {prompt_file}, {task_id}, ... safely; returns the command and the
    environment variables it needs.

    Without a shell the template is split first and each argument filled in, so a value can
    never become two arguments or an operator. The script of a shell (``sh -c '...'``, or the
    whole command with ``shell: true``) is filled by ``shell_safe``: the shell expands the
    value, it never parses it. Other braces are left alone. Not safe, and said so in the docs:
    a value pasted into another interpreter's code (``python -c '...{prompt}...'``); use
    ``{prompt_file}`` or ``$ORCH_PROMPT`` there.
    """
    def fill(text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)

    if shell:
        return shell_safe(template, values)
    argv = shlex.split(template)
    script = _shell_script_index(argv)
    env: dict[str, str] = {}
    out = []
    for i, arg in enumerate(argv):
        if i == script:
            arg, more = shell_safe(arg, values)
            env.update(more)
            out.append(arg)
        else:
            out.append(fill(arg))
    return out, env
