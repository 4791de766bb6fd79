"""The examples of wire-v1.md's "v1 rules made precise" that run both through `finops fold`
(tests/unit/test_ledger.py) and through Kafka (tests/integration/test_rules_through_kafka.py): one builder per
example, for any tenant and year (Kafka refuses event times ahead of the broker's clock, so
the Kafka run uses a past year)."""

from __future__ import annotations

from ledger_helpers import Script

MONTHLY = {"every": "month", "rollover_pct": 0}


def offset_month(tenant: str, year: int, stamp: str) -> Script:
    """Kind 1: a second monthly allocate stamped ``stamp`` (the same instant as
    ``{year}-11-30T20:30:00Z`` written with or without an offset), then 45 credits at 21:00Z."""
    s = Script(tenant)
    s.purchase(1000, ts=f"{year}-11-01T00:00:00Z")
    s.open("team", tenant, fallback=False, ts=f"{year}-11-01T00:00:00Z")
    s.allocate(tenant, "team", 100, recurrence=MONTHLY, ts=f"{year}-11-01T00:00:00Z")
    s.use("team", 60, ts=f"{year}-11-10T00:00:00Z")
    s.allocate(tenant, "team", 100, recurrence=MONTHLY, ts=stamp, id="second")
    s.use("team", 45, ts=f"{year}-11-30T21:00:00Z")
    return s


def two_monthly(tenant: str, year: int) -> Script:
    """Kind 2: two hard monthly allocations of 100; December's budget is 200."""
    s = Script(tenant)
    s.purchase(1000, ts=f"{year}-11-01T00:00:00Z")
    s.open("team", tenant, fallback=False, ts=f"{year}-11-01T00:00:00Z")
    s.allocate(tenant, "team", 100, recurrence=MONTHLY, cap="hard", ts=f"{year}-11-01T00:00:00Z")
    s.allocate(tenant, "team", 100, recurrence=MONTHLY, cap="hard", ts=f"{year}-11-15T00:00:00Z", id="second")
    s.use("team", 110, ts=f"{year}-11-20T00:00:00Z")
    s.tick(ts=f"{year}-12-01T00:00:00Z")
    s.use("team", 110, ts=f"{year}-12-05T00:00:00Z")
    return s


def late_settle(tenant: str, year: int) -> Script:
    """Kind 6: reserve 10 expiring at 10:05, settle 8 at 10:07 (charged), settle again (closed)."""
    s = Script(tenant)
    s.purchase(100, ts=f"{year}-11-01T09:00:00Z")
    s.msg("reserve", id="h1", account_id=tenant, credits=10, expires_at=f"{year}-11-01T10:05:00Z",
          ts=f"{year}-11-01T10:00:00Z")
    s.msg("settle", id="s1", reservation_id="h1", credits=8, ts=f"{year}-11-01T10:07:00Z")
    s.msg("settle", id="s2", reservation_id="h1", credits=8, ts=f"{year}-11-01T10:08:00Z")
    return s


def released_after_the_grant_ended(tenant: str, year: int) -> Script:
    """Kind 7: a hold released after its grant ended: the credits expire, nothing pays Dec 10."""
    s = Script(tenant)
    s.purchase(1000, ts=f"{year}-11-01T00:00:00Z")
    s.open("team", tenant, fallback=False, ts=f"{year}-11-01T00:00:00Z")
    s.allocate(tenant, "team", 100, ends_at=f"{year}-12-01T00:00:00Z", ts=f"{year}-11-01T00:00:00Z")
    s.msg("reserve", id="h1", account_id="team", credits=80, expires_at=f"{year}-12-03T00:00:00Z",
          ts=f"{year}-11-30T23:00:00Z")
    s.tick(ts=f"{year}-12-02T00:00:00Z")
    s.tick(ts=f"{year}-12-04T00:00:00Z")
    s.use("team", 50, ts=f"{year}-12-10T00:00:00Z")
    return s
