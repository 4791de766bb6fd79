"""The benchmarks as a command (no broker, no speed asserted: speed is measured by `finops
bench`, never in tests): `finops bench` finds the checkout's bench/ package, `python -m
bench` takes the same arguments, and `bench all` keeps going past a failed benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import bench
from bench.all import run_all
from finops.cli.bench import bench_package

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


class TestTheCommand:
    def test_help_lists_every_benchmark_and_all(self):
        out = run("-m", "finops.cli", "bench", "--help")
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.replace("│", " ").split())
        assert "or all (every one" in text
        missing = [name for name in bench.BENCHMARKS if f"{name} (" not in text]
        assert not missing, f"benchmarks the help does not name: {missing}"

    def test_fold_through_python_m_bench(self):
        out = run("-m", "bench", "fold", "--events", "2000", "--repeats", "1")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["benchmark"] == "fold" and result["events"] == 2000
        for part in ("fold", "ledger_only", "decode_only"):
            assert result[part]["events_per_s"] > 0

    def test_unknown_benchmark_is_a_usage_error(self):
        out = run("-m", "finops.cli", "bench", "nope")
        assert out.returncode == 2
        assert "unknown benchmark 'nope'" in out.stderr and "all" in out.stderr

    def test_all_takes_no_events(self):
        out = run("-m", "bench", "all", "--events", "10")
        assert out.returncode == 2 and "--quick" in out.stderr

    def test_without_a_checkout_it_says_so_in_one_line(self, tmp_path, capsys):
        with pytest.raises(typer.Exit) as exit_:
            bench_package(tmp_path)
        assert exit_.value.exit_code == 1
        assert "source checkout" in capsys.readouterr().err


def _fast(events: int, repeats: int) -> dict:
    return {"fold": {"events_per_s": events}, "decode_only": {"events_per_s": 2 * events}}


def _broken(events: int, repeats: int) -> dict:
    raise RuntimeError("the broker went away\nwith a second line")


class TestAll:
    def test_a_failed_benchmark_is_recorded_and_the_others_still_run(self):
        plan = {"ledger": bench.Benchmark(_broken, bench.Size(10, 1), bench.Size(10, 1)),
                "fold": bench.Benchmark(_fast, bench.Size(100, 1), bench.Size(10, 1))}
        lines: list[str] = []
        result = run_all(quick=True, log=lines.append, benchmarks=plan)
        assert result["failed"] == ["ledger"]
        assert result["details"]["ledger"] == {"error": "RuntimeError: the broker went away with a second line"}
        assert result["fold_events_per_s"] == 10 and result["decode_events_per_s"] == 20
        assert result["ledger_events_per_s"] is None and result["ratio_ledger_to_raw"] is None
        assert result["quick"] is True and len(result["load_avg"]["start"]) == 3
        assert any("ledger: FAILED" in line for line in lines)
