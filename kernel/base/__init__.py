"""The bottom layer: what every other layer may use, and which knows nothing of the database.

Public API:
    The modules: ``errors`` (OrchError and the exit codes), ``clock``, ``files`` (private files,
    atomic writes),
    ``config`` (orch.toml), ``documents`` (the strict JSON/TOML parse layer), ``data`` (bundled
    SQL, YAML and schema addresses), ``processes`` (process groups, the subreaper), ``faults``
    (fault points for the kill campaigns), ``identity`` (the operator's name).

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports only the standard library and third-party packages, never another layer.

Dependencies:
    None (standard library only).
"""
