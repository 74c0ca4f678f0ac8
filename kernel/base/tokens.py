"""How many tokens a text costs an agent's context: one conservative estimate, used everywhere.

Public API:
    ``BYTES_PER_TOKEN`` (3); ``estimate_tokens(n_bytes) -> int`` (bytes / 3, rounded up: when
    only a size is known); ``text_tokens(text) -> int``; ``file_tokens(path) -> int``.

Stability Guarantees:
    Over- rather than under-estimated. A text counts one token per 3 bytes of ASCII, rounded
    up, plus one per other character (two for a character outside the Basic Multilingual
    Plane, such as an emoji). Measured against cl100k_base, o200k_base and Anthropic's
    tokenizer (``tools/measure_token_estimate.py``; docs/agents/README.md, "The token
    estimate"): 1.24-1.38x the real count on Python and Markdown, 1.03-1.76x on Japanese,
    Russian and Greek, where bytes / 3 alone under-counted Greek (0.81x). A file counts as its
    text (decoded as UTF-8, bad bytes replaced); beyond ``MAX_READ_BYTES`` it counts bytes / 3.
    The rule changes only with a CHANGELOG entry (budgets written against it would move).

Integration Points:
    The agent executors' context budget (``kernel.runtime.executors.agentkit``, AIDER-INT-002) and
    ``orch prime``'s ``--max-tokens`` (``kernel.observe.agent_brief``) count with it, so a
    summary that fits its budget fits the agent's by the same measure.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import os

BYTES_PER_TOKEN = 3
MAX_READ_BYTES = 64 * 1024 * 1024


def estimate_tokens(n_bytes: int) -> int:
    """Tokens of ``n_bytes`` bytes of text, over- rather than under-estimated (bytes / 3)."""
    return -(-n_bytes // BYTES_PER_TOKEN)


def text_tokens(text: str) -> int:
    """Tokens of ``text``: ASCII at 3 bytes per token, one per other character (two outside
    the Basic Multilingual Plane)."""
    if text.isascii():
        return estimate_tokens(len(text))
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    astral = sum(1 for ch in text if ch > "\uffff")
    return estimate_tokens(ascii_chars) + len(text) - ascii_chars + astral


def file_tokens(path: str | os.PathLike[str]) -> int:
    """Tokens of a file's text (0 when it cannot be read); bytes / 3 past MAX_READ_BYTES."""
    try:
        size = os.stat(path).st_size
        if size > MAX_READ_BYTES:
            return estimate_tokens(size)
        with open(path, "rb") as fh:
            return text_tokens(fh.read().decode("utf-8", "replace"))
    except OSError:
        return 0
