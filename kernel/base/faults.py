"""Named fault-injection points, switched on by an environment variable, for the campaigns
that prove the kernel's promises (a worker killed at the worst moment, a slow commit).

Public API:
    ``point(name)``: does nothing unless ``ORCH_FAULTS`` names ``name``; ``POINTS`` (the known
    names and where they are); ``ENV``.

Stability Guarantees:
    ``ORCH_FAULTS`` is a comma-separated list of ``NAME:sleep=SECONDS`` or ``NAME:exit`` entries,
    e.g. ``ORCH_FAULTS=after_spawn:sleep=3``. Unset (the normal case), ``point`` costs one
    dictionary lookup. An unknown name or action is ignored with a warning on stderr, never an
    error: a fault setting must not stop real work.

Integration Points:
    ``kernel.runtime.executors.local`` (``after_spawn``: the command's process exists, its process
    group
    is not yet recorded), the kill campaign (``tools/kill_campaign.py``) and the tests that kill
    a worker inside that window.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import os
import sys
import time

ENV = "ORCH_FAULTS"

POINTS = {
    "after_spawn": "the task's process was started and waits at its gate; its process group "
                   "is not yet committed to attempt.pgid",
    "before_finish": "the command ended; its outcome is not yet committed",
    "run_setup": "`orch run` holds the database but has not started its workers yet",
}


def _parse(text: str) -> dict[str, tuple[str, float]]:
    found: dict[str, tuple[str, float]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, action = item.partition(":")
        verb, _, value = action.partition("=")
        if name not in POINTS or verb not in ("sleep", "exit"):
            sys.stderr.write(f"orch: ignoring unknown fault {item!r} in {ENV}\n")
            continue
        try:
            found[name] = (verb, float(value or 0))
        except ValueError:
            sys.stderr.write(f"orch: ignoring fault {item!r} in {ENV}: not a number\n")
    return found


_ACTIVE = _parse(os.environ.get(ENV, ""))


def point(name: str) -> None:
    """Act out the fault configured for ``name``, if any."""
    fault = _ACTIVE.get(name)
    if fault is None:
        return
    verb, value = fault
    if verb == "sleep":
        time.sleep(value)
    else:
        os._exit(int(value) or 99)
