"""The README's and docs/examples' commands, run as written, in order, on a fresh project (as
sqlite-utils tests its docs): the first project of the README from a shell where orch is not on
PATH until the README's own `. .venv/bin/activate`, and the annotated example's console session,
whose shown output must appear in what the commands print."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

README = REPO / "README.md"
EXAMPLE = REPO / "docs" / "examples" / "README.md"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Docs Reader", "GIT_AUTHOR_EMAIL": "reader@example.invalid",
                "GIT_COMMITTER_NAME": "Docs Reader",
                "GIT_COMMITTER_EMAIL": "reader@example.invalid"}


def _block_after(text: str, heading: str, lang: str) -> str:
    """The first ```lang block after ``heading``."""
    section = text[text.index(heading):]
    match = re.search(rf"^```{lang}\n(.*?)^```", section, flags=re.M | re.S)
    assert match, f"no ```{lang} block after {heading!r}"
    return match.group(1)


def _bare_env() -> dict[str, str]:
    """A shell as a new user has it: orch is not on PATH, git is, and nothing of this test
    session's virtual environment leaks in."""
    git = os.path.dirname(shutil.which("git") or "/usr/bin/git")
    path = os.pathsep.join(dict.fromkeys([git, "/usr/local/bin", "/usr/bin", "/bin"]))
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONPATH", "ORCH_ROOT"} and not k.startswith("GIT_")}
    return {**env, **GIT_IDENTITY, "PATH": path, "COLUMNS": "120"}


def test_the_readme_first_project_runs_as_written(tmp_path: Path) -> None:
    script = _block_after(README.read_text(encoding="utf-8"), "## A first project", "sh")
    assert "orch init --example" in script and "orch run" in script
    checkout = tmp_path / "orch"          # stands for the checkout orch was installed in
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    env = _bare_env()
    assert subprocess.run(["bash", "-c", "command -v orch"], env=env,
                          capture_output=True).returncode != 0, "orch is on PATH already"
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "all tasks completed: 6 completed" in out
    project = tmp_path / "my-project"
    assert (project / ".state" / "kernel.db").exists()
    assert "orch: merge workstream word-count" in out      # git log, the README's last line
    assert "Traceback" not in out
    assert not (checkout / "tasks").exists()   # nothing was written into the orch checkout


def _console_session(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) for each ``$ `` line of the block."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    return steps


def test_the_example_session_runs_as_written(tmp_path: Path) -> None:
    block = _block_after(EXAMPLE.read_text(encoding="utf-8"), "## Try it", "console")
    steps = _console_session(block.replace("/path/to/orch", str(REPO)))
    assert [c.split()[0] for c, _ in steps][:2] == ["mkdir", "cp"]
    env = _bare_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"   # orch on PATH
    cwd = tmp_path
    for command, shown in steps:
        # Each line runs in a shell that starts where the previous one ended (cd carries over).
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", f"{command}\npwd"], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=300)
        out = proc.stdout
        assert proc.returncode == 0, f"$ {command}\n{out}{proc.stderr}"
        *printed, where = out.rstrip("\n").split("\n")
        cwd = Path(where)
        for line in shown:
            assert line in printed, f"$ {command}: the docs show {line!r}; it printed:\n{out}"
    assert (cwd / ".state" / "kernel.db").exists() and cwd.name == "greet"
