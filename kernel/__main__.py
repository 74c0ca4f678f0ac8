"""``python -m kernel``: the same as the ``orch`` command; ``python -m kernel --managed-worker``
is how ``orch run`` starts a worker it does not fork.

Public API:
    None beyond the command line.

Stability Guarantees:
    Identical to ``orch``. ``--managed-worker ...`` (first argument; not for people) runs
    ``kernel.runtime.worker.managed_main`` without importing the command line.

Integration Points:
    ``kernel.runtime.runner.spawn_worker`` runs ``python -m kernel --managed-worker ...`` with
    the interpreter of the running ``orch``, so workers always use the same installation.

Dependencies:
    ``kernel.cli``, ``kernel.runtime.worker``.
"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["--managed-worker"]:
        from kernel.runtime.worker import managed_main

        sys.exit(managed_main(sys.argv[2:]))
    from kernel.cli import main

    main()
