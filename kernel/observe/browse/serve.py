"""The Datasette process of ``orch browse``: Datasette over the kernel database and the event
archives, on a socket its parent bound, until Ctrl-C, SIGTERM or its parent's end.

Usage: ``python -m kernel.observe.browse.serve`` with one JSON line on stdin:
``{"fd": N, "files": [...], "metadata": {...}, "settings": {...}}``; stdin then stays open
for as long as the parent wants the server to run.

Public API:
    ``main() -> int``; ``SETTINGS`` (the Datasette settings ``orch browse`` always uses);
    ``read_only(app)`` (the ASGI wrapper that refuses every method but GET and HEAD);
    ``READ_ONLY`` (its message).

Stability Guarantees:
    Serves on the inherited, already listening socket ``fd`` only (the parent chose the
    address: 127.0.0.1). Databases are opened in Datasette's mutable mode (``mode=ro``, never
    ``immutable=1``, which would show a live WAL database stale); the plugin makes their
    connections ``query_only``, and ``read_only`` answers any POST, PUT, PATCH or DELETE with
    405 before Datasette sees it. Database downloads are off, and no plugin setting enables
    writes or uploads. Stops cleanly on SIGINT or SIGTERM (uvicorn's graceful shutdown) and
    when stdin reaches end of file (the parent has gone). Never opens a file with apsw. A
    missing page is a 404 (see ``_plain_tracebacks``).

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
READ_ONLY = "orch browse is read-only: it answers GET and HEAD only"


def _register_plugin() -> None:
    from datasette.plugins import pm

    from kernel.observe.browse import plugin

    if not any(getattr(p, "__name__", "") == plugin.__name__ for p in pm.get_plugins()):
        pm.register(plugin, plugin.__name__)


def _plain_tracebacks() -> None:
    """Datasette 0.65 prints every error (a 404 too) with rich's ``print_exception``, which
    rich 13.8 and later refuse outside an ``except`` block: the ValueError turned each 404
    into a 500. Without rich, Datasette prints real errors with ``traceback``."""
    import datasette.handle_exception

    datasette.handle_exception.rich = None


def read_only(app: Any) -> Any:
    """The ASGI app, answering every request but GET and HEAD with 405: no form, canned
    query, plugin or API of Datasette can receive a write through ``orch browse``."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            body = json.dumps({"ok": False, "status": 405, "error": READ_ONLY}).encode()
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"allow", b"GET, HEAD")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped


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
    _plain_tracebacks()
    ds = Datasette(config["files"], metadata=config["metadata"],
                   settings={**SETTINGS, **config.get("settings", {})}, cors=False)
    asyncio.run(ds.invoke_startup())
    sock = socket.socket(fileno=int(config["fd"]))
    server = uvicorn.Server(uvicorn.Config(read_only(ds.app()), log_level="warning", lifespan="on",
                                           access_log=False))
    threading.Thread(target=_watch_parent, args=(server,), daemon=True).start()
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
