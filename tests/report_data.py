"""History with known answers, written to ClickHouse as the sink writes it (JSON rows per table).

Ledger entries, balance snapshots and allocations feed the reports; usage events (the traffic as
received: request_summary_daily) and alerts are there for what reads those tables (the dashboard).
"""

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
