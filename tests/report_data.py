"""History with known answers, written to ClickHouse as the sink writes it (ledger-entry JSON rows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from finops.projections.sink import INSERT_SETTINGS

MICROS = 1_000_000


@dataclass
class History:
    tenant: str
    entries: list[bytes] = field(default_factory=list)
    balances: list[bytes] = field(default_factory=list)
    allocations: list[bytes] = field(default_factory=list)
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

    def write(self, client) -> None:
        for table, rows in (("ledger_entries", self.entries), ("balance_snapshots", self.balances),
                            ("allocations", self.allocations)):
            if rows:
                client.raw_insert(table, None, b"\n".join(rows), fmt="JSONEachRow",
                                  settings={**INSERT_SETTINGS, "insert_deduplication_token": f"{self.tenant}-{table}"})


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
