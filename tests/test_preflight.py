"""`orch validate` warns about what a run would trip over on this machine (program not on PATH,
uncommitted changes a worktree would not have, a base branch that does not exist), and
`orch init --example` writes a runnable project, never over a file, never into orch's own
checkout. All through the real console script, with real git."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from kernel.definitions.preflight import program_of

from .conftest import REPO, orch, orch_json

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def _git(root: Path, *args: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ENV}
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True, env=env).stdout


def _task(root: Path, ws: str, task_id: str, command: str, **extra: object) -> None:
    folder = root / "tasks" / ws
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": "2.0.0", "task_id": task_id, "workstream_id": ws, "name": task_id,
           "type": "custom", "execution": {"command": command}, **extra}
    (folder / f"{task_id}.json").write_text(json.dumps(doc, indent=2))


def _codes(doc: dict) -> list[tuple[str, str | None]]:
    return [(p["code"], p["file"]) for p in doc["problems"]]


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    root.mkdir()
    _git(root, "init", "-q", "-b", "trunk")
    orch("init", cwd=root, check=True)
    return root


def test_program_of_reads_the_command_as_a_worker_splits_it() -> None:
    assert program_of("ruff check .") == "ruff"
    assert program_of("'my tool' --flag") == "my tool"
    assert program_of("./scripts/run.sh x") == "./scripts/run.sh"
    assert program_of("FOO=1 make") is None          # an assignment: a shell word
    assert program_of("{root}/bin/x") is None         # a placeholder: known only at run time
    assert program_of("cd src && make") is None
    assert program_of("'unterminated") is None
    assert program_of("") is None


def test_validate_warns_about_a_program_that_is_not_on_path(tmp_path: Path) -> None:
    root = _project(tmp_path)
    _task(root, "ws", "a", "no-such-program-xyz --go")
    _task(root, "ws", "b", "no-such-program-xyz --again")
    _task(root, "ws", "c", "true")
    _task(root, "ws", "d", "./missing.sh")
    _task(root, "ws", "e", "python3 -c pass",
          validation_rules={"pre_execution": [], "post_execution": ["no_lint_errors"]})
    (root / "orch.toml").write_text((root / "orch.toml").read_text().replace(
        'no_lint_errors = "ruff check ."', 'no_lint_errors = "lint-tool-xyz ."'))
    code, doc = orch_json("validate", cwd=root)
    assert code == 0, doc      # warnings only: the definitions are valid
    found = [p for p in doc["problems"] if p["code"] == "program_not_found"]
    assert [(p["file"], p["path"]) for p in found] == [     # one per program, in file order
        ("tasks/ws/a.json", "execution.command"),
        ("tasks/ws/d.json", "execution.command"),
        ("tasks/ws/e.json", "validation_rules")], found
    by_file = {p["file"]: p for p in found}
    assert "'no-such-program-xyz'" in by_file["tasks/ws/a.json"]["message"]
    assert "(and 1 other task file)" in by_file["tasks/ws/a.json"]["message"]
    assert "[rules] no_lint_errors in orch.toml" in by_file["tasks/ws/e.json"]["message"]
    assert all(p["severity"] == "warning" and p["hint"] for p in found)


def test_validate_warns_about_uncommitted_changes_and_a_missing_base_branch(
        tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "src.py").write_text("print('hi')\n")
    _task(root, "ws", "a", "true")
    (root / "tasks" / "ws" / "workstream.json").write_text(json.dumps(
        {"schema_version": "1.0.0", "workstream_id": "ws", "base_branch": "main"}))
    code, doc = orch_json("validate", cwd=root)
    assert code == 0 and _codes(doc) == [], doc   # no commit yet: runs in the directory
    _git(root, "add", "src.py")
    _git(root, "commit", "-qm", "src")
    code, doc = orch_json("validate", cwd=root)
    # orch's own files (tasks/, orch.toml, capabilities/, .state/) are read from the root,
    # not from a worktree: uncommitted, they are no problem.
    assert _codes(doc) == [("base_branch_missing", "tasks/ws/workstream.json")], doc
    assert "'main'" in doc["problems"][0]["message"] and "'trunk'" in doc["problems"][0]["message"]
    (root / "src.py").write_text("print('changed')\n")
    (root / "new.py").write_text("")
    code, doc = orch_json("validate", cwd=root)
    assert code == 0
    dirty = [p for p in doc["problems"] if p["code"] == "uncommitted_changes"]
    assert len(dirty) == 1 and "2 paths are not committed (new.py, src.py)" in dirty[0]["message"]
    (root / "orch.toml").write_text((root / "orch.toml").read_text().replace(
        "worktrees = true", "worktrees = false"))
    code, doc = orch_json("validate", cwd=root)
    assert _codes(doc) == [], doc   # no worktrees: the run uses the directory as it is


def test_init_example_runs_as_is_and_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "ex"
    root.mkdir()
    code, doc = orch_json("init", "--example", cwd=root)
    assert code == 0, doc
    assert doc["committed"] and doc["git"].startswith("new git repository")
    assert "tasks/word-count/add-cli.json" in doc["written"]
    assert _git(root, "status", "--porcelain") == ""
    code, checked = orch_json("validate", cwd=root)
    assert code == 0 and {p["code"] for p in checked["problems"]} == {"required_file_new"}
    orch("load", cwd=root, check=True)
    run = orch("run", "--workers", "2", cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    code, show = orch_json("show", "add-word-count", cwd=root)
    output = show["attempts"][-1]["output"]
    assert output["files_modified"] == ["textstats/__init__.py", "textstats/core.py"]
    assert "word_count" in _git(root, "show", "HEAD:textstats/core.py")
    before = (root / "orch.toml").read_text()
    code, again = orch_json("init", "--example", cwd=root)
    assert code == 1 and again["error"]["code"] == "example_exists", again
    assert "never overwrites" in again["error"]["message"] and again["error"]["hint"]
    assert (root / "orch.toml").read_text() == before


def test_init_example_in_a_repository_commits_nothing_and_validate_says_so(
        tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "README").write_text("mine\n")
    _git(root, "add", "README")
    _git(root, "commit", "-qm", "mine")
    proc = orch("init", "--example", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "commit the files before `orch run`" in proc.stdout
    assert _git(root, "log", "--oneline").count("\n") == 1
    code, doc = orch_json("validate", cwd=root)
    assert "uncommitted_changes" in {p["code"] for p in doc["problems"]}


def test_init_refuses_orch_own_checkout(tmp_path: Path) -> None:
    proc = orch("--root", str(REPO), "init")
    assert proc.returncode == 1
    assert "orch's own source checkout" in proc.stderr and "mkdir ../my-project" in proc.stderr
    assert not (REPO / "orch.toml").exists() and not (REPO / ".state").exists()
