"""History with known answers, written to ClickHouse as the sink writes it (JSON rows per table).

Ledger entries, balance snapshots and allocations feed the reports; usage events (the traffic as
received: request_summary_daily) and alerts are there for what reads those tables (the dashboard).

:class:`History` writes rows as they are given (any numbers, for one report at a time);
:func:`through_the_ledger` runs wire-v1 messages through the ledger's own step and writes what it
publishes (entries and balances that agree, as in production), and :func:`ninety_days` makes such
messages: three months of a tenant's life with every kind of movement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import random
from collections import defaultdict

import msgspec

from finops.processors.ledger import Ledger
from finops.processors.merge import Item
from finops.processors.plan import plan
from finops.projections.sink import INSERT_SETTINGS, TABLES, encode_rows
from finops.schemas import topics, wire
from finops.schemas.money import MICROS_PER_CREDIT as MICROS


@dataclass
class History:
    tenant: str
    entries: list[bytes] = field(default_factory=list)
    balances: list[bytes] = field(default_factory=list)
    allocations: list[bytes] = field(default_factory=list)
    usages: list[bytes] = field(default_factory=list)
    alerts: list[bytes] = field(default_factory=list)
    n: int = 0

    def spend(self, day: date, account: str, credits: float, *, requests: int = 1, funded_by: str | None = None,
              model: str = "gpt-4o", operation: str = "chat", key: str = "key-1", team: str = "search",
              cost_center: str = "cc-1", project: str = "p-1", env: str = "prod") -> History:
        """``requests`` usages of ``credits`` each, charged to ``account`` on ``day`` (noon UTC)."""
        for _ in range(requests):
            self.n += 1
            cause = f"req-{self.n}"
            self.entries.append(json.dumps({
                "entry_id": f"{cause}#0", "kind": "consume", "tenant_id": self.tenant,
                "account_id": funded_by or account, "charged_to": account, "cause_id": cause, "cause_type": "usage",
                "ts": f"{day.isoformat()}T12:00:00Z", "amount_micros": round(credits * MICROS), "balance_micros": 0,
                "model_name": model, "operation_type": operation, "api_key_id": key,
                "usage_labels": {"team": team, "cost_center": cost_center, "project": project, "env": env},
                "kafka_partition": 0, "kafka_offset": self.n}).encode())
        return self

    def daily(self, first: date, last: date, account: str, credits, **kw) -> History:
        """Spend every day from ``first`` to ``last``; ``credits`` is a number or a function of the day."""
        day = first
        while day <= last:
            self.spend(day, account, credits(day) if callable(credits) else credits, **kw)
            day += timedelta(days=1)
        return self

    def balance(self, account: str, available: float, at: datetime) -> History:
        self.n += 1
        self.balances.append(json.dumps({
            "tenant_id": self.tenant, "account_id": account, "kind": "team", "parent_id": self.tenant,
            "available_micros": round(available * MICROS), "consumed_micros": 0, "reserved_micros": 0,
            "overage_micros": 0, "ts": at.isoformat(), "kafka_partition": 0, "kafka_offset": self.n}).encode())
        return self

    def allocation(self, account: str, credits: float, at: datetime, *, ends_at: datetime | None = None,
                   monthly: bool = False, applied: bool = True) -> History:
        self.n += 1
        cause = f"alloc-{self.n}"
        self.allocations.append(json.dumps({
            "id": cause, "tenant_id": self.tenant, "type": "allocate", "ts": at.isoformat(),
            "from_account": self.tenant, "to_account": account, "credits_micros": round(credits * MICROS),
            "reclaim_all": False, "ends_at": ends_at.isoformat() if ends_at else None,
            "recurrence_every": "month" if monthly else "", "rollover_pct": 0, "cap": "soft", "thresholds": [],
            "kafka_partition": 0, "kafka_offset": self.n}).encode())
        if applied:
            self.entries.append(json.dumps({
                "entry_id": f"{cause}#1", "kind": "allocation_in", "tenant_id": self.tenant, "account_id": account,
                "cause_id": cause, "cause_type": "allocate", "ts": at.isoformat(),
                "amount_micros": round(credits * MICROS), "balance_micros": 0, "kafka_partition": 0,
                "kafka_offset": self.n}).encode())
        return self

    def usage(self, at: datetime, account: str, *, requests: int = 1, latency_ms: float | None = 100.0,
              error: str = "", credits: float | None = None, units: float = 1.0, model: str = "gpt-4o",
              operation: str = "chat", key: str = "key-1", team: str = "search", env: str = "prod") -> History:
        """``requests`` usage events as received at ``at`` (usage_events only: no ledger entries)."""
        for _ in range(requests):
            self.n += 1
            self.usages.append(json.dumps({
                "tenant_id": self.tenant, "id": f"use-{self.n}", "ts": at.isoformat(), "account_id": account,
                "api_key_id": key, "model_name": model, "operation_type": operation, "units_consumed": units,
                "credits_micros": None if credits is None else round(credits * MICROS), "team": team,
                "cost_center": "cc-1", "project": "p-1", "env": env, "labels": {"team": team},
                "response_latency_ms": latency_ms, "error_code": error, "raw": "{}",
                "kafka_partition": 0, "kafka_offset": self.n}).encode())
        return self

    def alert(self, account: str, at: datetime, *, type: str = "threshold", severity: str = "warning",
              status: str = "firing", threshold: int = 70, used: float = 0, allocation: float = 0) -> History:
        """One alert as published on finops.alerts.v1 (its id as the alert processor builds it)."""
        self.n += 1
        period = f"{at.year}-{at.month:02d}"
        self.alerts.append(json.dumps({
            "id": f"{self.tenant}/{account}/{type}/{period}/{status}", "tenant_id": self.tenant,
            "account_id": account, "type": type, "severity": severity, "status": status, "threshold": threshold,
            "current_usage_micros": round(used * MICROS), "monthly_allocation_micros": round(allocation * MICROS),
            "period": period, "action": "", "ts": at.isoformat(), "kafka_partition": 0,
            "kafka_offset": self.n}).encode())
        return self

    def write(self, client) -> None:
        for table, rows in (("ledger_entries", self.entries), ("balance_snapshots", self.balances),
                            ("allocations", self.allocations), ("usage_events", self.usages),
                            ("alerts", self.alerts)):
            if rows:
                client.raw_insert(table, None, b"\n".join(rows), fmt="JSONEachRow",
                                  settings={**INSERT_SETTINGS, "insert_deduplication_token": f"{self.tenant}-{table}"})


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)


def through_the_ledger(client, lines: list[bytes], *, per_batch: int = 1, token: str = "ledger") -> Ledger:
    """Apply wire-v1 ``lines`` in order with the ledger processor's pure step (``processors.plan``,
    ``per_batch`` messages a transaction, so balances are published after each batch as the runner
    does) and write what it publishes, with the sink's own row builders, into ClickHouse:
    ``ledger_entries``, ``balance_snapshots``, ``alerts``, and the inputs (``usage_events``,
    ``allocations``). Returns the folded ledger (the expected balances)."""
    ledger = Ledger()
    home: dict[str, int] = {}
    offsets: dict[str, int] = defaultdict(int)
    rows: dict[str, list] = defaultdict(list)

    def keep(topic: str, value: bytes, partition: int = 0) -> None:
        table = TABLES.get(topic)
        if table is None:  # spend, enforcement, rejections: not in ClickHouse
            return
        row = table.build(value, partition, offsets[topic])
        offsets[topic] += 1
        if row is not None:
            rows[table.name].append(row)

    for first in range(0, len(lines), per_batch):
        items = []
        for raw in lines[first:first + per_batch]:
            message = wire.decode(raw)
            topic = topics.USAGE if type(message) is wire.Usage else topics.COMMANDS
            ts = None if isinstance(message, wire.Rejection) else message.ts
            items.append(Item(topic, 0, offsets[topic], ts, message, raw))
            keep(topic, raw)
        for topic, value, _key, partition in plan(ledger, items, home, publish_spend=False).records:
            keep(topic, value, partition)
    for table, table_rows in rows.items():
        client.raw_insert(table, None, encode_rows(table_rows), fmt="JSONEachRow",
                          settings={**INSERT_SETTINGS, "insert_deduplication_token": f"ledger:{token}-{table}"})
    return ledger


def ninety_days(tenant: str, first: date, *, days: int = 90, seed: int = 3) -> list[bytes]:
    """A tenant's ``days`` days from ``first`` (UTC) as wire-v1 lines in time order: purchases (one
    expiring inside the period), an org, teams with one-time, windowed (one returning its rest on
    expiry) and monthly allocations (with rollover), users spending every day (one team without
    fallback runs into overage), reclaims, holds settled and holds left to expire, and a tick a
    day so expiries and renewals happen on time."""
    rng = random.Random(seed)
    start = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
    lines: list[tuple[datetime, int, dict]] = []
    n = 0

    def add(at: datetime, type_: str, **fields) -> None:
        nonlocal n
        n += 1
        lines.append((at, n, {"type": type_, "id": f"{type_}-{n}", "tenant_id": tenant, "ts": wire.format_time(at),
                              **fields}))
        # (an ``id`` in ``fields`` names the message: a hold, for its settle)

    t = start + timedelta(hours=1)
    add(t, "purchase", credits="20000")
    add(t, "open_account", account_id="org", kind="org", parent_id=tenant)
    add(t, "allocate", from_account=tenant, to_account="org", credits="12000")
    add(t, "purchase", credits="1500.5", expires_at=wire.format_time(start + timedelta(days=days // 2, hours=3)))
    teams = {"search": True, "support": True, "labs": False}  # team -> fallback
    for team, fallback in teams.items():
        add(t, "open_account", account_id=team, kind="team", parent_id="org", fallback=fallback)
        for u in range(2):
            add(t, "open_account", account_id=f"{team}-u{u}", kind="user", parent_id=team)
    add(t, "allocate", from_account="org", to_account="search", credits="900",
        recurrence={"every": "month", "rollover_pct": 25})
    add(t, "allocate", from_account="org", to_account="support", credits="1200.25",
        ends_at=wire.format_time(start + timedelta(days=40)), on_expiry="return")
    add(t, "allocate", from_account="org", to_account="labs", credits="300",
        ends_at=wire.format_time(start + timedelta(days=20)))
    add(t, "allocate", from_account="search", to_account="search-u0", credits="40")
    for day in range(days):
        noon = start + timedelta(days=day, hours=12)
        add(start + timedelta(days=day, minutes=1), "tick")
        for k, team in enumerate(teams):
            for u in range(2):
                credits = f"{rng.randint(1, 1000) / 100:.2f}"
                add(noon + timedelta(minutes=10 * k + u), "usage", account_id=f"{team}-u{u}",
                    api_key_id=f"key-{team}-{u}", model_name="gpt-4o", operation_type="chat", units_consumed=1,
                    credits_consumed=credits, usage_labels={"team": team, "cost_center": f"cc-{team}"})
        if day % 7 == 3:
            hold = f"hold-{day}"
            add(noon + timedelta(hours=1), "reserve", id=hold, account_id="support-u1", credits="25",
                expires_at=wire.format_time(noon + timedelta(hours=2)))
            if day % 14 == 3:  # every other hold is settled for less; the rest are released at expiry
                add(noon + timedelta(hours=1, minutes=30), "settle", reservation_id=hold, credits="12.345678")
        if day == 45:
            add(noon + timedelta(hours=3), "reclaim", from_account="search", to_account="org", credits="50")
            add(noon + timedelta(hours=3), "reclaim", from_account="org", to_account=tenant, **{"all": True})
        if day == 50:
            add(noon + timedelta(hours=4), "purchase", credits="5000")
            add(noon + timedelta(hours=4), "allocate", from_account=tenant, to_account="org", credits="3000")
            add(noon + timedelta(hours=4), "allocate", from_account="org", to_account="labs", credits="100",
                expires_at=wire.format_time(noon + timedelta(days=10)))
    lines.sort(key=lambda x: (x[0], x[1]))
    return [msgspec.json.encode(body) for _, _, body in lines]
