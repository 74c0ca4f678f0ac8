"""``orch index``: write ``.state/module_index.json``, the index of the kernel's modules.

Public API:
    ``COMMANDS`` (``index``).

Stability Guarantees:
    See ``kernel.cli``. ``--json`` prints ``{"path", "modules", "incomplete": [{module,
    missing_sections}]}``; the file itself is ``kernel.observe.module_index.build_index()``
    (schemas/module-index.schema.json). Exit 0; exit 1 when a module lacks a MOD-IDX-001
    section (the index is written all the same) or the project has no ``.state/`` (nothing is
    written: ``orch init`` first). The database is not opened.

Integration Points:
    ``kernel.observe.module_index``.

Dependencies:
    click; ``kernel.base.errors``, ``kernel.cli.common``, ``kernel.observe.module_index``.
"""

from __future__ import annotations

import click

from kernel.base.errors import EXIT_FAILED, EXIT_OK, OrchError
from kernel.cli.common import CliState, command, emit
from kernel.observe import module_index


@command("index")
def index_cmd(state: CliState) -> int:
    """Write .state/module_index.json: each kernel module's summary and docstring sections."""
    project = state.project()
    if not project.state_dir.is_dir():
        raise OrchError("not_initialised", f"{project.state_dir} does not exist",
                        file=str(project.state_dir),
                        hint="run `orch init` in the project root (or pass --root DIR)")
    path, doc = module_index.write_index(project.state_dir)
    incomplete = [{"module": m["module"], "missing_sections": m["missing_sections"]}
                  for m in doc["modules"] if m["missing_sections"]]
    data = {"path": str(path), "modules": len(doc["modules"]), "incomplete": incomplete}

    def text() -> None:
        click.echo(f"wrote {path}: {len(doc['modules'])} modules")
        for m in incomplete:
            click.echo(f"  {m['module']}: no {', '.join(m['missing_sections'])} section")

    emit(state, data, text)
    return EXIT_FAILED if incomplete else EXIT_OK


COMMANDS = [index_cmd]
