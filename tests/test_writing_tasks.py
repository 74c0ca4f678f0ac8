"""docs/writing-tasks.md works as written: every file it shows with its path is copied into a
fresh project, which validates without an error and loads; its worked example's commands run
the release workstream to completion with the effective definitions the page describes; its
`orch new` lines run in order in another project. The real CLI, real git."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from .conftest import git, orch
from .e2e import FAST_TOML, states

PAGE = Path(__file__).resolve().parent.parent / "docs" / "writing-tasks.md"
BLOCK = re.compile(r"^```(\w+)(?: (\S+))?\n(.*?)^```$", re.M | re.S)


def blocks() -> list[tuple[str, str | None, str]]:
    """(language, path or None, text) of every fenced block of the page."""
    return [(m[1], m[2], m[3]) for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]


def example_files() -> dict[str, str]:
    files = {path: text for lang, path, text in blocks() if path and lang in ("json", "yaml")}
    assert len(files) >= 8 and all(p.startswith("tasks/") for p in files), files
    assert all("schema_version" in text and "schema_url" in text for text in files.values())
    return files


def shell_lines(*, new: bool) -> list[list[str]]:
    """The commands of the ``sh`` blocks: those made of `orch new` lines, or the others."""
    found = []
    for lang, _, text in blocks():
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lang == "sh" and all(ln.startswith("orch new ") for ln in lines) == new:
            found += [shlex.split(ln) for ln in lines]
    assert found and all(argv[0] == "orch" for argv in found)
    return found


def fresh_repo(root: Path) -> Path:
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "orch.toml").write_text(FAST_TOML.format(worktrees="true"))
    orch("--root", str(root), "init", check=True)
    return root


def commit(root: Path) -> None:
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "files")


def test_the_example_files_validate_and_load(tmp_path: Path) -> None:
    root = fresh_repo(tmp_path / "p")
    for rel, text in example_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = orch("--root", str(root), "--json", "validate")
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["counts"]["errors"] == 0, result
    assert result["counts"]["tasks"] == len([p for p in example_files()
                                             if not p.endswith(("workstream.yaml",
                                                                "workstream.json"))])
    assert orch("--root", str(root), "load").returncode == 0


def test_the_worked_example_runs_as_described(tmp_path: Path) -> None:
    root = fresh_repo(tmp_path / "p")
    for rel, text in example_files().items():
        if rel.startswith("tasks/release/"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    commit(root)
    for argv in shell_lines(new=False):
        proc = orch("--root", str(root), *argv[1:])
        assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    proc = orch("--root", str(root), "--json", "show", "python-version")
    shown = json.loads(proc.stdout)
    execution = shown["definition"]["execution"]
    assert (execution["timeout_seconds"], execution["max_retries"]) == (30, 1)
    assert shown["definition"]["resource_requirements"] == {"cpu_cores": 1}
    assert shown["definition"]["validation_rules"]["pre_execution"] == []
    assert states(root) == dict.fromkeys(("greet", "python-version", "stamp"), "completed")
    logs = {p.name: p.read_text() for p in (root / ".state" / "logs").glob("*.log")}
    assert "hello from orch" in logs["greet.log"]
    assert "Python 3." in logs["python-version.log"]
    assert "home: " in logs["stamp.log"]


def test_the_orch_new_lines_run_in_order(tmp_path: Path) -> None:
    root = fresh_repo(tmp_path / "p")
    written = []
    for argv in shell_lines(new=True):
        proc = orch("--root", str(root), *argv[1:])
        assert proc.returncode == 0, (argv, proc.stderr)
        written.append(proc.stdout.strip())
    assert all((root / path).is_file() for path in written)
    assert any(path.endswith(".yaml") for path in written)
    proc = orch("--root", str(root), "--json", "validate")
    assert json.loads(proc.stdout)["counts"]["errors"] == 0
