"""wire-v1.md's "v1 rules made precise" through the real broker and a running ledger: the
examples of kinds 1 (offsets), 2 (two monthly allocations), 6 (a settle after its hold ended)
and 7 (credits never outlive their source) give the fold's right values, alerts included.

Event times are a year back: the ledger refuses a ts ahead of the time Kafka stored it."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

import rule_examples
from finops import clients
from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.producers.publish import publish_lines
from finops.projections.balances import read_balances
from finops.schemas import topics
from support import wait_until

pytestmark = pytest.mark.integration

YEAR = 2025


def through_kafka(settings, pipeline: Pipeline, script) -> tuple[dict, list, list]:
    """(balances, rejections, threshold alerts) of the script's tenant after the ledger applied it."""
    assert publish_lines(settings, script.lines).failed == 0
    ends = clients.input_ends(settings)
    wait_until(lambda: pipeline.ledger.caught_up(ends), 120, "the ledger", pipeline)
    tenant = script.tenant
    balances = {acct: (Decimal(b.available), Decimal(b.consumed), Decimal(b.overage))
                for (t, acct), b in read_balances(settings, tenant_id=tenant).items() if t == tenant}
    rejected = [json.loads(m.value()) for m in clients.read_to_end(settings, topics.REJECTED,
                                                                     range(settings.topic_partitions))]
    alerts = [json.loads(m.value()) for m in clients.read_to_end(settings, topics.ALERTS,
                                                                   range(settings.topic_partitions))]
    return (balances, [(r["id"], r["reason"]) for r in rejected if r["tenant_id"] == tenant],
            [(a["account_id"], a["threshold"], a["status"], a["period"]) for a in alerts
             if a["tenant_id"] == tenant and a["type"] == "threshold"])


def folded(script) -> tuple[dict, list, list]:
    summary = fold_lines(script.lines).summary()
    balances = {acct: (Decimal(v["available"]), Decimal(v["consumed"]), Decimal(v["overage"]))
                for acct, v in summary["accounts"].items()}
    return (balances, [(r["id"], r["reason"]) for r in summary["rejected"]],
            [(a["account_id"], a["threshold"], a["status"]) for a in summary["alerts"] if a["type"] == "threshold"])


@pytest.fixture
def pipeline(settings):
    with Pipeline(settings, ("ledger",)) as running:
        yield running


def tenant() -> str:
    return f"rules-{uuid.uuid4().hex[:8]}"


def check_same_as_fold(settings, pipeline, script) -> tuple[dict, list, list]:
    got = through_kafka(settings, pipeline, script)
    want = folded(script)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert [a[:3] for a in got[2]] == want[2]
    return got


class TestRulesThroughKafka:
    def test_an_offset_does_not_change_the_month(self, settings, pipeline):
        for stamp in (f"{YEAR}-11-30T20:30:00Z", f"{YEAR}-12-01T02:00:00+05:30"):
            _balances, _rejected, alerts = check_same_as_fold(
                settings, pipeline, rule_examples.offset_month(tenant(), YEAR, stamp))
            assert alerts == [("team", 50, status, f"{YEAR}-11") for status in ("firing", "resolved", "firing")]

    def test_two_monthly_allocations_add_up_in_the_period_budget(self, settings, pipeline):
        balances, _rejected, alerts = check_same_as_fold(settings, pipeline, rule_examples.two_monthly(tenant(), YEAR))
        # November's alerts resolve as December starts; in December only the 50 % one fires
        assert [a for a in alerts if a[3] == f"{YEAR}-12" and a[2] == "firing"] == [("team", 50, "firing",
                                                                                  f"{YEAR}-12")]
        assert balances["team"][0] == 90

    def test_a_settle_after_its_hold_ended_is_charged(self, settings, pipeline):
        script = rule_examples.late_settle(tenant(), YEAR)
        balances, rejected, _alerts = check_same_as_fold(settings, pipeline, script)
        assert rejected == [("s2", "reservation_closed")]
        assert balances[script.tenant] == (92, 8, 0)

    def test_released_credits_expire_with_the_grant_they_came_from(self, settings, pipeline):
        balances, _rejected, _alerts = check_same_as_fold(
            settings, pipeline, rule_examples.released_after_the_grant_ended(tenant(), YEAR))
        assert balances["team"] == (0, 50, 50)
