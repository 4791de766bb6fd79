"""``finops fold FILE``: apply a file of messages with the ledger's own code, no Kafka (the
library: ``processors/fold.py``)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Optional

import typer

from ..settings import Settings
from .common import app, command, err, fail, load_settings


@app.command()
@command
def fold(file: str = typer.Argument(..., help="A JSONL file of wire-v1 messages, or - for stdin."),
         now: Optional[str] = typer.Option(
             None, "--now", metavar="TS",
             help="Judge every line as if Kafka had stored it at this RFC 3339 time: a line whose ts is more "
                  "than FINOPS_MAX_FUTURE_SKEW ahead of it is rejected ts_in_future. Without it the rule is "
                  "skipped (a file has no stored time).")) -> None:
    """Apply a file of messages with the ledger's own code, no Kafka; print the result as JSON.

    The rules are the ledger processor's, with the same settings (FINOPS_ID_HORIZON,
    FINOPS_MAX_FUTURE_SKEW, FINOPS_UNKNOWN_ACCOUNT_GRACE). The end of the file ends every
    grace: usage still held for an account that never opened is rejected unknown_account.

    Exit 0 even when lines are rejected (they are listed); non-zero only when the file
    cannot be read or --now is not a time. Example: finops fold examples/seed.jsonl --now 2026-11-30T12:00:00Z
    """
    from ..processors.fold import fold_lines

    stored_at = None
    if now is not None:
        stored_at = _parse_time(now, "--now")
    rules = _rules(load_settings())
    if file == "-":
        result = fold_lines(sys.stdin.buffer, now=stored_at, rules=rules)
    else:
        try:
            with open(file, "rb") as handle:
                result = fold_lines(handle, now=stored_at, rules=rules)
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
    sys.stdout.write(json.dumps(result.summary(), indent=2) + "\n")


def _parse_time(text: str, option: str) -> datetime:
    """An RFC 3339 time with an offset, in UTC (:func:`finops.schemas.wire.parse_time`, the rules
    of a message's ``ts``); exit 2 with one line otherwise."""
    from ..schemas import wire

    when = wire.parse_time(text)
    if when is None:
        err.print(f"error: {option} {text!r} is not an RFC 3339 time with an offset, e.g. 2026-11-30T12:00:00Z")
        raise typer.Exit(2)
    return when


def _rules(settings: Settings):
    # the FINOPS_* rule settings as the ledger processor reads them (processors/runner.py)
    from ..processors.state import Rules

    return Rules(id_horizon_s=settings.id_horizon.total_seconds(),
                 max_future_skew_s=settings.max_future_skew.total_seconds(),
                 unknown_account_grace_s=settings.unknown_account_grace.total_seconds())
