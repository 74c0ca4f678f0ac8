"""The malformed-input corpus (tests/corpus/, described in its README.md): every case is refused
by `orch validate` and `orch load` with exit 1 (warnings: exit 0), a message naming the file and
the field, no traceback, one JSON document with an `error` object under --json, and a database
left exactly as it was. Most cases run the CLI in-process (`kernel.cli.run`); the real `orch`
console script runs in subprocesses for all task, workstream and file-system cases together
(the CLI reports every problem at once) and for a sample of the others."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import yaml

from kernel.definitions.load import load
from kernel.store.project import Project, init_project

from .conftest import logical_dump, orch, run_cli

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())
CASE_TIMEOUT = 120  # seconds: a case that hangs (a FIFO read) fails instead of blocking the run
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _skip_reason(case: dict[str, Any]) -> str | None:
    if case.get("non_root") and IS_ROOT:
        return "root reads any file: an unreadable file cannot be made"
    if case.get("linux_only") and not sys.platform.startswith("linux"):
        return "MAX_ARG_STRLEN is a Linux limit"
    return None


def _place(case: dict[str, Any]) -> str:
    if "place" in case:
        return str(case["place"])
    return f"tasks/corpus/{Path(case['input']).name}"


GOOD = {
    "good-a": {},
    "good-b": {"dependencies": ["good-a"]},
    "good-c": {"priority": 3},
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with three tasks already loaded, its WAL checkpointed so a copy is complete."""
    root = tmp_path_factory.mktemp("corpus") / "template"
    root.mkdir()
    init_project(root)
    for task_id, extra in GOOD.items():
        path = root / "tasks" / "good" / f"{task_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task_id": task_id, "workstream_id": "good",
                                    "name": task_id, "type": "custom",
                                    "execution": {"command": f"echo {task_id}"}, **extra}))
    assert load(Project(root), workers=1).tasks_created == 3
    conn = apsw.Connection(str(root / ".state" / "kernel.db"))
    conn.pragma("wal_checkpoint(TRUNCATE)")
    conn.close()
    return root


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a corpus case ran for more than {CASE_TIMEOUT} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(CASE_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _make_socket(path: Path) -> None:
    here = os.getcwd()
    os.chdir(path.parent)  # a relative name: AF_UNIX paths are limited to ~107 bytes
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path.name)
        sock.close()  # the socket file stays
    finally:
        os.chdir(here)


def _big_task(task_id: str, size: int) -> bytes:
    doc = {"task_id": task_id, "workstream_id": "corpus", "name": task_id, "type": "custom",
           "execution": {"command": "echo big"}, "description": ""}
    pad = size - len(json.dumps(doc).encode())
    doc["description"] = "x" * pad
    data = json.dumps(doc).encode()
    assert len(data) == size
    return data


def apply_case(case: dict[str, Any], root: Path) -> Path:
    """Put the case's input (or the object it makes) into the project at ``root``."""
    place = root / _place(case)
    place.parent.mkdir(parents=True, exist_ok=True)
    _remove(place)
    if "config" in case:
        (root / "orch.toml").write_text(case["config"])
    make = case.get("make")
    if "input" in case:
        place.write_bytes((CORPUS / case["input"]).read_bytes())
    elif make == "fifo":
        os.mkfifo(place)
    elif make == "socket":
        _make_socket(place)
    elif make == "dir":
        place.mkdir()
    elif make == "symlink":
        if case.get("target_make") == "fifo":
            os.mkfifo(place.parent / case["target"])
        os.symlink(case["target"], place)
    elif make == "big":
        place.write_bytes(_big_task(place.stem, case["size"]))
    elif make == "unreadable":
        place.write_text(json.dumps({"task_id": place.stem, "workstream_id": "corpus",
                                     "name": "x", "type": "custom",
                                     "execution": {"command": "echo x"}}))
        place.chmod(0)
    else:
        raise AssertionError(f"case {case['id']}: nothing to put at {place}")
    return place


def _matches(case: dict[str, Any], problem: dict[str, Any]) -> bool:
    if problem.get("file") != _place(case):
        return False
    if case.get("code") and problem.get("code") != case["code"]:
        return False
    if case.get("path") is not None and problem.get("path") != case["path"]:
        return False
    return not case.get("message") or re.search(case["message"], problem["message"]) is not None


def _run(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_cli("--root", str(root), *args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def _check_text(case: dict[str, Any], code: int, out: str, err: str) -> None:
    assert code == case["exit"], (case["id"], out, err)
    if case.get("code") is None:
        return
    lines = [ln for ln in out.splitlines() if f"[{case['code']}]" in ln]
    assert lines, (case["id"], out)
    # The problem's own line names the file (with its line number) and the field.
    wanted = [ln for ln in lines if _place(case) in ln and (
        not case.get("path") or f" {case['path']}:" in ln)]
    assert wanted, (case["id"], lines)
    if case.get("message"):
        assert any(re.search(case["message"], ln) for ln in wanted), (case["id"], wanted)


def _check_json(case: dict[str, Any], code: int, out: str) -> dict[str, Any]:
    assert code == case["exit"], (case["id"], out)
    doc = json.loads(out)  # exactly one document
    if case["exit"]:
        error = doc["error"]
        assert set(error) == {"code", "message", "file", "line", "hint"}, error
        assert error["message"] and error["hint"]
    if case.get("code") is not None:
        found = [p for p in doc["problems"] if _matches(case, p)]
        assert found, (case["id"], doc["problems"])
        assert found[0]["severity"] == ("error" if case["exit"] else "warning")
    return doc


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case(case: dict[str, Any], template: Path, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    root = tmp_path / "proj"
    shutil.copytree(template, root, symlinks=True)
    db_file = root / ".state" / "kernel.db"
    before = logical_dump(db_file)
    apply_case(case, root)

    _check_text(case, *_run(capsys, root, "validate"))
    _check_json(case, *_run(capsys, root, "validate", "--json")[:2])
    assert logical_dump(db_file) == before  # validate never writes

    _check_text(case, *_run(capsys, root, "load"))
    doc = _check_json(case, *_run(capsys, root, "--json", "load")[:2])
    if case["exit"]:
        assert logical_dump(db_file) == before, f"{case['id']}: orch load changed the database"
        assert doc["ok"] is False
    else:  # a warning: the task is loaded, the warning reported
        assert doc["ok"] is True
        assert logical_dump(db_file) != before

    if _place(case) == "orch.toml":  # every command that reads orch.toml refuses it
        code, out, err = _run(capsys, root, "status")
        assert code == 1 and "orch.toml" in err, (case["id"], out, err)
        if case.get("path"):
            assert case["path"] in err
        code, out, _ = _run(capsys, root, "--json", "status")
        error = json.loads(out)["error"]
        assert code == 1 and error["file"].endswith("orch.toml"), error


# ------------------------------------------------------------------ the real console script


def _grouped() -> list[dict[str, Any]]:
    """The cases that can share one project: each has its own file under tasks/."""
    return [c for c in CASES if c.get("group", True) and _place(c).startswith("tasks/")
            and not _skip_reason(c)]


def test_the_console_script_reports_every_grouped_case_at_once(template: Path,
                                                               tmp_path: Path) -> None:
    cases = _grouped()
    assert len(cases) >= 100
    root = tmp_path / "proj"
    shutil.copytree(template, root, symlinks=True)
    db_file = root / ".state" / "kernel.db"
    before = logical_dump(db_file)
    for case in cases:
        apply_case(case, root)

    proc = orch("--root", str(root), "validate")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for case in cases:
        if case.get("code"):
            assert f"[{case['code']}]" in proc.stdout and _place(case) in proc.stdout, case["id"]

    proc = orch("--root", str(root), "--json", "load")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["error"]["code"] == "invalid_definitions"
    missing = [c["id"] for c in cases if c.get("code")
               and not any(_matches(c, p) for p in doc["problems"])]
    assert not missing, missing
    assert logical_dump(db_file) == before


SAMPLE = ["config-bad-redact-regex", "config-nan-tick", "fs-config-fifo", "fs-registry-fifo",
          "registry-res-nan-capacity", "registry-res-duplicate-key", "task-infinity-estimate"]


@pytest.mark.parametrize("case_id", SAMPLE)
def test_the_console_script_on_a_sample(case_id: str, template: Path, tmp_path: Path) -> None:
    case = next(c for c in CASES if c["id"] == case_id)
    root = tmp_path / "proj"
    shutil.copytree(template, root, symlinks=True)
    db_file = root / ".state" / "kernel.db"
    before = logical_dump(db_file)
    apply_case(case, root)
    for args in (["validate"], ["load"], ["--json", "validate"], ["--json", "load"]):
        proc = orch("--root", str(root), *args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr
        if "--json" in args:
            doc = json.loads(proc.stdout)
            assert any(_matches(case, p) for p in doc["problems"]), doc["problems"]
            assert doc["error"]["message"]
        else:
            assert _place(case) in proc.stdout and f"[{case['code']}]" in proc.stdout
    assert logical_dump(db_file) == before


def test_the_corpus_is_large_and_well_formed() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert sum(1 for c in CASES if c["exit"] == 1) >= 100
    for case in CASES:
        assert case["exit"] in (0, 1) and case.get("why"), case
        assert "input" in case or "make" in case, case
        if "input" in case:
            assert (CORPUS / case["input"]).is_file(), case
    used = {c["input"] for c in CASES if "input" in c}
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*")
               if p.is_file() and p.name not in ("cases.yaml", "README.md")}
    assert on_disk == used, on_disk ^ used  # no orphan input, no missing one
