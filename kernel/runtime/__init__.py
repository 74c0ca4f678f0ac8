"""Running tasks: leases, claims, the scheduler's tick, workers, ``orch run``, operator actions,
rules, worktrees, executors and the run's progress display.

Public API:
    The modules: ``leases``, ``attempts`` (an attempt's bookkeeping inside a transaction),
    ``claims`` (the worker's transactions), ``context`` (``TickContext``, ``TickReport``),
    ``lock`` (the scheduler lock), ``health`` (lost workers), ``workstreams`` (their worktrees
    and states), ``scheduler`` (the tick), ``worker``, ``runner``, ``actions`` (cancel, retry,
    skip, reset), ``rules``, ``worktree``, ``progress``, ``executors``.

Stability Guarantees:
    The layers, bottom to top: base, store, planning, definitions, observe, runtime, maintain,
    then cli, demo and bench. A module imports only from its own package or from packages below
    it, deferred imports included (tests/test_layers.py; docs/execution_model/OVERVIEW.md).

Integration Points:
    Imports every layer below it, including ``kernel.observe`` (the exporter keeps ``.state``
    current).

Dependencies:
    None (standard library only).
"""
