"""``finops report NAME``: the reports over the ClickHouse history (the library:
``projections/reports.py`` and its SQL files, ``projections/plot.py``), printed as a table, JSON
or CSV, or written to a file (CSV, Parquet; the plan's allocate commands as JSONL)."""

from __future__ import annotations

import contextlib
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from .common import app, command, err, fail, load_settings, print_rows

REPORT_HELP = (
    "Reports over the ClickHouse history; each is a SQL file an analyst can reuse (--sql prints it).\n\n"
    "burn-rate: daily, 7- and 14-day averages. forecast: month end by the 14-day formula and by Holt, with a "
    "90 % band. runway: when each account and everything below it runs dry at its subtree's 14-day burn (a "
    "tenant's row is the whole tenant), against its window end, with its own grants' runway beside it. "
    "reconcile: per tenant, purchased = available + reserved + consumed - overage + expired, and whether every "
    "balance equals its ledger entries. forecast-accuracy: what the formula and Holt forecast on days 7, 14 and "
    "21 of each past month against its actual total. plan: next month's allocations from a parent (--account, "
    "default the tenant root) to its children by --method flat, usage or hybrid (--reserve-pct kept back), "
    "split from --budget (default the parent's available) by usage from --from to --to; --output writes the "
    "allocate commands as JSONL for `finops publish`. chargeback: cost center -> GL account (--mapping). "
    "showback: team and project. top-drivers: model, operation, API key, cost per request. anomalies: z-score "
    "of daily spend against the trailing 30 days. focus: FOCUS columns (csv or parquet).\n\n"
    "Days are UTC; --to is the 'as of' day (default today), --from defaults to 29 days before it. Works while "
    "`finops run` owns the embedded ClickHouse: it answers for this terminal.\n\n"
    "Example: finops report forecast --tenant acme --plot forecast.png ; finops report plan --tenant acme "
    "--account org --method hybrid --reserve-pct 15 --output plan.jsonl")


def _day(value: Optional[str], option: str) -> date | None:
    # YYYY-MM-DD by strptime: no library parser reads days with the same rules (the API's are pydantic's)
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        fail(f"{option} {value!r} is not a day like 2026-11-23", 2)


@app.command(help=REPORT_HELP)
@command
def report(
    name: str = typer.Argument(..., help="burn-rate, forecast, runway, reconcile, forecast-accuracy, plan, "
                                         "chargeback, showback, top-drivers, anomalies or focus."),
    tenant: str = typer.Option("", "--tenant", "-t", help="Only this tenant (default: all)."),
    account: str = typer.Option("", "--account", "-a", help="Only this account (default: all)."),
    start: Optional[str] = typer.Option(None, "--from", help="First UTC day, YYYY-MM-DD (default: --to - 29)."),
    end: Optional[str] = typer.Option(None, "--to", help="Last UTC day and 'as of' day (default: today)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, csv or parquet (parquet needs --output)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout (plan: "
                                                                      "the allocate commands as JSONL; the table "
                                                                      "still prints)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also draw a PNG here (burn-down, bars, ...)."),
    mapping: Optional[str] = typer.Option(None, help="chargeback: CSV with columns cost_center,gl_account."),
    z: float = typer.Option(3.0, help="anomalies: flag days more than this many standard deviations above."),
    currency: Optional[str] = typer.Option(None, help="focus: BillingCurrency (default FINOPS_BILLING_CURRENCY)."),
    credit_price: Optional[str] = typer.Option(None, help="focus: price of one credit in that currency "
                                                          "(default FINOPS_CREDIT_PRICE)."),
    method: str = typer.Option("usage", help="plan: flat (equal shares), usage (by usage from --from to --to) "
                                              "or hybrid (keeps --reserve-pct back, the rest by usage)."),
    budget: Optional[str] = typer.Option(None, metavar="CREDITS", help="plan: credits to split (default: the "
                                                                       "parent's available as of --to)."),
    reserve_pct: str = typer.Option("10", help="plan, hybrid: percent of the budget kept at the parent."),
    sql_only: bool = typer.Option(False, "--sql", help="Print the report's SQL file and exit."),
) -> None:
    """Run one report (its help is ``REPORT_HELP``); see docs/reports.md for each report's columns."""
    from decimal import Decimal, InvalidOperation

    from ..projections import reports
    from ..projections.query import open_reader

    if name not in reports.REPORTS:
        fail(f"unknown report {name!r}; choose one of {', '.join(reports.REPORTS)}", 2)
    if sql_only:
        sys.stdout.write(reports.sql_text(name))
        return
    if fmt not in ("table", "json", "csv", "parquet"):
        fail(f"unknown format {fmt!r}; choose table, json, csv or parquet", 2)
    if fmt == "parquet" and not output:
        fail("--format parquet writes a file: add --output FILE", 2)
    settings = load_settings()
    try:
        price = Decimal(credit_price) if credit_price is not None else settings.credit_price
    except InvalidOperation:
        fail(f"--credit-price {credit_price!r} is not a number", 2)
    plan_options = {}
    if name == "plan":
        if method not in reports.PLAN_METHODS:
            fail(f"unknown --method {method!r}; choose {', '.join(reports.PLAN_METHODS)}", 2)
        try:
            plan_options = {"method": method, "reserve_pct": Decimal(reserve_pct),
                            "budget": None if budget is None else Decimal(budget)}
        except InvalidOperation:
            fail(f"--budget {budget!r} and --reserve-pct {reserve_pct!r} must be numbers", 2)
    params = reports.Params(tenant=tenant, account=account, start=_day(start, "--from"), end=_day(end, "--to"),
                            mapping=reports.read_mapping(mapping) if mapping else {}, z=z,
                            currency=currency or settings.billing_currency, credit_price=price, **plan_options)
    reader = open_reader(settings)
    today = datetime.now(timezone.utc).date()
    if name == "plan":
        _report_plan(reader, params, today, fmt, output, plot)
        return
    if fmt in ("csv", "parquet") and name not in reports.PYTHON_REPORTS and not plot:  # ClickHouse writes it
        try:
            data = reports.export(reader, name, params, today, "Parquet" if fmt == "parquet" else "CSVWithNames")
        finally:
            reader.close()
        _write_bytes(data, output)
        return
    try:
        result = reports.run(reader, name, params, today)
        if plot:
            from ..projections.plot import plot as draw

            draw(result, plot, reader)
    finally:
        reader.close()
    _write_rows(result.columns, result.rows, fmt, output, title=f"{name} {result.params.start} .. {result.params.end}")
    if plot:
        err.print(f"plot written to {plot}")


def _report_plan(reader, params, today, fmt: str, output: Optional[str], plot: Optional[str]) -> None:
    """The plan as a table (or json, csv) on stdout; with --output, its allocate commands as JSONL there."""
    from ..projections import reports

    if fmt == "parquet":
        fail("plan prints its rows and writes JSONL commands (--output); choose table, json or csv", 2)
    try:
        result = reports.run(reader, "plan", params, today)
        if plot:
            from ..projections.plot import plot as draw

            draw(result, plot, reader)
            err.print(f"plot written to {plot}")
    finally:
        reader.close()
    print_rows(result.columns, result.rows, fmt, title=f"plan for {result.rows[0][5] if result.rows else '-'} "
                                                        f"({params.method}; usage {result.params.start} .. "
                                                        f"{result.params.end})")
    if output is None:
        return
    lines = reports.plan_commands(result, datetime.now(timezone.utc).replace(microsecond=0))
    _write_bytes(b"".join(line + b"\n" for line in lines), output)
    err.print(f"{len(lines)} allocate commands for review; then: finops publish {output} --wait", soft_wrap=True)


def _write_bytes(data: bytes, output: Optional[str]) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")
    err.print(f"{len(data)} bytes written to {output}")


def _write_rows(columns: list[str], rows: list[tuple], fmt: str, output: Optional[str], title: str) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
        try:
            pq.write_table(table, output)
        except OSError as exc:
            fail(f"cannot write {output}: {exc}")
        err.print(f"{len(rows)} rows written to {output}")
        return
    if output is None:
        print_rows(columns, rows, fmt, title)
        return
    try:
        with open(output, "w", newline="") as handle:
            with contextlib.redirect_stdout(handle):
                print_rows(columns, rows, "csv" if fmt == "table" else fmt, title)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")
    err.print(f"{len(rows)} rows written to {output}")
