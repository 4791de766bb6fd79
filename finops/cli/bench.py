"""``finops bench NAME``: the benchmarks, which live in the source checkout's ``bench/`` package
(not in the wheel); ``python -m bench NAME`` from the checkout's root parses with this command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import typer

from .common import app, command, err, fail, setup_logging

BENCH_HELP = (
    "Benchmark to run: fold (pure ledger), ledger (the Kafka processor against raw confluent-kafka, on a "
    "dedicated broker), reports (every report on generated ClickHouse data), sink (the sink's ClickHouse write "
    "path, no Kafka), alerts (publish-to-alert latency under steady load; --events is events per second), "
    "alert-rate (finops.spend.v1 records per second through `finops run alerts`; --events is records), "
    "balance-latency (publish-to-balance latency under steady load; --events is events per second), sdk "
    "(UsageProducer against raw confluent-kafka produce), e2e (publish to ClickHouse rows through `finops run "
    "ledger` and `finops run sink` child processes), ledger-memory (peak RSS of `finops run ledger` folding "
    "100,000 accounts), busy-tenant (one busy tenant published into a running `finops run ledger`, kill -9 at "
    "half, vs 50 small tenants; checked against finops fold), serve (GET /v1/check of a `finops serve` child at "
    "1,000 requests/s from an open-loop load generator, and the live view's lag after usage bursts; --events is "
    "requests per second) or all (every one, the Kafka ones on one shared broker: one JSON with the headline "
    "figures, each benchmark's own JSON under details).")


def bench_package(root: Path | None = None) -> ModuleType:
    """The checkout's ``bench`` package, next to the ``finops`` package's source (the install is
    editable); ``root`` is the checkout (default: found from the ``finops`` package). Exits 1 with
    one line when there is none (an installed wheel) or another module named ``bench`` hides it."""
    import importlib

    if root is None:
        import finops

        root = Path(finops.__file__).resolve().parents[1]
    if not ((root / "pyproject.toml").is_file() and (root / "bench" / "__init__.py").is_file()):
        fail("benchmarks run from a source checkout (its bench/ package); this finops is installed without one")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("bench")
    if Path(module.__file__).resolve().parent != root / "bench":
        fail(f"another module named bench ({module.__file__}) hides the checkout's {root / 'bench'}")
    return module


@app.command()
@command
def bench(
    name: str = typer.Argument("fold", help=BENCH_HELP),
    events: Optional[int] = typer.Option(None, help="Usage events per run; for reports and sink, rows; for "
                                                    "alerts and balance-latency, events per second (default: "
                                                    "fold/ledger/sdk 200000, reports 10000000, sink 500000, "
                                                    "alerts/balance-latency 10000, e2e/ledger-memory 1000000, "
                                                    "busy-tenant 3000000; smaller with --quick)."),
    repeats: Optional[int] = typer.Option(None, help="Runs; the median is reported (default: 3 where a run is "
                                                     "short, else 1)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes and fewer repeats (all: under 8 minutes on "
                                                      "2 cores)."),
    output: Optional[Path] = typer.Option(None, "--out", "--json", "-o", help="Also write the JSON to this file."),
) -> None:
    """Measure throughput and latency and print one JSON document (speed is measured here, not in tests).

    Runs from a source checkout: the benchmarks are its bench/ package; `python -m bench NAME` from its root is the same.

    `all` exits 1 when any benchmark failed (each failure is under details, its figures null).

    Example: finops bench all --quick --json bench/results/all-quick.json
    """
    bench_mod = bench_package()
    if name not in bench_mod.NAMES:
        fail(f"unknown benchmark {name!r}; choose from {', '.join(bench_mod.NAMES)}", 2)
    if name == "all" and (events is not None or repeats is not None):
        fail("bench all takes --quick, not --events or --repeats", 2)
    setup_logging(False)
    result = bench_mod.run(name, events=events, repeats=repeats, quick=quick,
                           log=lambda m: err.print(m, soft_wrap=True, markup=False))
    text = json.dumps(result, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    if result.get("failed"):
        raise typer.Exit(1)
