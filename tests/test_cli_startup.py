"""Start-up: the lazy command table cannot drift from the real commands, `orch --help` lists
exactly what an eagerly built group would, and `orch --version`, `orch --help` and `orch
status` import no heavy module (structural checks on sys.modules; never a time budget)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import kernel.cli
from kernel.cli import LAZY_COMMANDS, cli
from kernel.cli.common import LazyGroup
from kernel.store.project import init_project

# Never on the path of --version / --help (nor, for most of them, of status).
HEAVY = ("networkx", "pydantic", "pydantic_core", "jsonschema", "yaml", "prometheus_client",
         "rich", "datasette", "sqlite_utils")


def real_commands() -> dict[str, tuple[str, click.Command]]:
    """Every command of every kernel.cli module's COMMANDS: name -> (module, command)."""
    found: dict[str, tuple[str, click.Command]] = {}
    for info in pkgutil.iter_modules(kernel.cli.__path__):
        module = importlib.import_module(f"kernel.cli.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            assert command.name not in found, f"{command.name} is declared twice"
            found[str(command.name)] = (module.__name__, command)
    return found


def test_every_lazy_command_resolves_to_the_real_one_with_its_short_help() -> None:
    real = real_commands()
    assert sorted(LAZY_COMMANDS) == sorted(real), "LAZY_COMMANDS and the COMMANDS lists differ"
    for name, (target, short) in LAZY_COMMANDS.items():
        module_name, command = real[name]
        assert target.partition(":")[0] == module_name, name
        loaded = cli.load_command(name)
        assert loaded is command, f"{target} is not the command {name!r} of {module_name}"
        assert loaded.name == name and not loaded.hidden
        assert short == command.get_short_help_str(limit=10**6), (
            f"the short help of {name!r} in LAZY_COMMANDS is not the command's")


def eager_group() -> click.Group:
    return click.Group("orch", commands={name: cmd for name, (_, cmd) in real_commands().items()})


def commands_section(group: click.Group, width: int) -> str:
    formatter = click.HelpFormatter(width=width)
    group.format_commands(click.Context(group, info_name="orch"), formatter)
    return formatter.getvalue()


@pytest.mark.parametrize("width", [40, 60, 80, 100, 200])
def test_help_lists_the_same_lines_as_an_eager_group_without_importing(width: int) -> None:
    lazy = LazyGroup("orch", lazy_commands=LAZY_COMMANDS)
    expected = commands_section(eager_group(), width)
    assert "status" in expected and "migrate-tasks" in expected
    assert commands_section(lazy, width) == expected
    assert lazy.commands == {}  # listing imported nothing
    lazy.get_command(click.Context(lazy), "status")  # one loaded, the others not yet
    assert set(lazy.commands) == {"status"}
    assert commands_section(lazy, width) == expected


def test_an_unknown_command_fails_as_with_an_eager_group() -> None:
    """The same message, "Did you mean" included where click offers one."""
    messages = []
    for group in (LazyGroup("orch", lazy_commands=LAZY_COMMANDS), eager_group()):
        with pytest.raises(click.UsageError) as caught:
            group.main(["stat"], prog_name="orch", standalone_mode=False)
        messages.append(caught.value.format_message())
    assert messages[0] == messages[1]
    assert messages[0].startswith("No such command 'stat'.")


def test_load_all_gives_every_command() -> None:
    group = LazyGroup("orch", lazy_commands=LAZY_COMMANDS)
    assert group.load_all() == {name: cmd for name, (_, cmd) in real_commands().items()}


PROBE = """
import json, sys
from kernel.cli import run
code = run(sys.argv[1:])
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported_by(args: list[str], cwd: Path) -> set[str]:
    """The modules a fresh interpreter holds after running `orch ARGS` in-process."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stdout + proc.stderr
    return set(result["modules"])


def heavy_in(modules: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in heavy)


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_version_and_help_import_click_and_the_cli_package_only(args: list[str],
                                                                tmp_path: Path) -> None:
    modules = imported_by(args, tmp_path)
    assert heavy_in(modules) == []
    kernel_modules = sorted(m for m in modules if m.startswith("kernel."))
    # The table and the shared plumbing; no command module, nothing of the layers below but
    # the errors.
    assert [m for m in kernel_modules
            if not m.startswith(("kernel.cli", "kernel.base"))] == [], kernel_modules
    assert [m for m in kernel_modules if m.startswith("kernel.cli.")] == ["kernel.cli.common"]


def test_a_commands_own_help_imports_only_its_module(tmp_path: Path) -> None:
    modules = imported_by(["status", "--help"], tmp_path)
    assert sorted(m for m in modules if m.startswith("kernel.cli.")) == [
        "kernel.cli.common", "kernel.cli.operator"]
    assert heavy_in(modules, ("networkx", "jsonschema", "prometheus_client")) == []


def test_status_imports_neither_the_planner_nor_the_definition_models(tmp_path: Path) -> None:
    init_project(tmp_path)
    modules = imported_by(["status"], tmp_path)
    assert heavy_in(modules, ("networkx", "jsonschema", "prometheus_client", "datasette")) == []
    assert sorted(m for m in modules if m.startswith(("kernel.definitions", "kernel.planning",
                                                      "kernel.cli."))) == [
        "kernel.cli.common", "kernel.cli.operator"]


def test_python_m_kernel_version_imports_nothing_heavy(tmp_path: Path) -> None:
    """`python -m kernel` is how `orch run` starts its workers; -X importtime lists every
    module the interpreter imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kernel", "--version"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "version" in proc.stdout
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    assert "kernel.cli" in names
    assert heavy_in(names) == []
