"""``orch bundle``: one redacted ``.tar.gz`` of a project's state for a bug report.

Public API:
    ``bundle(project, dest, *, redact_patterns=DEFAULT_PATTERNS, extra_patterns=(),
    force=False) -> BundleReport``: one ``.tar.gz`` for a bug report (redacted database copy,
    views, logs, orch.toml, doctor output, versions, a README and a manifest);
    ``BundleReport`` (``dest``, ``members``, ``redactions``, ``database``, ``errors``,
    ``seconds``); ``MAX_BUNDLE_FILE_BYTES``.

Stability Guarantees:
    Everything taken from the project (database copy, views, logs, orch.toml, doctor output)
    is redacted with ``kernel.maintain.redact`` before it goes into the archive; the database is
    copied
    with ``kernel.maintain.backup.backup``, so a bundle is safe to take while ``orch run`` writes. A
    log or view bigger than ``max_file_bytes`` keeps only its tail, and the manifest says so.
    A database or file that cannot be read is reported in ``errors`` instead of failing the
    bundle. An existing destination is never overwritten without ``force``; the archive is
    written to a temporary file (0600 from its creation, whatever the umask; its members say
    0600 too), fsynced and renamed into place. Refusals raise ``OrchError``
    (exit 1); an invalid extra regex is a ``UsageError`` (exit 2).

Integration Points:
    ``orch bundle`` (``kernel.cli.backup``), with the ``[bundle] redact`` patterns of orch.toml
    as ``extra_patterns``. Attempt logs are read from ``Project.logs_dir``, the views from
    ``Project.state_dir``, the configuration from ``Project.config_path``.

Dependencies:
    apsw; ``kernel.base.clock``, ``kernel.base.errors``, ``kernel.base.files``,
    ``kernel.maintain.backup``, ``kernel.maintain.doctor``, ``kernel.maintain.redact``,
    ``kernel.store.db``, ``kernel.store.project``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw

from kernel.base import clock
from kernel.base.errors import OrchError, UsageError
from kernel.base.files import fsync_path, open_private
from kernel.maintain.backup import backup, utc_stamp
from kernel.maintain.redact import (
    DEFAULT_PATTERNS,
    compile_patterns,
    redact_database,
    redact_file_bytes,
    redact_json,
)
from kernel.store import db
from kernel.store.project import Project

MAX_BUNDLE_FILE_BYTES = 8 * 1024 * 1024   # a bigger log or view keeps only its tail


@dataclass
class BundleReport:
    dest: str
    members: list[dict[str, Any]] = field(default_factory=list)
    redactions: int = 0
    database: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_BUNDLE_README = """\
orch bug-report bundle
======================

Made by `orch bundle` ({created_at}, orch {version}) from the project at
{root}

Members
  kernel.db        a copy of .state/kernel.db made with SQLite's online backup API while
                   the kernel may have been running, then redacted (see below). Open it with
                   any SQLite client: sqlite3 kernel.db
  state/           the .state/*.json and *.jsonl views, redacted
  logs/            the attempt and worker logs of .state/logs/, redacted (a file over
                   {max_mib} MiB keeps only its tail; manifest.json says so)
  orch.toml        the project's configuration, redacted
  doctor.json      what `orch doctor --json` reported
  versions.json    python, platform, SQLite, apsw and orch versions
  manifest.json    every member with its size, sha256 and number of redactions

Redaction
  Values of environment-like settings (KEY=value, KEY: value, "KEY": "value" where KEY
  looks like *TOKEN*, *SECRET*, *PASSWORD*, *API_KEY*, *ACCESS_KEY*, *PRIVATE_KEY*,
  *CREDENTIAL*, *_KEY or AWS_*), values of variables of any name that look random (20+
  characters, mixed case and digits, high entropy; not hex, UUIDs, paths or words),
  secret command-line flags (--token X, --api-key=X, --password 'X'), mysql -pX and
  sshpass -p X, Authorization/Bearer tokens, OpenAI/Anthropic (sk-...), GitHub (ghp_,
  gho_, github_pat_...), GitLab, Hugging Face, Stripe, Slack tokens and webhook URLs,
  Discord webhooks, npm, PyPI, SendGrid, Telegram, DigitalOcean, Shopify, Azure storage
  and Google keys, AWS access key ids (AKIA...), JWT-like tokens (eyJ...), passwords in
  URLs and private key blocks were replaced by [REDACTED]{extra}. Commit ids, digests
  and UUIDs are kept. Review the bundle before you share it: redaction works by pattern
  and cannot know every secret.

About the database copy
  The copy's triggers, among them the event log's append-only guards
  (event_append_only_update/_delete), were dropped while its text columns were redacted
  and re-created afterwards, so its schema is the original one; then it was VACUUMed
  into a fresh file so no redacted text is left in free pages. Key columns (task ids,
  worker ids, ...) are not redacted. Because rows were rewritten, this copy is for
  reading and debugging: do not restore it over a real project.
"""


def _read_tail(path: Path, limit: int) -> tuple[bytes, int | None]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= limit:
            return fh.read(), None
        fh.seek(size - limit)
        data = fh.read()
    cut = data.find(b"\n")
    return (data[cut + 1:] if cut >= 0 else data), size


def _versions() -> dict[str, Any]:
    from kernel import __version__

    return {"orch": __version__, "python": sys.version, "platform": platform.platform(),
            "sqlite": apsw.sqlite_lib_version(), "apsw": apsw.apsw_version(),
            "schema_version_supported": db.latest_schema_version()}


def _doctor_output(project: Project) -> dict[str, Any]:
    from kernel.maintain.doctor import doctor_report

    try:
        return doctor_report(project)
    except OrchError as exc:
        return {"error": exc.as_dict()}
    except apsw.Error as exc:
        return {"error": {"code": "database_unreadable", "message": str(exc)}}


@dataclass
class _Members:
    """The bundle's members in order: (name, bytes, manifest entry), counted in the report."""

    top: str
    report: BundleReport
    patterns: Mapping[str, re.Pattern[str]]
    max_file_bytes: int
    items: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)

    def add(self, name: str, data: bytes, redactions: int = 0, **extra: Any) -> None:
        self.report.redactions += redactions
        self.items.append((name, data, {"name": f"{self.top}/{name}", "bytes": len(data),
                                        "sha256": hashlib.sha256(data).hexdigest(),
                                        "redactions": redactions, **extra}))

    def add_json(self, name: str, doc: Any, redactions: int = 0) -> None:
        text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
        self.add(name, text.encode(), redactions)

    def add_file(self, name: str, path: Path) -> None:
        """A file of the project, its tail past ``max_file_bytes``, redacted."""
        try:
            data, original = _read_tail(path, self.max_file_bytes)
        except OSError as exc:
            self.report.errors.append(f"{path}: {exc}")
            return
        data, n = redact_file_bytes(data, path.suffix, self.patterns)
        extra = {"truncated_from_bytes": original} if original is not None else {}
        self.add(name, data, n, **extra)


def _bundle_target(dest: str | os.PathLike[str], force: bool) -> Path:
    target = Path(dest).expanduser().resolve()
    if target.is_dir():
        raise UsageError("destination_is_directory", "DEST is a directory",
                         file=str(target), hint="name the file, e.g. orch-bundle.tar.gz")
    if target.exists() and not force:
        raise OrchError("destination_exists", "DEST already exists", file=str(target),
                        hint="pass --force to overwrite it, or choose another DEST")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _add_database(members: _Members, project: Project, work: Path) -> None:
    """A backup of the database, every text column redacted, VACUUMed into a clean file."""
    raw, clean = work / "raw.db", work / "kernel.db"
    try:
        copy = backup(project, raw)
        counts = redact_database(raw, clean, members.patterns)
        raw.unlink()
    except (OrchError, apsw.Error) as exc:
        members.report.errors.append(f"database not included: {exc}")
        return
    members.report.database = {
        "member": f"{members.top}/kernel.db", "bytes": clean.stat().st_size,
        "events": copy.events, "max_seq": copy.max_seq,
        "last_event_at": copy.last_event_at, "schema_version": copy.schema_version,
        "redactions": counts}
    members.add("kernel.db", clean.read_bytes(), sum(counts.values()),
                redactions_by_column=counts)


def _add_project_files(members: _Members, project: Project) -> None:
    """The .state views, every task log and orch.toml."""
    for path in sorted([*project.state_dir.glob("*.json"), *project.state_dir.glob("*.jsonl")]):
        if path.is_file():
            members.add_file(f"state/{path.name}", path)
    if project.logs_dir.is_dir():
        for path in sorted(p for p in project.logs_dir.rglob("*") if p.is_file()):
            members.add_file(f"logs/{path.relative_to(project.logs_dir)}", path)
    if project.config_path.is_file():
        members.add_file("orch.toml", project.config_path)


def _write_tar(target: Path, members: _Members, now: float) -> None:
    """The members as one .tar.gz, 0600 from its creation (members unpack 0600 too), written
    beside ``target`` and renamed over it."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open_private(tmp, "wb") as out, tarfile.open(fileobj=out, mode="w:gz") as tar:
            for name, data, _meta in members.items:
                info = tarfile.TarInfo(f"{members.top}/{name}")
                info.size, info.mtime, info.mode = len(data), int(now), 0o600
                tar.addfile(info, io.BytesIO(data))
        fsync_path(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    fsync_path(target.parent)


def bundle(
    project: Project,
    dest: str | os.PathLike[str],
    *,
    redact_patterns: Mapping[str, re.Pattern[str]] = DEFAULT_PATTERNS,
    extra_patterns: Sequence[str] = (),
    force: bool = False,
    max_file_bytes: int = MAX_BUNDLE_FILE_BYTES,
) -> BundleReport:
    """Write one ``.tar.gz`` for a bug report (see ``_BUNDLE_README`` for what it holds)."""
    from kernel import __version__

    started, now = time.monotonic(), time.time()
    patterns = {**redact_patterns, **compile_patterns(extra_patterns)}
    target = _bundle_target(dest, force)
    report = BundleReport(dest=str(target))
    members = _Members(f"orch-bundle-{utc_stamp(now)}", report, patterns, max_file_bytes)
    with tempfile.TemporaryDirectory(prefix=".orch-bundle-", dir=target.parent) as work:
        _add_database(members, project, Path(work))
        _add_project_files(members, project)
    doctor, n = redact_json(_doctor_output(project), patterns)
    members.add_json("doctor.json", doctor, n)
    versions = _versions()
    members.add_json("versions.json", versions)
    extra_note = (f", and matches of the extra patterns {list(extra_patterns)}"
                  if extra_patterns else "")
    members.add("README.txt", _BUNDLE_README.format(
        created_at=clock.iso(now), version=__version__, root=project.root,
        max_mib=max_file_bytes // 1048576, extra=extra_note).encode())
    report.members = [meta for _n, _d, meta in members.items]
    report.seconds = round(time.monotonic() - started, 3)
    members.add_json("manifest.json", {
        "created_at": clock.iso(now), "project": str(project.root), "versions": versions,
        "patterns": sorted(patterns), "extra_patterns": list(extra_patterns),
        **report.as_dict()})
    report.members.append(members.items[-1][2])
    _write_tar(target, members, now)
    report.seconds = round(time.monotonic() - started, 3)
    return report
