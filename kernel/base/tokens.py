"""How many tokens a text costs an agent's context: one conservative estimate, used everywhere.

Public API:
    ``BYTES_PER_TOKEN`` (3); ``estimate_tokens(n_bytes) -> int`` (bytes / 3, rounded up);
    ``text_tokens(text) -> int`` (the same for a string, counted in UTF-8 bytes).

Stability Guarantees:
    Over- rather than under-estimated: BPE tokenizers average about 4 bytes per token on
    English and code, so a text estimated within a budget fits it. The ratio changes only with
    a CHANGELOG entry (budgets written against it would move).

Integration Points:
    The agent executors' context budget (``kernel.runtime.executors.agentkit``, AIDER-INT-002) and
    ``orch prime``'s ``--max-tokens`` (``kernel.observe.agent_brief``) count with it, so a
    summary that fits its budget fits the agent's by the same measure.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

BYTES_PER_TOKEN = 3


def estimate_tokens(n_bytes: int) -> int:
    """Tokens of ``n_bytes`` bytes of text, over- rather than under-estimated (bytes / 3)."""
    return -(-n_bytes // BYTES_PER_TOKEN)


def text_tokens(text: str) -> int:
    """``estimate_tokens`` of ``text`` encoded as UTF-8."""
    return estimate_tokens(len(text.encode("utf-8")))
