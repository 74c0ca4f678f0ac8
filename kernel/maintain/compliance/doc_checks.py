"""Compliance checks of orch's documentation set and of the kernel's own source: EXEC-DOC-001..006,
ERR-FM-001..003, SM-DEF-003, MOD-IDX-001, AUDIT-002 (its documented part), SCHEMA-VER-002.

Public API:
    None beyond registering the checks; ``REQUIRED_TOPICS`` (document -> the topics its
    headings must cover) and ``headings(path) -> list[(line, text)]`` are shared with the docs'
    own tests.

Stability Guarantees:
    A document is judged by its headings (a topic is covered when a heading names it), by the
    bold fields and sections the specification asks for, and, for generated documents, by
    holding every state, trigger and mode of the data they are generated from. Each violation
    names the file and, where there is one, the line. The documentation checked is orch's own
    (``kernel.base.data.docs_dir()``: the checkout's ``docs/``, or the copy inside the
    installed package), which is the documentation of the kernel a project runs.

Integration Points:
    The state machines come from the YAML in the same documentation set
    (``kernel.store.machines.load_machines``), the failure modes from
    ``docs/failure_modes/failure_modes.yaml`` (``kernel.store.reference``).

Dependencies:
    ``kernel.maintain.compliance.core``, ``kernel.observe.archive``,
    ``kernel.observe.failure_modes``, ``kernel.observe.module_index``,
    ``kernel.store.eventlog``, ``kernel.store.machines``, ``kernel.store.reference``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from kernel.maintain.compliance.core import Context, Finding, Result, check
from kernel.observe import module_index
from kernel.observe.failure_modes import CATEGORY_SECTIONS, REQUIRED_FIELDS
from kernel.observe.module_index import SECTIONS

__all__ = ["MODULE_SECTIONS", "REQUIRED_TOPICS", "headings"]

REINSTALL = ("restore orch's documentation: in a checkout `git checkout -- docs/`, else "
             "`pip install --force-reinstall orch-kernel`")
EXEC = "execution_model"
REQUIRED_TOPICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "EXEC-DOC-002": ("OVERVIEW.md", ("architecture", "components", "data flow",
                                     "external dependencies", "performance")),
    "EXEC-DOC-003": ("STATE_MACHINE.md", ("task machine", "workstream machine",
                                          "worker machine", "transitions", "invariants")),
    "EXEC-DOC-004": ("SCHEDULING.md", ("dag construction", "priority", "fairness",
                                       "resource allocation", "parallel execution",
                                       "critical path")),
    "EXEC-DOC-005": ("WORKERS.md", ("registration", "capability advertisement", "assignment",
                                    "health monitoring")),
    "EXEC-DOC-006": ("RECOVERY.md", ("checkpoints", "rollback", "partial workstream failure",
                                     "manual intervention", "decision trees")),
}
# One home each: the failure-mode pages' fields and sections (kernel.observe.failure_modes,
# which generates the pages) and the module docstring sections (kernel.observe.module_index).
FM_FIELDS = REQUIRED_FIELDS
FM_SECTIONS = CATEGORY_SECTIONS
MODULE_SECTIONS = SECTIONS
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def headings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every Markdown heading outside code fences."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            out.append((number, m.group(2)))
    return out


def _doc(ctx: Context, f: Finding, *parts: str) -> Path | None:
    path = ctx.docs.joinpath(*parts)
    f.look(ctx.rel(path))
    if not path.is_file():
        f.fail("the file does not exist", ctx.rel(path))
        return None
    return path


def _topics(ctx: Context, f: Finding, req_id: str) -> Path | None:
    name, topics = REQUIRED_TOPICS[req_id]
    path = _doc(ctx, f, EXEC, name)
    if path is None:
        return None
    found = " | ".join(text.lower() for _, text in headings(path))
    for topic in topics:
        if topic not in found:
            f.fail(f"{name} has no section on {topic}", ctx.rel(path))
    return path


@check("EXEC-DOC-001", fix=REINSTALL)
def _exec_doc_001(ctx: Context, f: Finding) -> Result:
    """docs/execution_model/ holds OVERVIEW, STATE_MACHINE, SCHEDULING, WORKERS, RECOVERY."""
    for name in ("OVERVIEW.md", "STATE_MACHINE.md", "SCHEDULING.md", "WORKERS.md",
                 "RECOVERY.md"):
        _doc(ctx, f, EXEC, name)
    return f.result("the five execution-model documents are there")


@check("EXEC-DOC-002", fix=REINSTALL)
def _exec_doc_002(ctx: Context, f: Finding) -> Result:
    """OVERVIEW.md covers architecture, components, data flow, external dependencies and
    performance, with measured figures."""
    path = _topics(ctx, f, "EXEC-DOC-002")
    if path is not None:
        text = path.read_text(encoding="utf-8")
        start = text.lower().find("performance")
        if not re.search(r"\d[\d,.]*\s*(ms|s|µs|tasks/s|MiB|MB|×|x)\b", text[start:]):
            f.fail("the performance section gives no measured figure", ctx.rel(path))
    return f.result("OVERVIEW.md covers every topic, with measured figures")


def _every_name_in(ctx: Context, f: Finding, path: Path) -> None:
    from kernel.store.machines import load_machines

    folder = ctx.docs / "state_machines"
    f.look(ctx.rel(folder))
    text = path.read_text(encoding="utf-8")
    for name, machine in load_machines(folder).items():
        names = {s.name for s in machine.states} | {t.trigger for t in machine.transitions}
        names |= {i.id for i in machine.invariants}
        for missing in sorted(n for n in names if f"`{n}`" not in text and n not in text):
            f.fail(f"STATE_MACHINE.md does not name {missing!r} of the {name} machine",
                   ctx.rel(path))


@check("EXEC-DOC-003", fix=REINSTALL + " (in a checkout: `python tools/gen_docs.py`)")
def _exec_doc_003(ctx: Context, f: Finding) -> Result:
    """STATE_MACHINE.md covers each machine and names every state, trigger and invariant."""
    path = _topics(ctx, f, "EXEC-DOC-003")
    if path is not None:
        _every_name_in(ctx, f, path)
    return f.result("every state, trigger and invariant of the three machines is documented")


@check("EXEC-DOC-004", fix=REINSTALL)
def _exec_doc_004(ctx: Context, f: Finding) -> Result:
    """SCHEDULING.md covers the DAG, priority, fairness, resources, parallelism and the
    critical path."""
    _topics(ctx, f, "EXEC-DOC-004")
    return f.result("SCHEDULING.md covers every topic")


@check("EXEC-DOC-005", fix=REINSTALL)
def _exec_doc_005(ctx: Context, f: Finding) -> Result:
    """WORKERS.md covers registration, capabilities, assignment and health monitoring."""
    _topics(ctx, f, "EXEC-DOC-005")
    return f.result("WORKERS.md covers every topic")


@check("EXEC-DOC-006", fix=REINSTALL)
def _exec_doc_006(ctx: Context, f: Finding) -> Result:
    """RECOVERY.md covers checkpoints, rollback, partial failure, manual intervention and
    decision trees."""
    _topics(ctx, f, "EXEC-DOC-006")
    return f.result("RECOVERY.md covers every topic")


def _modes(ctx: Context, f: Finding) -> list[tuple[str, str]]:
    """(mode_id, category) of every failure mode in the catalog's data."""
    from kernel.store.reference import load_failure_modes

    path = ctx.docs / "failure_modes" / "failure_modes.yaml"
    f.look(ctx.rel(path))
    catalog = load_failure_modes(path)
    return [(m.mode_id, m.category) for m in catalog.modes]


@check("ERR-FM-001", fix=REINSTALL + " (in a checkout: `python tools/gen_docs.py`)")
def _err_fm_001(ctx: Context, f: Finding) -> Result:
    """Each failure mode has docs/failure_modes/{Mode}.md with the bold fields."""
    modes = _modes(ctx, f)
    for mode, _ in modes:
        path = _doc(ctx, f, "failure_modes", f"{mode}.md")
        if path is None:
            continue
        text = path.read_text(encoding="utf-8")
        for field in FM_FIELDS:
            if f"**{field}**" not in text:
                f.fail(f"{mode}.md has no **{field}**", ctx.rel(path))
    return f.result(f"{len(modes)} failure-mode documents, each with the "
                    f"{len(FM_FIELDS)} fields")


@check("ERR-FM-002", fix=REINSTALL + " (in a checkout: `python tools/gen_docs.py`)")
def _err_fm_002(ctx: Context, f: Finding) -> Result:
    """CATALOG.md lists every mode under its section: Task, Worker, Workstream, System."""
    modes = _modes(ctx, f)
    path = _doc(ctx, f, "failure_modes", "CATALOG.md")
    if path is None:
        return f.result("")
    found = headings(path)
    section_line = {text: line for line, text in found if text in FM_SECTIONS.values()}
    for title in FM_SECTIONS.values():
        if title not in section_line:
            f.fail(f"CATALOG.md has no '## {title}' section", ctx.rel(path))
    lines = path.read_text(encoding="utf-8").splitlines()
    for mode, category in modes:
        title = FM_SECTIONS.get(category, "")
        start = section_line.get(title)
        if start is None:
            continue
        after = [ln for ln, _ in found if ln > start]
        end = min(after) if after else len(lines) + 1
        if not any(mode in line for line in lines[start:end - 1]):
            f.fail(f"CATALOG.md does not list {mode} under {title}", ctx.rel(path), start)
    return f.result(f"{len(modes)} modes listed under their four sections")


@check("ERR-FM-003", fix=REINSTALL + " (in a checkout: `python tools/gen_docs.py`)")
def _err_fm_003(ctx: Context, f: Finding) -> Result:
    """Each failure-mode document has a decision tree."""
    modes = _modes(ctx, f)
    for mode, _ in modes:
        path = ctx.docs / "failure_modes" / f"{mode}.md"
        f.look(ctx.rel(path))
        if not path.is_file():
            f.warn("the file does not exist", ctx.rel(path))
        elif not any("decision tree" in text.lower() for _, text in headings(path)):
            f.warn(f"{mode}.md has no decision tree section", ctx.rel(path))
    return f.result(f"{len(modes)} decision trees")


@check("SM-DEF-003", fix=REINSTALL + " (in a checkout: `python tools/gen_docs.py`)")
def _sm_def_003(ctx: Context, f: Finding) -> Result:
    """STATE_MACHINE.md says it is generated from the YAML and holds every transition."""
    path = _doc(ctx, f, EXEC, "STATE_MACHINE.md")
    if path is not None:
        head = path.read_text(encoding="utf-8")[:600].lower()
        if "generated" not in head or "yaml" not in head:
            f.warn("STATE_MACHINE.md does not say it is generated from the YAML", ctx.rel(path),
                   1)
        _every_name_in(ctx, f, path)
    return f.result("STATE_MACHINE.md is generated from the lifecycle YAML and current")


def missing_sections(path: Path) -> list[str] | None:
    """The MOD-IDX-001 sections a module's docstring lacks; None when it has no docstring."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return None
    doc = ast.get_docstring(tree)
    if doc is None:
        return None
    return module_index.missing_sections(doc)


@check("MOD-IDX-001", fix="add the missing sections to the module's docstring (`orch index` "
       "lists every module with its sections)")
def _mod_idx_001(ctx: Context, f: Finding) -> Result:
    """Every kernel module's docstring has Public API, Stability Guarantees, Integration
    Points and Dependencies."""
    modules = module_index.kernel_modules(ctx.source)
    f.look(str(ctx.source))
    for path in modules:
        missing = missing_sections(path)
        rel = str(path.relative_to(ctx.source.parent))
        if missing is None:
            f.fail("has no module docstring", rel, 1)
        elif missing:
            f.fail(f"its docstring lacks {', '.join(missing)}", rel, 1)
    return f.result(f"{len(modules)} modules, each with the four sections")


@check("AUDIT-002", fix="keep events 90 days: `orch audit rotate --older-than 90d` is the "
       "shortest rotation without --force-short-retention")
def _audit_002(ctx: Context, f: Finding) -> Result:
    """Events are kept at least 90 days; the rotation policy is documented; archives are
    verified."""
    from kernel.observe.archive import MIN_RETENTION_DAYS

    path = _doc(ctx, f, "operations", "AUDIT_RETENTION.md")
    if path is not None and "90" not in path.read_text(encoding="utf-8"):
        f.fail("AUDIT_RETENTION.md does not state the 90-day retention", ctx.rel(path))
    f.look("kernel.observe.archive.MIN_RETENTION_DAYS")
    if MIN_RETENTION_DAYS < 90:
        f.fail(f"the minimum retention is {MIN_RETENTION_DAYS} days")
    if ctx.has_db:
        _archives(ctx, f)
    return f.result("90 days kept; rotation documented; every archive verifies")


def _archives(ctx: Context, f: Finding) -> None:
    from kernel.observe.archive import verify
    from kernel.store.eventlog import archive_dir

    directory = archive_dir(ctx.state_dir)
    f.look("the event archives (`orch audit verify`)")
    report = verify(ctx.conn, directory)
    for name, result in report["files"].items():
        for problem in result["problems"]:
            f.fail(f"archive {name}: {problem}", ctx.rel(directory / name))
    if not report["continuity"]["ok"]:
        c = report["continuity"]
        f.fail(f"the archives hold {c['archived_events']} events below the live log's first "
               f"(seq {c['live_first_seq']}); {c['expected']} were expected")


@check("SCHEMA-VER-002", fix=REINSTALL)
def _schema_ver_002(ctx: Context, f: Finding) -> Result:
    """docs/schema_migrations/ documents the versioning policy and the task v1 -> v2
    migration: dry run, backup, rollback, the defaults."""
    policy = _doc(ctx, f, "schema_migrations", "VERSIONING.md")
    if policy is not None:
        found = " | ".join(t.lower() for _, t in headings(policy))
        for topic in ("compatibility", "deprecated fields", "tools"):
            if topic not in found:
                f.fail(f"VERSIONING.md has no section on {topic}", ctx.rel(policy))
    task = _doc(ctx, f, "schema_migrations", "task_v1_to_v2.md")
    if task is not None:
        text = task.read_text(encoding="utf-8")
        for needed in ("--dry-run", "tasks/.backups/", "--restore-backup",
                       "max_context_tokens", "context_requirements", "validation_rules"):
            if needed not in text:
                f.fail(f"task_v1_to_v2.md does not document {needed}", ctx.rel(task))
    return f.result("the policy and the v1 -> v2 migration are documented")
