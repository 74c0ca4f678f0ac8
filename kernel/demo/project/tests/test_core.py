import unittest

from textstats import char_count, line_count


class CoreTest(unittest.TestCase):
    def test_line_count(self) -> None:
        self.assertEqual(line_count("a\nb\n"), 2)
        self.assertEqual(line_count("a\nb"), 2)
        self.assertEqual(line_count(""), 0)

    def test_char_count(self) -> None:
        self.assertEqual(char_count("a b"), 3)
        self.assertEqual(char_count("a b\n", spaces=False), 2)
