"""The greet command line: ``greet NAME [--shout]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greet", description="Print a greeting.")
    parser.add_argument("name", help="who to greet")
    parser.add_argument("--shout", action="store_true", help="print it in capitals")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    text = f"Hello, {args.name}!"
    print(text.upper() if args.shout else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
