"""Regenerate schemas/*.json from kernel.definitions.models: python tools/gen_schemas.py"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernel.observe.schemas import write_schemas  # noqa: E402

if __name__ == "__main__":
    print("wrote", ", ".join(write_schemas(ROOT / "schemas")))
