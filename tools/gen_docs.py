"""Regenerate every generated file: STATE_MACHINE.md, sql/schema.sql, docs/CLI.md, schemas/.

Usage: python tools/gen_docs.py [--check]
--check writes nothing and exits 1 when a file is stale (what CI and tests/test_generated.py do).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.docgen import stale_files, write_generated  # noqa: E402


def main() -> int:
    if "--check" in sys.argv[1:]:
        stale = stale_files(REPO)
        for path in stale:
            print(f"stale: {path.relative_to(REPO)}")
        return 1 if stale else 0
    for path in write_generated(REPO):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
