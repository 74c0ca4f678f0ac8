"""The agent surfaces: what is ready, the one task to do next and why, and a compact brief of
the project or of one task for an agent's context, within a token budget.

Public API:
    ``ready(conn, *, workstream=None, limit=None) -> dict`` (``tasks`` in order, ``total``,
    ``shown``, ``order``, and ``reason`` when nothing is ready); ``next_task(conn, *,
    workstream=None) -> dict`` (``task`` (or None), ``reason`` in words, ``ready``, ``then``;
    when nothing is ready also ``counts``, ``in_flight``, ``blocking``, ``waiting_on``,
    ``halted``); ``prime(conn, *, task_id=None, max_tokens=2000, as_json=False, rules=None)
    -> dict`` (Markdown: ``{"text", "estimated_tokens", "max_tokens", "cut"}``; JSON: the
    document to print); ``check_max_tokens(value)``, ``check_limit(value)``;
    ``DEFAULT_MAX_TOKENS``, ``ORDER``.

Stability Guarantees:
    Nothing here writes; each function reads in one snapshot. **Ready** is the ``ready_task``
    view and nothing else: pending tasks the scheduler may queue now (``queueable_task``: their
    dependencies completed, their workstream open) and queued tasks of open workstreams, not
    yet claimed by a worker. The **order** is the claim order of
    ``kernel.runtime.claims`` (priority, then the remaining critical path, then queue order,
    then task id), with pending tasks after queued ones of the same rank. The **remaining
    path** of a task is its bottom level over the unfinished tasks, as the scheduler ranks it
    (``kernel.planning.dag``'s one longest-path computation, ``_longest_chains``, the body of
    ``bottom_levels``, which also gives the chain; cross-workstream edges included).
    **Unblocks** counts the unfinished tasks that depend on it, transitively. A **brief**
    (``prime``) never exceeds ``max_tokens`` estimated by ``kernel.base.tokens`` (3 bytes per
    token) over exactly what the command prints (its trailing newline included): sections are
    filled in order of importance, at most ``first`` items each, then to their end; what does
    not fit is named ("… 12 more ready tasks: `orch ready`"), and whole sections are dropped,
    least important first, only when even their notes do not fit. A budget too small for the
    brief's head raises ``UsageError`` ``max_tokens_too_small`` (exit 2) naming the minimum.
    Lists have caps whatever the budget (``_PRIME_READY`` ready tasks, ``_PRIME_FAILURES``
    failures, ``_PRIME_DEPENDENTS`` dependents); the notes say how many more there are and
    which command lists them. Keys are only added; the wording of sentences may change.

Integration Points:
    ``orch ready | next | prime`` (``kernel.cli.agentview``). Reads the ``ready_task``,
    ``open_workstream``, ``blocked_task``, ``stuck_task`` and ``task_state_count`` views, the
    ``machine_state`` table (terminal states), tasks, attempts (their output contract) and
    workers. ``orch why`` (``kernel.observe.status``) explains one task's state in more words.

Dependencies:
    apsw, networkx; ``kernel.base.errors``, ``kernel.base.tokens``, ``kernel.base.words``,
    ``kernel.planning.dag``, ``kernel.planning.plan``, ``kernel.store.db``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw
import networkx as nx

from kernel.base.errors import OrchError, UsageError
from kernel.base.tokens import text_tokens
from kernel.base.words import plural as _plural
from kernel.planning import dag
from kernel.planning.plan import TERMINAL_TASK_STATES_SQL, unfinished_graph
from kernel.store import db

DEFAULT_MAX_TOKENS = 2000
ORDER = ("priority (higher first), then the remaining critical path (longer first), then "
         "queued before pending, then queue time, then task id")
_TERMINAL = TERMINAL_TASK_STATES_SQL
_SCOPE = "(?1 IS NULL OR workstream_id = ?1)"
_PRIME_READY = 50
_PRIME_FAILURES = 30
_PRIME_DEPENDENTS = 100
_LINE = 240          # a quoted value (error, commit message, command) is cut to this many chars
_WRAP = 200          # prompt and description lines are wrapped at this many chars


# ------------------------------------------------------------------------------ words


def _names(ids: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def _secs(value: float) -> str:
    return f"{float(value):g} s"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _clock(stamp: str | None) -> str:
    if not stamp or "T" not in stamp:
        return stamp or "?"
    return stamp.split("T", 1)[1][:8] + " UTC"


def _cut(value: Any, width: int = _LINE) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrapped(text: str | None) -> list[str]:
    """``text`` as lines of at most ``_WRAP`` characters (long lines are split, not cut)."""
    out: list[str] = []
    for line in (text or "").strip("\n").splitlines():
        line = line.rstrip()
        while len(line) > _WRAP:
            out.append(line[:_WRAP])
            line = line[_WRAP:]
        out.append(line)
    return out if any(out) else []


# ------------------------------------------------------------------------- checks


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise UsageError("invalid_limit", f"--limit must be 1 or more (got {limit})",
                         hint="leave --limit out to list every ready task")


def check_max_tokens(max_tokens: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise UsageError("invalid_max_tokens",
                         f"--max-tokens must be a whole number of 1 or more (got {max_tokens})",
                         hint=f"the default is {DEFAULT_MAX_TOKENS}; a token is counted as 3 "
                              "bytes of output")


def _check_workstream(conn: apsw.Connection, workstream: str | None) -> None:
    if workstream is None or db.scalar(
            conn, "SELECT 1 FROM workstream WHERE workstream_id = ?", (workstream,)):
        return
    known = [r[0] for r in conn.execute(
        "SELECT workstream_id FROM workstream ORDER BY 1 LIMIT 21")]
    hint = (f"known workstreams: {_names(known, 20)}" if known else
            "no workstreams are loaded yet: write tasks/<workstream>/<task>.json, then "
            "`orch load`")
    raise OrchError("unknown_workstream", f"no workstream {workstream!r}", hint=hint)


# ---------------------------------------------------------------- critical path, order


@dataclass
class _Paths:
    """The unfinished tasks as a graph (``order``: a topological order), with each one's
    remaining path (its bottom level) and the next task on that path."""

    graph: nx.DiGraph
    order: list[str]
    level: dict[str, float]
    after: dict[str, str | None]

    def chain(self, task_id: str) -> list[str]:
        path = [task_id]
        while (nxt := self.after.get(path[-1])) is not None:
            path.append(nxt)
        return path

    def direct(self, task_id: str) -> list[str]:
        return sorted(self.graph.successors(task_id)) if task_id in self.graph else []

    def unblocks(self, task_ids: Sequence[str]) -> dict[str, int]:
        """How many unfinished tasks depend on each of ``task_ids``, transitively. One pass in
        topological order carries, per task, the set of ``task_ids`` above it as a bitset
        (dropped once its last dependent has read it); the sets are summed bit by bit in
        bit-sliced counters (``planes[j]`` holds bit j of every count), so the cost is that
        of the graph, not of a search per task."""
        bit = {t: 1 << i for i, t in enumerate(task_ids)}
        pred, succ = self.graph._pred, self.graph._succ
        left = {v: len(succ[v]) for v in self.order}
        above: dict[str, int] = {}
        planes: list[int] = []
        for v in self.order:
            mask = 0
            for u in pred[v]:
                mask |= above[u] | bit.get(u, 0)
                left[u] -= 1
                if not left[u]:
                    del above[u]
            if left[v]:
                above[v] = mask
            j = 0
            while mask:
                if j == len(planes):
                    planes.append(0)
                planes[j], mask = planes[j] ^ mask, planes[j] & mask
                j += 1
        return {t: sum(((plane >> i) & 1) << j for j, plane in enumerate(planes))
                for i, t in enumerate(task_ids)}


def _paths(conn: apsw.Connection) -> _Paths:
    """The graph the scheduler ranks (``compute_bottom_levels``): every unfinished task, edges
    between them. Bottom levels and chains by ``dag._longest_chains`` over the reversed graph,
    exactly as ``dag.bottom_levels`` computes them."""
    graph, durations = unfinished_graph(conn)
    order = dag.topological_order(graph)
    level, after = dag._longest_chains(graph._succ, order[::-1], durations)
    return _Paths(graph, order, level, after)


_READY_SQL = f"""
SELECT r.task_id, r.workstream_id, r.state, r.priority, r.critical,
       r.estimated_duration_seconds, r.queued_at, t.name, t.type,
       json_extract(t.definition, '$.execution.executor') AS executor,
       (SELECT json_group_array(d.depends_on) FROM task_dependency d
         WHERE d.task_id = r.task_id) AS dependencies
  FROM ready_task r JOIN task t ON t.task_id = r.task_id
 WHERE {_SCOPE.replace('workstream_id', 'r.workstream_id')}
"""


def _ranked(conn: apsw.Connection, workstream: str | None
            ) -> tuple[list[dict[str, Any]], _Paths]:
    """The ``ready_task`` rows of the scope, in order, with their remaining path and rank."""
    rows = db.rows(conn, _READY_SQL, (workstream,))
    paths = _paths(conn)
    for r in rows:
        r["critical"] = bool(r["critical"])
        r["dependencies"] = sorted(json.loads(r["dependencies"] or "[]"))
        r["remaining_path_seconds"] = paths.level.get(r["task_id"],
                                                      float(r["estimated_duration_seconds"]))
    rows.sort(key=lambda r: (-r["priority"], -r["remaining_path_seconds"],
                             r["state"] != "queued", r["queued_at"] or "", r["task_id"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows, paths


def _ready_reason(r: Mapping[str, Any]) -> str:
    deps = r["dependencies"]
    done = (f"{'its dependency' if len(deps) == 1 else 'its dependencies'} "
            f"{_names(deps)} completed" if deps else "it has no dependencies")
    if r["state"] == "queued":
        return (f"queued at {_clock(r['queued_at'])}: {done}; it waits for a free worker "
                "with what it needs")
    return f"{done} and its workstream is open; `orch run` queues it on its next tick"


def _described(rows: Sequence[dict[str, Any]], paths: _Paths) -> list[dict[str, Any]]:
    """``rows`` with ``unblocks``, ``unblocks_directly`` and ``reason`` added."""
    counts = paths.unblocks([r["task_id"] for r in rows])
    for r in rows:
        r["unblocks"] = counts[r["task_id"]]
        r["unblocks_directly"] = paths.direct(r["task_id"])
        r["reason"] = _ready_reason(r)
    return list(rows)


# ------------------------------------------------------------------------- ready


def ready(conn: apsw.Connection, *, workstream: str | None = None,
          limit: int | None = None) -> dict[str, Any]:
    """The ready tasks (``ready_task``) in order, each with its rank, remaining path, how many
    unfinished tasks depend on it and why it is ready; ``reason`` says why nothing is ready
    when the list is empty (else None)."""
    check_limit(limit)
    with db.snapshot(conn):
        _check_workstream(conn, workstream)
        rows, paths = _ranked(conn, workstream)
        shown = _described(rows if limit is None else rows[:limit], paths)
        reason = None if rows else _idle(conn, workstream)["reason"]
    return {"tasks": shown, "total": len(rows), "shown": len(shown), "limit": limit,
            "workstream": workstream, "order": ORDER, "reason": reason}


# -------------------------------------------------------------------------- next


def _rank_words(first: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    others = rows[1:]
    if not others:
        return "it is the only ready task"
    prio, path = first["priority"], first["remaining_path_seconds"]
    top = max(o["priority"] for o in others)
    if prio > top:
        return (f"it has the highest priority ({prio}; the next highest among the ready "
                f"tasks is {top})")
    peers = [o for o in others if o["priority"] == prio]
    words = (f"its priority {prio} is the highest, shared with "
             f"{_plural(len(peers), 'other ready task')}")
    longest = max(o["remaining_path_seconds"] for o in peers)
    if path > longest:
        return (f"{words}, and among them it heads the longest remaining path "
                f"({_secs(path)} of estimated work, against at most {_secs(longest)})")
    return (f"{words}, none of which has a longer remaining path ({_secs(path)}); ties go "
            "to the task queued first, then by task id")


def _next_reason(first: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    chain = first["critical_path"]
    shown = " → ".join(chain[:6]) + (f" → … ({len(chain)} tasks)" if len(chain) > 6 else "")
    path = (f"its remaining path: {shown} ({_secs(first['remaining_path_seconds'])})"
            if len(chain) > 1 else
            f"nothing unfinished comes after it ({_secs(first['remaining_path_seconds'])})")
    n, direct = first["unblocks"], first["unblocks_directly"]
    deps = (f"{_plural(n, 'unfinished task')} depend{'s' if n == 1 else ''} on it "
            f"({len(direct)} directly: {_names(direct)})" if n else
            "no unfinished task depends on it")
    return (f"{first['task_id']} is next: {_rank_words(first, rows)}; {path}; {deps}; "
            f"{first['reason']}.")


def next_task(conn: apsw.Connection, *, workstream: str | None = None) -> dict[str, Any]:
    """The first ready task and the reason in words; ``task`` None (with the reason nothing is
    ready and what holds things up) when there is none."""
    with db.snapshot(conn):
        _check_workstream(conn, workstream)
        rows, paths = _ranked(conn, workstream)
        if not rows:
            return {"task": None, "ready": 0, "then": [], "workstream": workstream,
                    **_idle(conn, workstream)}
        first = _described(rows[:1], paths)[0]
        first["critical_path"] = paths.chain(first["task_id"])
        reason = _next_reason(first, rows)
    return {"task": first, "reason": reason, "ready": len(rows), "workstream": workstream,
            "then": [r["task_id"] for r in rows[1:4]]}


# ------------------------------------------------------------- why nothing is ready


def _idle_rows(conn: apsw.Connection, ws: str | None) -> dict[str, Any]:
    counts = {r["state"]: r["tasks"] for r in db.rows(
        conn, f"SELECT state, SUM(tasks) AS tasks FROM task_state_count WHERE {_SCOPE} "
              "GROUP BY state ORDER BY state", (ws,))}
    in_flight = db.rows(
        conn, "SELECT task_id, workstream_id, state, worker_id, next_attempt_at FROM task "
              f"WHERE {_SCOPE} AND state NOT IN {_TERMINAL} AND state NOT IN "
              "('pending', 'queued') ORDER BY task_id", (ws,))
    blocking = db.rows(
        conn, "SELECT root_task_id AS task_id, root_state AS state, "
              "COUNT(DISTINCT task_id) AS waiting FROM stuck_task "
              f"WHERE {_SCOPE} GROUP BY root_task_id, root_state "
              "ORDER BY waiting DESC, root_task_id", (ws,))
    waiting_on = db.rows(
        conn, "SELECT b.blocked_by AS task_id, b.blocked_by_state AS state, "
              "p.workstream_id, COUNT(*) AS waiting FROM blocked_task b "
              "JOIN task p ON p.task_id = b.blocked_by "
              f"WHERE {_SCOPE.replace('workstream_id', 'b.workstream_id')} "
              "AND b.needs_operator = 0 GROUP BY b.blocked_by ORDER BY waiting DESC, "
              "b.blocked_by LIMIT 20", (ws,))
    halted = db.rows(conn, f"""
        SELECT h.* FROM (
          SELECT w.workstream_id, w.state,
                 (SELECT json_group_array(c.task_id) FROM task c
                   WHERE c.workstream_id = w.workstream_id AND c.state = 'failed'
                     AND c.critical = 1) AS critical_failed,
                 (SELECT COUNT(*) FROM task t WHERE t.workstream_id = w.workstream_id
                     AND t.state IN ('pending', 'queued')) AS waiting
            FROM workstream w
           WHERE {_SCOPE.replace('workstream_id', 'w.workstream_id')}
             AND w.workstream_id NOT IN (SELECT workstream_id FROM open_workstream)) h
         WHERE h.waiting > 0 ORDER BY h.workstream_id""", (ws,))
    for h in halted:
        h["critical_failed"] = sorted(json.loads(h["critical_failed"] or "[]"))
    failed = [r[0] for r in conn.execute(
        f"SELECT task_id FROM task WHERE {_SCOPE} AND state IN {_TERMINAL} "
        "AND state <> 'completed' ORDER BY task_id LIMIT 20", (ws,))]
    return {"counts": counts, "in_flight": in_flight, "blocking": blocking,
            "waiting_on": waiting_on, "halted": halted, "failed": failed}


def _flight_words(t: Mapping[str, Any]) -> str:
    if t["worker_id"]:
        return f"{t['task_id']} ({t['state']} on worker {t['worker_id']})"
    if t["next_attempt_at"]:
        return f"{t['task_id']} ({t['state']}, next attempt at {_clock(t['next_attempt_at'])})"
    return f"{t['task_id']} ({t['state']})"


def _idle_parts(found: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    if found["in_flight"]:
        parts.append(f"{_plural(len(found['in_flight']), 'task')} in flight: "
                     + _names([_flight_words(t) for t in found["in_flight"]]))
    flying = {t["task_id"] for t in found["in_flight"]}
    others = [w for w in found["waiting_on"] if w["task_id"] not in flying]
    if others:
        parts.append("pending tasks wait for " + _names(
            [f"{w['task_id']} ({w['state']}, workstream {w['workstream_id']})" for w in others]))
    for b in found["blocking"][:5]:
        parts.append(f"{b['state']} task {b['task_id']} blocks "
                     f"{_plural(b['waiting'], 'pending task')} (`orch why {b['task_id']}`, "
                     f"`orch retry {b['task_id']}`)")
    for h in found["halted"]:
        why = (f"critical task {_names(h['critical_failed'])} failed "
               f"(`orch retry {' '.join(h['critical_failed'][:5])}`)"
               if h["critical_failed"] else f"it is {h['state']}")
        parts.append(f"workstream {h['workstream_id']} runs nothing new ({h['waiting']} "
                     f"tasks wait): {why}")
    return parts


def _idle(conn: apsw.Connection, ws: str | None) -> dict[str, Any]:
    """Why nothing is ready, in words (``reason``), and the rows behind it."""
    found = _idle_rows(conn, ws)
    counts = found["counts"]
    total = sum(counts.values())
    where = f" of workstream {ws}" if ws else ""
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    if total == 0:
        reason = (f"nothing is ready: workstream {ws} has no tasks" if ws else
                  "nothing is ready: nothing is loaded; write task files under "
                  "tasks/<workstream>/ and run `orch load`")
    elif set(counts) == {"completed"}:
        reason = f"nothing is ready: all {_plural(total, 'task')}{where} are completed"
    elif not (set(counts) - set(_terminal_names(conn))):
        reason = (f"nothing is left to run{where}: {summary}; failed or cancelled: "
                  f"{_names(found['failed'])} (`orch why TASK`, then `orch retry TASK`)")
    else:
        parts = _idle_parts(found) or [f"{summary}{where}"]
        reason = "nothing is ready: " + "; ".join(parts)
    found.pop("failed")
    return {"reason": reason + ".", **found}


def _terminal_names(conn: apsw.Connection) -> list[str]:
    return [r[0] for r in conn.execute(_TERMINAL[1:-1])]


# ------------------------------------------------------------ prime: the budget fitter


@dataclass
class _Section:
    """One part of a brief: a heading, always-shown ``intro`` lines, then items (a line for the
    text, a value for JSON) of which ``total`` exist; ``noun`` (singular, plural) names them and
    ``command`` lists them all."""

    key: str
    title: str
    lines: list[str]
    items: list[Any]
    total: int
    noun: tuple[str, str]
    command: str
    first: int
    intro: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return bool(self.total or self.intro)

    def note(self, n: int | None) -> str | None:
        """What of this section is cut when ``n`` items are shown (None: dropped)."""
        if not self.present or (n is not None and n >= self.total):
            return None
        left = self.total - (n or 0)
        noun = self.noun[0] if left == 1 else self.noun[1]
        if n is None and not self.total:
            return f"{self.title.lstrip('# ').lower()}: `{self.command}`"
        return f"{left} {'more ' if n else ''}{noun}: `{self.command}`"


Shown = dict[str, int | None]   # section key -> items shown; None: the section is dropped


def _cut_notes(sections: Sequence[_Section], shown: Shown) -> list[str]:
    return [note for s in sections if (note := s.note(shown[s.key])) is not None]


def _markdown(head: list[str], sections: Sequence[_Section], shown: Shown) -> str:
    out = list(head)
    for s in sections:
        n = shown[s.key]
        if n is None or not s.present:
            continue
        out += ["", s.title, *s.intro, *s.lines[:n]]
        if (note := s.note(n)) is not None:
            out.append(f"… {note}")
    dropped = [s for s in sections if shown[s.key] is None and s.present]
    if dropped:
        out += ["", "Cut for the token budget: " + "; ".join(_cut_notes(dropped, shown))]
    return "\n".join(out)


def _document(head: dict[str, Any], sections: Sequence[_Section], shown: Shown,
              max_tokens: int, estimated: int) -> dict[str, Any]:
    doc = dict(head)
    for s in sections:
        n = shown[s.key]
        if n is not None and s.present:
            doc[s.key] = {"items": s.items[:n], "shown": n, "total": s.total,
                          "intro": s.intro}
    doc.update(cut=_cut_notes(sections, shown), max_tokens=max_tokens,
               estimated_tokens=estimated)
    return doc


def _json_text(doc: Mapping[str, Any]) -> str:
    """Exactly what ``kernel.cli.common.emit`` prints (its newline excepted)."""
    return json.dumps(doc, indent=2, sort_keys=True, default=str)


def _tokens(text: str) -> int:
    return text_tokens(text + "\n")   # the newline click.echo adds


def _grow(section: _Section, shown: Shown, limit: int,
          fits: Callable[[Shown], bool]) -> None:
    """The most items of ``section`` up to ``limit`` that keep the brief within its budget
    (binary search: the size grows with the items shown)."""
    lo, hi = shown[section.key] or 0, min(limit, len(section.lines))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        shown[section.key] = mid
        if fits(shown):
            lo = mid
        else:
            hi = mid - 1
    shown[section.key] = lo


def _fit(sections: Sequence[_Section], importance: Sequence[str],
         measure: Callable[[Shown, int], int], budget: int) -> Shown:
    """How many items of each section to show: every section's notes first (dropping sections,
    least important first, until they fit), then items by importance, ``first`` each, then
    the rest."""
    by_key = {s.key: s for s in sections}
    shown: Shown = {s.key: 0 for s in sections}
    def fits(candidate: Shown) -> bool:
        return measure(candidate, budget) <= budget

    for key in reversed(importance):
        if fits(shown):
            break
        shown[key] = None
    if not fits(shown):
        need = measure(shown, budget)
        while (again := measure(shown, need)) > need:   # the budget is printed in JSON
            need = again
        raise UsageError("max_tokens_too_small",
                         f"--max-tokens {budget} is too small: the shortest brief needs "
                         f"{need} tokens (3 bytes each)", hint=f"give --max-tokens {need} or more")

    for key in importance:   # room left by a dropped section may hold a less important one
        if shown[key] is None:
            shown[key] = 0
            if not fits(shown):
                shown[key] = None
    for whole in (False, True):
        for key in importance:
            if shown[key] is not None:
                s = by_key[key]
                _grow(s, shown, len(s.lines) if whole else s.first, fits)
    return shown


def _brief(head_lines: list[str], head_data: dict[str, Any], sections: list[_Section],
           importance: Sequence[str], max_tokens: int, as_json: bool) -> dict[str, Any]:
    def text(shown: Shown, budget: int) -> str:
        if as_json:
            # estimated_tokens printed as the budget: the real count has no more digits.
            return _json_text(_document(head_data, sections, shown, budget, budget))
        return _markdown(head_lines, sections, shown)

    shown = _fit(sections, importance, lambda s, b: _tokens(text(s, b)), max_tokens)
    if as_json:
        estimated = _tokens(text(shown, max_tokens))
        return _document(head_data, sections, shown, max_tokens, estimated)
    markdown = text(shown, max_tokens)
    return {"text": markdown, "estimated_tokens": _tokens(markdown), "max_tokens": max_tokens,
            "cut": _cut_notes(sections, shown)}


# ------------------------------------------------------------------ prime: the project


def _project_head(conn: apsw.Connection, n_ready: int
                  ) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    workstreams = db.rows(conn, "SELECT workstream_id, state FROM workstream "
                                "ORDER BY workstream_id")
    per_ws: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for r in db.rows(conn, "SELECT workstream_id, state, tasks FROM task_state_count "
                           "ORDER BY workstream_id, state"):
        per_ws.setdefault(r["workstream_id"], {})[r["state"]] = r["tasks"]
        totals[r["state"]] = totals.get(r["state"], 0) + r["tasks"]
    for ws in workstreams:
        ws["counts"] = per_ws.get(ws["workstream_id"], {})
    workers = int(db.scalar(conn, "SELECT COUNT(*) FROM worker WHERE state NOT IN (SELECT "
                                  "ms.state FROM machine_state ms WHERE ms.machine = 'worker' "
                                  "AND ms.terminal = 1)") or 0)
    n_tasks = sum(totals.values())
    counts = ", ".join(f"{n} {s}" for s, n in totals.items())
    lines = ["# orch: project state"]
    if n_tasks:
        lines.append(f"- {_plural(n_tasks, 'task')} in "
                     f"{_plural(len(workstreams), 'workstream')}: {counts}")
    else:
        lines.append("- nothing is loaded: write task files under tasks/<workstream>/ and run "
                     "`orch load`")
    lines += [f"- {n_ready} ready now; {_plural(workers, 'live worker')}",
              "- commands: `orch next`, `orch ready`, `orch why TASK`, "
              "`orch prime --task TASK`"]
    data = {"kind": "project", "summary": {"tasks": n_tasks, "counts": totals,
                                           "ready": n_ready, "live_workers": workers}}
    return lines, data, workstreams


def _ws_section(workstreams: list[dict[str, Any]]) -> _Section:
    lines = [f"- {w['workstream_id']} ({w['state']}): "
             + (", ".join(f"{n} {s}" for s, n in w["counts"].items()) or "no tasks")
             for w in workstreams]
    return _Section("workstreams", "## Workstreams", lines, workstreams, len(workstreams),
                    ("workstream", "workstreams"), "orch status", 10)


def _flight_section(conn: apsw.Connection) -> _Section:
    rows = db.rows(conn, "SELECT task_id, workstream_id, state, worker_id, started_at, "
                         "retry_count, max_retries, next_attempt_at FROM task "
                         f"WHERE state NOT IN {_TERMINAL} AND state NOT IN ('pending', "
                         "'queued') ORDER BY started_at, task_id")
    lines = []
    for t in rows:
        if t["worker_id"]:
            lines.append(f"- {t['task_id']} ({t['workstream_id']}): {t['state']} on worker "
                         f"{t['worker_id']} since {_clock(t['started_at'])}")
        else:
            lines.append(f"- {t['task_id']} ({t['workstream_id']}): {t['state']}, retry "
                         f"{t['retry_count']} of {t['max_retries']} not before "
                         f"{_clock(t['next_attempt_at'])}")
    return _Section("in_flight", "## Running", lines, rows, len(rows),
                    ("task in flight", "tasks in flight"), "orch status", 10)


def _ready_section(conn: apsw.Connection) -> _Section:
    rows, paths = _ranked(conn, None)
    items = _described(rows[:_PRIME_READY], paths)
    lines = [f"{r['rank']}. {r['task_id']} ({r['workstream_id']}, {r['type']}"
             + (f"/{r['executor']}" if r["executor"] else "")
             + f", priority {r['priority']}, path {_secs(r['remaining_path_seconds'])}, "
             f"unblocks {r['unblocks']}; {_short_reason(r)})" for r in items]
    intro = (["By priority, then critical path; `orch next` explains the first."] if rows else
             [_sentence(_idle(conn, None)["reason"])])
    return _Section("ready", "## Ready next", lines, items, len(rows),
                    ("ready task", "ready tasks"), "orch ready", 10, intro)


def _short_reason(r: Mapping[str, Any]) -> str:
    if r["state"] == "queued":
        return f"queued at {_clock(r['queued_at'])}"
    deps = r["dependencies"]
    return (f"{r['state']}, dependencies done: {_names(deps, 3)}" if deps
            else f"{r['state']}, no dependencies")


def _failure_section(conn: apsw.Connection) -> _Section:
    total = int(db.scalar(conn, "SELECT COUNT(*) FROM task WHERE state = 'failed'") or 0)
    rows = db.rows(conn, """
        SELECT t.task_id, t.workstream_id, t.failure_mode, t.last_error, t.critical,
               COALESCE(t.completed_at, t.updated_at) AS failed_at,
               (SELECT COUNT(DISTINCT s.task_id) FROM stuck_task s
                 WHERE s.root_task_id = t.task_id) AS blocks
          FROM task t WHERE t.state = 'failed'
         ORDER BY failed_at DESC, t.task_id LIMIT ?""", (_PRIME_FAILURES,))
    lines = []
    for t in rows:
        t["critical"] = bool(t["critical"])
        t["commands"] = [f"orch why {t['task_id']}", f"orch retry {t['task_id']}"]
        crit = ", critical" if t["critical"] else ""
        lines.append(f"- {t['task_id']} ({t['workstream_id']}{crit})"
                     f" at {_clock(t['failed_at'])}: {t['failure_mode'] or 'failed'}: "
                     f"{_cut(t['last_error'], 160)}; blocks {t['blocks']} pending; "
                     f"act: `orch why {t['task_id']}`, then `orch retry {t['task_id']}`")
    return _Section("failures", "## Recent failures", lines, rows, total,
                    ("failed task", "failed tasks"), "orch status", 5)


def _project_brief(conn: apsw.Connection, max_tokens: int, as_json: bool) -> dict[str, Any]:
    with db.snapshot(conn):
        ready_s = _ready_section(conn)
        head, data, workstreams = _project_head(conn, ready_s.total)
        sections = [_ws_section(workstreams), _flight_section(conn), ready_s,
                    _failure_section(conn)]
    return _brief(head, data, sections, ["ready", "failures", "in_flight", "workstreams"],
                  max_tokens, as_json)


# --------------------------------------------------------------------- prime: a task


def _task_row(conn: apsw.Connection, task_id: str) -> dict[str, Any]:
    found = db.row(conn, "SELECT * FROM task WHERE task_id = ?", (task_id,))
    if found is None:
        raise OrchError("unknown_task", f"unknown task: {task_id}",
                        hint="`orch ready` and `orch status` list the tasks of this project")
    return found


def _task_head(task: Mapping[str, Any], definition: Mapping[str, Any]
               ) -> tuple[list[str], dict[str, Any]]:
    execution = definition.get("execution") or {}
    tid = task["task_id"]
    lines = [
        f"# Task {tid}: {_cut(task['name'], 120)}",
        f"- workstream {task['workstream_id']}; type {task['type']}; executor "
        f"{execution.get('executor') or 'the default for its type'}; state {task['state']}; "
        f"priority {task['priority']}{'; critical' if task['critical'] else ''}",
        f"- timeout {_secs(task['timeout_seconds'] or execution.get('timeout_seconds', 0))} "
        f"per attempt; retries {task['retry_count']} used of {task['max_retries']} "
        f"(delay {_secs(task['retry_delay_seconds'])}); estimated "
        f"{_secs(task['estimated_duration_seconds'])}",
        f"- command: `{_cut(task['command'] or execution.get('command'), 200)}`",
    ]
    if task["last_error"] or task["failure_mode"]:
        lines.append(f"- last failure: {task['failure_mode'] or 'failed'}: "
                     f"{_cut(task['last_error'], 200)}")
    lines.append(f"- more: `orch show {tid}`, `orch why {tid}`")
    keys = ("task_id", "name", "workstream_id", "type", "state", "priority", "timeout_seconds",
            "max_retries", "retry_count", "retry_delay_seconds", "estimated_duration_seconds",
            "command", "failure_mode", "last_error")
    summary = {k: task[k] for k in keys}
    summary.update(critical=bool(task["critical"]), executor=execution.get("executor"))
    return lines, {"kind": "task", "task": summary}


def _text_section(key: str, title: str, text: str | None, tid: str, first: int) -> _Section:
    lines = _wrapped(text)
    return _Section(key, title, lines, lines, len(lines),
                    (f"line of the {key}", f"lines of the {key}"), f"orch show {tid} --json",
                    first)


def _files_section(definition: Mapping[str, Any], tid: str) -> _Section:
    context = definition.get("context_requirements") or {}
    items = ([{"role": "required", "path": f} for f in context.get("required_files", [])]
             + [{"role": "optional", "path": f} for f in context.get("optional_files", [])]
             + [{"role": "excluded", "pattern": p}
                for p in context.get("exclude_patterns", [])])
    words = {"required": "required (editable)", "optional": "optional (read-only)",
             "excluded": "excluded"}
    lines = [f"- {words[i['role']]}: {i.get('path') or i.get('pattern')}" for i in items]
    intro = ([f"Context budget: {context['max_context_tokens']} tokens."]
             if context.get("max_context_tokens") else [])
    return _Section("files", "## Files", lines, items, len(items),
                    ("file or pattern", "files and patterns"), f"orch show {tid} --json", 20,
                    intro)


def _rules_section(definition: Mapping[str, Any], rules: Mapping[str, Any] | None,
                   tid: str) -> _Section:
    phases = definition.get("validation_rules") or {}
    items = [{"phase": phase, "rule": name, "command": (rules or {}).get(name)}
             for phase in ("pre_execution", "post_execution") for name in phases.get(phase, [])]
    when = {"pre_execution": "before the run", "post_execution": "after the run"}
    lines = [f"- {when[i['phase']]}: {i['rule']}"
             + (f" (`{_cut(i['command'], 120)}`)" if i["command"] else "") for i in items]
    return _Section("rules", "## Validation rules", lines, items, len(items),
                    ("validation rule", "validation rules"), f"orch show {tid} --json", 10)


def _outcome_words(d: Mapping[str, Any]) -> str:
    text = f"- {d['task_id']}: {d['state']}"
    if d["attempt_no"] is None:
        return text + (" without an attempt (skipped)" if d["state"] == "completed"
                       else " (no attempt yet)")
    text += f" (attempt {d['attempt_no']}: {d['outcome'] or 'open'})"
    if d["files_modified"]:
        text += f"; files modified: {_names(d['files_modified'], 8)}"
    if d["commit_message"]:
        text += f"; commit: \"{_cut(d['commit_message'], 160)}\""
    if d["error"]:
        text += f"; error: {d['failure_mode'] + ': ' if d['failure_mode'] else ''}" \
                f"{_cut(d['error'], 160)}"
    return text


def _deps_section(conn: apsw.Connection, tid: str) -> _Section:
    deps = db.rows(conn, """
        SELECT p.task_id, p.state, a.attempt_no, a.outcome, a.output,
               COALESCE(a.failure_mode, p.failure_mode) AS failure_mode,
               COALESCE(a.error_message, p.last_error) AS error_message
          FROM task_dependency d JOIN task p ON p.task_id = d.depends_on
          LEFT JOIN attempt a ON a.task_id = p.task_id
           AND a.attempt_no = (SELECT MAX(x.attempt_no) FROM attempt x
                                WHERE x.task_id = p.task_id)
         WHERE d.task_id = ? ORDER BY p.task_id""", (tid,))
    for d in deps:
        output = json.loads(d.pop("output") or "{}")
        d["files_modified"] = list(output.get("files_modified") or [])
        d["commit_message"] = output.get("commit_message")
        d["diff_summary"] = _cut(output.get("diff_summary"), 400) or None
        d["error"] = output.get("error") or d.pop("error_message")
        d.pop("error_message", None)
    lines = [_outcome_words(d) for d in deps]
    return _Section("dependencies", "## Dependencies (outcomes)", lines, deps, len(deps),
                    ("dependency", "dependencies"), f"orch show {tid}", 10)


def _dependents_section(conn: apsw.Connection, tid: str) -> _Section:
    direct = db.rows(conn, "SELECT t.task_id, t.state FROM task_dependency d JOIN task t "
                           "ON t.task_id = d.task_id WHERE d.depends_on = ? "
                           "ORDER BY t.task_id LIMIT ?", (tid, _PRIME_DEPENDENTS))
    n_direct = int(db.scalar(conn, "SELECT COUNT(*) FROM task_dependency WHERE depends_on = ?",
                             (tid,)) or 0)
    transitive = int(db.scalar(conn, """
        WITH RECURSIVE down (task_id) AS (
            SELECT task_id FROM task_dependency WHERE depends_on = ?
            UNION SELECT d.task_id FROM task_dependency d JOIN down ON d.depends_on = down.task_id)
        SELECT COUNT(*) FROM down""", (tid,)) or 0)
    lines = [f"- {d['task_id']} ({d['state']})" for d in direct]
    verb = "depends" if transitive == 1 else "depend"
    intro = [f"{_plural(transitive, 'task')} {verb} on it, {n_direct} directly."
             if transitive else "No task depends on it."]
    return _Section("dependents", "## What depends on it", lines, direct, n_direct,
                    ("dependent", "dependents"), f"orch show {tid}", 10, intro)


def _task_brief(conn: apsw.Connection, task_id: str, rules: Mapping[str, Any] | None,
                max_tokens: int, as_json: bool) -> dict[str, Any]:
    with db.snapshot(conn):
        task = _task_row(conn, task_id)
        definition = json.loads(task["definition"] or "{}")
        head, data = _task_head(task, definition)
        prompt = (definition.get("execution") or {}).get("prompt")
        sections = [
            _text_section("description", "## Description", task["description"], task_id, 20),
            _text_section("prompt", "## Prompt", prompt, task_id, 80),
            _files_section(definition, task_id),
            _rules_section(definition, rules, task_id),
            _deps_section(conn, task_id),
            _dependents_section(conn, task_id),
        ]
    importance = ["prompt", "description", "files", "dependencies", "rules", "dependents"]
    return _brief(head, data, sections, importance, max_tokens, as_json)


# --------------------------------------------------------------------------- prime


def prime(conn: apsw.Connection, *, task_id: str | None = None,
          max_tokens: int = DEFAULT_MAX_TOKENS, as_json: bool = False,
          rules: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A brief for an agent's context within ``max_tokens``: of the project (``task_id``
    None) or of one task (``rules``: rule name -> the command it runs, from ``orch.toml``).
    Markdown (``{"text", "estimated_tokens", "max_tokens", "cut"}``) or, with ``as_json``,
    the JSON document itself, whose printed form is what the budget bounds."""
    check_max_tokens(max_tokens)
    if task_id is None:
        return _project_brief(conn, max_tokens, as_json)
    return _task_brief(conn, task_id, rules, max_tokens, as_json)
