"""The Datasette process of ``orch browse``: Datasette over the kernel database and the event
archives, on a socket its parent bound, until Ctrl-C, SIGTERM or its parent's end.

Usage: ``python -m kernel.observe.browse.serve`` with one JSON line on stdin:
``{"fd": N, "files": [...], "metadata": {...}, "settings": {...}}``; stdin then stays open
for as long as the parent wants the server to run.

Public API:
    ``main() -> int``; ``SETTINGS`` (the Datasette settings ``orch browse`` always uses).

Stability Guarantees:
    Serves on the inherited, already listening socket ``fd`` only (the parent chose the
    address: 127.0.0.1). Databases are opened in Datasette's mutable mode (``mode=ro``, never
    ``immutable=1``, which would show a live WAL database stale); the plugin makes their
    connections ``query_only``. Database downloads are off, and no plugin setting enables
    writes or uploads. Stops cleanly on SIGINT or SIGTERM (uvicorn's graceful shutdown) and
    when stdin reaches end of file (the parent has gone). Never opens a file with apsw.

Integration Points:
    Started by ``kernel.cli.browse``; ``kernel.observe.browse.plugin`` is registered here
    when the entry point is not installed (a source checkout).

Dependencies:
    datasette, uvicorn; ``kernel.observe.browse.plugin``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from typing import Any

SETTINGS: dict[str, Any] = {
    "allow_download": False,
    "sql_time_limit_ms": 5000,
    "facet_time_limit_ms": 500,
    "truncate_cells_html": 300,
}


def _register_plugin() -> None:
    from datasette.plugins import pm

    from kernel.observe.browse import plugin

    if not any(getattr(p, "__name__", "") == plugin.__name__ for p in pm.get_plugins()):
        pm.register(plugin, plugin.__name__)


def _watch_parent(server: Any) -> None:
    """Stop when stdin closes: the parent ended (even killed) without stopping us."""
    while sys.stdin.readline():
        pass
    server.should_exit = True


def main() -> int:
    config = json.loads(sys.stdin.readline())
    import uvicorn
    from datasette.app import Datasette

    _register_plugin()
    ds = Datasette(config["files"], metadata=config["metadata"],
                   settings={**SETTINGS, **config.get("settings", {})}, cors=False)
    asyncio.run(ds.invoke_startup())
    sock = socket.socket(fileno=int(config["fd"]))
    server = uvicorn.Server(uvicorn.Config(ds.app(), log_level="warning", lifespan="on",
                                           access_log=False))
    threading.Thread(target=_watch_parent, args=(server,), daemon=True).start()
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
