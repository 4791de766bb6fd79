"""``all``: every benchmark in one run, on one shared broker, into one JSON document.

The headline figures come first (bench/README.md says what each means); each
benchmark's own document is under ``details``. A benchmark that fails is recorded as
``{"error": "<one line>"}`` under ``details``, its figures are null, and ``failed``
names it; the others still run.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

from . import BENCHMARKS, Benchmark
from .common import code_version, load_avg, now_iso
from .kafka import shared_broker


def _get(details: dict, name: str, *path: str):
    """``details[name][path...]``, or None where any step is missing (a failed benchmark)."""
    value = details.get(name)
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _report_ms(details: dict) -> dict | None:
    by_name = _get(details, "reports", "reports_ms", "all_tenants")
    return {name: r["median"] for name, r in by_name.items()} if isinstance(by_name, dict) else None


def headline(details: dict, quick: bool, benchmarks: dict[str, Benchmark]) -> dict:
    """The figures `bench all` leads with, from the benchmarks' documents."""
    reports = benchmarks.get("reports")
    return {
        "fold_events_per_s": _get(details, "fold", "fold", "events_per_s"),
        "decode_events_per_s": _get(details, "fold", "decode_only", "events_per_s"),
        "fold_to_decode_ratio": _get(details, "fold", "fold_vs_decode_ratio"),
        "fast_path_us_per_event": _get(details, "fold", "steps", "us_per_event"),
        "ledger_events_per_s": _get(details, "ledger", "ledger_events_per_s"),
        "raw_consume_decode_events_per_s": _get(details, "ledger", "raw_consume_decode_events_per_s"),
        "ratio_ledger_to_raw": _get(details, "ledger", "ratio"),
        "e2e_events_per_s": _get(details, "e2e", "events_per_s"),
        "p99_usage_to_balance_ms": _get(details, "balance-latency", "latency_ms", "p99"),
        "p99_usage_to_alert_ms": _get(details, "alerts", "latency_ms", "p99"),
        "sink_rows_per_s": _get(details, "sink", "rows_per_s", "combined", "median"),
        "report_ms": _report_ms(details),
        "report_rows": reports.size(quick).events if reports else None,
        "ledger_rss_mb": _get(details, "ledger-memory", "peak_rss_mb"),
        "busy_tenant_events_per_s": _get(details, "busy-tenant", "busy_tenant_events_per_s"),
        "serve_check_p99_ms": _get(details, "serve", "check", "p99_ms"),
        "serve_check_achieved_rps": _get(details, "serve", "check", "achieved_rps"),
        "serve_view_lag_p99_ms": _get(details, "serve", "view_lag", "p99_ms"),
    }


# The figures the project aims at on this 2-core machine (bench/README.md, "Targets"):
# (key, "min" or "max", value). Ratios are measured within one run, so they hold on a noisy machine.
TARGETS = (
    ("fold_events_per_s", "min", 300_000),
    ("fold_to_decode_ratio", "min", 0.45),
    ("ledger_events_per_s", "min", 100_000),
    ("ratio_ledger_to_raw", "min", 0.5),
    ("e2e_events_per_s", "min", 80_000),
    ("sink_rows_per_s", "min", 200_000),
    ("p99_usage_to_balance_ms", "max", 250),
    ("p99_usage_to_alert_ms", "max", 1_000),
    ("ledger_rss_mb", "max", 1_024),
    ("serve_check_p99_ms", "max", 5),
    ("serve_view_lag_p99_ms", "max", 200),
)


def against_targets(figures: dict) -> dict:
    """Each target with the figure measured and whether it is met (None: not measured)."""
    result = {}
    for key, kind, target in TARGETS:
        value = figures.get(key)
        met = None if value is None else (value >= target if kind == "min" else value <= target)
        result[key] = {kind: target, "measured": value, "met": met}
    return result


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:400]}"


def run_all(*, quick: bool = False, log: Callable[[str], None] = lambda _m: None,
            benchmarks: dict[str, Benchmark] | None = None) -> dict:
    """Run ``benchmarks`` (default: every one, in the registry's order) at their full or
    ``quick`` sizes, the Kafka ones on one shared broker."""
    benchmarks = BENCHMARKS if benchmarks is None else benchmarks
    at, load_at_start, code = now_iso(), load_avg(), code_version()
    started = time.monotonic()
    details: dict[str, dict] = {}
    took: dict[str, float] = {}
    failed: list[str] = []
    log(f"bench all{' --quick' if quick else ''}: {', '.join(benchmarks)}; load average {load_at_start}")
    with shared_broker():
        for n, (name, bench) in enumerate(benchmarks.items(), start=1):
            size = bench.size(quick)
            log(f"[{n}/{len(benchmarks)}] {name} ({size.events:,} events x {size.repeats}"
                f"{''.join(f', {k} {v:g}' for k, v in size.more.items())}) ...")
            begun = time.monotonic()
            try:
                details[name] = bench.run(events=size.events, repeats=size.repeats, **size.more)
            except Exception as exc:  # noqa: BLE001 - recorded; the other benchmarks still run
                details[name] = {"error": _one_line(exc)}
                failed.append(name)
            took[name] = round(time.monotonic() - begun, 1)
            outcome = f"FAILED: {details[name]['error']}" if name in failed else "done"
            log(f"[{n}/{len(benchmarks)}] {name}: {outcome} in {took[name]:g} s "
                f"({time.monotonic() - started:.0f} s so far)")
    wall = round(time.monotonic() - started, 1)
    log(f"bench all: {wall:g} s, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    figures = headline(details, quick, benchmarks)
    return {
        **figures,
        "targets": against_targets(figures),
        "load_avg": {"start": load_at_start, "end": load_avg()},
        "at": at,
        "quick": quick,
        "wall_s": wall,
        "seconds_by_benchmark": took,
        "failed": failed,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": code["commit"] if code else None,
        "uncommitted_ledger_changes": code["uncommitted_ledger_changes"] if code else None,
        "details": details,
    }
