"""Add word_count() to textstats/core.py and export it."""

from agent import append, replace, think

WORD_COUNT = """

def word_count(text: str) -> int:
    \"\"\"Words in ``text``: runs of characters between whitespace.\"\"\"
    return len(text.split())
"""

think("reading textstats/core.py, planning word_count()")
append("textstats/core.py", WORD_COUNT)
replace("textstats/__init__.py", "import char_count, line_count\n",
        "import char_count, line_count, word_count\n")
replace("textstats/__init__.py", '"line_count"]', '"line_count", "word_count"]')
