"""The benchmarks of a finops checkout (not part of the installed package): speed is
measured here, never in timed tests. Each benchmark returns one JSON document.

Run them with ``finops bench NAME`` from a checkout, or ``python -m bench NAME`` from its
root (the same command and arguments); ``all`` runs every one (see bench/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import alerts, clickhouse, e2e, fold, kafka, latency, serve


@dataclass(frozen=True)
class Size:
    """How big one benchmark runs: ``events`` (usage events unless its entry says otherwise), ``repeats``,
    and other keyword arguments of the benchmark."""

    events: int
    repeats: int
    more: dict = field(default_factory=dict)  # other keyword arguments of the benchmark


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: the function that runs it and returns its JSON document, and its full and
    ``--quick`` sizes."""

    run: Callable[..., dict]
    full: Size
    quick: Size  # `--quick`: `bench all` in under 8 minutes on 2 cores

    def size(self, quick: bool) -> Size:
        """The ``--quick`` size when ``quick``, else the full one."""
        return self.quick if quick else self.full


# In the order `bench all` runs them: ClickHouse and the pure fold first, then every
# benchmark that needs the (one, shared) broker. `events` is usage events, except: rows
# for reports and sink, usage events per second for the latency benchmarks, checks per second
# for serve, spend records for alert-rate.
BENCHMARKS: dict[str, Benchmark] = {
    "fold": Benchmark(fold.fold, Size(200_000, 3), Size(100_000, 3)),
    "sink": Benchmark(clickhouse.sink, Size(500_000, 3), Size(200_000, 1)),
    "reports": Benchmark(clickhouse.reports, Size(10_000_000, 3), Size(10_000_000, 1)),
    "ledger": Benchmark(kafka.ledger, Size(200_000, 1), Size(100_000, 1)),
    "sdk": Benchmark(kafka.sdk, Size(200_000, 3), Size(100_000, 1)),
    "e2e": Benchmark(e2e.e2e, Size(1_000_000, 1), Size(100_000, 1)),
    "balance-latency": Benchmark(latency.balance_latency, Size(10_000, 1, {"seconds": 60.0}),
                                 Size(10_000, 1, {"seconds": 20.0})),
    "alerts": Benchmark(latency.alerts, Size(10_000, 1, {"seconds": 30.0}), Size(10_000, 1, {"seconds": 20.0})),
    "alert-rate": Benchmark(alerts.alert_rate, Size(50_000, 3), Size(10_000, 1)),
    "serve": Benchmark(serve.serve, Size(1_000, 1, {"seconds": 30.0}), Size(1_000, 1, {"seconds": 10.0})),
    "ledger-memory": Benchmark(kafka.ledger_memory, Size(1_000_000, 1, {"accounts": 100_000}),
                               Size(200_000, 1, {"accounts": 100_000})),
    "busy-tenant": Benchmark(kafka.busy_tenant, Size(3_000_000, 1), Size(300_000, 1)),
}
NAMES = (*BENCHMARKS, "all")


def run_one(name: str, *, events: int | None = None, repeats: int | None = None, quick: bool = False) -> dict:
    """One benchmark at its full (or ``quick``) size; ``events`` and ``repeats`` override it."""
    bench = BENCHMARKS[name]
    size = bench.size(quick)
    return bench.run(events=size.events if events is None else events,
                     repeats=size.repeats if repeats is None else repeats, **size.more)


def run(name: str, *, events: int | None = None, repeats: int | None = None, quick: bool = False,
        log: Callable[[str], None] = lambda _m: None) -> dict:
    """``name`` (a benchmark, or ``all``) as one JSON document; ``all``'s says which failed."""
    if name == "all":
        from .all import run_all

        return run_all(quick=quick, log=log)
    size = BENCHMARKS[name].size(quick)
    log(f"running {name} benchmark ({size.events if events is None else events} events x "
        f"{size.repeats if repeats is None else repeats})...")
    return run_one(name, events=events, repeats=repeats, quick=quick)
