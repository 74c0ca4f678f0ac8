"""SCHEMA-VER-001: every ``schema_url`` orch writes, and every schema address in schemas/ and the
docs, resolves to a schema in schemas/ (its ``$id``), and each document written by a real run
carries ``schema_version`` too and validates against that schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kernel.base.data import SCHEMA_URL_BASE
from kernel.observe.schemas import schema_files_by_url
from tests.conftest import orch
from tests.e2e import make_project, run, task

REPO = Path(__file__).resolve().parent.parent
SCHEMA_DIR = REPO / "schemas"
URL = re.compile(re.escape(SCHEMA_URL_BASE) + r"[A-Za-z0-9._/-]+\.json")


def published() -> dict[str, Path]:
    """``$id`` -> the schema file that carries it."""
    out = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema_id = json.loads(path.read_text())["$id"]
        assert schema_id not in out, f"{path.name} and {out[schema_id].name} share {schema_id}"
        out[schema_id] = path
    # The kernel's own map (what a compliance check asks) agrees with the files.
    assert {url: path.name for url, path in out.items()} == schema_files_by_url()
    return out


def headers(value: Any, where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object holding a ``schema_url`` anywhere inside ``value``, with its JSON path."""
    if isinstance(value, dict):
        if "schema_url" in value:
            yield where, value
        for key, item in value.items():
            yield from headers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from headers(item, f"{where}[{i}]")


def validate(document: dict[str, Any], schema_file: Path) -> None:
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small project after `orch run`: a workstream that completes, one that fails (a critical
    task), one cancelled; then `orch export`, `orch metrics` and `orch index`."""
    root = make_project(tmp_path_factory.mktemp("urls") / "p", [
        task("build", ws="good"), task("check", ws="good", deps=["build"]),
        task("boom", ws="bad", command="false", critical=True),
        task("later", ws="bad", deps=["boom"]), task("idle", ws="other")])
    assert orch("--root", str(root), "cancel", "--workstream", "other").returncode == 0
    result = run(root, workers=2)
    assert result.returncode == 1, result.stdout + result.stderr   # bad failed for good
    for args in (("export",), ("metrics",), ("index",)):
        proc = orch("--root", str(root), *args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return root


def written_documents(root: Path) -> dict[str, Any]:
    """Every JSON document under .state/, plus what `orch plan WS --json` prints."""
    docs: dict[str, Any] = {}
    for path in sorted((root / ".state").rglob("*.json")):
        docs[str(path.relative_to(root))] = json.loads(path.read_text())
    for ws in ("good", "bad"):
        proc = orch("--root", str(root), "plan", ws, "--json")
        assert proc.returncode == 0, proc.stderr
        docs[f"orch plan {ws} --json"] = json.loads(proc.stdout)
    return docs


def test_every_document_a_run_writes_is_schemad_and_valid(ran: Path) -> None:
    schemas = published()
    docs = written_documents(ran)
    seen: dict[str, str] = {}
    for name, doc in docs.items():
        found = list(headers(doc))
        assert found, f"{name} carries no schema_url"
        for where, part in found:
            url = part["schema_url"]
            assert url in schemas, f"{name} {where}: {url} is not the $id of a file in schemas/"
            schema_file = schemas[url]
            version = json.loads(schema_file.read_text())["x-schema-version"]
            assert part.get("schema_version") == version, (name, where)
            validate(part, schema_file)
            seen[url] = name
    names = {schemas[url].name for url in seen}
    assert {"dag.schema.json", "execution-plan.schema.json", "workstream-archive.schema.json",
            "module-index.schema.json", "current-state.schema.json", "checkpoint.schema.json",
            "metrics.schema.json"} <= names, names
    archives = [n for n in docs if "/archive/" in n]
    assert {n.split("/")[2] for n in archives} >= {"good", "bad", "other"}, archives


def test_every_schema_address_in_schemas_and_docs_resolves() -> None:
    schemas = published()
    sources = [*SCHEMA_DIR.glob("*.json"), *(REPO / "docs").rglob("*.json"),
               *(REPO / "docs").rglob("*.md"), REPO / "README.md"]
    found = {(str(p.relative_to(REPO)), url) for p in sources for url in URL.findall(
        p.read_text(encoding="utf-8"))}
    assert any(name.startswith("schemas/") for name, _ in found)
    assert sorted((name, url) for name, url in found if url not in schemas) == []
    for path in sorted((REPO / "docs" / "examples").rglob("*.json")):
        for where, part in headers(json.loads(path.read_text())):
            assert part["schema_url"] in schemas, (path, where)


def test_an_address_of_no_schema_is_caught() -> None:
    schemas = published()
    doc = {"nested": [{"schema_version": "1.0.0",
                       "schema_url": f"{SCHEMA_URL_BASE}plan/v1.0.0.json"}]}
    [(where, part)] = list(headers(doc))
    assert where == "$.nested[0]" and part["schema_url"] not in schemas
    assert f"{SCHEMA_URL_BASE}execution-plan/v1.0.0.json" in schemas
