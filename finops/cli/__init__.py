"""The ``finops`` command: a thin layer over the library. Each command parses, calls one
library function and prints: a table for people, ``--json`` (or ``--format``) for programs.
Expected failures are one line on stderr and exit code 1; bad usage exits 2.

One module per command group; the import order below is the order of ``finops --help``:

- ``common``: the root ``app``, consoles, the ``command`` decorator, settings, rows, progress;
- ``publish``: data in (``publish``, ``simulate``, ``wait``);
- ``run``: the processors (``run``); ``serve``: the HTTP API (``serve``);
- ``query``: ``balance`` and ``sql``; ``report``: the reports; ``fold``: the ledger on a file;
- ``bench``: the benchmarks; ``demo``: the whole pipeline once;
- groups: ``stack`` (the local broker), ``alerts`` (``tail``, ``receive``), ``tokens`` (the API's).
"""

from __future__ import annotations

# Importing a module registers its commands on ``app``: keep this order (isort: skip).
from . import publish, run, serve, query, report, fold, bench, demo, stack, alerts, tokens  # isort: skip
from .common import app

COMMAND_MODULES = (publish, run, serve, query, report, fold, bench, demo, stack, alerts, tokens)

__all__ = ["app"]
