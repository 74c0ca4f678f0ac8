"""How a task's command becomes the argv a worker runs: the placeholders and their safe filling.

Public API:
    ``PLACEHOLDERS``, ``PLACEHOLDER_ENV`` (the environment variable that carries each value into
    a shell script), ``SHELLS``, ``uses_placeholder(template, name)``,
    ``shell_safe(script, values)``, ``substitute(template, values, *, shell) -> (argv | script,
    env)``.

Stability Guarantees:
    A placeholder's value is never parsed by a shell: in a ``shell: true`` command, or in the
    ``-c`` script of a known shell, each placeholder becomes a quoted parameter expansion of an
    environment variable that carries the value (docs/execution_model/WORKERS.md says which
    forms are safe). Elsewhere a placeholder fills one argument.

Integration Points:
    ``orch validate`` (``kernel.definitions.task_checks``) fills them as a worker would, to check
    the argument limits before a worker ever claims the task; the local executor
    (``kernel.runtime.executors.local``) fills them to run it. One definition for both.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

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
