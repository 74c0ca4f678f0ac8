"""Keeping a project healthy: backups and restores, bug-report bundles, redaction, the doctor.

Public API:
    The modules: ``backup``, ``bundle``, ``redact``, ``doctor``.

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports every layer below it.

Dependencies:
    None (standard library only).
"""
