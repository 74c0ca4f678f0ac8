"""Words for people: counts with the right singular or plural.

Public API:
    ``plural(n, word, words=None) -> str`` ("1 task", "2 tasks", "1 entry", "3 entries").

Stability Guarantees:
    Text for people only; nothing parses it.

Integration Points:
    The command line's text output (``kernel.cli``) and ``orch run``'s summary.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and ``word``, or ``words`` (default ``word + "s"``) unless ``n`` is 1."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"
