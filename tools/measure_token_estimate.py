"""Measure orch's token estimate (3 bytes per token, kernel.base.tokens) against real tokenizers.

Run it with a Python that has ``tiktoken`` and ``tokenizers`` (the Aider venv has both, and its
``litellm`` ships the encodings, so no network is needed):

    ~/.cache/orch-tests/aider-0.86.2/bin/python tools/measure_token_estimate.py [PATH...]

For each corpus (default: this repository's Python code, its Markdown docs, and a sample of
non-Latin text) it prints the bytes, orch's estimate, each tokenizer's count, and the ratio
estimate / actual (above 1: orch over-counts, i.e. a task that passes the budget check fits).
docs/agents/README.md ("The token estimate") holds the last run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # kernel.base.tokens is standard library only: any Python runs it
from kernel.base.tokens import text_tokens  # noqa: E402

NON_LATIN = ("日本語のテキストはトークン数が多くなりがちです。東京は日本の首都です。" * 40
             + "Русский текст тоже дороже по токенам, чем английский. " * 40
             + "ΕΛΛΗΝΙΚΑ: η γλώσσα έχει άλλο αλφάβητο. " * 40)


def _tokenizers() -> dict[str, object]:
    import litellm  # noqa: F401 - only for the path of its bundled encodings

    cache = Path(litellm.__file__).parent / "litellm_core_utils" / "tokenizers"
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache))
    import tiktoken
    from tokenizers import Tokenizer

    out: dict[str, object] = {name: tiktoken.get_encoding(name)
                              for name in ("cl100k_base", "o200k_base")}
    out["anthropic (litellm)"] = Tokenizer.from_file(str(cache / "anthropic_tokenizer.json"))
    return out


def _count(tok: object, text: str) -> int:
    if hasattr(tok, "encode_ordinary"):
        return len(tok.encode_ordinary(text))  # type: ignore[attr-defined]
    return len(tok.encode(text).ids)  # type: ignore[attr-defined]


def corpora(paths: list[str]) -> dict[str, str]:
    if paths:
        return {p: Path(p).read_text(encoding="utf-8", errors="replace") for p in paths}
    code = "".join(p.read_text() for p in sorted((REPO / "kernel").rglob("*.py")))
    docs = "".join(p.read_text() for p in sorted((REPO / "docs").rglob("*.md")))
    return {"python (kernel/)": code, "markdown (docs/)": docs, "non-latin sample": NON_LATIN}


def main(argv: list[str]) -> int:
    toks = _tokenizers()
    print("| corpus | bytes | orch estimate | " + " | ".join(toks) + " |")
    print("|---|---|---|" + "---|" * len(toks))
    for name, text in corpora(argv).items():
        n = len(text.encode("utf-8"))
        estimate = text_tokens(text)
        cells = []
        for tok in toks.values():
            actual = _count(tok, text)
            cells.append(f"{actual:,} ({estimate / actual:.2f}×)")
        print(f"| {name} | {n:,} | {estimate:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
