"""``orch`` commands: demo (being written).

Public API:
    ``COMMANDS``.

Stability Guarantees:
    See ``kernel.cli``.

Integration Points:
    Registered by ``kernel.cli._register``.

Dependencies:
    click; ``kernel.cli.common``.
"""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
