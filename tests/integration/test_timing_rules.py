"""wire-v1.md, "v1 rules made precise", through the real broker and a running ledger: the
idempotency horizon, far-future times, usage before its account, and publishing files.

Event times here lie in the past of the broker's clock (the input topics stamp records with
LogAppendTime, and a ts more than 5 minutes ahead of it is ts_in_future)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from finops import clients
from finops.pipeline import Pipeline
from finops.processors.fold import fold_lines
from finops.producers.publish import publish_lines
from finops.projections.balances import read_balances
from finops.schemas import topics
from finops.schemas.money import credits_str
from finops.schemas.wire import format_time as iso
from support import wait_until

pytestmark = pytest.mark.integration


class Lines:
    """Wire-v1 lines of one fresh tenant."""

    def __init__(self) -> None:
        self.tenant = f"t-{uuid.uuid4().hex[:8]}"
        self.lines: list[bytes] = []
        self.n = 0

    def msg(self, type_: str, ts: datetime, **fields) -> bytes:
        self.n += 1
        fields.setdefault("id", f"{type_}-{self.n}")
        line = json.dumps({"type": type_, "tenant_id": self.tenant, "ts": iso(ts), **fields}).encode()
        self.lines.append(line)
        return line

    def use(self, account: str, credits, ts: datetime, **fields) -> bytes:
        return self.msg("usage", ts, account_id=account, api_key_id="k", model_name="m", operation_type="chat",
                        units_consumed=1, credits_consumed=str(credits), **fields)


def run_and_read(settings, pipeline: Pipeline, *files: Lines, stages: list[list[bytes]] | None = None
                 ) -> tuple[dict, list[tuple[str, str]]]:
    """Publish each file (or each stage, waiting for the ledger in between) into the running
    ledger, wait until it is applied; (balances, rejections) of the files' tenants."""
    for lines in stages or [f.lines for f in files]:
        assert publish_lines(settings, lines).failed == 0
        ends = clients.input_ends(settings)
        wait_until(lambda: pipeline.ledger.caught_up(ends), 120, "the ledger to apply the files", pipeline)
    tenants = {f.tenant for f in files}
    balances = {}
    for tenant in tenants:
        balances.update(read_balances(settings, tenant_id=tenant))
    rejected = []
    for m in clients.read_to_end(settings, topics.REJECTED, range(settings.topic_partitions)):
        r = json.loads(m.value())
        if r["tenant_id"] in tenants:
            rejected.append((r["tenant_id"], r["id"], r["reason"]))
    return balances, rejected


def summary_of(balances: dict, tenant: str) -> dict:
    return {acct: {"available": b.available, "consumed": b.consumed, "reserved": b.reserved, "overage": b.overage}
            for (t, acct), b in balances.items() if t == tenant}


def fold_of(f: Lines, now: datetime | None = None) -> tuple[dict, list[tuple[str, str, str]]]:
    result = fold_lines(f.lines, now=now).summary()
    return result["accounts"], [(f.tenant, r["id"], r["reason"]) for r in result["rejected"]]


@pytest.fixture
def pipeline(settings):
    with Pipeline(settings, ("ledger",)) as running:
        yield running


class TestIdempotencyHorizon:
    def test_resends_30_days_later_are_no_ops_and_36_days_later_too_late(self, settings, pipeline):
        now = datetime.now(timezone.utc)
        f = Lines()
        start = now - timedelta(days=40)
        purchase = f.msg("purchase", start, id="topup-7", credits=1000)
        usage = f.use(f.tenant, 30, start + timedelta(minutes=1), id="req-42")
        f.msg("tick", start + timedelta(days=30))
        first = list(f.lines)
        f.lines += [usage, purchase]  # resent after the tick was applied: no-ops
        f.msg("tick", start + timedelta(days=36))
        second = f.lines[len(first):]
        f.lines += [usage, purchase]  # too_late
        # A resend is late only when it arrives after event time moved on: the ledger merges the two
        # input topics by event time, so each stage is applied before the next is published.
        balances, rejected = run_and_read(settings, pipeline, f, stages=[first, second, [usage, purchase]])
        folded, fold_rejected = fold_of(f)
        # (the ledger applies the last stage in event-time order: the purchase first)
        assert sorted(rejected) == sorted(fold_rejected) == [(f.tenant, "req-42", "too_late"),
                                                             (f.tenant, "topup-7", "too_late")]
        root = summary_of(balances, f.tenant)[f.tenant]
        assert (root["available"], root["consumed"]) == ("970", "30") == (folded[f.tenant]["available"],
                                                                          folded[f.tenant]["consumed"])


class TestFarFutureAndEarlyUsage:
    def test_a_usage_a_year_ahead_is_refused_and_early_usage_waits_for_its_account(self, settings, pipeline):
        now = datetime.now(timezone.utc)
        f = Lines()
        t = now - timedelta(hours=2)
        f.msg("purchase", t, credits=1000)
        f.msg("open_account", t, account_id="team", parent_id=f.tenant, kind="team", fallback=False)
        f.msg("allocate", t, from_account=f.tenant, to_account="team", credits=100,
              recurrence={"every": "month", "rollover_pct": 0}, expires_at=iso(now + timedelta(days=20)))
        f.use("team", 5, now + timedelta(days=365), id="from-the-future")
        f.use("late-user", 7, now - timedelta(minutes=20), id="before-its-account")
        f.msg("open_account", now - timedelta(minutes=10), account_id="late-user", parent_id="team", kind="user")
        balances, rejected = run_and_read(settings, pipeline, f)
        assert rejected == [(f.tenant, "from-the-future", "ts_in_future")]
        accounts = summary_of(balances, f.tenant)
        assert accounts["team"]["available"] == "93"  # the grant is untouched by the future usage
        assert accounts["late-user"]["consumed"] == "7"
        folded, fold_rejected = fold_of(f, now=now)
        assert fold_rejected == rejected
        assert {a: folded[a] for a in accounts} == accounts


def mixed_file(seed: int) -> Lines:
    """Commands and usage of a fresh tenant interleaved, as an operator's file would hold them:
    accounts opened, funded and topped up between bursts of their usage."""
    rng = random.Random(seed)
    f = Lines()
    t = datetime.now(timezone.utc) - timedelta(hours=3)
    f.msg("purchase", t, credits=5000)
    accounts: list[str] = []
    for step in range(rng.randint(15, 30)):
        t += timedelta(seconds=rng.randint(1, 120))
        if not accounts or rng.random() < 0.2:
            name = f"team-{len(accounts)}"
            f.msg("open_account", t, account_id=name, parent_id=f.tenant, kind="team",
                  fallback=rng.random() < 0.5)
            f.msg("allocate", t, from_account=f.tenant, to_account=name, credits=rng.randint(10, 200),
                  cap=rng.choice(["soft", "hard"]))
            accounts.append(name)
        elif rng.random() < 0.15:
            f.msg("allocate", t, from_account=f.tenant, to_account=rng.choice(accounts), credits=rng.randint(1, 50))
        elif rng.random() < 0.05:
            f.msg("reclaim", t, from_account=rng.choice(accounts), to_account=f.tenant, all=True)
        for _ in range(rng.randint(1, 40)):
            f.use(rng.choice(accounts), credits_str(rng.randint(1, 3_000_000)), t)
    return f


class TestPublishingFiles:
    def test_twenty_files_published_into_a_running_ledger_give_what_the_fold_gives(self, settings, pipeline):
        files = [mixed_file(seed) for seed in range(20)]
        balances, rejected = run_and_read(settings, pipeline, *files)
        expected_rejected = []
        for f in files:
            folded, fold_rejected = fold_of(f)
            expected_rejected += fold_rejected
            assert summary_of(balances, f.tenant) == folded, f.tenant
        assert sorted(rejected) == sorted(expected_rejected)
