"""``python -m kernel``: the same as the ``orch`` command (how ``orch run`` starts a worker it
does not fork).

Public API:
    None beyond the command line.

Stability Guarantees:
    Identical to ``orch``. ``python -m kernel --root DIR worker --managed-by OWNER
    --parent-pid PID [--name NAME] [--workstream WS]...``, exactly the command line
    ``orch run`` spawns, runs ``kernel.runtime.worker.managed_main`` without importing the
    command line (click, the command table); with any other option it is ``orch worker``.

Integration Points:
    ``kernel.runtime.runner.spawn_worker`` runs that command with the interpreter of the
    running ``orch``, so workers always use the same installation.

Dependencies:
    ``kernel.cli``, ``kernel.runtime.worker``.
"""

import sys

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--root"] and argv[2:3] == ["worker"] and "--managed-by" in argv[3:]:
        from kernel.runtime.worker import managed_main

        code = managed_main([*argv[:2], *argv[3:]])
        if code is not None:
            sys.exit(code)
    from kernel.cli import main

    main()
