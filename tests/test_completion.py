"""Shell completion: `orch completion bash|zsh|fish` prints click's script, and completing a
TASK or WS reads the ids from the project's database. Run for real: bash sources the script
and calls its completion function, which runs the installed `orch` with click's
``_ORCH_COMPLETE`` protocol."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import make_project, task

BIN = Path(sys.executable).parent
ORCH = str(BIN / "orch")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("completion") / "p", [
        task("lint"), task("lint-docs"), task("unit-tests"),
        task("build", ws="release")])


def _bash_complete(root: Path, words: list[str]) -> list[str]:
    """What bash offers for ``words`` (the last one being completed), through the function
    `orch completion bash` defines, in the project's directory."""
    script = (
        'eval "$(orch completion bash)"\n'
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_orch_completion orch\n"   # bash passes the command name as $1
        'printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_task_ids_from_the_database(root: Path) -> None:
    assert _bash_complete(root, ["orch", "show", "lin"]) == ["lint", "lint-docs"]
    assert _bash_complete(root, ["orch", "retry", "lint", "u"]) == ["unit-tests"]
    assert _bash_complete(root, ["orch", "why", ""]) == ["build", "lint", "lint-docs",
                                                         "unit-tests"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_workstreams_commands_and_options(root: Path) -> None:
    assert _bash_complete(root, ["orch", "run", "--workstream", "r"]) == ["release"]
    assert _bash_complete(root, ["orch", "status", "--workstream", ""]) == ["release", "ws"]
    assert "status" in _bash_complete(root, ["orch", "sta"])
    assert "--workstream" in _bash_complete(root, ["orch", "events", "--w"])


def test_the_protocol_with_root_and_without_a_project(root: Path, tmp_path: Path) -> None:
    """click's environment protocol as the script uses it; --root on the line is honoured;
    outside a project nothing is offered and nothing is printed on stderr."""
    env = {**os.environ, "_ORCH_COMPLETE": "bash_complete",
           "COMP_WORDS": f"orch --root {root} show unit", "COMP_CWORD": "4"}
    proc = subprocess.run([ORCH], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["plain,unit-tests"]
    env["COMP_WORDS"], env["COMP_CWORD"] = "orch show unit", "2"
    proc = subprocess.run([ORCH], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr == ""


def test_completion_scripts_for_each_shell() -> None:
    for shell, marker in (("bash", "complete -o nosort -F _orch_completion orch"),
                          ("zsh", "compdef _orch_completion orch"),
                          ("fish", "complete --no-files --command orch")):
        proc = subprocess.run([ORCH, "completion", shell], capture_output=True, text=True)
        assert proc.returncode == 0 and marker in proc.stdout, (shell, proc.stdout)
        doc = json.loads(subprocess.run([ORCH, "--json", "completion", shell],
                                        capture_output=True, text=True).stdout)
        assert doc["shell"] == shell and marker in doc["script"] and doc["install"]
    proc = subprocess.run([ORCH, "completion", "tcsh"], capture_output=True, text=True)
    assert proc.returncode == 2 and "bash | zsh | fish" in proc.stderr
