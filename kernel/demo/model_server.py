"""A scripted, OpenAI-compatible model server: real HTTP on 127.0.0.1, replies from a script.

Public API:
    ``ScriptedModelServer(replies, requests_log=None)`` (``start()``, ``stop()``, ``url``,
    ``requests``; a context manager), ``Reply`` (one scripted answer), ``whole_file(path,
    content)`` and ``search_replace(path, search, replace)`` (reply texts in Aider's ``whole``
    and ``diff`` edit formats), ``load_script(path)``, ``main(argv)``; run it as a process with
    ``python -m kernel.demo.model_server --script FILE [--port-file F] [--requests-log F]``.

Stability Guarantees:
    Binds 127.0.0.1 only, on a free port unless ``--port`` is given; threaded. Answers
    ``POST /v1/chat/completions`` (also without the ``/v1`` prefix), non-streaming, or as
    server-sent events when the request asks for ``"stream": true``; ``GET /v1/models`` lists
    the model ``test-model``. Each request consumes the next reply of the script; after the
    last one every request gets HTTP 500 ("script exhausted"), so a model that is asked more
    than the script foresaw is a visible failure, never a repeated edit. A reply is a text with
    ``usage`` token counts (given, or estimated as characters / 4), or one of the modes
    ``fail`` (HTTP ``status``, 500 by default), ``stall`` (sleep ``seconds``, then answer) and
    ``garbage`` (HTTP 200 with a body that is not JSON). A reply with ``when`` is not taken in
    turn: it answers every request whose messages contain its text (the demo keys its edits by
    task this way, so the order in which tasks ask does not matter). Every request received is
    appended, as one JSON line, to ``requests_log`` before it is answered: an empty log proves
    that no client ever called the model. As a process it prints ``http://127.0.0.1:PORT/v1`` as its
    first line of standard output (and writes it to ``--port-file``), then serves until
    SIGTERM or SIGINT.

Integration Points:
    The tests of the Aider executor (``tests/test_agents_aider.py``) run it as a real process
    and point Aider at it with ``--openai-api-base``; the demo can do the same. It imports
    nothing from the kernel.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["Reply", "ScriptedModelServer", "load_script", "main", "search_replace",
           "whole_file"]

MODEL = "test-model"


def whole_file(path: str, content: str) -> str:
    """A reply in Aider's ``whole`` edit format: the file's path, then its whole new content."""
    body = content if content.endswith("\n") else content + "\n"
    return f"{path}\n```\n{body}```\n"


def search_replace(path: str, search: str, replace: str) -> str:
    """A reply in Aider's ``diff`` edit format: one search/replace block for ``path``."""
    def line(text: str) -> str:
        return text if not text or text.endswith("\n") else text + "\n"
    return (f"{path}\n```\n<<<<<<< SEARCH\n{line(search)}=======\n{line(replace)}"
            f">>>>>>> REPLACE\n```\n")


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``mode``: ``text`` (answer ``content``), ``fail`` (HTTP ``status``),
    ``stall`` (sleep ``seconds``, then answer ``content``), ``garbage`` (a body that is not
    JSON). ``prompt_tokens`` / ``completion_tokens``: the usage to report (None: estimated).
    ``when``: answer every request whose messages contain this text (never used up)."""

    content: str = ""
    mode: str = "text"
    status: int = 500
    seconds: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    when: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Reply:
        if isinstance(data, str):
            return cls(content=data)
        if not isinstance(data, dict):
            raise ValueError(f"a reply is a string or an object, not {data!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown reply keys: {', '.join(sorted(unknown))}")
        reply = cls(**data)
        if reply.mode not in ("text", "fail", "stall", "garbage"):
            raise ValueError(f"unknown reply mode {reply.mode!r}")
        return reply


def load_script(path: str | Path) -> list[Reply]:
    """A script file: a JSON list of replies (strings, or objects with Reply's fields)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError("a script is a JSON list of replies")
    return [Reply.from_json(item) for item in data]


class ScriptedModelServer:
    """The server; ``start()`` binds 127.0.0.1 and serves in a thread."""

    def __init__(self, replies: list[Reply], requests_log: str | Path | None = None,
                 port: int = 0) -> None:
        self._replies = list(replies)
        self._next = 0
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.requests_log = Path(requests_log) if requests_log else None
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> ScriptedModelServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def take(self, request: dict[str, Any]) -> Reply | None:
        """Record a request and return its reply (None when the script is used up)."""
        with self._lock:
            self.requests.append(request)
            if self.requests_log is not None:
                with open(self.requests_log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(request) + "\n")
            text = _message_text(request.get("body"))
            for reply in self._replies:
                if reply.when is not None and reply.when in text:
                    return reply
            while self._next < len(self._replies):
                reply = self._replies[self._next]
                self._next += 1
                if reply.when is None:
                    return reply
            return None


def _message_text(body: Any) -> str:
    """The text of a chat request's messages (string contents and text parts)."""
    out: list[str] = []
    for message in (body or {}).get("messages") or [] if isinstance(body, dict) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [str(part.get("text", "")) for part in content if isinstance(part, dict)]
    return "\n".join(out)


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the requests log is the record

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": {"message": message, "type": "server_error",
                                                 "code": status}}).encode())

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": MODEL, "object": "model", "owned_by": "orch"}]}).encode())
        else:
            self._error(404, f"no such path: {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no such path: {self.path}")
            return
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "the request body is not JSON")
            return
        reply = self.owner.take({"path": self.path, "body": request})
        if reply is None:
            self._error(500, "script exhausted: the scripted model has no more replies")
            return
        if reply.mode == "fail":
            self._error(reply.status, "scripted failure")
            return
        if reply.mode == "garbage":
            self._send(200, b"<html>this is not a chat completion", "text/html")
            return
        if reply.mode == "stall":
            time.sleep(reply.seconds)
        prompt_chars = sum(len(str(m.get("content") or ""))
                           for m in request.get("messages") or [] if isinstance(m, dict))
        usage = {"prompt_tokens": reply.prompt_tokens if reply.prompt_tokens is not None
                 else max(1, prompt_chars // 4),
                 "completion_tokens": reply.completion_tokens
                 if reply.completion_tokens is not None else max(1, len(reply.content) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        model = str(request.get("model") or MODEL)
        if request.get("stream"):
            self._stream(model, reply.content, usage)
        else:
            self._send(200, json.dumps({
                "id": "chatcmpl-orch", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply.content}}],
                "usage": usage}).encode())

    def _stream(self, model: str, content: str, usage: dict[str, int]) -> None:
        def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
            data = {"id": "chatcmpl-orch", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(data)}\n\n".encode()

        body = (chunk({"role": "assistant", "content": content}, None)
                + chunk({}, "stop", usage=usage) + b"data: [DONE]\n\n")
        self._send(200, body, "text/event-stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernel.demo.model_server",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--script", required=True, help="JSON list of replies")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--port-file", help="write the base URL here once listening")
    parser.add_argument("--requests-log", help="append each request here, one JSON line")
    args = parser.parse_args(argv)
    server = ScriptedModelServer(load_script(args.script), args.requests_log, args.port).start()
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(server.url + "\n")
        tmp.replace(args.port_file)
    print(server.url, flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
