"""The reports: plain SQL files in ``sql/`` run with ClickHouse query parameters.

Every report takes ``tenant`` and ``account`` ('' = all) and a UTC day range ``from`` ..
``to`` (both included; ``to`` is the "as of" day for burn rate, forecast, runway, reconcile
and plan). An analyst can run a file as it is in clickhouse-client with ``--param_tenant=...``.
Python adds only what SQL cannot say well: Holt's linear exponential smoothing (statsmodels'
ETS model with an additive trend) over the daily spend, with an interval from simulated paths
(``forecast``, and ``forecast-accuracy`` as of past days), and the plan's exact split of a
budget in micro-credits with the allocate commands it writes (``plan``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import FinopsError
from ..schemas.money import MICROS_PER_CREDIT
from ..schemas.wire import format_time

REPORTS = ("burn-rate", "forecast", "runway", "reconcile", "forecast-accuracy", "plan", "chargeback", "showback",
           "top-drivers", "anomalies", "focus")
DEFAULT_DAYS = 30
HOLT_HISTORY_DAYS = 56
HOLT_INTERVAL = 0.90
HOLT_MIN_DAYS = 7  # fewer days of history give no Holt forecast (empty columns), not a made-up band
PYTHON_REPORTS = ("forecast", "forecast-accuracy", "plan")  # columns computed here, after the SQL
PLAN_METHODS = ("flat", "usage", "hybrid")
DEFAULT_PLAN_METHOD = "usage"
DEFAULT_RESERVE_PCT = Decimal(10)


@dataclass
class Params:
    """What a report is asked for: ``tenant`` and ``account`` ('' = all), the UTC days ``start`` ..
    ``end`` (both included; None until :meth:`resolved`), and each report's own knobs: ``mapping``
    (chargeback), ``z`` and ``min_days`` (anomalies), ``currency`` and ``credit_price`` (what one
    credit costs, for focus), ``method``, ``budget`` (credits) and ``reserve_pct`` (plan)."""

    tenant: str = ""
    account: str = ""
    start: date | None = None
    end: date | None = None
    mapping: dict[str, str] = field(default_factory=dict)  # chargeback: cost center -> GL account
    z: float = 3.0
    min_days: int = 7
    currency: str = "USD"
    credit_price: Decimal = Decimal(1)
    method: str = DEFAULT_PLAN_METHOD  # plan: flat, usage or hybrid
    budget: Decimal | None = None  # plan: credits to split (default: the parent's available)
    reserve_pct: Decimal = DEFAULT_RESERVE_PCT  # plan, hybrid: % of the budget kept at the parent

    def resolved(self, today: date) -> Params:
        """These params with the days filled in: ``end`` defaults to ``today``, ``start`` to
        ``DEFAULT_DAYS`` days ending at ``end``. Raises :class:`FinopsError` when ``start`` is after ``end``."""
        end = self.end or today
        start = self.start or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise FinopsError(f"--from {start} is after --to {end}")
        return dataclasses.replace(self, start=start, end=end)

    def sql_parameters(self) -> dict[str, Any]:
        """The ClickHouse query parameters every SQL file may use (``{tenant:String}``,
        ``{from:Date}``, ...); needs resolved days."""
        return {"tenant": self.tenant, "account": self.account, "from": self.start.isoformat(),
                "to": self.end.isoformat(), "cost_centers": list(self.mapping),
                "gl_accounts": list(self.mapping.values()),
                "z": self.z, "min_days": self.min_days, "currency": self.currency,
                "credit_price": str(self.credit_price)}


@dataclass
class Report:
    """A report's result: column names and rows as the SQL (and Python's columns) gave them, the
    params it ran with, and for forecast the daily spend (credits, by ``(tenant, account)``) for plots."""

    name: str
    columns: list[str]
    rows: list[tuple]
    params: Params
    series: dict[tuple, list[tuple[date, Decimal]]] = field(default_factory=dict)  # daily spend, for plots


# A line ``-- include: _part.sql`` in a report's SQL stands for that file of sql/, indented alike
# (CTEs that several reports share: _account_tree.sql).
_INCLUDE = re.compile(r"^( *)-- include: (_[a-z_]+\.sql)\b.*$", re.MULTILINE)


def sql_text(name: str) -> str:
    """The SQL of report ``name`` (``sql/<name>.sql``) with its ``-- include:`` lines replaced by the
    files they name, as it runs. Raises :class:`FinopsError` for an unknown report."""
    folder = resources.files(__package__) / "sql"
    path = folder / f"{name}.sql"
    if name.startswith("_") or not path.is_file():
        raise FinopsError(f"unknown report {name!r}; choose one of {', '.join(REPORTS)}")

    def included(match: re.Match) -> str:
        indent = match.group(1)
        text = (folder / match.group(2)).read_text().rstrip("\n")
        return "\n".join(indent + line if line else line for line in text.split("\n"))

    return _INCLUDE.sub(included, path.read_text())


def sql_path(name: str) -> Path:
    """Where the SQL file of report ``name`` lies in the installed package (it may not exist)."""
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
    if name == "plan":
        _check_plan(params)
    columns, rows = reader.query(sql_text(name), params.sql_parameters())
    report = Report(name, columns, rows, params)
    if name == "forecast":
        _add_holt(reader, report)
    elif name == "forecast-accuracy":
        _add_holt_accuracy(reader, report)
    elif name == "plan":
        _split_plan(report)
    return report


def records(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    """Rows as JSON-ready objects (``finops report --format json`` and the HTTP API): numbers stay
    numbers, exact decimals, days and times become their text."""
    return [{c: v if v is None or type(v) in (int, float, str, bool) else str(v) for c, v in zip(columns, r)}
            for r in rows]


def to_csv(columns: list[str], rows: list[tuple]) -> bytes:
    """Rows as CSV with a header line (UTF-8); cells a spreadsheet would run as a formula are
    neutralised (:func:`safe_cell`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([safe_cell(v) for v in row] for row in rows)
    return buffer.getvalue().encode()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A text cell that starts like a spreadsheet formula (``=``, ``+``, ``-``, ``@``, tab, CR) and is
    not a number, prefixed with ``'`` (OWASP's CSV injection advice): labels are the caller's text,
    and finance opens these files in Excel."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            Decimal(value)
        except ArithmeticError:
            return "'" + value
    return value


def safe_csv(data: bytes) -> bytes:
    """A CSV document (UTF-8, from ClickHouse) with every formula-like text cell neutralised."""
    text = data.decode("utf-8", "replace")
    if not any(mark in text for mark in ("=", "+", "-", "@", "\t", "\r")):
        return data
    rows = list(csv.reader(io.StringIO(text)))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([safe_cell(v) for v in row] for row in rows)
    return buffer.getvalue().encode()


def export(reader, name: str, params: Params, today: date, fmt: str) -> bytes:
    """A report in ``CSVWithNames`` or ``Parquet``: straight from ClickHouse (no Python rows) for
    the reports computed wholly in SQL; written here for those with Python-computed columns
    (``PYTHON_REPORTS``)."""
    if name not in PYTHON_REPORTS:
        data = reader.raw(sql_text(name), params.resolved(today).sql_parameters(), fmt)
        return safe_csv(data) if fmt == "CSVWithNames" else data
    report = run(reader, name, params, today)
    if fmt == "CSVWithNames":
        return to_csv(report.columns, report.rows)
    if fmt == "Parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.table({c: [r[i] for r in report.rows] for i, c in enumerate(report.columns)}), buffer)
        return buffer.getvalue()
    raise FinopsError(f"report {name} is written as CSVWithNames or Parquet, not {fmt}")


def daily_series(reader, params: Params, start: date) -> dict[tuple, list[tuple[date, Decimal]]]:
    """Daily spend per (tenant, account) from ``start`` to ``params.end``, missing days as 0."""
    return {scope: _series(days, start, params.end) for scope, days in _daily_spend(reader, params, start).items()}


def _daily_spend(reader, params: Params, start: date) -> dict[tuple, dict[date, Decimal]]:
    """Spend per (tenant, account) and day with spend, from ``start`` to ``params.end`` (daily-spend.sql)."""
    _, rows = reader.query(sql_text("daily-spend"), dataclasses.replace(params, start=start).sql_parameters())
    by_scope: dict[tuple, dict[date, Decimal]] = {}
    for tenant, account, day, credits in rows:
        by_scope.setdefault((tenant, account), {})[day] = Decimal(credits)
    return by_scope


def _series(days: dict[date, Decimal], start: date, end: date) -> list[tuple[date, Decimal]]:
    """The days from the first with spend in ``start`` .. ``end`` to ``end``, missing days as 0."""
    spent = [d for d in days if start <= d <= end]
    if not spent:
        return []
    first = min(spent)
    return [(first + timedelta(days=i), days.get(first + timedelta(days=i), Decimal(0)))
            for i in range((end - first).days + 1)]


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


def _add_holt_accuracy(reader, report: Report) -> None:
    """Holt's month-end forecast as of each row's day (from the daily spend up to that day only, as
    the forecast report would have computed it then), placed after the formula's, and its error."""
    ix = {c: i for i, c in enumerate(report.columns)}
    if "formula" not in ix:  # no rows, and a reader that sends no columns without rows
        return
    if report.rows:
        first = min(r[ix["as_of"]] for r in report.rows) - timedelta(days=HOLT_HISTORY_DAYS - 1)
        last = max(r[ix["as_of"]] for r in report.rows)
        spend = _daily_spend(reader, dataclasses.replace(report.params, end=last), first)
    rows = []
    for row in report.rows:
        as_of = row[ix["as_of"]]
        days = spend.get((row[ix["tenant_id"]], row[ix["account_id"]]), {})
        history = [float(v) for _, v in _series(days, as_of - timedelta(days=HOLT_HISTORY_DAYS - 1), as_of)]
        holt, _, _ = holt_month_end(history, float(row[ix["month_to_date"]]), int(row[ix["days_left"]]))
        holt = None if holt is None else _credits(holt)
        actual = row[ix["actual"]]
        error = None if holt is None or not actual else round(float((holt - actual) / actual) * 100, 2)
        values = list(row)
        values.insert(ix["formula"] + 1, holt)
        rows.append((*values, error))
    columns = list(report.columns)
    columns.insert(ix["formula"] + 1, "holt")
    report.columns = [*columns, "holt_error_pct"]
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


# ----------------------------------------------------------------------------- plan


def _check_plan(params: Params) -> None:
    if params.method not in PLAN_METHODS:
        raise FinopsError(f"unknown plan method {params.method!r}; choose one of {', '.join(PLAN_METHODS)}")
    if not Decimal(0) <= params.reserve_pct <= Decimal(100):
        raise FinopsError(f"--reserve-pct {params.reserve_pct} is not a percentage from 0 to 100")
    if params.budget is not None:
        if params.budget < 0 or params.budget != params.budget.quantize(Decimal("0.000001")):
            raise FinopsError(f"--budget {params.budget} is not an amount of credits (at most 6 decimals, "
                              "not negative)")


def split(total: int, weights: list[int]) -> list[int]:
    """``total`` micro-credits in proportion to ``weights``, exactly: each share rounded down, the
    micro-credits left over given one each to the largest remainders (ties: the earlier weight).
    All weights 0: equal shares."""
    if not weights:
        return []
    if not any(weights):
        weights = [1] * len(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:total - sum(shares)]:
        shares[i] += 1
    return shares


def _split_plan(report: Report) -> None:
    """Next month's allocation of each child, from plan.sql's inputs: per (tenant, parent) the
    budget (``--budget``, else the parent's available), less the reserve (hybrid only), split flat
    or by usage, in micro-credits that add up to it exactly."""
    p = report.params
    ix = {c: i for i, c in enumerate(report.columns)}
    groups: dict[tuple, list[tuple]] = {}
    for row in report.rows:
        groups.setdefault((row[ix["tenant_id"]], row[ix["from_account"]]), []).append(row)
    month = _next_month(p.end)
    rows = []
    for (tenant, parent), children in groups.items():
        budget = (int(children[0][ix["parent_available_micros"]]) if p.budget is None
                  else int(p.budget * MICROS_PER_CREDIT))
        reserve = 0
        if p.method == "hybrid":
            reserve = int((Decimal(budget) * p.reserve_pct / 100).to_integral_value(ROUND_FLOOR))
        usage = [int(c[ix["usage_micros"]]) for c in children]
        weights = [1] * len(children) if p.method == "flat" else usage
        shares = split(budget - reserve, weights)
        used = sum(usage)
        for child, amount, spent in zip(children, shares, usage):
            rows.append((tenant, parent, child[ix["to_account"]], child[ix["kind"]], p.method, month,
                         _dec(spent), round(100 * spent / used, 2) if used else None, _dec(amount), _dec(budget),
                         _dec(reserve)))
    report.columns = ["tenant_id", "from_account", "to_account", "kind", "method", "month", "usage", "usage_pct",
                      "credits", "budget", "reserve"]
    report.rows = rows


def plan_commands(report: Report, now: datetime) -> list[bytes]:
    """The plan's ``allocate`` commands as wire-v1 JSON lines (for review, then ``finops publish``):
    one per child with credits, from the parent, spendable in the plan's month only (``starts_at``
    its first instant, ``ends_at`` the next month's), the unspent rest returning to the parent at
    its end. Amounts are decimal strings. The id names the month and the child (``plan:2026-12:search``):
    publishing the same file again changes nothing, and a second plan for the same month and child
    is refused ``duplicate_id_conflict`` instead of allocating twice."""
    import msgspec

    ix = {c: i for i, c in enumerate(report.columns)}
    lines = []
    for row in report.rows:
        if row[ix["credits"]] <= 0:
            continue
        month: date = row[ix["month"]]
        lines.append(msgspec.json.encode({
            "type": "allocate", "id": f"plan:{month:%Y-%m}:{row[ix['to_account']]}", "tenant_id": row[ix["tenant_id"]],
            "ts": _rfc3339(now), "from_account": row[ix["from_account"]], "to_account": row[ix["to_account"]],
            "credits": format(row[ix["credits"]].normalize(), "f"), "starts_at": _rfc3339(month),
            "ends_at": _rfc3339(_next_month(month)), "on_expiry": "return"}))
    return lines


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _rfc3339(moment: date | datetime) -> str:
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=timezone.utc)
    return format_time(moment, "seconds")


def _dec(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6).quantize(Decimal("0.000001"))
