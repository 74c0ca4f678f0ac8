"""Plans from a task graph: the DAG with bottom levels and the critical path, execution plans,
rendering.

Public API:
    The modules: ``dag`` (the graph algorithms, one longest-path computation, the plan
    documents), ``plan`` (plans read from the database), ``render`` (Mermaid and DOT),
    ``generate`` (seeded test graphs).

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports ``kernel.base`` and ``kernel.store``.

Dependencies:
    None (standard library only).
"""
