"""A seeded, generated workload: tenants, their account trees and usage, as wire-v1 JSONL.

Each tenant buys credits, opens an org, two teams and three users per team, allocates
down the tree, and then its users make requests over a day (or ``days`` days). Lines come
out in event-time order, so folding the file and running it through Kafka give the same
balances.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec

from ..schemas.wire import format_time

MODELS = (("gpt-4o", "chat", 0.000005), ("gpt-4o-mini", "chat", 0.0000006),
          ("text-embedding-3-small", "embedding", 0.00000002), ("claude-sonnet", "chat", 0.000003))
TEAMS = ("search", "support")
TENANT_NAMES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")


@dataclass(frozen=True)
class Workload:
    """A generated workload: the JSONL ``lines`` (commands and usage, in event-time order), the tenant
    ids, and how many of the lines are usage and commands."""

    lines: list[bytes]
    tenants: list[str]
    usage_count: int
    command_count: int


def tenant_ids(count: int, suffix: str = "") -> list[str]:
    """``count`` tenant ids: acme, globex, ... through ``TENANT_NAMES``, then acme1, globex1, ...;
    each followed by ``suffix`` (the generators' and ``finops simulate``'s tenants)."""
    n = len(TENANT_NAMES)
    return [f"{TENANT_NAMES[i % n]}{i // n or ''}{suffix}" for i in range(count)]


def generate(*, tenants: int = 2, usage: int = 3000, seed: int = 7, suffix: str = "",
             start: datetime | None = None, days: float = 1) -> Workload:
    """``tenants`` tenants (named acme, globex, ... plus ``suffix``) and ``usage`` requests
    spread evenly over the ``days`` days from ``start`` (default: the days that end now, so the
    traffic lies in the past as real traffic does: the ledger refuses a ts more than 5 minutes
    ahead of the time Kafka stores it, ``ts_in_future``)."""
    if days <= 0:
        raise ValueError(f"days must be positive, not {days}")
    if start is None:  # commands take a second each, then the usage spans the days: the last one is about now
        setup = timedelta(seconds=tenants * (4 + 5 * len(TEAMS)) + 1)
        start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=days) - setup
    rng = random.Random(seed)
    encode = msgspec.json.encode
    commands: list[dict] = []
    users: list[tuple[str, str, str]] = []  # (tenant, user, team)
    names = tenant_ids(tenants, suffix)
    t = start
    for tenant in names:
        def cmd(type_: str, ident: str, **fields) -> None:
            nonlocal t
            t += timedelta(seconds=1)
            commands.append({"type": type_, "id": f"{tenant}:{ident}", "tenant_id": tenant, "ts": format_time(t),
                             **fields})

        cmd("purchase", "buy-1", credits=10_000)
        org = "org"
        cmd("open_account", "open-org", account_id=org, kind="org", parent_id=tenant)
        cmd("allocate", "alloc-org", from_account=tenant, to_account=org, credits=6_000)
        for team in TEAMS:
            cmd("open_account", f"open-{team}", account_id=team, kind="team", parent_id=org)
            cmd("allocate", f"alloc-{team}", from_account=org, to_account=team, credits=2_000,
                ends_at=format_time(start + timedelta(days=30)))
            for u in range(3):
                user = f"{team}-user{u}"
                cmd("open_account", f"open-{user}", account_id=user, kind="user", parent_id=team)
                users.append((tenant, user, team))
        cmd("allocate", "alloc-search-user0", from_account="search", to_account="search-user0", credits=50)

    lines = [encode(c) for c in commands]
    t0 = t + timedelta(seconds=1)
    step = timedelta(seconds=86_400 * days / max(usage, 1))
    for n in range(usage):
        tenant, user, team = rng.choice(users)
        model, operation, rate = rng.choice(MODELS)
        units = rng.randint(50, 4000)
        credits = round(units * rate * 500, 6)
        lines.append(encode({
            "type": "usage", "id": f"req-{seed}{suffix}-{n}", "tenant_id": tenant, "ts": format_time(t0 + step * n),
            "account_id": user, "api_key_id": f"key-{tenant}-{user}", "model_name": model, "operation_type": operation,
            "units_consumed": units, "credits_consumed": f"{credits:.6f}",
            "usage_labels": {"team": team, "cost_center": f"cc-{team}", "project": rng.choice(["web", "api"]),
                             "env": "prod"},
            "response_latency_ms": rng.randint(80, 3000),
        }))
    return Workload(lines=lines, tenants=names, usage_count=usage, command_count=len(commands))
