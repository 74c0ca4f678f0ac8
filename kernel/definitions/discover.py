"""Finding the definition files of a project: the task files and workstream files under
``tasks/`` (or under the paths given) and the registry files named.

Public API:
    ``discover(project, paths=None) -> Found``: ``Found.tasks`` ((absolute path, display path)
    pairs), ``Found.workstreams`` (directory -> pair), ``Found.registries`` (pairs) and
    ``Found.problems`` (what cannot be a definition file). PATHs may be task files,
    directories, registry YAML files, the project root or ``capabilities/``.

Stability Guarantees:
    Nothing is opened but directories. Everything under ``tasks/`` (but dot-entries) must be a
    directory or a regular file; a FIFO, socket, device, dangling or looping symlink, or a
    directory named like a task file (``x.json`` inside a workstream) is an error, never
    opened. Symlinks are followed when they stay inside the project (``path_escapes_root``
    otherwise); a directory reached twice is a ``symlink_loop``. A task file given by path
    brings its directory's ``workstream.json`` with it. Entries are found in name order.

Integration Points:
    ``kernel.definitions.collect.collect`` reads what is found here.

Dependencies:
    ``kernel.base.documents``, ``kernel.definitions.records``, ``kernel.store.project``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import NamedTuple

from kernel.base.documents import kind_of
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
    for task_path, _ in found.tasks:  # a task file's workstream.json comes with it
        directory = os.path.dirname(task_path)
        ws_file = os.path.join(directory, "workstream.json")
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
        if is_dir and entry.name.endswith(".json") and not workstream_level:
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
        elif entry.name == "workstream.json":
            found.workstreams[directory] = (entry.path, shown)
        elif entry.name.endswith(".json"):
            found.tasks.append((entry.path, shown))


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
    elif path.endswith((".yaml", ".yml")):
        found.registries.append((path, display_path(path, root)))
    elif os.path.basename(path) == "workstream.json":
        found.workstreams[os.path.dirname(path)] = (path, display_path(path, root))
    else:
        found.tasks.append((path, display_path(path, root)))


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
