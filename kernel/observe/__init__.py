"""The read side: the ``.state`` JSON exports, status and why, the audit report and its
rotation, replay, metrics, the published JSON Schemas.

Public API:
    The modules: ``exports`` (writing the ``.state`` views, in order), ``view_documents`` and
    ``view_models`` (their documents and models), ``documents`` (the one renderer and writer
    of ``.state`` JSON documents), ``status``, ``audit``, ``archive`` (rotation and
    verification; the archive format and the event reader are ``kernel.store.eventlog``),
    ``replay``, ``metrics`` (the public names of ``metrics_document``, ``metrics_history`` and
    ``prometheus``), ``schemas``.

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
