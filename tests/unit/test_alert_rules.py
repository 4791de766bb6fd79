"""The alert processor's rules (processors/alerts.py Judge) on simulated spend, no Kafka."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

from finops.processors.alerts import Judge, Profile, Rules
from finops.schemas.money import MICROS_PER_CREDIT as MICROS

START = datetime(2026, 10, 5, tzinfo=timezone.utc)  # a Monday


def record(account: str, hour: datetime, spent: float, *, available: float = 1e6, granted: float = 1e6,
           window_end: datetime | None = None, tenant: str = "t") -> dict:
    return {"tenant_id": tenant, "account_id": account, "hour": hour.isoformat(),
            "spent_micros": round(spent * MICROS), "requests": 1, "ts": (hour + timedelta(minutes=59)).isoformat(),
            "available_micros": round(available * MICROS),
            "granted_micros": round(granted * MICROS), "period": "2026-10",
            "window_end": window_end.isoformat() if window_end else None}


def feed(judge: Judge, records: list[dict], profile: Profile | None = None) -> tuple[Profile, list]:
    profile = Profile() if profile is None else profile
    alerts = []
    for offset, r in enumerate(records, start=profile.offset + 1):
        profile, raised = judge.apply(profile, r, offset)
        alerts += raised
    return profile, alerts


def steady(account: str, hours: int, rng: random.Random, base: float = 10.0, noise: float = 0.1,
           start: datetime = START, **kw) -> list[dict]:
    return [record(account, start + timedelta(hours=h), base * max(0.0, 1 + rng.gauss(0, noise)), **kw)
            for h in range(hours)]


def firing(alerts, kind: str) -> list:
    return [a for a in alerts if a.type == kind and a.status == "firing"]


class TestZScore:
    def test_a_ten_times_hour_gives_exactly_one_spike_for_that_hour(self):
        rng = random.Random(1)
        records = steady("a", 7 * 24, rng)
        spike_hour = START + timedelta(hours=7 * 24)
        records.append(record("a", spike_hour, 100))
        records += steady("a", 48, rng, start=spike_hour + timedelta(hours=1))
        _, alerts = feed(Judge(), records)
        spikes = firing(alerts, "zscore_spike")
        assert [(a.account_id, a.period) for a in spikes] == [("a", spike_hour.strftime("%Y-%m-%dT%H:%M:%SZ"))]
        resolved = [a for a in alerts if a.type == "zscore_spike" and a.status == "resolved"]
        assert [a.period for a in resolved] == [spikes[0].period]
        assert spikes[0].id == f"t/a/zscore_spike/{spikes[0].period}/firing"

    def test_a_spike_arriving_in_several_records_fires_once(self):
        rng = random.Random(2)
        records = steady("a", 48, rng)
        hour = START + timedelta(hours=48)
        records += [record("a", hour, 25) for _ in range(4)]  # the hour's spend comes in pieces
        _, alerts = feed(Judge(), records)
        assert len(firing(alerts, "zscore_spike")) == 1

    def test_under_one_percent_false_alarms_on_1000_steady_noisy_accounts_over_two_weeks(self):
        rng = random.Random(3)
        judge = Judge()
        false_alarms = judged = 0
        for n in range(1000):
            base = rng.uniform(1, 50)
            _, alerts = feed(judge, steady(f"acct-{n}", 14 * 24, rng, base=base, noise=0.15))
            false_alarms += len(firing(alerts, "zscore_spike"))
            judged += 14 * 24 - Rules().min_hours
        rate = false_alarms / judged
        print(f"false alarm rate: {false_alarms} of {judged} account-hours = {rate:.4%}")
        assert rate < 0.01

    def test_no_judgement_before_the_minimum_history(self):
        _, alerts = feed(Judge(), [record("a", START + timedelta(hours=h), 1 if h < 10 else 1000) for h in range(11)])
        assert firing(alerts, "zscore_spike") == []


class TestBalanceRules:
    def test_runway_ending_soon_and_low_balance(self):
        ends = START + timedelta(days=5)
        records = [record("a", START + timedelta(hours=h), 10, available=2000 - 10 * h, granted=2000, window_end=ends)
                   for h in range(30)]
        _, alerts = feed(Judge(), records)
        assert firing(alerts, "ending_soon")[0].period == ends.date().isoformat()
        assert firing(alerts, "runway") == []  # 1700 credits left at 10 an hour: 170 h > the window's ~4 days
        fast = [record("b", START + timedelta(hours=h), 100, available=5000 - 100 * h, granted=5000, window_end=ends)
                for h in range(30)]
        _, alerts = feed(Judge(), fast)
        assert len(firing(alerts, "runway")) == 1  # 2000 left at 100 an hour: 20 h < the window
        assert len(firing(alerts, "low_balance")) == 0
        low = [record("c", START + timedelta(hours=h), 10, available=1000 - 95 * h, granted=1000) for h in range(11)]
        _, alerts = feed(Judge(), low)
        [fired] = firing(alerts, "low_balance")  # below 10 % of the grant only at the last hour: 50 of 1000
        assert fired.severity == "warning" and fired.current_usage == "50"

    def test_month_over_month(self):
        days = []
        start = datetime(2026, 9, 1, tzinfo=timezone.utc)
        for d in range(30 + 10):
            day = start + timedelta(days=d)
            days.append(record("a", day, 10 if day.month == 9 else 13))  # +30 % in October
        _, alerts = feed(Judge(), days)
        assert [a.period for a in firing(alerts, "mom_spike")] == ["2026-10"]


class TestRepeats:
    def test_a_record_again_changes_nothing_and_raises_nothing(self):
        judge = Judge()
        rng = random.Random(4)
        records = steady("a", 48, rng) + [record("a", START + timedelta(hours=48), 100)]
        profile, alerts = feed(judge, records)
        again, repeated = judge.apply(Profile.from_stored(profile.stored()), records[-1], profile.offset)
        assert repeated == [] and again == profile and len(firing(alerts, "zscore_spike")) == 1


class TestStoredProfile:
    def test_the_table_value_keeps_the_shape_of_the_untyped_profile(self):
        """A changelog written when the table held plain dicts restores, and what is stored now
        has the same keys (``alert-profiles`` values are JSON objects)."""
        rng = random.Random(5)
        records = steady("a", 30, rng, window_end=START + timedelta(days=40))
        profile, _ = feed(Judge(), records)
        old_shape = {"offset": 29, "hour": profile.hour, "hour_spend": profile.hour_spend,
                     "history": list(profile.history), "days": dict(profile.days),
                     "state": {"available": profile.state.available, "granted": profile.state.granted,
                               "period": "2026-10", "window_end": profile.state.window_end, "ts": profile.state.ts},
                     "firing": dict(profile.firing)}
        assert profile.stored() == old_shape
        assert Profile.from_stored(json.loads(json.dumps(old_shape))) == profile
        assert Profile.from_stored({}) == Profile() and Profile.from_stored(None) == Profile()
