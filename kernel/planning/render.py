"""Renderers for the DAG and execution-plan documents: a terminal table, Mermaid and Graphviz.

Public API:
    plan_table(plan, console=None) -> str | None   rich table, fits an 80-column terminal
    plan_mermaid(dag_doc, plan=None) -> str         ``flowchart TD`` source
    plan_dot(dag_doc, plan=None) -> str             Graphviz ``digraph`` source
    format_duration(seconds) -> str                 "2m 30s", "1h 5m", "45s"
    join_middle(items, width, sep=" → ") -> str     joined, cut in the middle to fit

Stability Guarantees:
    Inputs are the documents of kernel/planning/dag.py (``dag_document``, ``execution_plan``), read
    by
    key only, so JSON loaded back from ``.state/`` works as well as fresh dicts. Output is
    deterministic for a given input. Mermaid node ids are generated (``n0``, ``n1`` … in node
    order) and the task id is the quoted label, so any task id is safe; DOT ids are the task ids,
    quoted and escaped. The critical path is drawn red and bold in both formats. All renderers
    are linear in the size of the graph; there is no node cap (very large Mermaid graphs may
    exceed a viewer's own limits, which is the viewer's business).

Integration Points:
    The ``orch plan`` / ``orch dag`` CLI commands print ``plan_table`` and write the Mermaid or
    DOT text on request; docs may embed the Mermaid output.

Dependencies:
    rich.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

TABLE_WIDTH = 80
# Characters of task ids shown per stage row before "+N more"; leaves room for the other
# columns and the borders at 80 columns.
_TASKS_BUDGET = 44
CRITICAL_MARK = "★"
_CRITICAL_COLOR = "#d62728"


def format_duration(seconds: float) -> str:
    """Two largest units, rounded to whole seconds: "45s", "2m 30s", "1h 5m", "3d 4h"."""
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        value, total = divmod(total, size)
        if value or parts:
            parts.append(f"{value}{unit}")
    return " ".join(parts[:2])


def join_middle(items: Sequence[str], width: int, sep: str = " → ") -> str:
    """``sep``-joined items; when too long, keep both ends around "… (+N)" (at least one each)."""
    full = sep.join(items)
    if len(full) <= width or len(items) <= 2:
        return full

    def cut(kept: int) -> str:
        head, tail = (kept + 1) // 2, kept // 2
        hidden = f"… (+{len(items) - kept})"
        return sep.join([*items[:head], hidden, *items[len(items) - tail :]])

    best = cut(2)
    # Stops at the first overflow, so only a handful of candidates are ever built.
    for kept in range(3, len(items)):
        candidate = cut(kept)
        if len(candidate) > width:
            break
        best = candidate
    return best


def _task_cell(task_ids: Sequence[str]) -> str:
    shown: list[str] = []
    used = 0
    for task_id in task_ids:
        rest = len(task_ids) - len(shown) - 1
        more = len(f", +{rest} more") if rest else 0
        if shown and used + 2 + len(task_id) + more > _TASKS_BUDGET:
            break
        used += len(task_id) + (2 if shown else 0)
        shown.append(task_id)
    hidden = len(task_ids) - len(shown)
    return ", ".join(shown) + (f", +{hidden} more" if hidden else "")


def plan_table(plan: Mapping[str, Any], console: Console | None = None) -> str | None:
    """Print the plan as a table on ``console``; without one, return the rendered text."""
    stages = plan["stages"]
    n_tasks = sum(len(s["parallel_tasks"]) for s in stages)
    # Text, not str, wherever data goes in: "[x]" in an id must not be read as rich markup.
    title = f"Execution plan {plan['workstream_id']}: {len(stages)} stages, {n_tasks} tasks"
    table = Table(
        title=Text(title),
        box=box.SIMPLE_HEAD,
        expand=False,
    )
    table.add_column("Stage", justify="right", no_wrap=True)
    table.add_column("Tasks", overflow="ellipsis", no_wrap=True, max_width=_TASKS_BUDGET)
    table.add_column("Par.", justify="right", no_wrap=True)
    table.add_column("Est.", justify="right", no_wrap=True)
    table.add_column("CP", justify="center", no_wrap=True)
    for stage in stages:
        critical = bool(stage["critical_path"])
        table.add_row(
            str(stage["stage"]),
            Text(_task_cell(stage["parallel_tasks"])),
            str(stage["max_parallelism"]),
            format_duration(stage["estimated_duration_seconds"]),
            CRITICAL_MARK if critical else "",
            style="bold" if critical else None,
        )
    label = "Critical path: "
    path = join_middle(plan["critical_path_tasks"], TABLE_WIDTH - len(label)) or "(empty)"
    footer = (
        f"{label}{path}\n"
        f"Critical path duration:   {format_duration(plan['critical_path_duration'])}\n"
        f"Total estimated duration: {format_duration(plan['total_estimated_duration'])}\n"
        f"{CRITICAL_MARK} = stage holds a critical-path task; Par. = lanes used"
    )
    target = console or Console(
        file=io.StringIO(), width=TABLE_WIDTH, color_system=None, force_terminal=False
    )
    target.print(table)
    target.print(footer, markup=False, highlight=False, soft_wrap=False)
    if console is not None:
        return None
    out = target.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def _critical(plan: Mapping[str, Any] | None) -> tuple[list[str], set[tuple[str, str]]]:
    path = list(plan["critical_path_tasks"]) if plan else []
    return path, set(itertools.pairwise(path))


def _mermaid_label(text: str) -> str:
    # Mermaid entity codes inside a quoted label; '#' first so the others are not re-escaped.
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text.replace("\n", " ")


def _ids(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    return [node["task_id"] for node in nodes]


def plan_mermaid(dag_doc: Mapping[str, Any], plan: Mapping[str, Any] | None = None) -> str:
    """Mermaid flowchart; critical-path nodes get class ``critical``, its edges a linkStyle."""
    task_ids = _ids(dag_doc["nodes"])
    short = {task_id: f"n{i}" for i, task_id in enumerate(task_ids)}
    path, path_edges = _critical(plan)
    lines = ["flowchart TD"]
    lines += [f'    {short[t]}["{_mermaid_label(t)}"]' for t in task_ids]
    hot: list[str] = []
    for index, edge in enumerate(dag_doc["edges"]):
        lines.append(f"    {short[edge['from']]} --> {short[edge['to']]}")
        if (edge["from"], edge["to"]) in path_edges:
            hot.append(str(index))
    lines.append(f"    classDef critical fill:#fde0e0,stroke:{_CRITICAL_COLOR},stroke-width:3px")
    if path:
        lines.append(f"    class {','.join(short[t] for t in path)} critical")
    if hot:
        lines.append(f"    linkStyle {','.join(hot)} stroke:{_CRITICAL_COLOR},stroke-width:3px")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    # Backslashes first: DOT labels treat "\n", "\l", "\N" … as escapes.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def plan_dot(dag_doc: Mapping[str, Any], plan: Mapping[str, Any] | None = None) -> str:
    """Graphviz digraph; stages become ``rank=same`` rows; the critical path is red and bold."""
    path, path_edges = _critical(plan)
    on_path = set(path)
    lines = [
        f"digraph {_dot_quote('dag ' + str(dag_doc['workstream_id']))} {{",
        "    rankdir=TB;",
        '    node [shape=box, fontname="Helvetica"];',
    ]
    for task_id in _ids(dag_doc["nodes"]):
        style = f', color="{_CRITICAL_COLOR}", fontcolor="{_CRITICAL_COLOR}", style=bold'
        lines.append(
            f"    {_dot_quote(task_id)} [label={_dot_quote(task_id)}"
            f"{style if task_id in on_path else ''}];"
        )
    for edge in dag_doc["edges"]:
        attrs = (
            f' [color="{_CRITICAL_COLOR}", penwidth=2.5, style=bold]'
            if (edge["from"], edge["to"]) in path_edges
            else ""
        )
        lines.append(f"    {_dot_quote(edge['from'])} -> {_dot_quote(edge['to'])}{attrs};")
    for stage in plan["stages"] if plan else ():
        members = " ".join(_dot_quote(t) for t in stage["parallel_tasks"])
        lines.append(f"    {{ rank=same; {members} }}")
    lines.append("}")
    return "\n".join(lines) + "\n"
