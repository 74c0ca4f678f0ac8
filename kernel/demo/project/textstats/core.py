"""Counting things in text."""

from __future__ import annotations


def line_count(text: str) -> int:
    """Lines in ``text``; a last line without a newline counts too."""
    return len(text.splitlines())


def char_count(text: str, *, spaces: bool = True) -> int:
    """Characters in ``text``; without whitespace when ``spaces`` is false."""
    if spaces:
        return len(text)
    return sum(1 for ch in text if not ch.isspace())
