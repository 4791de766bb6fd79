"""What every command module shares: the root ``app`` (the ``finops`` command, its help and exit
codes), the two consoles (``out``: data on stdout; ``err``: messages on stderr), the
:func:`command` decorator, :func:`fail`, :func:`load_settings`, :func:`setup_logging`,
:func:`print_rows` (a table, JSON or CSV) and :func:`progress`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from typing import Callable, Iterable, Iterator

import typer
from rich.console import Console
from rich.table import Table

from ..errors import FinopsError
from ..settings import Settings, load

EXIT_CODES = ("Exit codes: 0 done; 1 an expected failure (one line on stderr: unreachable broker, bad file, "
              "bad SQL, invalid lines, timeout); 2 bad usage; 130 interrupted. Every command has --help with "
              "an example; data comes as a table, or as JSON with --json (--format where there are more).")

app = typer.Typer(
    help="finops: an event-sourced FinOps pipeline for AI/API credit spend on Kafka and ClickHouse.\n\n"
         "Start here: finops stack up; finops run 2> run.log &; finops simulate --duration 30 --wait; "
         "finops balance --tenant acme; finops report burn-rate",
    epilog=EXIT_CODES,
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]})

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> None:
    """Print ``error: <message>`` on stderr (one line) and exit with ``code``: 1 for an expected
    failure, 2 for bad usage. Never returns (raises :class:`typer.Exit`)."""
    err.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def command(fn: Callable) -> Callable:
    """Turn expected failures into one line and exit 1; Ctrl-C into exit 130.

    Expected failures are :class:`~finops.errors.FinopsError` and
    :class:`~finops.stack.StackError`; anything else is a bug and keeps its traceback.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..stack import StackError

        try:
            return fn(*args, **kwargs)
        except (FinopsError, StackError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130)
    return wrapper


def load_settings() -> Settings:
    """The FINOPS_* settings (:func:`finops.settings.load`); a bad value exits 1 with one line
    naming each bad variable."""
    try:
        return load()
    except Exception as exc:  # pydantic's ValidationError for a bad FINOPS_* value
        errors = getattr(exc, "errors", lambda: [])()
        detail = "; ".join(f"FINOPS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in errors) or str(exc)
        fail(f"bad configuration: {detail}")
        raise


def setup_logging(verbose: bool) -> None:
    """Log to stderr: INFO with ``verbose``, else WARNING; the Kafka client's own messages
    (``finops.kafka``) only with ``verbose``."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # librdkafka reports every failed connection attempt; show them only when asked.
    logging.getLogger("finops.kafka").setLevel(logging.INFO if verbose else logging.CRITICAL)


def print_rows(columns: list[str], rows: Iterable[tuple], fmt: str, title: str | None = None) -> None:
    """Print rows on stdout: ``fmt`` "json" (a list of objects, :func:`finops.projections.reports.records`),
    "csv" (with a header row) or anything else for a table with ``title`` that is never narrower
    than its widest row (numbers are never cut to fit a terminal). None prints as an empty cell."""
    rows = list(rows)
    if fmt == "json":
        from ..projections.reports import records

        out.print_json(json.dumps(records(columns, rows)))
    elif fmt == "csv":
        from ..projections.reports import to_csv

        sys.stdout.write(to_csv(columns, rows).decode())
    else:
        table = Table(title=title, title_justify="left")
        cells = [["" if v is None else str(v) for v in r] for r in rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        for c in columns:
            table.add_column(c, no_wrap=True)
        for r in cells:
            table.add_row(*r)
        wide = Console(highlight=False, width=max(out.width, sum(widths) + 3 * len(widths) + 1))
        wide.print(table)  # never cut a number to fit a narrow terminal


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Progress of long work on stderr: a live bar on a terminal, else a line every 10 s (wall time).
    Yields ``update(done)`` (the count so far; ``total``, when known, is the expected count)."""
    if err.is_terminal:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)
        return
    last = [time.monotonic()]

    def update(done: int) -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            err.print(f"{description}: {done}{f' of {total}' if total else ''}")
    yield update
