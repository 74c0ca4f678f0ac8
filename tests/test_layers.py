"""The house rules, enforced: the import rule between the layers, no import cycle, and the writer
rule (which modules may change a state or write an event).

The layers, bottom to top (docs/execution_model/OVERVIEW.md draws them):

    base <- store <- planning <- definitions <- observe <- runtime <- maintain <- cli, demo, bench

A module imports only from its own package or from packages below it. Every import counts,
the deferred ones inside functions too: a deferred import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parent.parent
KERNEL = REPO / "kernel"

LAYERS = ["base", "store", "planning", "definitions", "observe", "runtime", "maintain", "top"]
TOP = {"cli", "demo", "bench"}

# The statements that change a task's, a workstream's or a worker's state, or write an event, and
# the only modules allowed to hold them. machines.transition_in_tx is the one state writer (the
# triggers check every move); store.events.emit_event_in_tx the one event writer for events that
# are not transitions; store.queries holds the set-based moves (queue, requeue), which the same
# triggers check row by row.
WRITES = re.compile(
    r"UPDATE\s+(task|workstream|worker)\s+SET\s+(?:(?!WHERE)[^;\"'])*?\bstate\s*="
    r"|INSERT\s+INTO\s+event\b",
    re.IGNORECASE,
)
WRITERS = {"kernel.store.machines", "kernel.store.events", "kernel.store.queries"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root (kernel, kernel.__version__) belongs to every layer
    if parts[1] in TOP or parts[1] == "__main__":
        return "top"
    if parts[1] in LAYERS:
        return parts[1]
    return "?"


def imports(path: Path, root: Path) -> set[str]:
    """Every kernel module ``path`` imports, anywhere in the file."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "kernel")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kernel":
                continue
            for alias in node.names:
                # "from kernel.runtime import claims" imports the module kernel.runtime.claims
                candidate = f"{target}.{alias.name}"
                where = root.parent / Path(*candidate.split("."))
                is_module = where.with_suffix(".py").exists() or where.is_dir()
                found.add(candidate if is_module else target)
    found.discard(module)
    return found


def graph(root: Path) -> nx.DiGraph:
    g: nx.DiGraph = nx.DiGraph()
    for path in sorted(root.rglob("*.py")):
        if "_data" in path.parts or path.is_relative_to(root / "demo" / "project"):
            continue  # the example project of `orch demo` is data, not kernel code
        source = module_name(path, root)
        g.add_node(source)
        for target in imports(path, root):
            g.add_edge(source, target)
    return g


def layer_violations(root: Path) -> list[str]:
    problems = []
    for source, target in sorted(graph(root).edges):
        src, dst = layer_of(source), layer_of(target)
        if src == "?" or dst == "?":
            problems.append(f"{source} -> {target}: a module outside the layers")
            continue
        if src is None or dst is None or src == "top":
            continue
        if LAYERS.index(dst) > LAYERS.index(src):
            problems.append(f"{source} ({src}) imports {target} ({dst}), a layer above it")
    return problems


def cycles(root: Path) -> list[list[str]]:
    g = graph(root)
    # a package's __init__ re-exporting its own modules is not a cycle of concepts
    g.remove_edges_from([(s, t) for s, t in list(g.edges) if t.startswith(s + ".")])
    return [sorted(c) for c in nx.simple_cycles(g)]


def writer_violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        if module in WRITERS or module.startswith("kernel.bench."):
            continue  # the bench measures raw SQLite on its own scratch databases
        text = path.read_text()
        for match in WRITES.finditer(text):
            number = text.count("\n", 0, match.start()) + 1
            problems.append(f"{module}:{number}: {match.group(0)[:60]}")
    return problems


def test_every_module_belongs_to_a_layer() -> None:
    stray = [p.name for p in KERNEL.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert stray == [], f"modules outside the layers: {stray}"
    packages = sorted(p.name for p in KERNEL.iterdir()
                      if p.is_dir() and (p / "__init__.py").exists())
    assert set(packages) == (set(LAYERS) - {"top"}) | TOP


def test_imports_follow_the_layers() -> None:
    assert layer_violations(KERNEL) == []


def test_no_import_cycle() -> None:
    assert cycles(KERNEL) == []


def test_only_the_writers_change_states_and_write_events() -> None:
    assert writer_violations(KERNEL) == []


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "kernel"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return root


def test_a_planted_upward_import_is_caught_even_when_deferred(tmp_path: Path) -> None:
    root = _plant(tmp_path, {
        "base/clock.py": "def now():\n    from kernel.runtime import worker\n    return worker\n",
        "runtime/worker.py": "from kernel.base import clock\n",
    })
    assert layer_violations(root) == [
        "kernel.base.clock (base) imports kernel.runtime.worker (runtime), a layer above it"]


def test_a_planted_cycle_is_caught(tmp_path: Path) -> None:
    root = _plant(tmp_path, {
        "store/db.py": "def f():\n    from kernel.store import machines\n",
        "store/machines.py": "from kernel.store import db\n",
    })
    assert cycles(root) == [["kernel.store.db", "kernel.store.machines"]]


def test_a_planted_state_write_is_caught(tmp_path: Path) -> None:
    root = _plant(tmp_path, {
        "runtime/sneaky.py": 'SQL = ("UPDATE task SET state = \'queued\' "\n       "WHERE 1")\n'
                             'EVENT = """INSERT INTO event (seq) VALUES (1)"""\n',
        "store/machines.py": 'SQL = "UPDATE task SET state = ?"\n',
    })
    assert [p.split(":")[0] + ":" + p.split(":")[1] for p in writer_violations(root)] == [
        "kernel.runtime.sneaky:1", "kernel.runtime.sneaky:3"]
