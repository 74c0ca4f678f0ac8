"""Add a command line: python -m textstats FILE... prints lines, words and characters."""

from agent import think, write

MAIN = """\
\"\"\"python -m textstats FILE...: lines, words and characters of each file.\"\"\"

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textstats import char_count, line_count, word_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textstats", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        print(f"{line_count(text):>6} {word_count(text):>6} {char_count(text):>7} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
"""

think("adding a command line to textstats")
write("textstats/__main__.py", MAIN)
