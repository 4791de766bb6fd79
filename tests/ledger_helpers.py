"""Small builders for wire-v1 messages, so ledger tests read as stories."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import msgspec

from finops.processors.fold import FoldResult
from finops.schemas.money import credits
from finops.schemas.wire import format_time

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)


def at(days: float = 0, **delta: float) -> str:
    return format_time(T0 + timedelta(days=days, **delta))


class Script:
    """Builds one tenant's messages in order; every message gets a fresh id and a later time."""

    def __init__(self, tenant: str = "acme") -> None:
        self.tenant = tenant
        self.lines: list[bytes] = []
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    def msg(self, type_: str, *, ts: str | None = None, id: str | None = None, **fields) -> bytes:
        body = {"type": type_, "id": id or f"{type_}-{next(self._ids)}", "tenant_id": self.tenant,
                "ts": ts or at(seconds=next(self._clock)), **fields}
        line = msgspec.json.encode(body)
        self.lines.append(line)
        return line

    def purchase(self, amount, **kw) -> bytes:
        return self.msg("purchase", credits=amount, **kw)

    def open(self, account: str, parent: str, kind: str = "team", **kw) -> bytes:
        return self.msg("open_account", account_id=account, parent_id=parent, kind=kind, **kw)

    def allocate(self, src: str, dst: str, amount, **kw) -> bytes:
        return self.msg("allocate", from_account=src, to_account=dst, credits=amount, **kw)

    def reclaim(self, src: str, dst: str, amount=None, **kw) -> bytes:
        if amount is not None:
            kw["credits"] = amount
        return self.msg("reclaim", from_account=src, to_account=dst, **kw)

    def use(self, account: str | None, amount, **kw) -> bytes:
        fields = {"api_key_id": kw.pop("api_key_id", "key-1"), "model_name": "gpt-4o", "operation_type": "chat",
                  "units_consumed": 100, "credits_consumed": amount, **kw}
        if account is not None:
            fields["account_id"] = account
        return self.msg("usage", **fields)

    def tick(self, **kw) -> bytes:
        return self.msg("tick", **kw)

    def fold(self) -> FoldResult:
        result = FoldResult(keep_outputs=True)
        for line in self.lines:
            result.feed(line)
        result.finish()
        return result


def balances(result: FoldResult, tenant: str = "acme") -> dict[str, tuple[int, int, int]]:
    """account -> (available, consumed, overage) in micro-credits."""
    state = result.ledger.tenants[tenant]
    return {a.id: (a.available, a.consumed, a.overage) for a in state.accounts.values()}


def c(value) -> int:
    return credits(value)


def reasons(result: FoldResult) -> list[str]:
    return [r.reason for r in result.rejected]


def conservation_holds(result: FoldResult) -> bool:
    for state in result.ledger.tenants.values():
        held = sum(a.available + a.reserved for a in state.accounts.values())
        t = state.totals
        if held + t.consumed - t.overage + t.expired != t.purchased:
            return False
    return True
