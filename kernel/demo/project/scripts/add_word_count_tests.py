"""Write tests/test_word_count.py."""

from agent import think, write

TESTS = """\
import unittest

from textstats import word_count


class WordCountTest(unittest.TestCase):
    def test_words_are_separated_by_whitespace(self) -> None:
        self.assertEqual(word_count("one two  three\\nfour"), 4)

    def test_no_words(self) -> None:
        self.assertEqual(word_count(""), 0)
        self.assertEqual(word_count(" \\n\\t"), 0)
"""

think("writing tests for word_count()")
write("tests/test_word_count.py", TESTS)
