"""The CLI as people and programs meet it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ledger_helpers import Script


def finops(*args: str, env: dict | None = None, stdin: str | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "finops.cli", *args], capture_output=True, text=True,
                          input=stdin, env={**os.environ, **(env or {})}, timeout=timeout)


class TestPublish:
    def test_unreachable_broker_fails_fast_with_one_line(self, tmp_path):
        events = tmp_path / "some.jsonl"
        events.write_bytes(Script().purchase(10) + b"\n")
        started = time.monotonic()
        out = finops("publish", str(events), env={"FINOPS_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
        elapsed = time.monotonic() - started
        assert out.returncode == 1
        assert elapsed < 15
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach Kafka at 127.0.0.1:1" in lines[0]
        assert "Traceback" not in out.stderr

    def test_missing_file_is_one_line(self, tmp_path):
        out = finops("publish", str(tmp_path / "nope.jsonl"), env={"FINOPS_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
        assert out.returncode == 1
        assert out.stderr.strip().splitlines() == [f"error: cannot read {tmp_path / 'nope.jsonl'}: no such file"]


class TestFold:
    def test_prints_balances_and_rejections_as_json(self, tmp_path):
        s = Script()
        s.purchase(1000)
        s.open("org", "acme", kind="org")
        s.allocate("acme", "org", 600)
        s.use("org", "12.5")
        s.allocate("acme", "org", 500)  # only 400 left
        path = tmp_path / "in.jsonl"
        path.write_bytes(b"\n".join(s.lines) + b"\nnot json\n")
        out = finops("fold", str(path))
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["accounts"]["org"] == {"available": "587.5", "consumed": "12.5", "reserved": "0",
                                             "overage": "0"}
        assert result["totals"] == {"purchased": "1000", "consumed": "12.5", "expired": "0", "overage": "0"}
        assert [r["reason"] for r in result["rejected"]] == ["insufficient_funds", "not_json"]

    def test_unreadable_file_exits_non_zero(self, tmp_path):
        out = finops("fold", str(tmp_path / "missing.jsonl"))
        assert out.returncode == 1
        assert "cannot read" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.integration
class TestSql:
    def test_formats(self, tmp_path):
        env = {"FINOPS_DATA_DIR": str(tmp_path)}  # a subprocess: its own chdb path
        out = finops("sql", "SELECT 1 AS one, 'x' AS s", "--format", "json", env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [{"one": 1, "s": "x"}]
        out = finops("sql", "SELECT 1 AS one", "--format", "csv", env=env)
        assert out.stdout.splitlines() == ["one", "1"]
        out = finops("sql", "SELECT nope FROM usage_events", env=env)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
