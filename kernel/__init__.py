"""orch: an embedded, SQLite-centric orchestration kernel for AI coding-agent work.

Public API:
    ``__version__``. The library is organised as small noun modules: ``kernel.store.db``
    (connections,
    migrations), ``kernel.store.machines`` (state machines as data), ``kernel.store.project``
    (project layout
    and configuration), ``kernel.maintain.doctor``, ``kernel.observe.audit`` and ``kernel.cli``
    (the ``orch``
    command).

Stability Guarantees:
    Pre-1.0: the command line contract (command names, ``--json`` shapes, exit codes) and the
    on-disk formats are versioned and changed only with a CHANGELOG entry and a migration path.
    Python-level APIs may still change between minor versions.

Integration Points:
    The ``orch`` console script (``kernel.cli:main``); the SQLite file ``.state/kernel.db``, which
    any SQLite client may read.

Dependencies:
    None (standard library only).
"""

__version__ = "0.1.0"
