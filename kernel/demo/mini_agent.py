"""A minimal coding-agent CLI: one request to an OpenAI-compatible model, whole-file edits.

Public API:
    ``main(argv) -> int``; ``parse_edits(text) -> dict[str, str]``; ``build_messages(message,
    files, read_only) -> list[dict]``. Run as ``python -m kernel.demo.mini_agent --api-base URL
    --model M --message-file F [--read R]... [FILE]...``, or with ``--script EDITS.json``
    instead of ``--api-base``: a scripted stand-in that asks no model.

Stability Guarantees:
    It sends one chat-completion request: a system message asking for whole-file edits, then
    the task's message with the content of each editable FILE and each read-only file. Each
    block of the reply that is a path on its own line followed by a fenced block becomes that
    file's new content, written relative to the working directory — whatever path the model
    names (orch, not this program, judges whether an edit was allowed). The reply is printed,
    then ``Tokens: N sent, M received.`` from the server's ``usage``, which is also written to
    ``$ORCH_AGENT_REPORT`` (``tokens_used``, ``model``) when that variable is set. An
    unreachable server, an HTTP error or a reply that is not JSON print the reason and exit 1.
    The key, when needed, comes from ``OPENAI_API_KEY``.
    **Scripted.** With ``--script EDITS.json`` (``{task_id: {path: content}}``) it asks no
    model: it writes the edits prepared for ``$ORCH_TASK_ID``, says on its first line that they
    were scripted, and reports 0 tokens with the model ``scripted``. A task the script has no
    edits for exits 1. ``orch init --example`` uses it, so the example runs with no model, no
    key and no network.

Integration Points:
    The demo's agent tasks run it through the generic ``agent`` executor
    (``kernel.runtime.executors.agent``) against ``kernel.demo.model_server``; it is also a
    small worked example of an agent CLI that orch can drive. It imports nothing from the
    kernel.

Dependencies:
    None (standard library only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["build_messages", "main", "parse_edits"]

SYSTEM = ("You are a coding agent. To change a file, answer with its path on a line of its own "
          "followed by its whole new content in a ``` fenced block. Change only the files you "
          "were asked to.")
_BLOCK = re.compile(r"^([^\s`][^\n]*?)[ \t]*\n```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def parse_edits(text: str) -> dict[str, str]:
    """Path -> new content of every whole-file block in a reply."""
    return {m.group(1).strip(): m.group(2) for m in _BLOCK.finditer(text)}


def _fenced(path: str, label: str) -> str:
    try:
        body = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} ({label}, does not exist yet)\n"
    if body and not body.endswith("\n"):
        body += "\n"
    return f"{path} ({label})\n```\n{body}```\n"


def build_messages(message: str, files: list[str], read_only: list[str]) -> list[dict[str, str]]:
    parts = [message.rstrip() + "\n"]
    parts += [_fenced(p, "you may edit") for p in files]
    parts += [_fenced(p, "read only") for p in read_only]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def _ask(api_base: str, model: str, messages: list[dict[str, str]],
         timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        api_base.rstrip("/") + "/chat/completions",
        data=json.dumps({"model": model, "messages": messages}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'none')}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mini_agent", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--api-base")
    source.add_argument("--script", type=Path, help="prepared edits: {task_id: {path: text}}")
    parser.add_argument("--model", default="test-model")
    parser.add_argument("--message-file", required=True)
    parser.add_argument("--read", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("files", nargs="*")
    args = parser.parse_intermixed_args(argv)
    if args.script is not None:
        return _scripted(args.script, args.files)
    message = Path(args.message_file).read_text(encoding="utf-8")
    try:
        data = _ask(args.api_base, args.model, build_messages(message, args.files, args.read),
                    args.timeout)
        reply = str(data["choices"][0]["message"]["content"])
    except urllib.error.HTTPError as exc:
        print(f"mini_agent: the model answered HTTP {exc.code}: {exc.read()[:500]!r}")
        return 1
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        print(f"mini_agent: no usable answer from {args.api_base}: {exc}")
        return 1
    print(reply)
    _write(parse_edits(reply))
    usage = data.get("usage") or {}
    sent, received = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    _report(sent, received, str(data.get("model") or args.model))
    return 0


def _write(edits: dict[str, str]) -> None:
    for path, content in edits.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content, encoding="utf-8")
        print(f"mini_agent: wrote {path}")


def _report(sent: int, received: int, model: str) -> None:
    print(f"Tokens: {sent} sent, {received} received.")
    report = os.environ.get("ORCH_AGENT_REPORT")
    if report:
        Path(report).write_text(json.dumps({"tokens_used": sent + received, "model": model}))


def _scripted(script: Path, files: list[str]) -> int:
    """Write the edits prepared for ``$ORCH_TASK_ID``: no model is asked."""
    task = os.environ.get("ORCH_TASK_ID", "")
    try:
        edits = json.loads(script.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"mini_agent: cannot read the scripted edits {script}: {exc}")
        return 1
    mine = edits.get(task) if isinstance(edits, dict) else None
    if not isinstance(mine, dict) or not mine:
        print(f"mini_agent: {script} has no edits for task {task or '(ORCH_TASK_ID unset)'}")
        return 1
    print(f"mini_agent: scripted edits for {task} from {script} (no model was asked); "
          f"files given: {', '.join(files) or 'none'}")
    _write({str(k): str(v) for k, v in mine.items()})
    _report(0, 0, "scripted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
