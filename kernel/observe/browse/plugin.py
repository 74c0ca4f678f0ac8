"""The Datasette plugin shipped with orch: the DAG pages, and orch's databases kept read-only.

Public API:
    The Datasette hooks ``prepare_connection``, ``register_routes``, ``menu_links`` and
    ``extra_css_urls``; ``DAG_PATH`` (``/-/dag``); ``CSS_PATH`` (a small stylesheet served by
    the plugin). Pages: ``/-/dag`` (the workstreams, with their task counts by
    state) and ``/-/dag/{workstream}`` (the picture; ``?page=N`` for the next stages,
    ``?stage=K`` for one stage drawn whole).

Stability Guarantees:
    Every connection Datasette opens to an orch kernel database or event archive (told apart
    by ``PRAGMA application_id``) gets ``PRAGMA query_only = 1``: even a canned write query or
    another plugin's write fails with "attempt to write a readonly database". Other
    databases are left alone. A DAG page draws ``kernel.planning.svg.plan_svg`` from the
    documents of ``orch plan`` (computed by ``kernel.observe.browse.plandoc`` in a process of
    its own, so apsw never opens the file in Datasette's process); every node links to its
    task row and to the ``task_timeline`` query. Nothing on the pages loads from another
    host. An unknown workstream is a 404; a database without orch's tables shows no DAGs.

Integration Points:
    Registered through the ``datasette`` entry point of pyproject.toml (every Datasette in the
    same environment loads it); ``kernel.observe.browse.serve`` also registers it when the
    package metadata is missing (a source checkout). ``orch browse`` links the DAG pages from
    the index page (``kernel.observe.browse.metadata``).

Dependencies:
    datasette; ``kernel.planning.svg``, ``kernel.store.dbcheck``, ``kernel.store.eventlog``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

from datasette import Response, hookimpl
from datasette.utils import tilde_encode

from kernel.planning.svg import STAGES_PER_PAGE, STATE_COLOURS, Links, plan_svg, stage_pages

DAG_PATH = "/-/dag"
CSS_PATH = "/-/orch-browse.css"
# Datasette's own pages, made easier to read: the column descriptions as a compact two-column
# box instead of a list that pushes the rows below the fold, timestamps on one line, the
# canned queries of the index page as a bulleted list.
_CSS = """
dl.column-descriptions { display: grid; grid-template-columns: max-content 1fr;
  gap: 0.15em 1.2em; font-size: 0.85em; max-height: 14em; overflow-y: auto;
  border: 1px solid #e5e7eb; border-radius: 6px; padding: 0.6em 0.8em; background: #fff; }
dl.column-descriptions dt { font-weight: bold; }
dl.column-descriptions dd { margin: 0; }
td.col-at, td.col-timestamp, td.col-since, td.col-hour, td[class*="_at "] {
  white-space: nowrap; }
ul.orch-queries { list-style: disc; padding-left: 1.6em; margin: 0.3em 0 0.8em; }
ul.orch-queries li { margin: 0.15em 0; }
"""
_PLAN_TIMEOUT = 120.0

_PAGE = """{% extends "base.html" %}
{% block title %}{{ heading }}{% endblock %}
{% block extra_head %}<style>
.orch-dag-wrap { overflow-x: auto; border: 1px solid #e5e7eb; border-radius: 6px;
  background: #fff; margin: 0.5em 0 1em; }
.orch-dag-wrap svg { display: block; }
.orch-pager a, .orch-pager span { margin-right: 0.8em; }
.orch-counts span { display: inline-block; margin: 0 0.4em 0.3em 0; padding: 0.1em 0.5em;
  border-radius: 4px; border: 1px solid #d1d5db; font-size: 0.9em; }
table.orch-ws td, table.orch-ws th { padding: 0.3em 0.8em; }
</style>{% endblock %}
{% block crumbs %}<p class="crumbs"><a href="{{ urls.instance() }}">home</a> /
<a href="{{ dag_path }}">DAG pictures</a>{% if workstream %} / {{ workstream }}{% endif %}
</p>{% endblock %}
{% block content %}
<h1>{{ heading }}</h1>
{{ body|safe }}
{% endblock %}
"""


@hookimpl
def prepare_connection(conn: Any, database: str, datasette: Any) -> None:
    from kernel.store.dbcheck import APPLICATION_ID
    from kernel.store.eventlog import ARCHIVE_APPLICATION_ID

    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    except Exception:  # noqa: BLE001 - not a database we know; leave it alone
        return
    if app_id in (APPLICATION_ID, ARCHIVE_APPLICATION_ID):
        conn.execute("PRAGMA query_only = 1")


@hookimpl
def menu_links(datasette: Any, actor: Any, request: Any) -> list[dict[str, str]]:
    return [{"href": datasette.urls.path(DAG_PATH), "label": "DAG pictures"}]


@hookimpl
def register_routes(datasette: Any) -> list[tuple[str, Any]]:
    return [(r"^/-/dag$", dag_index), (r"^/-/dag/(?P<workstream>[^/]+)$", dag_page),
            (rf"^{CSS_PATH}$", stylesheet)]


@hookimpl
def extra_css_urls(datasette: Any) -> list[str]:
    return [datasette.urls.path(CSS_PATH)]


async def stylesheet(datasette: Any, request: Any) -> Response:
    return Response(_CSS, content_type="text/css; charset=utf-8")


async def _kernel_database(datasette: Any) -> Any | None:
    """The first served database that is an orch kernel database."""
    from kernel.store.dbcheck import APPLICATION_ID

    for database in datasette.databases.values():
        if database.is_memory or not database.path:
            continue
        found = await database.execute("PRAGMA application_id")
        if found.first()[0] == APPLICATION_ID:
            return database
    return None


async def _render(datasette: Any, request: Any, heading: str, body: str,
                  workstream: str | None = None, status: int = 200) -> Response:
    template = datasette.jinja_env.from_string(_PAGE)
    html = await datasette.render_template(
        template, {"heading": heading, "body": body, "workstream": workstream,
                   "dag_path": datasette.urls.path(DAG_PATH)}, request=request)
    return Response.html(html, status=status)


def _esc(text: object) -> str:
    from html import escape

    return escape(str(text))


async def dag_index(datasette: Any, request: Any) -> Response:
    database = await _kernel_database(datasette)
    if database is None:
        return await _render(datasette, request, "DAG pictures",
                             "<p>No orch kernel database is served here.</p>", status=404)
    found = await database.execute(
        "SELECT w.workstream_id, w.state, c.state AS task_state, c.tasks FROM workstream w "
        "LEFT JOIN task_state_count c ON c.workstream_id = w.workstream_id "
        "ORDER BY w.workstream_id, c.state")
    rows: dict[str, tuple[str, list[str]]] = {}
    for ws, state, task_state, tasks in found.rows:
        entry = rows.setdefault(ws, (state, []))
        if task_state is not None:
            entry[1].append(f"{tasks} {task_state}")
    lines = [f'<tr><td><a href="{_esc(datasette.urls.path(DAG_PATH))}/{_esc(quote(ws, ""))}">'
             f"{_esc(ws)}</a></td><td>{_esc(state)}</td><td>{_esc(', '.join(counts))}</td></tr>"
             for ws, (state, counts) in rows.items()]
    body = ("<p>One picture per workstream: its stages as columns, each task coloured by its "
            "state, the critical path outlined in red.</p>"
            '<table class="orch-ws"><tr><th>workstream</th><th>state</th><th>tasks</th></tr>'
            + "".join(lines) + "</table>") if lines else "<p>No workstreams are loaded yet.</p>"
    return await _render(datasette, request, "DAG pictures", body)


async def _plan_documents(path: str, workstream: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kernel.observe.browse.plandoc", path, workstream,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _PLAN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 1, {"error": {"code": "timeout", "message": "planning took too long"}}
    try:
        return proc.returncode or 0, json.loads(out)
    except ValueError:
        return 1, {"error": {"code": "plan_failed", "message": err.decode(errors="replace")}}


def _links(datasette: Any, database: str, workstream: str) -> Links:
    timeline = datasette.urls.query(database, "task_timeline")
    dag = f"{datasette.urls.path(DAG_PATH)}/{quote(workstream, '')}"
    return Links(
        task=lambda t: datasette.urls.row(database, "task", tilde_encode(t)),
        timeline=lambda t: f"{timeline}?task_id={quote(t, '')}",
        stage=lambda s: f"{dag}?stage={s}",
    )


def _int_arg(request: Any, name: str) -> int | None:
    value = request.args.get(name)
    return int(value) if value and value.isdigit() else None


def _pager(dag: str, pages: list[tuple[int, int]], page: int) -> str:
    if len(pages) <= 1:
        return ""
    parts = []
    for number, (first, last) in enumerate(pages, start=1):
        label = f"stages {first}–{last}"
        parts.append(f"<span><strong>{label}</strong></span>" if number == page
                     else f'<a href="{dag}?page={number}">{label}</a>')
    return f'<p class="orch-pager">Pages: {"".join(parts)}</p>'


def _summary(docs: dict[str, Any], links: Links) -> str:
    counts = Counter(n["status"] for n in docs["dag"]["nodes"])
    chips = "".join(
        f'<span style="background:{STATE_COLOURS.get(s, ("#fff", "#999"))[0]};'
        f'border-color:{STATE_COLOURS.get(s, ("#fff", "#999"))[1]}">{_esc(s)}: {n}</span>'
        for s, n in sorted(counts.items()))
    path = docs["plan"]["critical_path_tasks"]
    chain = " → ".join(f'<a class="critical-task" href="{_esc(links.task(t))}">{_esc(t)}</a>'
                       for t in path[:40]) + (f" … (+{len(path) - 40})" if len(path) > 40 else "")
    return (f'<p class="orch-counts">{chips}</p>'
            f'<p><strong>Critical path</strong> ({len(path)} tasks, about '
            f'{round(docs["plan"]["critical_path_duration"])} s estimated): {chain or "none"}</p>')


async def dag_page(datasette: Any, request: Any) -> Response:
    workstream = request.url_vars["workstream"]
    database = await _kernel_database(datasette)
    if database is None:
        return await _render(datasette, request, workstream,
                             "<p>No orch kernel database is served here.</p>", status=404)
    started = time.perf_counter()
    code, docs = await _plan_documents(database.path, workstream)
    if code != 0 or "error" in docs:
        error = docs.get("error", {})
        status = 404 if error.get("code") == "unknown_workstream" else 500
        return await _render(datasette, request, workstream,
                             f"<p>{_esc(error.get('message', 'no plan'))}</p>", workstream,
                             status=status)
    links = _links(datasette, database.name, workstream)
    dag = f"{datasette.urls.path(DAG_PATH)}/{quote(workstream, '')}"
    pages = stage_pages(docs["plan"], STAGES_PER_PAGE)
    stage = _int_arg(request, "stage")
    if stage is not None and not 1 <= stage <= len(docs["plan"]["stages"]):
        return await _render(datasette, request, workstream,
                             f"<p>{_esc(workstream)} has no stage {stage}.</p>", workstream,
                             status=404)
    if stage is not None:
        svg = plan_svg(docs["dag"], docs["plan"], links=links, stages=(stage, stage), wrap=True)
        pager = f'<p class="orch-pager"><a href="{dag}">back to the whole workstream</a></p>'
    else:
        page = min(max(_int_arg(request, "page") or 1, 1), len(pages))
        svg = plan_svg(docs["dag"], docs["plan"], links=links, stages=pages[page - 1])
        pager = _pager(dag, pages, page)
    took = time.perf_counter() - started
    body = (_summary(docs, links) + pager
            + f'<div class="orch-dag-wrap">{svg}</div>' + pager
            + "<p>Click a task for its row (state, attempts, events, leases); click the clock "
            f"beside it for its timeline. Planned and drawn in {took:.2f} s. "
            f"The same picture: <code>orch plan {_esc(workstream)} --format svg</code>.</p>")
    return await _render(datasette, request, f"DAG of {workstream}", body, workstream)
