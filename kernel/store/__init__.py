"""The database layer: the one connection factory, the schema, the state machines' tables, the
event catalog and the project's paths.

Public API:
    The modules: ``db`` (opening, transactions, pragmas, ``open_file``), ``dbcheck`` (is this
    file our database: the checks before opening it, and the migrations), ``schema``
    (``connect``: open and bring up to date), ``machines`` (the YAML state machines, their
    tables, ``transition_in_tx``, terminal and cancellable states), ``reference`` (failure
    modes), ``events`` (the event catalog and ``emit_event_in_tx``), ``eventlog`` (the one
    event reader, live and archived, and the archive file format), ``queries`` (the set-based
    state moves), ``project`` (a project's paths and its connection).

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports ``kernel.base`` only. The only layer that writes states and events
    (tests/test_layers.py).

Dependencies:
    None (standard library only).
"""
