"""The DAG of a workstream drawn as SVG: stages as columns, nodes coloured by state, the critical
path highlighted, a legend. One renderer for ``orch plan --format svg`` and the DAG pages of
``orch browse``.

Public API:
    ``plan_svg(dag_doc, plan_doc, *, links=None, stages=None, max_rows=MAX_ROWS, wrap=False)
    -> str`` (a standalone SVG document); ``Links`` (where a node, its timeline and a collapsed
    stage link to); ``stage_pages(plan_doc, per_page=STAGES_PER_PAGE) -> list[(first, last)]``;
    ``STATE_COLOURS``; ``MAX_ROWS``; ``STAGES_PER_PAGE``.

Stability Guarantees:
    Inputs are the documents of ``kernel.planning.dag`` (``dag_document``, ``execution_plan``),
    read by key only. Output is deterministic for a given input and self-contained: no script,
    no external reference, colours as attributes (it renders the same in a browser, an image
    viewer or a document). Every node is a ``<g class="node state-STATE">`` carrying
    ``data-task-id``; a critical-path node also has class ``critical`` (a thick red outline
    and a star), as do the edges between consecutive critical-path tasks. A stage with more
    than ``max_rows`` tasks shows ``max_rows - 1`` of them (its critical-path task first) and
    one ``more`` box counting the rest (with ``wrap`` it is drawn whole, in several
    sub-columns). Edges are drawn between the tasks shown; an edge to a hidden task goes to
    its stage's ``more`` box. States without a colour here are drawn grey. Linear in the size
    of the graph.

Integration Points:
    ``kernel.cli.plan`` writes ``plan_svg`` for ``--format svg``; the DAG pages of ``orch
    browse`` (``kernel.observe.browse.plugin``) draw it with ``Links`` to the task rows and
    the timeline query, one page of ``STAGES_PER_PAGE`` stages at a time.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

MAX_ROWS = 30
STAGES_PER_PAGE = 12
_NODE_W, _NODE_H = 184, 26
_COL_W, _ROW_H = 244, 34
_LEFT, _TOP = 16, 78
_LABEL_CHARS = 22
_MIN_WIDTH = 860  # the legend's width
_MANY_EDGES = 150  # above this, the other lines are drawn fainter
_CRITICAL = "#d62728"
_FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""
# fill, outline, text; by task state (docs/state_machines/task_lifecycle.yaml). A state that
# is not here is drawn with _OTHER.
STATE_COLOURS: dict[str, tuple[str, str, str]] = {
    "pending": ("#f3f4f6", "#9ca3af", "#374151"),
    "queued": ("#e0f2fe", "#38bdf8", "#075985"),
    "running": ("#bfdbfe", "#2563eb", "#1e3a8a"),
    "validating": ("#e9d5ff", "#9333ea", "#581c87"),
    "retrying": ("#fed7aa", "#ea580c", "#7c2d12"),
    "completed": ("#bbf7d0", "#16a34a", "#14532d"),
    "failed": ("#fecaca", "#b91c1c", "#7f1d1d"),
    "cancelled": ("#d1d5db", "#4b5563", "#1f2937"),
}
_OTHER = ("#f5f5f4", "#a8a29e", "#44403c")


@dataclass(frozen=True)
class Links:
    """URLs for a node (its task row), its timeline, and a collapsed stage drawn whole."""

    task: Callable[[str], str]
    timeline: Callable[[str], str]
    stage: Callable[[int], str] | None = None


@dataclass
class _Layout:
    boxes: dict[str, tuple[float, float]]     # task id -> top-left of its box
    more: dict[int, tuple[float, float, int]]  # stage -> (x, y, hidden tasks)
    hidden: dict[str, int]                     # hidden task id -> its stage
    width: float
    height: float


def stage_pages(plan_doc: Mapping[str, Any],
                per_page: int = STAGES_PER_PAGE) -> list[tuple[int, int]]:
    """The stage ranges (first, last), 1-based and inclusive, of each page."""
    count = len(plan_doc["stages"])
    return [(first, min(first + per_page - 1, count))
            for first in range(1, count + 1, per_page)] or [(1, 0)]


def _shown(stage: Mapping[str, Any], on_path: set[str], max_rows: int,
           wrap: bool) -> tuple[list[str], int]:
    """The tasks drawn in a stage's column, its critical-path task on top (so the path runs
    along the top row), and how many are hidden."""
    tasks = list(stage["parallel_tasks"])
    ordered = [t for t in tasks if t in on_path] + [t for t in tasks if t not in on_path]
    if wrap or len(tasks) <= max_rows:
        return ordered, 0
    kept = ordered[: max_rows - 1]
    return kept, len(tasks) - len(kept)


def _layout(stages: Sequence[Mapping[str, Any]], on_path: set[str], max_rows: int,
            wrap: bool) -> _Layout:
    boxes: dict[str, tuple[float, float]] = {}
    more: dict[int, tuple[float, float, int]] = {}
    hidden: dict[str, int] = {}
    column = 0
    tallest = 1
    for stage in stages:
        shown, hidden_count = _shown(stage, on_path, max_rows, wrap)
        for index, task_id in enumerate(shown):
            sub, row = divmod(index, max_rows)
            boxes[task_id] = (_LEFT + (column + sub) * _COL_W, _TOP + row * _ROW_H)
        rows = min(len(shown), max_rows) + (1 if hidden_count else 0)
        tallest = max(tallest, rows)
        if hidden_count:
            more[stage["stage"]] = (_LEFT + column * _COL_W, _TOP + len(shown) * _ROW_H,
                                    hidden_count)
            hidden.update((t, stage["stage"]) for t in stage["parallel_tasks"] if t not in boxes)
        column += max(1, -(-len(shown) // max_rows))
    width = _LEFT * 2 + max(column, 1) * _COL_W - (_COL_W - _NODE_W)
    height = _TOP + tallest * _ROW_H + 112
    return _Layout(boxes, more, hidden, max(width, _MIN_WIDTH), height)


def _label(task_id: str, critical: bool) -> str:
    text = ("★ " if critical else "") + task_id
    limit = _LABEL_CHARS + (2 if critical else 0)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node(task: Mapping[str, Any], x: float, y: float, critical: bool,
          links: Links | None) -> str:
    task_id, state = str(task["task_id"]), str(task["status"])
    fill, stroke, ink = STATE_COLOURS.get(state, _OTHER)
    classes = f"node state-{escape(state)}" + (" critical" if critical else "")
    outline = (f'stroke="{_CRITICAL}" stroke-width="3"' if critical
               else f'stroke="{stroke}" stroke-width="1.2"')
    tip = f"{task_id}: {state}" + (" (critical path)" if critical else "")
    if task.get("name") and task["name"] != task_id:
        tip += f"\n{task['name']}"
    weight = ' font-weight="bold"' if critical else ""
    box = (f'<rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="5" fill="{fill}" '
           f'{outline}/><text x="{x + 8}" y="{y + 17}" font-size="12" fill="{ink}" {_FONT}'
           f'{weight}>'
           f"{escape(_label(task_id, critical))}</text>")
    clock = _clock(x + _NODE_W - 13, y + _NODE_H / 2, ink)
    if links is not None:
        box = f'<a class="task-link" href="{escape(links.task(task_id))}">{box}</a>'
        clock = (f'<a class="timeline-link" href="{escape(links.timeline(task_id))}">'
                 f"<title>timeline of {escape(task_id)}</title>{clock}</a>")
    return (f'<g class="{classes}" data-task-id="{escape(task_id)}" data-state="{escape(state)}">'
            f"<title>{escape(tip)}</title>{box}{clock}</g>")


def _clock(cx: float, cy: float, ink: str) -> str:
    """A small clock: the link to a task's timeline (drawn, so no font needs a glyph)."""
    return (f'<rect x="{cx - 9}" y="{cy - 9}" width="18" height="18" fill="#ffffff" '
            f'fill-opacity="0"/><circle cx="{cx}" cy="{cy}" r="6" fill="#ffffff" '
            f'stroke="{ink}" stroke-width="1.3"/><path d="M{cx},{cy - 3.5} V{cy} H{cx + 3}" '
            f'fill="none" stroke="{ink}" stroke-width="1.3"/>')


def _more(stage: int, x: float, y: float, count: int, links: Links | None) -> str:
    box = (f'<rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="5" fill="#ffffff" '
           f'stroke="#6b7280" stroke-dasharray="4 3"/><text x="{x + 8}" y="{y + 17}" '
           f'font-size="12" fill="#374151" {_FONT}>+{count} more in stage {stage}</text>')
    if links is not None and links.stage is not None:
        box = f'<a class="stage-link" href="{escape(links.stage(stage))}">{box}</a>'
    return f'<g class="more" data-stage="{stage}" data-hidden="{count}">{box}</g>'


def _edge(start: tuple[float, float], end: tuple[float, float], critical: bool,
          faint: bool = False) -> str:
    (x1, y1), (x2, y2) = start, end
    x1, y1, y2 = x1 + _NODE_W, y1 + _NODE_H / 2, y2 + _NODE_H / 2
    bend = max((x2 - x1) / 2, 24)
    style = (f'stroke="{_CRITICAL}" stroke-width="3"' if critical
             else f'stroke="#9ca3af" stroke-width="1" stroke-opacity="{0.3 if faint else 0.7}"')
    return (f'<path class="edge{" critical" if critical else ""}" fill="none" {style} '
            f'd="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"/>')


def _edges(dag_doc: Mapping[str, Any], layout: _Layout, path_edges: set[tuple[str, str]]
           ) -> list[str]:
    def anchor(task_id: str) -> tuple[float, float] | None:
        if task_id in layout.boxes:
            return layout.boxes[task_id]
        stage = layout.hidden.get(task_id)
        return None if stage is None else layout.more[stage][:2]

    pairs: dict[tuple[tuple[float, float], tuple[float, float]], bool] = {}
    for edge in dag_doc["edges"]:
        start, end = anchor(edge["from"]), anchor(edge["to"])
        if start is None or end is None or start[0] >= end[0]:
            continue
        critical = (edge["from"], edge["to"]) in path_edges
        pairs[(start, end)] = pairs.get((start, end), False) or critical
    faint = len(pairs) > _MANY_EDGES
    plain = [_edge(s, e, False, faint) for (s, e), hot in pairs.items() if not hot]
    return plain + [_edge(s, e, True) for (s, e), hot in pairs.items() if hot]  # path on top


def _header(dag_doc: Mapping[str, Any], plan_doc: Mapping[str, Any],
            stages: Sequence[Mapping[str, Any]], layout: _Layout) -> list[str]:
    total = len(plan_doc["stages"])
    window = ""
    if stages and len(stages) < total:
        window = f" · stages {stages[0]['stage']}–{stages[-1]['stage']} of {total}"
    path = plan_doc["critical_path_tasks"]
    title = (f"{dag_doc['workstream_id']}: {len(dag_doc['nodes'])} tasks in {total} stages · "
             f"critical path {len(path)} tasks, ~{round(plan_doc['critical_path_duration'])} s"
             + window)
    out = [f'<text x="{_LEFT}" y="24" font-size="16" font-weight="bold" fill="#111827" {_FONT}>'
           f"{escape(title)}</text>"]
    for stage in stages:
        xs = [layout.boxes[t][0] for t in stage["parallel_tasks"] if t in layout.boxes]
        x = min(xs) if xs else _LEFT
        weight = ' font-weight="bold"' if stage["critical_path"] else ""
        colour = _CRITICAL if stage["critical_path"] else "#4b5563"
        out.append(f'<text class="stage" x="{x}" y="{_TOP - 14}" font-size="12" fill="{colour}"'
                   f'{weight} {_FONT}>Stage {stage["stage"]} · '
                   f'{len(stage["parallel_tasks"])} task'
                   f'{"" if len(stage["parallel_tasks"]) == 1 else "s"}</text>')
    return out


def _legend(y: float) -> list[str]:
    """Three rows: the state colours; the critical path; the clock and the lines."""
    text = f'font-size="12" fill="#374151" {_FONT}'
    out = [f'<g class="legend"><text x="{_LEFT}" y="{y}" {text} font-weight="bold">Legend'
           "</text>"]
    x = _LEFT + 60
    for state, (fill, stroke, _) in STATE_COLOURS.items():
        out.append(f'<rect x="{x}" y="{y - 12}" width="16" height="16" rx="3" fill="{fill}" '
                   f'stroke="{stroke}"/><text x="{x + 22}" y="{y + 1}" {text}>{state}</text>')
        x += 36 + 7 * len(state)
    x = _LEFT + 60
    out.append(f'<rect x="{x}" y="{y + 12}" width="16" height="16" rx="3" fill="#fff" '
               f'stroke="{_CRITICAL}" stroke-width="3"/><text x="{x + 22}" y="{y + 25}" {text}>'
               "★ the critical path: the longest chain of estimated durations</text>")
    out.append(_clock(x + 8, y + 44, "#374151"))
    out.append(f'<text x="{x + 22}" y="{y + 49}" {text}>the task\'s timeline · a line runs '
               "from a task to a task that depends on it</text></g>")
    return out


def plan_svg(dag_doc: Mapping[str, Any], plan_doc: Mapping[str, Any], *,
             links: Links | None = None, stages: tuple[int, int] | None = None,
             max_rows: int = MAX_ROWS, wrap: bool = False) -> str:
    """The DAG as a standalone SVG document; ``stages`` (first, last) draws a window of
    stages (1-based, inclusive), ``wrap`` draws tall stages whole in several sub-columns."""
    chosen = [s for s in plan_doc["stages"]
              if stages is None or stages[0] <= s["stage"] <= stages[1]]
    path = list(plan_doc["critical_path_tasks"])
    on_path = set(path)
    layout = _layout(chosen, on_path, max(2, max_rows), wrap)
    body = _header(dag_doc, plan_doc, chosen, layout)
    body += _edges(dag_doc, layout, set(itertools.pairwise(path)))
    nodes = {n["task_id"]: n for n in dag_doc["nodes"]}
    body += [_node(nodes[t], x, y, t in on_path, links) for t, (x, y) in layout.boxes.items()]
    body += [_more(stage, x, y, count, links) for stage, (x, y, count) in layout.more.items()]
    if not chosen:
        body.append(f'<text x="{_LEFT}" y="{_TOP}" font-size="13" fill="#374151" {_FONT}>'
                    "No tasks in this workstream.</text>")
    body += _legend(layout.height - 68)
    width, height = round(layout.width), round(layout.height)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="orch-dag" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" '
            f'data-workstream="{escape(str(dag_doc["workstream_id"]))}">'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
            + "".join(body) + "</svg>\n")
