"""``orch export``: being written.

Public API:
    ``COMMANDS``.

Stability Guarantees:
    None yet.

Integration Points:
    Registered by ``kernel.cli._register``.

Dependencies:
    click.
"""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
