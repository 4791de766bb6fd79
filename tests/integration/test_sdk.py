"""The producer SDK and the simulator: pricing and checks in the app, command outcomes
from the real ledger, and the example app's usage showing up in `finops balance` and
`finops report burn-rate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.producers import (CommandClient, CommandRejected, InvalidEvent, OutcomeTimeout, RateCard, UsageProducer,
                              measure_latency, usage_from_openai)
from finops.producers.simulate import Simulation, parse_spike, run
from finops.errors import FinopsError
from finops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CARD = RateCard.per_1k({"gpt-4o": ("0.0025", "0.01"), "gpt-4o-mini": ("0.00015", "0.0006"), "gpt-4": ("0.03", "0.06")})


class TestPricing:
    def test_longest_priced_prefix_wins(self):
        assert CARD.credits("gpt-4o-mini-2024-07-18", 1000, 500) == Decimal("0.000450")
        assert CARD.credits("gpt-4o-2024-08-06", 1234, 567) == Decimal("0.008755")  # 0.003085 + 0.00567
        assert CARD.credits("gpt-4", 1000, 1000) == Decimal("0.090000")

    def test_rounds_half_even_to_micro_credits(self):
        card = RateCard.per_1k({"m": ("0.0005", "0")})
        assert CARD.credits("gpt-4o", 1, 0) == Decimal("0.000002")  # 0.0000025 -> even
        assert card.credits("m", 3, 0) == Decimal("0.000002")  # 0.0000015 -> even

    def test_unknown_model_is_refused(self):
        with pytest.raises(InvalidEvent) as info:
            CARD.credits("claude-3", 10, 10)
        assert info.value.reason == "no_rate"


class TestOpenAIUsage:
    def test_chat_completions_dict(self):
        with measure_latency() as latency:
            pass
        event = usage_from_openai({"id": "chatcmpl-1", "model": "gpt-4o-2024-08-06",
                                   "usage": {"prompt_tokens": 1234, "completion_tokens": 567, "total_tokens": 1801}},
                                  tenant_id="acme", account_id="team-a", api_key_id="k1", rate_card=CARD,
                                  latency=latency, usage_labels={"team": "a"})
        assert event["id"] == "chatcmpl-1" and event["units_consumed"] == 1801
        assert event["credits_consumed"] == "0.008755" and event["usage_labels"] == {"team": "a"}
        assert event["response_latency_ms"] == latency.ms >= 0
        assert event["model_name"] == "gpt-4o-2024-08-06"

    def test_responses_api_object(self):
        response = SimpleNamespace(id="resp_1", model="gpt-4o-mini",
                                   usage=SimpleNamespace(input_tokens=2000, output_tokens=1000))
        event = usage_from_openai(response, tenant_id="acme", api_key_id="k1", rate_card=CARD)
        assert event["units_consumed"] == 3000 and event["credits_consumed"] == "0.000900"
        assert "account_id" not in event  # charged through the key's binding

    def test_without_a_rate_card_the_ledger_prices_it(self):
        event = usage_from_openai({"model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
                                  tenant_id="acme", api_key_id="k1")
        assert "credits_consumed" not in event and event["units_consumed"] == 3

    def test_a_failed_call_keeps_its_latency_and_error(self):
        with pytest.raises(TimeoutError):
            with measure_latency() as latency:
                raise TimeoutError("provider timed out")
        event = usage_from_openai({"model": "gpt-4o", "usage": {"prompt_tokens": 5, "completion_tokens": 0}},
                                  tenant_id="acme", api_key_id="k1", latency=latency)
        assert event["error_code"] == "TimeoutError" and event["response_latency_ms"] == latency.ms


class TestCheckedInTheApp:
    """Bad events fail in the app, before anything is queued (no broker needed)."""

    @pytest.fixture
    def producer(self):
        return UsageProducer(Settings(kafka_bootstrap="127.0.0.1:1"))

    @pytest.mark.parametrize("change, reason", [
        ({"credits_consumed": "-1"}, "invalid_amount"),
        ({"credits_consumed": "0.0000001"}, "invalid_amount"),
        ({"model_name": None}, "wrong_type"),
        ({"ts": "yesterday"}, "invalid_timestamp"),
        ({"ts": "2099-01-01T00:00:00Z"}, "ts_in_future"),  # a bad client clock: the ledger would refuse it too
    ])
    def test_invalid_usage_raises(self, producer, change, reason):
        event = {"tenant_id": "acme", "api_key_id": "k", "model_name": "m", "operation_type": "chat",
                 "units_consumed": 1, "credits_consumed": "0.5", **change}
        with pytest.raises(InvalidEvent) as info:
            producer.send(event)
        assert info.value.reason == reason
        assert producer.queued == 0  # nothing was handed to Kafka

    def test_missing_field_and_commands_are_refused(self, producer):
        with pytest.raises(InvalidEvent, match="missing_field"):
            producer.send({"tenant_id": "acme", "model_name": "m", "operation_type": "chat", "units_consumed": 1})
        with pytest.raises(InvalidEvent, match="CommandClient"):
            producer.send({"type": "purchase", "tenant_id": "acme", "credits": 5})
        assert producer.queued == 0


class TestDeliveryReports:
    def test_a_failed_delivery_is_counted_with_its_event_id(self):
        seen = []
        producer = UsageProducer(Settings(kafka_bootstrap="127.0.0.1:1"), kafka_config={"message.timeout.ms": 500},
                                 on_delivery=lambda event_id, error: seen.append((event_id, error)))
        event_id = producer.send({"tenant_id": "acme", "api_key_id": "k", "model_name": "m",
                                  "operation_type": "chat", "units_consumed": 1})
        assert producer.flush(10) == 0  # delivered or failed: nothing left queued
        assert (producer.queued, producer.sent, producer.failed) == (1, 0, 1)
        assert producer.failures[0].id == event_id and seen[0][0] == event_id and seen[0][1]


class TestSimulation:
    def test_spike_forms(self):
        start = datetime(2026, 11, 23, tzinfo=timezone.utc)
        assert parse_spike("search-user0:10@30s", start).at == 30
        assert parse_spike("acme/search-user0:2.5@2h", start).factor == 2.5
        assert parse_spike("a:3@2026-11-23T01:00:00Z", start).at == 3600
        for bad in ("search-user0@30s", "a:x@30s", "a:0@30s", "a:3@soon"):
            with pytest.raises(FinopsError):
                parse_spike(bad, start)

    def test_a_spike_naming_no_account_is_refused(self):
        with pytest.raises(FinopsError, match="names no simulated account"):
            Simulation(spikes=("nobody:5@1h",))

    def _lines(self, **kw) -> list[bytes]:
        lines: list[bytes] = []
        run(Simulation(tenants=2, accounts_per_tenant=8, rate=2000, duration=24, speed=3600, seed=11,
                       start=datetime(2026, 11, 1, tzinfo=timezone.utc), **kw), lines.extend, paced=False)
        return lines

    def test_traffic_is_realistic_and_folds(self):
        lines = self._lines()
        usage = [msgspec.json.decode(x) for x in lines if b'"usage"' in x and x.endswith(b"}")]
        by_hour = Counter(datetime.fromisoformat(u["ts"].replace("Z", "+00:00")).hour for u in usage
                          if isinstance(u, dict) and "ts" in u)
        assert max(by_hour.values()) > 2.5 * min(by_hour.values())  # a daily cycle: afternoon vs night
        labels = {k for u in usage if isinstance(u, dict) for k in u.get("usage_labels", {})}
        assert labels == {"team", "cost_center", "project", "env"}
        assert len({u.get("model_name") for u in usage if isinstance(u, dict)} - {None}) == 5
        result = fold_lines(lines).summary()
        reasons = Counter(r["reason"] for r in result["rejected"])
        assert {"not_json", "invalid_amount", "missing_field"} <= set(reasons)  # the bad input arrives as such
        assert sum(reasons.values()) < 0.01 * len(lines)
        assert Decimal(str(result["totals"]["consumed"])) > 0 and result["alerts"]  # budgets get used up

    def test_a_spike_multiplies_that_accounts_traffic_in_its_window(self):
        def counts(lines):
            hours = Counter()
            for x in lines:
                u = msgspec.json.decode(x) if x.endswith(b"}") else None
                if isinstance(u, dict) and u.get("type") == "usage" and u.get("account_id") == "search-user0" \
                        and u.get("tenant_id") == "acme":
                    hours[u["ts"][:13]] += 1
            return hours

        base, spiked = counts(self._lines()), counts(self._lines(spikes=("acme/search-user0:10@6h",),
                                                                  spike_length=3600))
        assert spiked["2026-11-01T06"] > 5 * base["2026-11-01T06"] > 0
        assert spiked["2026-11-01T09"] < 2 * base["2026-11-01T09"] + 10  # over after an hour


# ----------------------------------------------------------------------------- against the real ledger


@pytest.mark.integration
class TestCommandOutcomes:
    def test_applied_rejected_and_pending(self, settings):
        tenant = f"sdk-{uuid.uuid4().hex[:8]}"
        with Pipeline(settings, ("ledger",)), CommandClient(settings, timeout=60) as commands:
            assert commands.purchase(tenant, credits=100).applied
            assert commands.open_account(tenant, "team-a", kind="team", parent_id=tenant).applied
            too_much = commands.allocate(tenant, from_account=tenant, to_account="team-a", credits=500)
            assert (too_much.status, too_much.reason) == ("rejected", "insufficient_funds")
            with pytest.raises(CommandRejected, match="insufficient_funds"):
                too_much.raise_for_rejection()
            again = commands.open_account(tenant, "team-a", kind="team", parent_id=tenant)
            assert again.reason == "account_exists"
            pending = [commands.allocate(tenant, from_account=tenant, to_account="team-a", credits=10, wait=False),
                       commands.open_account(tenant, "u1", kind="user", parent_id="nowhere", wait=False)]
            outcomes = commands.wait_all(pending)
            assert [(o.status, o.reason) for o in outcomes] == [("applied", None), ("rejected", "unknown_parent")]
            with pytest.raises(InvalidEvent):
                commands.purchase(tenant, credits="-5")

    def test_no_ledger_times_out_with_the_reason(self, settings):
        with CommandClient(settings) as commands:
            with pytest.raises(OutcomeTimeout, match="is the ledger processor running"):
                commands.purchase(f"sdk-{uuid.uuid4().hex[:8]}", credits=1, timeout=3)


@pytest.mark.integration
def test_example_app_shows_up_in_balance_and_burn_rate(settings, tmp_path):
    """The acceptance line: examples/usage_app.py publishes usage that `finops balance` and
    `finops report burn-rate` show, with the same total."""
    tenant = f"app-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "FINOPS_DATA_DIR": str(tmp_path), "FINOPS_KAFKA_BOOTSTRAP": settings.bootstrap,
           "FINOPS_GROUP_PREFIX": settings.group_prefix, "FINOPS_CLICKHOUSE_DATABASE": "example",
           "FINOPS_CLICKHOUSE_URL": ""}

    def finops(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "finops.cli", *args], capture_output=True, text=True, env=env,
                              timeout=180)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return done

    pipeline = subprocess.Popen([sys.executable, "-m", "finops.cli", "run", "ledger", "sink", "--no-supervise"],
                                env=env, stderr=(tmp_path / "run.log").open("w"))
    try:
        app = subprocess.run([sys.executable, str(ROOT / "examples" / "usage_app.py"), tenant], capture_output=True,
                             text=True, env=env, timeout=180)
        assert app.returncode == 0, app.stderr[-2000:]
        assert f"published 30 usage events for {tenant}/app-example (0 failed)" in app.stdout
        assert json.loads(finops("wait", "--json", "--timeout", "120").stdout)["sink_s"] >= 0
        balance = json.loads(finops("balance", "app-example", "--tenant", tenant, "--json").stdout)
        consumed = Decimal(balance["consumed"])
        assert consumed > 0 and Decimal(balance["available"]) == 5 - consumed
        today = datetime.now(timezone.utc).date()
        rows = json.loads(finops("report", "burn-rate", "--tenant", tenant, "--account", "app-example",
                                 "--from", (today - timedelta(days=1)).isoformat(),
                                 "--to", (today + timedelta(days=1)).isoformat(), "--format", "json").stdout)
        assert {Decimal(r["total"]) for r in rows} == {consumed}  # the tenant row and the account row
        requests = finops("sql", f"SELECT count() AS n FROM usage_events WHERE tenant_id = '{tenant}'",
                          "--format", "json").stdout
        assert json.loads(requests) == [{"n": 30}]
    finally:
        pipeline.terminate()
        pipeline.wait(30)
