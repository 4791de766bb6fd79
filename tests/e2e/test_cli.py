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


class TestReportAndDemoUsage:
    def test_every_report_is_in_the_help(self):
        from finops.projections.reports import REPORTS

        out = finops("report", "--help", env={"COLUMNS": "200"})
        assert out.returncode == 0
        assert all(f"{name}:" in out.stdout for name in REPORTS), out.stdout

    def test_a_report_s_sql_file_prints_with_its_parameters(self):
        for name in ("runway", "reconcile", "forecast-accuracy", "plan"):
            out = finops("report", name, "--sql")
            assert out.returncode == 0 and "{to:Date}" in out.stdout, name

    def test_bad_plan_options_and_demo_days_are_usage_errors(self):
        for args in (("report", "plan", "--method", "lottery"), ("report", "plan", "--budget", "ten"),
                     ("demo", "--days", "0")):
            out = finops(*args, env={"FINOPS_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
            assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)


class TestSimulate:
    def test_bad_spike_is_a_usage_error_in_one_line(self):
        out = finops("simulate", "--spike", "search-user0:ten@30s", "--output", os.devnull)
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [
            "error: --spike 'search-user0:ten@30s': factor 'ten' is not a number"]

    def test_output_file_and_json_summary(self, tmp_path):
        events = tmp_path / "events.jsonl"
        out = finops("simulate", "--tenants", "2", "--rate", "500", "--duration", "4", "--seed", "5", "--output",
                     str(events), "--json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        lines = events.read_bytes().splitlines()
        assert summary["messages"] == len(lines) == summary["commands"] + summary["usage"] + summary["bad"]
        assert summary["tenants"] == ["acme", "globex"] and summary["output"] == str(events)
        folded = json.loads(finops("fold", str(events)).stdout)
        assert len(folded["rejected"]) >= summary["bad"] > 0  # every bad line is refused with a reason


class TestReceive:
    def test_checks_signatures_and_drops_repeats(self):
        import socket
        import urllib.error
        import urllib.request

        from finops.producers.webhooks import sign

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        receiver = subprocess.Popen([sys.executable, "-m", "finops.cli", "alerts", "receive", "--port", str(port),
                                     "--json", "--count", "1", "--timeout", "60"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "FINOPS_WEBHOOK_SECRET": "s3cret"})

        def post(body: bytes, secret: str, key: str = "a-1") -> int:
            ts = int(time.time())
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST", headers={
                "Idempotency-Key": key, "X-Finops-Timestamp": str(ts), "X-Finops-Signature": sign(secret, ts, body)})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code
            except urllib.error.URLError:
                return 0  # not listening yet

        body = json.dumps({"id": "a-1", "tenant_id": "acme", "account_id": "x", "severity": "info"}).encode()
        deadline = time.monotonic() + 30
        while (status := post(body, "wrong")) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 401
        assert post(b"[1, 2]", "s3cret", "b") == 400
        assert post(body, "s3cret") == 204
        stdout, stderr = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, stderr
        assert [json.loads(line)["id"] for line in stdout.splitlines()] == ["a-1"]
        assert "1 alerts received, 2 refused" in stderr


@pytest.mark.integration
def test_wait_without_a_ledger_says_so(kafka_settings):
    from finops.producers.publish import publish_lines

    prefix = f"nowhere-{time.time_ns()}"
    settings = kafka_settings.model_copy(update={"group_prefix": prefix})
    publish_lines(settings, [Script().purchase(10)])
    out = finops("wait", "--timeout", "30", env={"FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap,
                                                 "FINOPS_GROUP_PREFIX": prefix})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no ledger processor is running in group {prefix}-ledger" in lines[0]
