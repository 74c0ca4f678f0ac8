"""Task definitions: the models, the registries, parsing one file, checking a tree, loading it.

Public API:
    The modules: ``models``, ``registries`` (capabilities and resources), ``taskfiles`` (one file),
    ``check`` (a whole tree: ``orch validate``), ``load`` (``orch load``), ``migrate_tasks``,
    ``commands`` (placeholders: how a command becomes an argv), ``fit`` (can a task ever run
    on the registered workers and resources).

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports ``kernel.base``, ``kernel.store`` and ``kernel.planning``.

Dependencies:
    None (standard library only).
"""
