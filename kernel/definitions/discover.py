"""Finding the definition files of a project: the task files and workstream files under
``tasks/`` (or under the paths given) and the registry files named.

Public API:
    ``discover(project, paths=None) -> Found``: ``Found.tasks`` ((absolute path, display path)
    pairs), ``Found.workstreams`` (directory -> pair), ``Found.registries`` (pairs) and
    ``Found.problems`` (what cannot be a definition file). PATHs may be task files,
    directories, registry YAML files, the project root or ``capabilities/``.

Stability Guarantees:
    Nothing is opened but directories. Task files are ``{task}.json``, ``.yaml`` or ``.yml``;
    a workstream file is ``workstream.json``, ``.yaml`` or ``.yml`` (two in one directory: an
    error). Any other file under ``tasks/`` is the warning ``not_a_task_file``, never
    silence; dot-entries (``.backups/`` of ``orch migrate-tasks``, editors' files) are
    skipped. Everything under ``tasks/`` must be a directory or a regular file; a FIFO,
    socket, device, dangling or looping symlink, or a directory named like a task file
    (``x.json`` inside a workstream) is an error, never opened. A YAML file given by path is a
    task or workstream file under ``tasks/``, a registry elsewhere. Symlinks are followed
    when they stay inside the project (``path_escapes_root`` otherwise); a directory reached
    twice is a ``symlink_loop``. A task file given by path brings its directory's workstream
    file with it. Entries are found in name order.

Integration Points:
    ``kernel.definitions.collect.collect`` reads what is found here.

Dependencies:
    ``kernel.base.documents``, ``kernel.definitions.defaults``, ``kernel.definitions.records``,
    ``kernel.store.project``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import NamedTuple

from kernel.base.documents import kind_of
from kernel.definitions.defaults import TASK_SUFFIXES, WORKSTREAM_FILES
from kernel.definitions.records import ValidationProblem, display_path, inside_root
from kernel.store.project import Project


class Found(NamedTuple):
    """The definition files found, and the problems of what could not be one."""

    tasks: list[tuple[str, str]]  # (absolute path, display path)
    workstreams: dict[str, tuple[str, str]]  # directory -> (absolute path, display path)
    registries: list[tuple[str, str]]
    problems: list[ValidationProblem]


def discover(project: Project, paths: Sequence[str | os.PathLike[str]] | None = None) -> Found:
    """The definition files of the project (``paths``: only those, or those under them)."""
    root = str(project.root)
    real_root = os.path.realpath(root)
    found = Found([], {}, [], [])
    if not paths:
        if project.tasks_dir.is_dir():
            _walk(str(project.tasks_dir), root, real_root, found, top=True)
        return found
    for given in paths:
        _add_given(project, os.path.abspath(given), real_root, found)
    for task_path, _ in found.tasks:  # a task file's workstream file comes with it
        directory = os.path.dirname(task_path)
        for name in WORKSTREAM_FILES:
            ws_file = os.path.join(directory, name)
            if directory not in found.workstreams and os.path.lexists(ws_file):
                found.workstreams[directory] = (ws_file, display_path(ws_file, root))
    return found


def _walk(directory: str, root: str, real_root: str, found: Found, top: bool,
          seen: set[str] | None = None) -> None:
    """Find the definition files under ``directory``. Everything there (but dot-entries) must
    be a directory or a regular file, directly or through a symlink that stays inside the
    project; a directory is read once (a symlink loop is reported, not followed)."""
    if not inside_root(directory, real_root) and top:
        found.problems.append(_escape(display_path(directory, root), "", directory))
        return
    seen = set() if seen is None else seen
    real = os.path.realpath(directory)
    if real in seen:
        found.problems.append(ValidationProblem(
            "symlink_loop", display_path(directory, root), "",
            f"leads to {display_path(real, os.path.realpath(root))}/, a directory already read "
            "(a symlink loop, or a second link to it)", "remove the symlink"))
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        found.problems.append(ValidationProblem("file_unreadable", display_path(directory, root),
                                                "", f"cannot list the directory: {exc}"))
        return
    workstream_level = real == os.path.realpath(os.path.join(root, "tasks"))
    for entry in entries:
        if entry.name.startswith("."):
            continue  # .backups/ of orch migrate-tasks, editors' files
        if entry.is_symlink() and not inside_root(entry.path, real_root):
            found.problems.append(_escape(display_path(entry.path, root), "", entry.path))
            continue
        try:  # from the directory listing; a stat only for symlinks
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError:
            is_dir = is_file = False
        shown = display_path(entry.path, root)
        if is_dir and entry.name.endswith(TASK_SUFFIXES) and not workstream_level:
            found.problems.append(ValidationProblem(
                "not_a_regular_file", shown, "", "a directory where a task file is expected",
                "a task file is a regular file tasks/{workstream}/{task_id}.json: rename or "
                "remove the directory"))
        elif is_dir:
            _walk(entry.path, root, real_root, found, False, seen)
        elif not is_file:
            found.problems.append(ValidationProblem(
                "not_a_regular_file", shown, "", f"{_describe(entry.path)}, not a regular file "
                "or a directory", "nothing under tasks/ may be a FIFO, socket, device or "
                "dangling symlink: remove it"))
        elif entry.name in WORKSTREAM_FILES:
            _add_workstream(found, directory, entry.path, shown)
        elif entry.name.endswith(".json") or (entry.name.endswith(TASK_SUFFIXES)
                                               and not workstream_level):
            found.tasks.append((entry.path, shown))
        elif workstream_level:
            found.problems.append(ValidationProblem(
                "not_a_task_file", shown, "", "not read: a file directly in tasks/ belongs to "
                "no workstream", "task files go in tasks/{workstream}/{task}.json (or .yaml); "
                "move it, or out of tasks/ if it is not a task"))
        else:
            found.problems.append(ValidationProblem(
                "not_a_task_file", shown, "", "not a task file: orch reads only "
                "{task}.json, .yaml or .yml and workstream.json/.yaml/.yml under tasks/",
                "rename it to TASK.json or TASK.yaml if it is a task; else move it out of "
                "tasks/ (or make it a dotfile)"))


def _add_workstream(found: Found, directory: str, path: str, shown: str) -> None:
    """The workstream file of ``directory``; a second one is an error (the first is used)."""
    first = found.workstreams.get(directory)
    if first is None:
        found.workstreams[directory] = (path, shown)
    elif first[0] != path:
        found.problems.append(ValidationProblem(
            "workstream_file_invalid", shown, "", f"a second workstream file in this "
            f"directory (the first is {first[1]})", "keep one workstream file per directory"))


def _add_given(project: Project, path: str, real_root: str, found: Found) -> None:
    root = str(project.root)
    if path == root:
        if project.tasks_dir.is_dir():
            _walk(str(project.tasks_dir), root, real_root, found, top=True)
    elif path == str(project.capabilities_dir):
        found.registries.extend(
            (str(f), display_path(str(f), root))
            for f in sorted(project.capabilities_dir.glob("*.y*ml")))
    elif os.path.isdir(path):
        _walk(path, root, real_root, found, top=True)
    elif os.path.islink(path) and not os.path.exists(path):
        found.problems.append(ValidationProblem(
            "not_a_regular_file", display_path(path, root), "", _describe(path),
            "point the symlink at an existing file, or remove it"))
    elif not os.path.exists(path):
        found.problems.append(ValidationProblem(
            "file_unreadable", display_path(path, root), "", "no such file or directory"))
    elif not inside_root(path, real_root):
        found.problems.append(_escape(display_path(path, root), "", path))
    elif os.path.basename(path) in WORKSTREAM_FILES:
        _add_workstream(found, os.path.dirname(path), path, display_path(path, root))
    elif path.endswith((".yaml", ".yml")) and not _under(path, str(project.tasks_dir)):
        found.registries.append((path, display_path(path, root)))
    else:
        found.tasks.append((path, display_path(path, root)))


def _under(path: str, directory: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(directory) + os.sep)


def _describe(path: str) -> str:
    try:
        return kind_of(os.stat(path).st_mode)
    except FileNotFoundError:
        return f"a dangling symlink (to {os.readlink(path)!r}, which does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return f"unreadable ({exc.strerror or exc})"


def _escape(display: str, path: str, target: str) -> ValidationProblem:
    return ValidationProblem(
        "path_escapes_root", display, path,
        f"'{target}' resolves to {os.path.realpath(target)}, outside the project root",
        "keep definitions and the files tasks name inside the project (check symlinks)")
