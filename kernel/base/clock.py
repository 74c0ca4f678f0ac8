"""Time as the kernel writes it: ISO-8601 UTC with milliseconds and a ``Z``.

Public API:
    ``iso(t)`` (datetime or epoch seconds → ``2026-11-24T10:15:00.123Z``), ``now_iso()``,
    ``parse(text) -> datetime``, ``epoch(text) -> float``, ``later(text, seconds) -> str``.

Stability Guarantees:
    The text form matches the ``event.timestamp`` CHECK and SQLite's
    ``strftime('%Y-%m-%dT%H:%M:%fZ')``, so timestamps written by Python and by SQL compare as text.

Integration Points:
    The scheduler, the workers, the leases and the operator commands stamp rows and events with
    these; ``tick(conn, now)`` takes ``now`` as epoch seconds so tests can drive time.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso(t: datetime | float | None = None) -> str:
    if t is None:
        t = time.time()
    if isinstance(t, datetime):
        d = (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)
    else:
        d = datetime.fromtimestamp(t, UTC)
    # Field by field: a strftime format costs twice as much, on every transition.
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:"
            f"{d.second:02d}.{d.microsecond // 1000:03d}Z")


def now_iso() -> str:
    return iso(time.time())


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def epoch(text: str) -> float:
    return parse(text).timestamp()


def later(text: str, seconds: float) -> str:
    return iso(epoch(text) + seconds)
