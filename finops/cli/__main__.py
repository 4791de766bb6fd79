"""``python -m finops.cli ...``: the same as ``finops ...`` (tests, the supervisor's child and the docs use it)."""

from . import app

app()
