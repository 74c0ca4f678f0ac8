"""The strict parse layer (kernel.base.documents) and what is built on it: strict models, semver
precedence, the one definition of an impossible resource request, argument limits, orch.toml
checks, and no crash whatever a definition holds. Real files, real FIFOs, real SQLite."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.base.config import (
    DEFAULT_CONFIG_TOML,
    Config,
    ConfigError,
    config_problems,
    load_config,
)
from kernel.base.documents import (
    INT64_MAX,
    MAX_DEPTH,
    DocumentError,
    check_values,
    path_loc,
    path_text,
    read_file,
)
from kernel.base.formats import parse_json, parse_toml, parse_yaml
from kernel.definitions import fit, task_checks
from kernel.definitions.check import validate
from kernel.definitions.load import LoadError, load
from kernel.definitions.migrate_tasks import MigrationError, migrate_tasks
from kernel.definitions.models import TaskDefinition, semver_key
from kernel.definitions.records import CODES, ParseContext
from kernel.definitions.registries import ResourceRegistry, lease_ceiling
from kernel.definitions.taskfiles import parse_task
from kernel.store import db
from kernel.store.project import Project

from .conftest import logical_dump, orch, orch_json
from .test_validate import task_doc, write_task

# --------------------------------------------------------------------------- reading files


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "t.json"
    os.mkfifo(fifo)
    with pytest.raises(DocumentError) as err:
        read_file(str(fifo), max_bytes=100)
    assert err.value.code == "not_a_regular_file" and "FIFO" in err.value.message


def test_symlinks_are_followed_to_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "ok.json").symlink_to("real.json")
    (tmp_path / "gone.json").symlink_to("missing.json")
    (tmp_path / "loop.json").symlink_to("loop.json")
    assert read_file(str(tmp_path / "ok.json"), max_bytes=100) == b"{}"
    for name, words in (("gone.json", "dangling symlink"), ("loop.json", "symlink loop")):
        with pytest.raises(DocumentError, match=words) as err:
            read_file(str(tmp_path / name), max_bytes=100)
        assert err.value.code == "not_a_regular_file"


def test_size_limit_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(b"{}" + b" " * 98)
    assert len(read_file(str(path), max_bytes=100)) == 100  # the limit itself is fine
    path.write_bytes(b"{}" + b" " * 99)
    with pytest.raises(DocumentError, match="101 bytes, over the limit of 100"):
        read_file(str(path), max_bytes=100)
    path.write_bytes(b"")
    with pytest.raises(DocumentError) as err:
        read_file(str(path), max_bytes=100)
    assert err.value.code == "empty_file"


# --------------------------------------------------------------------------- JSON, YAML, TOML


@pytest.mark.parametrize(("text", "code", "path"), [
    ('{"a": NaN}', "non_finite_number", "a"),
    ('{"a": [1, -Infinity]}', "non_finite_number", "a[1]"),
    ('{"a": 1e400}', "non_finite_number", "a"),
    ('{"a": 9223372036854775808}', "integer_out_of_range", "a"),
    ('{"a": -9223372036854775809}', "integer_out_of_range", "a"),
    ('{"a": "x\\u0000"}', "nul_character", "a"),
    ('{"a\\u0000": 1}', "nul_character", "a\x00"),
    ('{"a": "\\udc00"}', "invalid_unicode", "a"),
    ('{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", "too_deep", "a" + "[0]" * (MAX_DEPTH - 1)),
])
def test_json_values_that_are_refused(text: str, code: str, path: str) -> None:
    data, problems = parse_json(text.encode(), "f.json")
    assert data is None
    assert [(p.code, p.path, p.file, p.line) for p in problems] == [(code, path, "f.json", 1)]


def test_json_values_at_the_limits_are_accepted() -> None:
    text = json.dumps({"max": INT64_MAX, "min": -INT64_MAX - 1, "big": 1e308, "pair": "\U0001f600",
                       "deep": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))})
    data, problems = parse_json(text.encode())
    assert problems == [] and data["max"] == INT64_MAX and data["pair"] == "\U0001f600"
    escaped = b'{"pair": "\\ud83d\\ude00"}'  # a valid surrogate pair, escaped
    assert parse_json(escaped) == ({"pair": "\U0001f600"}, [])


def test_a_duplicate_key_is_reported_at_its_second_line_and_every_value_is_checked() -> None:
    text = '{\n  "a": {"x": NaN},\n  "b": 1,\n  "a": {}\n}\n'
    _, problems = parse_json(text.encode())
    assert [(p.code, p.path, p.line) for p in problems] == [
        ("duplicate_key", "a", 4), ("non_finite_number", "a.x", 2)]


def test_deep_json_is_refused_not_a_recursion_error() -> None:
    _, problems = parse_json(b"[" * 200_000 + b"]" * 200_000)
    assert [p.code for p in problems] == ["too_deep"]


def test_encoding_problems_have_a_position() -> None:
    _, problems = parse_json(b'{\n  "a": "caf\xe9"\n}')
    assert [(p.code, p.line, p.column) for p in problems] == [("bad_encoding", 2, 12)]
    _, problems = parse_json(b"\xef\xbb\xbf{}")
    assert [(p.code, p.line) for p in problems] == [("bad_encoding", 1)]


def test_yaml_duplicate_keys_aliases_and_special_floats() -> None:
    cases = {
        b"a: 1\nb:\n  c: 2\n  c: 3\n": [("duplicate_key", "b.c", 4)],
        b"a: &x [1]\nb: *x\n": [("yaml_syntax", "", 2)],
        b"a:\n  - .nan\n  - -.inf\n": [("non_finite_number", "a[0]", 2),
                                       ("non_finite_number", "a[1]", 3)],
        b"a: 123456789012345678901234567890\n": [("integer_out_of_range", "a", 1)],
        b"a: [1\n": [("yaml_syntax", "", 2)],
    }
    for raw, expected in cases.items():
        data, _, problems = parse_yaml(raw)
        assert data is None and [(p.code, p.path, p.line) for p in problems] == expected, raw


def test_toml_problems_have_a_line() -> None:
    _, problems = parse_toml(b"[run]\ntick_seconds = 1\n\n[workers]\nheartbeat_seconds = nan\n")
    assert [(p.code, p.path, p.line) for p in problems] == [
        ("non_finite_number", "workers.heartbeat_seconds", 5)]
    _, problems = parse_toml(b"[run]\ntick_seconds = \n")
    assert [(p.code, p.line, p.column) for p in problems] == [("toml_syntax", 2, 16)]


def test_check_values_reports_every_problem_in_document_order() -> None:
    problems = check_values({"a": math.nan, "b": [2**64, "\x00"], "c": {"d": -math.inf}})
    assert [(p.code, p.path) for p in problems] == [
        ("non_finite_number", "a"), ("integer_out_of_range", "b[0]"),
        ("nul_character", "b[1]"), ("non_finite_number", "c.d")]


@pytest.mark.parametrize(("loc", "text"), [
    ([], ""), (["a"], "a"), (["execution", "timeout_seconds"], "execution.timeout_seconds"),
    (["dependencies", 2], "dependencies[2]"), (["a", 0, "b", 12, "c"], "a[0].b[12].c")])
def test_path_loc_reads_back_what_path_text_writes(loc: list[Any], text: str) -> None:
    assert path_text(loc) == text
    assert path_loc(text) == loc


# --------------------------------------------------------------------------- strict models


def _task(**fields: Any) -> dict[str, Any]:
    doc = {"task_id": "t", "workstream_id": "ws", "name": "T", "type": "custom",
           "execution": {"command": "echo"}}
    for key, value in fields.items():
        if key == "execution":
            doc["execution"] = {**doc["execution"], **value}  # type: ignore[dict-item]
        else:
            doc[key] = value
    return doc


def test_an_integer_is_accepted_where_a_float_is_expected() -> None:
    task = TaskDefinition.model_validate(_task(execution={"retry_delay_seconds": 5,
                                                          "estimated_duration_seconds": 90}))
    assert task.execution.retry_delay_seconds == 5.0
    assert isinstance(task.execution.estimated_duration_seconds, float)


def test_timestamps_are_iso_strings_with_a_zone() -> None:
    ok = TaskDefinition.model_validate(_task(state={"created_at": "2026-01-31T12:00:00Z"}))
    assert ok.state is not None and ok.state.created_at is not None
    for bad in (1700000000, "2026-01-31T12:00:00", True):
        with pytest.raises(ValueError):
            TaskDefinition.model_validate(_task(state={"created_at": bad}))


# --------------------------------------------------------------------------- semver


def test_semver_precedence() -> None:
    ordered = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.9.0", "1.10.0",
               "2.0.0"]
    assert sorted(ordered, key=semver_key) == ordered
    assert sorted(reversed(ordered), key=semver_key) == ordered
    assert semver_key("1.0.0+build.5") == semver_key("1.0.0")
    for bad in ("1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", "", "1.0.0 "):
        with pytest.raises(ValueError):
            semver_key(bad)


# --------------------------------------------------------------------------- resources


def test_lease_ceiling_is_the_rule_of_the_registry() -> None:
    registry = ResourceRegistry.model_validate({"resources": [
        {"resource_id": "pool", "type": "pooled", "capacity": 8, "reserved": 3},
        {"resource_id": "api", "type": "rate_limited", "refill_rate": "10/minute"},
        {"resource_id": "lock", "type": "exclusive"},
        {"resource_id": "read", "type": "shared"}]})
    assert [r.ceiling for r in registry.resources] == [5, 10, None, None]
    assert lease_ceiling("pooled", 8.0, None) == 8.0


def _pools(conn: apsw.Connection) -> None:
    with db.write_tx(conn):
        conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
        conn.executemany("INSERT INTO task (task_id, workstream_id) VALUES (?, 'ws')",
                         [(t,) for t in ("at", "over", "rate", "lock", "fits")])
        conn.execute(
            "INSERT INTO resource (resource_id, type, max_holders, capacity, refill_per_second, "
            "reserved) VALUES ('pool', 'pooled', -1, 8, NULL, 3), "
            "('api', 'rate_limited', -1, 10, 1.0, 0), ('lock', 'exclusive', 1, NULL, NULL, 0)")
        # As an older orch, or a hand-written client, could have loaded them.
        conn.executemany("INSERT INTO task_resource VALUES (?, ?, ?, ?)", [
            ("at", "pool", "units", 5), ("over", "pool", "units", 6), ("rate", "api", "units", 11),
            ("lock", "lock", "exclusive", 1), ("fits", "api", "units", 10)])


def test_impossible_requests_use_the_same_ceiling(fresh_db: apsw.Connection) -> None:
    _pools(fresh_db)
    found = sorted(fit.impossible_requests(fresh_db), key=lambda r: r["task_id"])
    assert found == [
        {"task_id": "over", "resource_id": "pool", "requested": 6.0, "available": 5.0},
        {"task_id": "rate", "resource_id": "api", "requested": 11.0, "available": 10.0}]
    assert fit.impossible_requests(fresh_db, ["over", "at"]) == [found[0]]


def test_the_lease_trigger_grants_exactly_up_to_the_ceiling(fresh_db: apsw.Connection) -> None:
    _pools(fresh_db)
    stamp = "2027-01-01T00:00:00.000Z"

    def lease(task: str, amount: float) -> None:
        fresh_db.execute(
            "INSERT INTO lease (resource_id, task_id, owner, mode, amount, generation, "
            "acquired_at, expires_at) VALUES ('pool', ?, 'w', 'units', ?, 1, ?, ?)",
            (task, amount, stamp, "2027-01-01T01:00:00.000Z"))

    ceiling = lease_ceiling("pooled", 8, 3)
    assert ceiling is not None
    with pytest.raises(apsw.ConstraintError, match="not enough units"):
        lease("over", ceiling + 1)
    lease("at", ceiling)


# --------------------------------------------------------------------------- argument limits


def _ctx(root: Path) -> ParseContext:
    return ParseContext(str(root), str(root), None, None)


def _parse(root: Path, doc: dict[str, Any]) -> list[tuple[str, str]]:
    path = root / "tasks" / doc["workstream_id"] / f"{doc['task_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    _, problems = parse_task(str(path), "t.json", _ctx(root))
    return [(p.code, p.path) for p in problems]


@pytest.mark.skipif(task_checks.MAX_ARG_STRLEN is None, reason="a Linux limit")
def test_one_argument_may_be_as_long_as_the_kernel_allows(tmp_path: Path) -> None:
    limit = task_checks.MAX_ARG_STRLEN
    assert limit is not None
    fits = _task(execution={"command": "echo {prompt}", "prompt": "x" * (limit - 1)})
    assert _parse(tmp_path, fits) == []
    over = _task(execution={"command": "echo {prompt}", "prompt": "x" * limit})
    assert _parse(tmp_path, over) == [("argument_too_long", "execution.prompt")]
    multibyte = _task(execution={"command": "echo {prompt}", "prompt": "é" * (limit // 2)})
    assert _parse(tmp_path, multibyte) == [("argument_too_long", "execution.prompt")]


def test_the_argument_list_must_fit_in_arg_max(tmp_path: Path) -> None:
    copies = task_checks.ARG_MAX // 50_000 + 2
    doc = _task(execution={"command": "agent " + " {prompt}" * copies, "prompt": "y" * 50_000})
    assert _parse(tmp_path, doc) == [("argument_too_long", "execution.prompt")]


# --------------------------------------------------------------------------- no crash, ever

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
_FIELDS = ["task_id", "workstream_id", "name", "type", "status", "critical", "priority",
           "dependencies", "blocks", "schema_version", "schema_url", "execution",
           "worker_requirements", "resource_requirements", "context_requirements",
           "validation_rules", "state", "max_runtime_seconds", "description", "$schema"]
_INNER = {"execution": ["command", "timeout_seconds", "max_retries", "retry_delay_seconds",
                        "estimated_duration_seconds", "shell", "prompt", "executor",
                        "working_directory", "max_runtime_seconds"],
          "worker_requirements": ["capabilities", "min_version"],
          "context_requirements": ["max_context_tokens", "required_files", "optional_files"],
          "state": ["created_at", "retry_count"]}


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(field=st.sampled_from(_FIELDS), inner=st.integers(0, 9), value=_JSON)
def test_any_value_in_any_field_is_a_problem_or_a_record(tmp_path: Path, field: str, inner: int,
                                                         value: Any) -> None:
    doc: dict[str, Any] = _task(execution={"timeout_seconds": 60},
                                worker_requirements={"capabilities": []},
                                context_requirements={"required_files": []}, state={})
    if field in _INNER:
        names = _INNER[field]
        doc[field] = {**doc[field], names[inner % len(names)]: value}
    else:
        doc[field] = value
    path = tmp_path / "tasks" / "ws" / "t.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, allow_nan=True))
    ctx = ParseContext(str(tmp_path), str(tmp_path),
                       {"RuffLinting": ("cap-ruff-001", "stable", None, "1.0.0")},
                       {"cpu_cores": ("pooled", 1, 4, 8.0)})
    record, problems = parse_task(str(path), "tasks/ws/t.json", ctx)
    assert record is not None or any(p.severity == "error" for p in problems)
    for p in problems:
        assert p.code in CODES and isinstance(p.message, str) and p.message
    if record is not None:
        json.loads(record.definition)  # what load stores is valid JSON


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["database", "workers", "run", "rules", "views", "bundle",
                                "definitions"]),
       key=st.sampled_from(["durability", "busy_timeout_ms", "heartbeat_seconds", "tick_seconds",
                            "git_clean", "redact", "max_task_file_bytes", "export", "x"]),
       value=st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
       | st.floats() | st.text(max_size=12) | st.lists(st.text(max_size=6), max_size=3))
def test_any_value_in_orch_toml_is_a_config_error_or_a_config(tmp_path: Path, section: str,
                                                              key: str, value: Any) -> None:
    if value is None:
        literal = "{}"
    elif isinstance(value, float) and not math.isfinite(value):
        literal = "nan" if value != value else ("-inf" if value < 0 else "inf")
    else:
        literal = json.dumps(value)  # JSON scalars and lists of strings are TOML too
    path = tmp_path / "orch.toml"
    path.write_text(f"[{section}]\n{key} = {literal}\n")
    try:
        assert isinstance(load_config(path), Config)
    except ConfigError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        assert exc.exit_code == 1


# --------------------------------------------------------------------------- orch.toml


def test_the_default_orch_toml_is_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "orch.toml"
    path.write_text(DEFAULT_CONFIG_TOML)
    assert load_config(path) == Config()
    assert Config().definitions.max_task_file_bytes == 1_048_576
    assert "[definitions]\n" in DEFAULT_CONFIG_TOML and "max_task_file_bytes" in DEFAULT_CONFIG_TOML


def test_every_problem_of_orch_toml_is_listed_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "orch.toml"
    path.write_text('[workers]\nheartbeat_seconds = "10"\n\n[bundle]\nredact = ["ok", "(bad"]\n'
                    '[rules]\ngit_clean = "git status \'x"\n[run]\nworktree = true\n')
    problems = [(p.path, p.line) for p in config_problems(path)]
    assert sorted(problems) == [("bundle.redact[1]", 5), ("rules.git_clean", 7),
                                ("run.worktree", 9), ("workers.heartbeat_seconds", 2)]


def test_the_size_limit_comes_from_orch_toml(project: Project) -> None:
    path = write_task(project, task_doc("a", description="x" * 3000))
    assert validate(project, workers=1).ok
    project.config_path.write_text("[definitions]\nmax_task_file_bytes = 2000\n")
    problems = validate(Project(project.root), workers=1).problems  # config is read once
    assert [(p.code, p.file) for p in problems] == [("file_too_large", "tasks/ws/a.json")]
    assert str(path.stat().st_size) in problems[0].message


def test_a_bad_orch_toml_refuses_load_before_the_database_is_opened(project: Project) -> None:
    write_task(project, task_doc("a"))
    before = logical_dump(project.db_path)
    project.config_path.write_text("[database]\nbusy_timeout_ms = -1\n")
    with pytest.raises(LoadError) as err:
        load(project, workers=1)
    assert [(p.code, p.file, p.path) for p in err.value.problems] == [
        ("config_invalid", "orch.toml", "database.busy_timeout_ms")]
    assert logical_dump(project.db_path) == before


# --------------------------------------------------------------------------- warnings


def test_a_task_no_worker_can_run_loads_with_warnings(project: Project) -> None:
    write_task(project, task_doc("a", worker_requirements={
        "capabilities": ["RuffLinting", "cap-gpu-001"], "min_version": "1.2.0"}))
    code, doc = orch_json("--root", str(project.root), "validate")
    assert code == 0 and doc["ok"] and "error" not in doc
    assert sorted((p["code"], p["severity"], p["path"]) for p in doc["problems"]) == [
        ("min_version_unmet", "warning", "worker_requirements.min_version"),
        ("unknown_capability", "warning", "worker_requirements.capabilities[1]")]
    code, doc = orch_json("--root", str(project.root), "load")
    assert code == 0 and doc["tasks"]["created"] == 1
    assert {p["code"] for p in doc["problems"]} == {"min_version_unmet", "unknown_capability"}


# --------------------------------------------------------------------------- other entry points


def test_a_fifo_given_as_a_path_is_refused(project: Project) -> None:
    fifo = project.tasks_dir / "ws" / "a.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    proc = orch("--root", str(project.root), "--json", "validate", str(fifo))
    assert proc.returncode == 1, proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["code"], p["file"]) for p in problems] == [("not_a_regular_file",
                                                          "tasks/ws/a.json")]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_migrate_tasks_refuses_a_fifo_and_writes_nothing(project: Project) -> None:
    v1 = write_task(project, task_doc("a", schema_version="1.0.0"))
    os.mkfifo(project.tasks_dir / "ws" / "b.json")
    text = v1.read_text()
    with pytest.raises(MigrationError, match="FIFO"):
        migrate_tasks(project.tasks_dir)
    assert v1.read_text() == text and not (project.tasks_dir / ".backups").exists()
    proc = orch("--root", str(project.root), "migrate-tasks")
    assert proc.returncode == 1 and "FIFO" in proc.stderr and "Traceback" not in proc.stderr


def test_a_symlink_to_a_task_file_inside_the_project_is_followed(project: Project) -> None:
    shared = project.root / "shared" / "a.json"
    shared.parent.mkdir()
    shared.write_text(json.dumps(task_doc("a")))
    (project.tasks_dir / "ws").mkdir()
    (project.tasks_dir / "ws" / "a.json").symlink_to(shared)
    (project.tasks_dir / "ws2").symlink_to(project.root / "shared2", target_is_directory=True)
    (project.root / "shared2").mkdir()
    (project.root / "shared2" / "b.json").write_text(json.dumps(task_doc("b", ws="ws2")))
    result = validate(project, workers=1)
    assert result.problems == [] and result.tasks == 2
