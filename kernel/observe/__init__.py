"""The read side: the ``.state`` JSON exports, status and why, the audit report and its
rotation, replay, metrics, the published JSON Schemas.

Public API:
    The modules: ``exports``, ``status``, ``audit``, ``archive``, ``replay``, ``metrics``,
    ``schemas``.

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports the layers below (base, store, planning, definitions), never the runtime: the runtime
    calls the exporter after it commits (STATE-OBS-001), so the read side sits below it.

Dependencies:
    None (standard library only).
"""
