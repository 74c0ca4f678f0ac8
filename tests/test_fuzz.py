"""The corpus grown into a fuzzer: hypothesis generates task trees, valid ones and ones with one
defect (a wrong type, NaN or Infinity, a huge number, an unknown key, a bad id, a cycle, a
missing dependency, a duplicate id, or an odd file: empty, binary, a byte-order mark, over the
size limit, a symlink loop), and runs them through the real `orch validate` and `orch load`
(in-process, `kernel.cli.run`, for speed). A defective tree is refused with exit 1, a JSON
problem naming the file (and, for a field, its JSON path), never a traceback, and the database
is left exactly as it was; a valid tree loads and `orch plan --json` plans every task of it.
The examples are bounded and derandomized so that CI runs the same ones every time
(``ORCH_FUZZ_EXAMPLES`` raises the number per kind for a long run)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.definitions.load import load
from kernel.store.project import Project, init_project

from .conftest import logical_dump, run_cli

#: Examples per kind of tree: 6 in the test suite; ORCH_FUZZ_EXAMPLES=200 for a long run.
EXAMPLES = int(os.environ.get("ORCH_FUZZ_EXAMPLES", "6"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Tree:
    """Files to write under tasks/ (bytes, or ("symlink", target)), and what must happen."""

    files: dict[str, Any]
    task_ids: list[str]
    defect: str | None = None           # None: a valid tree
    defect_files: set[str] = field(default_factory=set)
    defect_path: str | None = None      # the JSON path a problem must name (None: any)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with two tasks already loaded, its WAL checkpointed so a copy is complete."""
    root = tmp_path_factory.mktemp("fuzz") / "template"
    root.mkdir()
    init_project(root)
    for task_id, deps in (("base-a", []), ("base-b", ["base-a"])):
        path = root / "tasks" / "base" / f"{task_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task_id": task_id, "workstream_id": "base", "name": task_id,
                                    "type": "custom", "dependencies": deps,
                                    "execution": {"command": f"echo {task_id}"}}))
    assert load(Project(root), workers=1).tasks_created == 2
    conn = apsw.Connection(str(root / ".state" / "kernel.db"))
    conn.pragma("wal_checkpoint(TRUNCATE)")
    conn.close()
    return root


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                max_size=30).filter(lambda s: s.strip() != "")


@st.composite
def valid_docs(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 5))
    ids = [f"fz-{draw(st.sampled_from(['a', 'b', 'c']))}{i}" for i in range(count)]
    docs = []
    for i, task_id in enumerate(ids):
        execution: dict[str, Any] = {"command": draw(st.sampled_from(["echo hi", "true"]))}
        if draw(st.booleans()):
            execution["timeout_seconds"] = draw(st.integers(1, 3600))
        if draw(st.booleans()):
            execution["max_retries"] = draw(st.integers(0, 5))
        if draw(st.booleans()):
            execution["estimated_duration_seconds"] = draw(st.floats(0.1, 1000))
        doc: dict[str, Any] = {
            "task_id": task_id, "workstream_id": draw(st.sampled_from(["fa", "fb"])),
            "name": draw(names), "type": "custom",
            "dependencies": draw(st.lists(st.sampled_from(ids[:i] + ["base-a", "base-b"]),
                                          unique=True, max_size=2)),
            "execution": execution}
        if draw(st.booleans()):
            doc["priority"] = draw(st.integers(-10, 10))
        docs.append(doc)
    return docs


def _file(doc: dict[str, Any]) -> str:
    return f"tasks/{doc['workstream_id']}/{doc['task_id']}.json"


FIELD_DEFECTS: list[tuple[str, Any]] = [
    ("priority", "high"), ("name", 5), ("dependencies", "fz-a0"), ("type", ["custom"]),
    ("execution.timeout_seconds", "soon"), ("execution.max_retries", [1]),
    ("execution.command", 42), ("workstream_id", None),
]
BAD_IDS = ["has space", "../up", "", "x" * 300, "ünï", "-lead", "a/b", "UPPER?"]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


KINDS = ["type", "non_finite", "huge", "unknown_key", "bad_id", "cycle", "missing_dep",
         "duplicate", "empty", "binary", "bom", "huge_file", "symlink_loop"]


def _field_defect(kind: str, doc: dict[str, Any], data: Any) -> str:
    """Break one field of ``doc``; return its JSON path."""
    if kind == "type":
        path, value = data.draw(st.sampled_from(FIELD_DEFECTS))
        _set(doc, path, value)
        return path
    if kind == "non_finite":
        path = data.draw(st.sampled_from(["execution.timeout_seconds",
                                          "execution.estimated_duration_seconds"]))
        _set(doc, path, float(data.draw(st.sampled_from(["nan", "inf", "-inf"]))))
        return path
    if kind == "huge":
        path = data.draw(st.sampled_from(["priority", "execution.max_retries"]))
        _set(doc, path, data.draw(st.sampled_from([1, -1])) * 10 ** data.draw(st.integers(19, 400)))
        return path
    if kind == "unknown_key":
        where = data.draw(st.sampled_from(["", "execution."]))
        key = "surprise_" + data.draw(st.text("abcxyz", min_size=1, max_size=6))
        _set(doc, where + key, 1)
        return where + key
    if kind == "bad_id":
        doc["task_id"] = data.draw(st.sampled_from(BAD_IDS))
        return "task_id"
    # missing_dep
    doc["dependencies"] = [*doc["dependencies"], "fz-nowhere"]
    return f"dependencies[{len(doc['dependencies']) - 1}]"


@st.composite
def trees(draw: st.DrawFn, kind: str | None) -> Tree:
    """A valid tree (``kind`` None), or one with the defect ``kind``."""
    docs = draw(valid_docs())
    files: dict[str, Any] = {_file(d): json.dumps(d).encode() for d in docs}
    tree = Tree(files, [d["task_id"] for d in docs])
    if kind is None:
        return tree
    index, data = draw(st.integers(0, len(docs) - 1)), draw(st.data())
    doc, name = docs[index], _file(docs[index])
    tree.defect, tree.defect_files = kind, {name}
    if kind in ("type", "non_finite", "huge", "unknown_key", "bad_id", "missing_dep"):
        tree.defect_path = _field_defect(kind, doc, data)
        files[name] = json.dumps(doc).encode()
    elif kind == "cycle":   # the first task depends on the last, which depends on it
        docs[0]["dependencies"] = [*docs[0]["dependencies"], docs[-1]["task_id"]]
        if len(docs) > 1 and docs[0]["task_id"] not in docs[-1]["dependencies"]:
            docs[-1]["dependencies"] = [*docs[-1]["dependencies"], docs[0]["task_id"]]
        files[_file(docs[0])] = json.dumps(docs[0]).encode()
        files[_file(docs[-1])] = json.dumps(docs[-1]).encode()
        tree.defect_files = {_file(docs[0]), _file(docs[-1])}
    elif kind == "duplicate":
        copy = f"tasks/{doc['workstream_id']}/fz-copy.json"
        files[copy] = json.dumps({**doc, "name": "a copy"}).encode()
        tree.defect_files = {name, copy}
    else:
        files[name] = _odd_file(kind, files[name], data)
        if kind == "symlink_loop":
            loop = str(Path(name).with_name("fz-loop.json"))
            files[loop] = ("symlink", Path(name).name)
            tree.defect_files = {name, loop}
    return tree


def _odd_file(kind: str, good: bytes, data: Any) -> Any:
    if kind == "empty":
        return data.draw(st.sampled_from([b"", b"   \n", b"\n\t"]))
    if kind == "binary":
        return b"\xff\x00" + data.draw(st.binary(max_size=64))
    if kind == "bom":
        return b"\xef\xbb\xbf" + good
    if kind == "huge_file":
        return good[:-1] + b', "description": "' + b"x" * (1 << 20) + b'"}'
    return ("symlink", "fz-loop.json")   # symlink_loop: NAME -> fz-loop.json -> NAME


def write_tree(root: Path, tree: Tree) -> None:
    for name, content in tree.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            os.symlink(content[1], path)
        else:
            path.write_bytes(content)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = run_cli(*args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, json.loads(out)   # exactly one JSON document


def _names_the_defect(tree: Tree, problems: list[dict[str, Any]]) -> bool:
    if tree.defect == "cycle":
        # Every cycle runs through the added edge, so it names both of its tasks; the problem
        # sits on whichever file of the cycle closes it.
        # A task depending on itself is refused by the schema, at its dependencies.
        ends = {Path(f).stem for f in tree.defect_files}
        return any(p["code"] == "dependency_cycle" and all(e in p["message"] for e in ends)
                   or len(ends) == 1 and p["file"] in tree.defect_files
                   and (p.get("path") or "").startswith("dependencies") for p in problems)
    for p in problems:
        if p["severity"] != "error" or p["file"] not in tree.defect_files:
            continue
        if tree.defect_path is None or (p.get("path") or "").startswith(
                tree.defect_path.split("[")[0]) or tree.defect == "bad_id":
            return True
    return False


@pytest.mark.parametrize("kind", [None, *KINDS], ids=["valid", *KINDS])
def test_a_generated_tree_is_refused_whole_or_loaded_and_planned(
        kind: str | None, template: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each kind of tree gets FUZZ's examples: 14 kinds x 6 = 84 trees in the test suite."""

    @FUZZ
    @given(tree=trees(kind))
    def check(tree: Tree) -> None:
        _check_tree(tree, template, capsys)

    check()


def _check_tree(tree: Tree, template: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        shutil.copytree(template, root, symlinks=True)
        write_tree(root, tree)
        db_file = root / ".state" / "kernel.db"
        before = logical_dump(db_file)
        code, doc = _cli(capsys, "--root", str(root), "--json", "validate")
        if tree.defect is None:
            assert code == 0, doc
            code, doc = _cli(capsys, "--root", str(root), "--json", "load")
            assert code == 0 and doc["ok"], doc
            code, plan = _cli(capsys, "--root", str(root), "--json", "plan")
            assert code == 0, plan
            text = json.dumps(plan)
            assert all(f'"{t}"' in text for t in tree.task_ids), (tree.task_ids, text[:2000])
            return
        assert code == 1, (tree.defect, doc)
        assert _names_the_defect(tree, doc["problems"]), (tree.defect, tree.defect_files,
                                                          tree.defect_path, doc["problems"])
        assert doc["error"]["message"] and doc["error"]["hint"]
        code, doc = _cli(capsys, "--root", str(root), "--json", "load")
        assert code == 1 and doc["ok"] is False, doc
        assert _names_the_defect(tree, doc["problems"]), doc["problems"]
        after = logical_dump(db_file)
        if tree.defect == "cycle":   # Dependency-Cycle: its one event and nothing else
            cycle_events = [ln for ln in after.split("\n") if ln.startswith("event: ")
                            and "'dependency_cycle_detected'" in ln]
            # (a task depending on itself is a schema error, found before any cycle search)
            found = any(p["code"] == "dependency_cycle" for p in doc["problems"])
            assert len(cycle_events) == int(found), cycle_events
            after = "\n".join(ln for ln in after.split("\n") if ln not in cycle_events
                               and not ln.startswith("sqlite_sequence: "))
            before = "\n".join(ln for ln in before.split("\n")
                                if not ln.startswith("sqlite_sequence: "))
        assert after == before, f"{tree.defect}: orch load changed the database"
