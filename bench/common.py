"""What the benchmarks share: rates and quantiles, the machine they ran on, the code they
measured, progress lines on stderr."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent  # the checkout


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def now_iso() -> str:
    """This machine's wall time, UTC, to the second (RFC 3339): when a benchmark ran."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def rate(run: Callable[[], None], count: int, repeats: int) -> dict:
    """``count`` items per second through ``run``: the median of ``repeats`` runs, and each run."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - started))
    return {"events_per_s": round(statistics.median(rates)), "runs": [round(r) for r in rates]}


def ms(seconds: list[float]) -> dict:
    """Durations in seconds as milliseconds: their median and each run, to 0.1 ms."""
    return {"median": round(statistics.median(seconds) * 1000, 1), "runs": [round(s * 1000, 1) for s in seconds]}


def timed(run: Callable[[], object]) -> tuple[float, object]:
    """``(wall seconds, value)`` of one call of ``run`` (monotonic clock)."""
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nan when empty)."""
    if not values:
        return float("nan")
    return values[min(int(q * len(values)), len(values) - 1)]


def latency_ms(seconds: list[float]) -> dict:
    """p50, p90, p99 and max of sorted latencies in seconds, as milliseconds (None when empty)."""
    if not seconds:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {"p50": round(quantile(seconds, 0.5) * 1000), "p90": round(quantile(seconds, 0.9) * 1000),
            "p99": round(quantile(seconds, 0.99) * 1000), "max": round(seconds[-1] * 1000)}


def load_avg() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes: other work moves the numbers."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(client=None) -> dict:
    """What the numbers ran on: CPUs, Python, platform, the 1-minute load average at the end, and
    the ClickHouse version when ``client`` is given."""
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}  # other work on the machine skews the runs
    if client is not None:
        info["clickhouse"] = client.query("SELECT version()").result_rows[0][0]
    return info


def code_version() -> dict | None:
    """The git commit of the code measured, and a digest of the uncommitted changes to the
    ledger's code (None when not a git work tree): a benchmark's child processes import the
    code as it is on disk when they start."""
    import hashlib
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "processors", "schemas", "finops/clients.py",
                               "finops/settings.py"], cwd=ROOT, capture_output=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "uncommitted_ledger_changes": hashlib.sha1(diff).hexdigest()[:12] if diff else None}
