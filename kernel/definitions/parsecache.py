"""The parse cache: what ``orch validate`` or ``orch load`` learnt from each task file, kept under
``.state/`` so that the next command parses only the files that changed.

Public API:
    ``CACHE_FILE`` (the name under ``.state/``), ``RACY_SECONDS``;
    ``cached_parse(state_dir, files, ctx, parse) -> (results, hits)``: each file's
    ``taskfiles.Parsed`` result, from the cache when it is fresh, else from ``parse(misses)``;
    the cache file is rewritten when anything was parsed (only when ``state_dir`` exists).

Stability Guarantees:
    A cached result is used only when everything it depends on is unchanged: the file's absolute
    path, and its ``os.stat`` size, mtime_ns, ctime_ns, inode and device; the ``task_defaults``
    of its workstream file (their digest: a changed default re-parses the tasks of that
    workstream only, a workstream file's other fields none); the parse context
    (registries, ``orch.toml`` settings the parse reads, the project root); the orch version and
    the size and mtime of the modules that parse (so an edited checkout does not trust results
    of older code). Only valid tasks that name no other path are cached (a ``working_directory``
    or a context file is checked against the disk, which the file's times do not cover), nor a
    task whose command could come near the argument limits (that check counts the environment);
    files with errors are parsed again. ctime cannot be set by a program, so restoring a file's
    mtime after an edit does not hide the edit. A file changed less than ``RACY_SECONDS`` before
    the command began is never cached (file times are coarser than the clock: a second edit in
    the same tick would keep the times). The file carries a sha256 of each chunk of entries and
    is ignored when one does not match, when it is truncated, or of another format: a stale or
    corrupt cache is never used, only replaced. It is written atomically (temporary file,
    rename), readable by its owner only.

Integration Points:
    ``kernel.definitions.collect`` (``orch validate`` and ``orch load``) calls ``cached_parse``
    around ``kernel.definitions.taskfiles.parse_task_results``. docs/operations/DEFINITIONS.md,
    "The parse cache", describes it to users.

Dependencies:
    ``kernel.definitions.records``, ``kernel.definitions.task_checks``,
    ``kernel.definitions.taskfiles``.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kernel
from kernel.definitions.records import ParseContext, TaskRecord, ValidationProblem
from kernel.definitions.task_checks import far_below_arg_limits
from kernel.definitions.taskfiles import Parsed

CACHE_FILE = "definitions.cache"
RACY_SECONDS = 2.0  # files changed this shortly before the command are never cached
_MAGIC = b"orch-parse-cache 3\n"
_CODE = ("definitions", "base")  # the packages whose modules decide a parse result

# size, mtime_ns, ctime_ns, inode, device, and the digest of the workstream's task defaults
FileKey = tuple[int, int, int, int, int, str]


def _file_key(path: str, ctx: ParseContext) -> FileKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
            ctx.defaults_of(path)[0])


def _context_key(ctx: ParseContext) -> bytes:
    """Everything a file's result depends on besides the file itself."""
    code = []
    base = Path(kernel.__file__).parent
    for package in _CODE:
        for module in sorted((base / package).glob("*.py")):
            st = module.stat()
            code.append((module.name, st.st_size, st.st_mtime_ns))
    context = (kernel.__version__, code, ctx.root, ctx.real_root,
               sorted((ctx.capabilities or {}).items()) if ctx.capabilities is not None else None,
               sorted((ctx.resources or {}).items()) if ctx.resources is not None else None,
               ctx.definitions, ctx.max_file_bytes,
               sorted(ctx.agents) if ctx.agents is not None else None)
    return hashlib.sha256(repr(context).encode()).hexdigest().encode()


def _cacheable(result: Parsed, real_root: str) -> bool:
    """Whether the result depends on the file alone (and the context): a valid task whose
    definition names no other path (``execution.working_directory``, the context's required
    and optional files are checked against the disk, so their results are never cached). The
    canonical JSON escapes every quote inside a string, so these substrings are keys."""
    record = result[0]
    if record is None or not record.definition:
        return False
    d = record.definition
    # The argument-length check counts the environment unless the command is far below the
    # limits: with any placeholder as long as the whole definition, it is.
    if not far_below_arg_limits(record.columns[-1] or "", len(d) + len(real_root) + 32):
        return False
    return '"working_directory":"."' in d and (
        '"context_requirements":null' in d
        or '"required_files":[]' in d and '"optional_files":[]' in d)


def _pack(result: Parsed) -> tuple[Any, ...]:
    record, problems = result
    # Ids interned: marshal keeps them so, and the next command's dependencies are then the
    # same string objects as the tasks they name (300k edges: ~20 MB less).
    intern = sys.intern
    return (None if record is None else (
        intern(record[0]), intern(record[1]), record[2], record[3],
        tuple([intern(d) for d in record[4]]), tuple([intern(b) for b in record[5]]),
        *record[6:]),
            [(p.code, p.file, p.path, p.message, p.hint, p.line, p.column, p.severity)
             for p in problems])


def _unpack(packed: tuple[Any, ...]) -> Parsed:
    record, problems = packed
    return (None if record is None else TaskRecord._make(record),
            [ValidationProblem(*p) for p in problems])


_CHUNK = 2000  # entries per marshalled chunk: the file is read and written a chunk at a time
_LENGTH = struct.Struct("<Q")
Entries = dict[str, tuple[FileKey, Parsed]]


def _read(path: Path, context: bytes) -> Entries:
    """The cached entries (absolute path -> (file key, result)); empty when the file is
    missing, of another format or context, or damaged. Read a checksummed chunk at a time."""
    entries: Entries = {}
    try:
        with open(path, "rb") as fh:
            if fh.read(len(_MAGIC) + 65) != _MAGIC + context + b"\n":
                return {}
            while True:
                head = fh.read(_LENGTH.size + 32)
                if len(head) != _LENGTH.size + 32:
                    return {}  # truncated: no end marker
                (size,) = _LENGTH.unpack_from(head)
                if size == 0:
                    return entries if fh.read(1) == b"" else {}
                payload = fh.read(size)
                if len(payload) != size or hashlib.sha256(payload).digest() != head[8:]:
                    return {}
                chunk = marshal.loads(payload)
                del payload
                for file, key, packed in chunk:
                    entries[file] = (tuple(key), _unpack(packed))
    except (OSError, ValueError, EOFError, TypeError):
        return {}


def _write(path: Path, context: bytes, entries: list[tuple[str, FileKey, Parsed]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_MAGIC + context + b"\n")
            for start in range(0, len(entries), _CHUNK):
                payload = marshal.dumps([(file, key, _pack(result)) for file, key, result
                                         in entries[start:start + _CHUNK]])
                fh.write(_LENGTH.pack(len(payload)) + hashlib.sha256(payload).digest())
                fh.write(payload)
            fh.write(_LENGTH.pack(0) + bytes(32))
        os.replace(tmp, path)
    except OSError:  # a cache that cannot be written is only a slower next command
        tmp.unlink(missing_ok=True)


def cached_parse(state_dir: Path, files: list[tuple[str, str]], ctx: ParseContext,
                 parse: Callable[[list[tuple[str, str]]], list[Parsed]], *,
                 whole: bool = True) -> tuple[list[Parsed], int]:
    """Each file's result in the order of ``files`` ((absolute path, display path) pairs), and
    how many came from the cache. Without ``state_dir`` nothing is read or written. ``whole``:
    ``files`` are all the project's task files (entries of other files are dropped; else
    they are kept)."""
    if not state_dir.is_dir():
        return parse(files), 0
    started_ns = time.time_ns()
    context = _context_key(ctx)
    path = state_dir / CACHE_FILE
    cached = _read(path, context)
    keys: list[FileKey | None] = [None] * len(files)
    results: list[Parsed | None] = [None] * len(files)
    misses = []
    for i, (file, _) in enumerate(files):
        key = _file_key(file, ctx)
        entry = cached.pop(file, None)  # the cache's copies go as they are used: less memory
        if key is not None and entry is not None and entry[0] == key:
            keys[i], results[i] = entry
        else:
            keys[i] = key
            misses.append(i)
    hits = len(files) - len(misses)
    if not misses:
        return [r for r in results if r is not None], hits
    for i, parsed in zip(misses, parse([files[i] for i in misses]), strict=True):
        results[i] = parsed
    racy = started_ns - int(RACY_SECONDS * 1e9)
    entries = [] if whole else [(file, key, result) for file, (key, result) in cached.items()]
    cached.clear()
    entries += [(file, key, result) for (file, _), key, result in zip(files, keys, results,
                                                                      strict=True)
                if key is not None and result is not None and max(key[1], key[2]) < racy
                and _cacheable(result, ctx.real_root)]
    _write(path, context, entries)
    return [r for r in results if r is not None], hits
