"""The one base class of every error a person should see as a single line (no traceback)."""


class FinopsError(Exception):
    """Expected failure: bad input, an unreachable service, a missing tool. ``str()`` is the line."""
