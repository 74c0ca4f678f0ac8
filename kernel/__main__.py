"""``python -m kernel``: the same as the ``orch`` command (how ``orch run`` starts its workers).

Public API:
    None beyond the command line.

Stability Guarantees:
    Identical to ``orch``.

Integration Points:
    ``kernel.runtime.runner.spawn_worker`` runs ``python -m kernel worker ...`` with the
    interpreter of
    the running ``orch``, so workers always use the same installation.

Dependencies:
    ``kernel.cli``.
"""

from kernel.cli import main

if __name__ == "__main__":
    main()
