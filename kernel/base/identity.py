"""Who is acting: the operator's name, stamped on the events an operator command causes.

Public API:
    ``operator_name() -> str``.

Stability Guarantees:
    Never raises: ``unknown`` when the login name cannot be found (no USER/LOGNAME and no passwd
    entry, as in some containers).

Integration Points:
    ``kernel.runtime.actions`` (cancel, retry, skip, reset) and ``kernel.observe.archive``
    (``orch audit rotate``) put it into event metadata as ``operator``.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import getpass


def operator_name() -> str:
    """The login name of whoever runs the command (``unknown`` when it cannot be found)."""
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"
