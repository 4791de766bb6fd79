"""The reports: plain SQL files in ``sql/`` run with ClickHouse query parameters.

Every report takes ``tenant`` and ``account`` ('' = all) and a UTC day range ``from`` ..
``to`` (both included; ``to`` is the "as of" day for burn rate, forecast and runway).
An analyst can run a file as it is in clickhouse-client with ``--param_tenant=...``.
Only the forecast adds something SQL cannot say well: Holt's linear exponential smoothing
(statsmodels' ETS model with an additive trend) over the daily spend, with an interval
from simulated paths.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import FinopsError

REPORTS = ("burn-rate", "forecast", "runway", "chargeback", "showback", "top-drivers", "anomalies", "focus")
DEFAULT_DAYS = 30
HOLT_HISTORY_DAYS = 56
HOLT_INTERVAL = 0.90
HOLT_MIN_DAYS = 7  # fewer days of history give no Holt forecast (empty columns), not a made-up band


@dataclass
class Params:
    tenant: str = ""
    account: str = ""
    start: date | None = None
    end: date | None = None
    mapping: dict[str, str] = field(default_factory=dict)  # chargeback: cost center -> GL account
    z: float = 3.0
    min_days: int = 7
    currency: str = "USD"
    credit_price: Decimal = Decimal(1)

    def resolved(self, today: date) -> Params:
        end = self.end or today
        start = self.start or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise FinopsError(f"--from {start} is after --to {end}")
        return Params(self.tenant, self.account, start, end, self.mapping, self.z, self.min_days, self.currency,
                      self.credit_price)

    def sql_parameters(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "account": self.account, "from": self.start.isoformat(),
                "to": self.end.isoformat(), "cost_centers": list(self.mapping),
                "gl_accounts": list(self.mapping.values()),
                "z": self.z, "min_days": self.min_days, "currency": self.currency,
                "credit_price": str(self.credit_price)}


@dataclass
class Report:
    name: str
    columns: list[str]
    rows: list[tuple]
    params: Params
    series: dict[tuple, list[tuple[date, Decimal]]] = field(default_factory=dict)  # daily spend, for plots


def sql_text(name: str) -> str:
    path = resources.files(__package__) / "sql" / f"{name}.sql"
    if not path.is_file():
        raise FinopsError(f"unknown report {name!r}; choose one of {', '.join(REPORTS)}")
    return path.read_text()


def sql_path(name: str) -> Path:
    return Path(str(resources.files(__package__) / "sql" / f"{name}.sql"))


def read_mapping(path: str) -> dict[str, str]:
    """A chargeback mapping: CSV with a header naming ``cost_center`` and ``gl_account``."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise FinopsError(f"cannot read mapping {path}: {exc.strerror}") from exc
    if rows and not {"cost_center", "gl_account"} <= set(rows[0]):
        raise FinopsError(f"mapping {path} needs the columns cost_center,gl_account (it has {','.join(rows[0])})")
    mapping: dict[str, str] = {}
    for n, row in enumerate(rows, start=2):
        cc, gl = (row.get("cost_center") or "").strip(), (row.get("gl_account") or "").strip()
        if not cc or not gl:
            raise FinopsError(f"mapping {path} line {n}: cost_center and gl_account must not be empty")
        if mapping.get(cc, gl) != gl:
            raise FinopsError(f"mapping {path} line {n}: cost center {cc!r} is mapped twice")
        mapping[cc] = gl
    return mapping


def run(reader, name: str, params: Params, today: date) -> Report:
    """Run report ``name`` through ``reader`` (see ``projections.query``)."""
    params = params.resolved(today)
    columns, rows = reader.query(sql_text(name), params.sql_parameters())
    report = Report(name, columns, rows, params)
    if name == "forecast":
        _add_holt(reader, report)
    return report


def records(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    """Rows as JSON-ready objects (``finops report --format json`` and the HTTP API): numbers stay
    numbers, exact decimals, days and times become their text."""
    return [{c: v if v is None or type(v) in (int, float, str, bool) else str(v) for c, v in zip(columns, r)}
            for r in rows]


def to_csv(columns: list[str], rows: list[tuple]) -> bytes:
    """Rows as CSV with a header line (UTF-8)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def export(reader, name: str, params: Params, today: date, fmt: str) -> bytes:
    """A report straight in a ClickHouse output format (``CSVWithNames``, ``Parquet``): no Python rows.

    For the reports computed wholly in SQL (all but the forecast, whose Holt columns are not).
    """
    if name == "forecast":
        raise FinopsError("the forecast adds Python-computed columns; use run()")
    return reader.raw(sql_text(name), params.resolved(today).sql_parameters(), fmt)


def daily_series(reader, params: Params, start: date) -> dict[tuple, list[tuple[date, Decimal]]]:
    """Daily spend per (tenant, account) from ``start`` to ``params.end``, missing days as 0."""
    p = Params(**{**params.__dict__, "start": start})
    _, rows = reader.query(sql_text("daily-spend"), p.sql_parameters())
    by_scope: dict[tuple, dict[date, Decimal]] = {}
    for tenant, account, day, credits in rows:
        by_scope.setdefault((tenant, account), {})[day] = Decimal(credits)
    series = {}
    for scope, days in by_scope.items():
        first = min(days)
        n = (params.end - first).days + 1
        series[scope] = [(first + timedelta(days=i), days.get(first + timedelta(days=i), Decimal(0)))
                         for i in range(n)]
    return series


def _add_holt(reader, report: Report) -> None:
    """Append Holt's month-end forecast and its interval to each forecast row."""
    p = report.params
    report.series = daily_series(reader, p, p.end - timedelta(days=HOLT_HISTORY_DAYS - 1))
    ix = {c: i for i, c in enumerate(report.columns)}
    rows = []
    for row in report.rows:
        history = [float(v) for _, v in report.series.get((row[ix["tenant_id"]], row[ix["account_id"]]), [])]
        mtd, days_left = float(row[ix["month_to_date"]]), int(row[ix["days_left"]])
        holt = holt_month_end(history, mtd, days_left)
        rows.append((*row, *(None if v is None else _credits(v) for v in holt)))
    report.columns = [*report.columns, "holt_month_end", "holt_low", "holt_high"]
    report.rows = rows


def holt_month_end(history: list[float], month_to_date: float, days_left: int, interval: float = HOLT_INTERVAL,
                   paths: int = 200) -> tuple[float, float, float] | tuple[None, None, None]:
    """Month-end spend = month to date + Holt's forecast of the days left, with an interval.

    A flat history (no variation) forecasts itself exactly: nothing to smooth. Under
    ``HOLT_MIN_DAYS`` days of history there is no forecast: (None, None, None).
    """
    if days_left <= 0:
        return month_to_date, month_to_date, month_to_date
    if len(history) < HOLT_MIN_DAYS:
        return None, None, None
    if max(history) == min(history):
        total = history[-1] * days_left
        return month_to_date + total, month_to_date + total, month_to_date + total
    import numpy as np
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on short, noisy series
        fit = ETSModel(np.asarray(history), error="add", trend="add").fit(disp=False)
        mean = float(np.clip(fit.forecast(days_left), 0, None).sum())
        sims = fit.simulate(days_left, repetitions=paths, anchor="end", rng=np.random.default_rng(7))
    totals = np.clip(np.asarray(sims).reshape(days_left, -1), 0, None).sum(axis=0)
    tail = (1 - interval) / 2
    low, high = np.quantile(totals, [tail, 1 - tail])
    return month_to_date + mean, month_to_date + float(low), month_to_date + float(high)


def _credits(value: float) -> Decimal:
    if not math.isfinite(value):
        return Decimal(0)
    return Decimal(str(round(max(value, 0.0), 6)))
