"""Writing a new task file: the smallest document that says what the task does, in JSON or YAML,
never over an existing task (``orch new``).

Public API:
    ``NewTask(workstream_id, task_id, command=None, after=(), agent=None, prompt=None,
    files=(), yaml=False)``; ``task_document(spec) -> dict`` (the document, without what its
    path or its defaults give); ``render(document, yaml) -> str``; ``needs_shell(command)``;
    ``write_new_task(project, spec) -> (display path, document, problems)`` (raises
    ``OrchError``: ``task_exists``, ``invalid_definitions``); ``parse_target(text) -> (ws,
    task)`` (``WS/TASK``; raises ``UsageError``).

Stability Guarantees:
    The document carries ``schema_version`` and ``schema_url`` like every orch document, and
    leaves out what defaults give (``task_id``, ``workstream_id``, ``name``, ``type`` custom).
    A command is written as given: one the shell would read differently from a plain split
    (any of ``$ ` | & ; < > ( ) * ? [ ] ~ # \\`` or a newline) gets ``"shell": true``, so it
    runs exactly as it would when typed into ``/bin/sh``; JSON and YAML escaping are the
    serialisers', so no one escapes twice. ``--agent aider`` writes ``"type": "aider"``;
    another agent name writes ``"executor": "agent"`` with ``"agent": NAME``; ``--file``
    paths become ``context_requirements.required_files``. The file is created exclusively (an
    existing file, or a task of the same id in any workstream directory, is refused), then
    checked with the validator of ``orch validate`` (the whole project, so dependencies and
    duplicates are checked too); a file with an error is removed again, so a refused command
    leaves nothing behind. Warnings (an agent not configured, a file the agent is to create)
    are returned, not errors.

Integration Points:
    ``orch new`` (``kernel.cli.new``). docs/writing-tasks.md documents the files it writes.

Dependencies:
    yaml; ``kernel.base.data``, ``kernel.base.errors``, ``kernel.definitions.check``,
    ``kernel.definitions.defaults``, ``kernel.definitions.fields``,
    ``kernel.definitions.records``, ``kernel.definitions.taskformats``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from kernel.base.data import schema_url
from kernel.base.errors import OrchError, UsageError
from kernel.definitions.check import validate
from kernel.definitions.defaults import TASK_SUFFIXES
from kernel.definitions.fields import ID_PATTERN, TASK_SCHEMA_VERSION
from kernel.definitions.records import ERROR, ValidationProblem, problem_order
from kernel.definitions.taskformats import parse_definition
from kernel.store.project import Project

_SHELL_SYNTAX = frozenset("$`|&;<>()*?[]~#\\\n")
_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class NewTask:
    workstream_id: str
    task_id: str
    command: str | None = None
    after: tuple[str, ...] = ()
    agent: str | None = None
    prompt: str | None = None
    files: tuple[str, ...] = ()
    yaml: bool = False


def parse_target(text: str) -> tuple[str, str]:
    """``WS/TASK`` -> (workstream id, task id)."""
    ws, _, task = text.partition("/")
    if not (_ID.match(ws) and _ID.match(task)):
        raise UsageError("usage", f"{text!r} is not WS/TASK", hint="name the workstream and "
                         "the task, e.g. `orch new build/compile --cmd make`; ids are letters, "
                         "digits, '_', '.' and '-'")
    return ws, task


def needs_shell(command: str) -> bool:
    """Whether ``/bin/sh`` would read ``command`` differently from a plain word split."""
    return not _SHELL_SYNTAX.isdisjoint(command)


def task_document(spec: NewTask) -> dict[str, Any]:
    """The smallest task document for ``spec`` (its ids come from the path)."""
    if (spec.command is None) == (spec.agent is None):
        raise UsageError("usage", "give --cmd COMMAND or --agent NAME (one of them)",
                         hint="orch new WS/TASK --cmd 'make test', or --agent aider --prompt "
                         "TEXT --file PATH")
    if spec.agent is None and (spec.prompt is not None or spec.files):
        raise UsageError("usage", "--prompt and --file go with --agent",
                         hint="a command task runs --cmd; an agent task gets a prompt and files")
    doc: dict[str, Any] = {"schema_version": TASK_SCHEMA_VERSION,
                           "schema_url": schema_url("task", TASK_SCHEMA_VERSION)}
    execution: dict[str, Any] = {}
    if spec.agent == "aider":
        doc["type"] = "aider"
    elif spec.agent is not None:
        execution = {"executor": "agent", "agent": spec.agent}
    if spec.after:
        doc["dependencies"] = list(dict.fromkeys(spec.after))
    if spec.command is not None:
        execution["command"] = spec.command
        if needs_shell(spec.command):
            execution["shell"] = True
    if spec.prompt is not None:
        execution["prompt"] = spec.prompt
    doc["execution"] = execution
    if spec.files:
        doc["context_requirements"] = {"required_files": list(dict.fromkeys(spec.files))}
    return doc


def render(document: dict[str, Any], as_yaml: bool) -> str:
    """The file's text: JSON with two-space indents, or block-style YAML whose every value
    reads back as written (checked)."""
    if not as_yaml:
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=2**16,
                          default_flow_style=False)
    back, problems = parse_definition(text.encode(), "new.yaml", "new.yaml")
    if problems or back != document:  # cannot happen: the dumper quotes what would not
        raise OrchError("internal", "the YAML written would not read back as given",
                        hint="use JSON (leave out --yaml)")
    return text


def _existing(project: Project, task_id: str) -> str | None:
    """A file that already defines ``task_id`` (a task id is global across workstreams)."""
    if not project.tasks_dir.is_dir():
        return None
    for ws in sorted(os.scandir(project.tasks_dir), key=lambda e: e.name):
        for suffix in TASK_SUFFIXES:
            candidate = os.path.join(ws.path, task_id + suffix)
            if not ws.name.startswith(".") and os.path.lexists(candidate):
                return os.path.relpath(candidate, project.root)
    return None


def write_new_task(project: Project, spec: NewTask
                   ) -> tuple[str, dict[str, Any], list[ValidationProblem]]:
    """Create the task file of ``spec``: (its path relative to the root, the document, the
    warnings about it). Nothing is left behind when it fails."""
    document = task_document(spec)
    text = render(document, spec.yaml)
    suffix = ".yaml" if spec.yaml else ".json"
    display = f"tasks/{spec.workstream_id}/{spec.task_id}{suffix}"
    found = _existing(project, spec.task_id)
    if found is not None:
        raise OrchError("task_exists", f"task '{spec.task_id}' already exists: {found}",
                        file=found, hint="edit that file, or choose another task id; "
                        "orch new never overwrites a task")
    path = project.root / display
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # created meanwhile
        raise OrchError("task_exists", f"{display} already exists", file=display,
                        hint="orch new never overwrites a task") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    try:
        mine = [p for p in validate(project).problems if p.file == display]
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    errors = [p for p in mine if p.severity == ERROR]
    if errors:
        path.unlink(missing_ok=True)
        first = sorted(errors, key=problem_order)[0]
        raise OrchError("invalid_definitions", f"{first.path + ': ' if first.path else ''}"
                        f"{first.message} (nothing was written)", file=display,
                        hint=first.hint or "fix the options given")
    return display, document, sorted(mine, key=problem_order)
