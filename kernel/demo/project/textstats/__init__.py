"""textstats: small statistics about text. The example project of `orch demo`."""

from textstats.core import char_count, line_count

__all__ = ["char_count", "line_count"]
