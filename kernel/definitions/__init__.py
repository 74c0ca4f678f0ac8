"""Task definitions: the models, the registries, parsing one file, checking a tree, loading it.

Public API:
    The modules, bottom to top: ``fields`` (versions, shared field types, base models),
    ``errors`` (``DefinitionError``), ``models`` (task, workstream, attempt output),
    ``task_documents`` (one task document of any version), ``registries`` (capabilities and
    resources), ``commands`` (placeholders: how a command becomes an argv), ``records`` (problems
    and records), ``task_checks`` and ``taskfiles`` (one file), ``discover`` and ``collect`` (a
    tree), ``check`` (across files and against the database: ``orch validate``), ``load``
    (``orch load``), ``migrate_tasks``, ``offers`` (what this machine meets of the capability
    catalog), ``fit`` (can a task ever run on the registered workers and resources).

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports ``kernel.base``, ``kernel.store`` and ``kernel.planning``.

Dependencies:
    None (standard library only).
"""
