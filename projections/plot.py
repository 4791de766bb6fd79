"""``finops report ... --plot out.png``: one picture per report (matplotlib, no display needed).

forecast: this month's cumulative spend, then the seed formula's line and Holt's band to
the month's end. runway: each subtree's capacity burning down at its rate, to its window
end. forecast-accuracy: each method's error on days 7, 14 and 21 of each month. burn-rate
and anomalies: daily spend (anomalies marked). chargeback, showback, top-drivers and plan:
bars.
"""

from __future__ import annotations

from datetime import date, timedelta

from ..errors import FinopsError
from .reports import Report, daily_series

MAX_LINES = 8


def plot(report: Report, path: str, reader=None) -> None:
    """Draw ``report`` into the image file ``path`` (its type from the suffix: .png, .svg, .pdf, ...).

    burn-rate and anomalies read the daily spend through ``reader`` (a
    :class:`~finops.projections.query.Reader`). Raises :class:`FinopsError` for a report with no
    plot, without a reader where one is needed, or when the file cannot be written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers = {"forecast": _forecast, "runway": _runway, "burn-rate": _daily, "anomalies": _daily,
               "chargeback": _bars, "showback": _bars, "top-drivers": _bars, "plan": _bars,
               "forecast-accuracy": _accuracy}
    draw = drawers.get(report.name)
    if draw is None:
        raise FinopsError(f"no plot for {report.name}; plots exist for {', '.join(drawers)}")
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    draw(report, ax, reader)
    ax.grid(True, alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise FinopsError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        plt.close(fig)


def _col(report: Report, row: tuple, name: str):
    return row[report.columns.index(name)]


def _forecast(report: Report, ax, _reader) -> None:
    p = report.params
    month = p.end.replace(day=1)
    for row in report.rows[:MAX_LINES]:
        scope = (_col(report, row, "tenant_id"), _col(report, row, "account_id"))
        label = "/".join(s for s in scope if s)
        days = [(d, float(v)) for d, v in report.series.get(scope, []) if d >= month]
        xs, ys, total = [], [], 0.0
        for d, v in days:
            total += v
            xs.append(d)
            ys.append(total)
        line = ax.plot(xs, ys, label=f"{label} spend")[0]
        end = _month_end(p.end)
        ax.plot([p.end, end], [total, float(_col(report, row, "forecast_month_end"))], linestyle="--",
                color=line.get_color(), label=f"{label} forecast (14-day average)")
        low, high = _col(report, row, "holt_low"), _col(report, row, "holt_high")
        if low is not None and high is not None:  # none under a week of history
            ax.fill_between([p.end, end], [total, float(low)], [total, float(high)], color=line.get_color(),
                            alpha=0.15, label=f"{label} Holt 90 % band")
    ax.set_title(f"Spend this month and forecast to {_month_end(p.end)}")
    ax.set_ylabel("credits (cumulative)")
    ax.legend(fontsize="small")


def _runway(report: Report, ax, _reader) -> None:
    p = report.params
    for row in report.rows[:MAX_LINES]:
        available, burn = float(_col(report, row, "capacity")), float(_col(report, row, "daily_burn"))
        if burn <= 0:
            continue
        days = int(available / burn) + 1
        xs = [p.end + timedelta(days=i) for i in range(days + 1)]
        line = ax.plot(xs, [max(available - burn * i, 0.0) for i in range(days + 1)],
                       label=f"{_col(report, row, 'tenant_id')}/{_col(report, row, 'account_id')}")[0]
        window_end = _col(report, row, "window_end")
        if window_end is not None:
            ax.axvline(window_end, color=line.get_color(), linestyle=":", alpha=0.7)
    ax.set_title(f"Subtree capacity burn-down from {p.end} at each subtree's 14-day burn (dotted: window end)")
    ax.set_ylabel("credits available")
    ax.legend(fontsize="small")


def _daily(report: Report, ax, reader) -> None:
    if reader is None:
        raise FinopsError("this plot needs the daily series")
    p = report.params
    series = daily_series(reader, p, p.start)
    top = sorted(series, key=lambda s: -sum(v for _, v in series[s]))[:MAX_LINES]
    flagged = {}
    if report.name == "anomalies":
        for row in report.rows:
            flagged.setdefault((_col(report, row, "tenant_id"), _col(report, row, "account_id")), []).append(
                (_col(report, row, "day"), float(_col(report, row, "credits"))))
        top = [s for s in top if s in flagged] or top
    for scope in top:
        points = series[scope]
        line = ax.plot([d for d, _ in points], [float(v) for _, v in points], label="/".join(s for s in scope if s))[0]
        if scope in flagged:
            ax.scatter(*zip(*flagged[scope]), color=line.get_color(), marker="o", s=60, zorder=3)
    ax.set_title(f"Daily spend {p.start} to {p.end}" + (" (dots: anomalies)" if report.name == "anomalies" else ""))
    ax.set_ylabel("credits per day")
    ax.legend(fontsize="small")


def _accuracy(report: Report, ax, _reader) -> None:
    scopes = sorted({(_col(report, r, "tenant_id"), _col(report, r, "account_id")) for r in report.rows})
    for scope in scopes[:MAX_LINES]:
        rows = [r for r in report.rows if (_col(report, r, "tenant_id"), _col(report, r, "account_id")) == scope]
        label = "/".join(s for s in scope if s)
        for column, style in (("formula_error_pct", "-o"), ("holt_error_pct", "--s")):
            points = [(_col(report, r, "as_of"), _col(report, r, column)) for r in rows
                      if _col(report, r, column) is not None]
            if points:
                ax.plot(*zip(*points), style, label=f"{label} {column.split('_')[0]}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title("Month-end forecast error on days 7, 14 and 21 (% of the actual month)")
    ax.set_ylabel("error %")
    ax.legend(fontsize="small")


def _bars(report: Report, ax, _reader) -> None:
    key = {"chargeback": ("gl_account", "cost_center"), "showback": ("team", "project"),
           "top-drivers": ("driver", "value"), "plan": ("from_account", "to_account")}[report.name]
    labels = [" / ".join(str(_col(report, r, k)) or "-" for k in key) for r in report.rows][:30]
    values = [float(_col(report, r, "credits")) for r in report.rows][:30]
    ax.barh(labels[::-1], values[::-1])
    ax.set_xlabel("credits")
    ax.set_title(f"{report.name} {report.params.start} to {report.params.end}")


def _month_end(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
