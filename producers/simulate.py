"""``finops simulate``: realistic traffic for trying the pipeline and for load tests.

Each tenant (acme, globex, ...) buys credits and opens an org, teams and users; teams get
a monthly budget, users a share of it, one user per tenant a small hard-capped budget.
Then requests arrive at ``rate`` per wall-clock second on average:

- a daily cycle: more traffic in the (UTC) afternoon, little at night, by event time;
- users of uneven activity (a few heavy ones), a model mix (chat models, a reasoning
  model, embeddings) with log-normal token counts, priced by a rate card through the SDK's
  :func:`usage_from_openai`, and latencies that grow with the tokens;
- labels for team, cost center, project and env;
- a small share of bad input (unreadable JSON, missing fields, negative amounts, unknown
  accounts, conflicting resends), sent as-is so the pipeline's rejection path sees it;
- spikes: ``ACCOUNT:FACTOR@TIME`` multiplies an account's traffic from TIME (an offset in
  event time like ``30s``, ``10m``, ``2h``, or an RFC 3339 time) for ``spike_length``.

Event time advances ``speed`` times as fast as the wall clock (``--speed 3600``: an hour a
second), ending now, so a minute of simulation can leave days of history. Output goes to
Kafka (paced) or to a JSONL file (as fast as it can), which ``finops fold`` and ``finops
publish`` read. Either way a tenant's setup commands come before its traffic, and Kafka
has acknowledged them before its first request is sent (wire v1, "Publishing files": the
:class:`~finops.producers.publish.Publisher` waits for them).
"""

from __future__ import annotations

import bisect
import math
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

import msgspec

from ..errors import FinopsError
from ..schemas.wire import format_time
from .usage import RateCard, usage_from_openai
from .workload import tenant_ids

# (model, operation, share of requests, median input tokens, median output tokens)
MODEL_MIX = (
    ("gpt-4o-mini", "chat", 0.40, 600, 200),
    ("gpt-4o", "chat", 0.22, 900, 300),
    ("claude-sonnet-4", "chat", 0.15, 1200, 400),
    ("o3-mini", "reasoning", 0.05, 800, 2500),
    ("text-embedding-3-small", "embedding", 0.18, 300, 0),
)
RATE_CARD = RateCard.per_1k({  # credits per 1,000 input / output tokens
    "gpt-4o-mini": ("0.00015", "0.0006"), "gpt-4o": ("0.0025", "0.01"), "claude-sonnet-4": ("0.003", "0.015"),
    "o3-mini": ("0.0011", "0.0044"), "text-embedding-3-small": ("0.00002", "0"),
})
TEAM_NAMES = ("search", "support", "research", "platform", "growth", "data", "mobile", "billing")
PROJECTS = ("web", "api", "batch", "agent")
ENVS = (("prod", 0.8), ("staging", 0.15), ("dev", 0.05))
BAD_KINDS = ("not_json", "missing_field", "negative_amount", "unknown_account", "conflicting_resend",
             "too_many_decimals")


@dataclass(frozen=True)
class Spike:
    """One ``--spike``: the traffic of ``account`` is multiplied by ``factor`` from ``at`` seconds of event
    time after the start, for the simulation's ``spike_length``; ``text`` is what was written."""

    account: str  # "tenant/account" or "account" (that account in every tenant)
    factor: float
    at: float  # seconds of event time after the start
    text: str

    def matches(self, tenant: str, account: str) -> bool:
        """Does this spike name ``account`` of ``tenant`` (as ``account`` or ``tenant/account``)?"""
        return self.account in (account, f"{tenant}/{account}")


_OFFSET = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_spike(text: str, start: datetime) -> Spike:
    """``ACCOUNT:FACTOR@TIME``, e.g. ``search-user0:10@30s`` or ``acme/search-user0:5@2026-11-23T14:00:00Z``."""
    head, at_sign, when = text.rpartition("@")
    account, colon, factor_text = head.rpartition(":")
    if not (at_sign and colon and account):
        raise FinopsError(f"--spike {text!r}: expected ACCOUNT:FACTOR@TIME, e.g. search-user0:10@30s")
    try:
        factor = float(factor_text)
    except ValueError:
        raise FinopsError(f"--spike {text!r}: factor {factor_text!r} is not a number") from None
    if not factor > 0:
        raise FinopsError(f"--spike {text!r}: factor must be above 0")
    match = _OFFSET.match(when)
    if match:
        at = float(match.group(1)) * _UNIT[match.group(2)]
    else:
        try:
            moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise FinopsError(f"--spike {text!r}: time {when!r} is neither an offset like 30s/10m/2h "
                              "nor an RFC 3339 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        at = (moment - start).total_seconds()
    return Spike(account, factor, at, text)


def daily_cycle(t: datetime) -> float:
    """Relative traffic by UTC hour of day: peak about 3x the night, mean 1."""
    hour = t.hour + t.minute / 60
    return 1 + 0.6 * math.cos((hour - 15) / 24 * 2 * math.pi)


@dataclass(frozen=True)
class User:
    """A simulated user account: its team, relative activity ``weight`` (a few heavy users) and the
    projects it labels its requests with."""

    tenant: str
    account: str
    team: str
    weight: float
    projects: tuple[str, ...]


@dataclass
class Report:
    """What a simulation sent: counts of accounts, commands, usage and bad lines, requests per model, the
    wall seconds it took and the first and last event time (RFC 3339)."""

    tenants: list[str]
    accounts: int = 0
    commands: int = 0
    usage: int = 0
    bad: int = 0
    spiked: int = 0  # extra requests from spikes
    seconds: float = 0.0
    first_ts: str = ""
    last_ts: str = ""
    by_model: dict[str, int] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        """Every line sent: commands, usage and bad input."""
        return self.commands + self.usage + self.bad

    def as_dict(self) -> dict:
        """The report as JSON-ready values (``finops simulate`` prints it), with messages per wall second."""
        return {"tenants": self.tenants, "accounts": self.accounts, "commands": self.commands, "usage": self.usage,
                "bad": self.bad, "spiked": self.spiked, "messages": self.messages, "seconds": round(self.seconds, 2),
                "messages_per_s": round(self.messages / self.seconds) if self.seconds else None,
                "event_time": [self.first_ts, self.last_ts], "by_model": self.by_model}


class Simulation:
    """Generates the lines of a run; :meth:`setup` first, then :meth:`traffic` per time slice."""

    def __init__(self, *, tenants: int = 2, accounts_per_tenant: int = 12, rate: float = 100.0,
                 duration: float = 60.0, speed: float = 1.0, spikes: tuple[str, ...] = (),
                 spike_length: float = 3600.0, bad_fraction: float = 0.002, seed: int | None = None,
                 start: datetime | None = None, tenant_names: list[str] | None = None) -> None:
        if tenants < 1 or accounts_per_tenant < 1:
            raise FinopsError("--tenants and --accounts-per-tenant must be at least 1")
        if rate <= 0 or duration <= 0 or speed <= 0:
            raise FinopsError("--rate, --duration and --speed must be above 0")
        if not 0 <= bad_fraction < 1:
            raise FinopsError("--bad-fraction must be in [0, 1)")
        self.rng = random.Random(seed)
        self.rate, self.duration, self.speed = rate, duration, speed
        now = datetime.now(timezone.utc)
        self.start = start or now - timedelta(seconds=duration * (speed - 1))  # the run ends about now
        self.spikes = [parse_spike(s, self.start) for s in spikes]
        self.spike_length = spike_length
        self.bad_fraction = bad_fraction
        self.run_id = uuid.UUID(int=self.rng.getrandbits(128)).hex[:8]
        self.tenants = tenant_names or tenant_ids(tenants)
        self.users: list[User] = []
        teams_per_tenant = max(1, min(len(TEAM_NAMES), math.ceil(accounts_per_tenant / 4)))
        for tenant in self.tenants:
            for n in range(accounts_per_tenant):
                team = TEAM_NAMES[n % teams_per_tenant]
                weight = self.rng.paretovariate(1.5)  # a few heavy users
                projects = tuple(self.rng.sample(PROJECTS, 2))
                self.users.append(User(tenant, f"{team}-user{n // teams_per_tenant}", team, weight, projects))
        unknown = [s.account for s in self.spikes if not any(s.matches(u.tenant, u.account) for u in self.users)]
        if unknown:
            raise FinopsError(f"--spike names no simulated account: {', '.join(unknown)} "
                              f"(accounts are like {self.users[0].account} or {self.users[0].tenant}/"
                              f"{self.users[0].account})")
        self._cumulative = []
        total = 0.0
        for u in self.users:
            total += u.weight
            self._cumulative.append(total)
        self._weight_total = total
        self._model_weights = [m[2] for m in MODEL_MIX]
        self._sent_ids: list[tuple[str, bytes]] = []  # a few sent usages, to resend with other content
        self.report = Report(tenants=self.tenants, accounts=len(self.users))
        self._n = 0

    # ------------------------------------------------------------------ setup

    def expected_credits(self) -> float:
        """Roughly what the run will spend in total (for sizing budgets)."""
        mean = sum(share * float(RATE_CARD.credits(model, inp, out)) for model, _op, share, inp, out in MODEL_MIX)
        return mean * 1.3 * self.rate * self.duration  # log-normal means are above the medians

    def setup(self) -> list[bytes]:
        """Purchases, accounts and budgets: teams monthly with 50 % rollover, users a share with a
        30-day window, one user per tenant a tight hard cap, so some thresholds are crossed."""
        encode = msgspec.json.encode
        lines: list[bytes] = []
        t = self.start - timedelta(minutes=5)
        per_tenant = max(self.expected_credits() / len(self.tenants), 1.0)
        for tenant in self.tenants:
            users = [u for u in self.users if u.tenant == tenant]
            teams = sorted({u.team for u in users})
            share = {team: sum(u.weight for u in users if u.team == team) for team in teams}
            tenant_weight = sum(share.values())

            def cmd(type_: str, ident: str, **fields) -> None:
                nonlocal t
                t += timedelta(milliseconds=10)
                lines.append(encode({"type": type_, "id": f"sim-{self.run_id}:{tenant}:{ident}", "tenant_id": tenant,
                                     "ts": format_time(t), **fields}))

            cmd("purchase", "purchase", credits=_credits(per_tenant * 3))
            cmd("open_account", "open-org", account_id="org", kind="org", parent_id=tenant, name=f"{tenant} org")
            cmd("allocate", "alloc-org", from_account=tenant, to_account="org", credits=_credits(per_tenant * 2))
            for i, team in enumerate(teams):
                budget = per_tenant * share[team] / tenant_weight * self.rng.uniform(0.6, 1.6)
                cmd("open_account", f"open-{team}", account_id=team, kind="team", parent_id="org")
                cmd("allocate", f"alloc-{team}", from_account="org", to_account=team, credits=_credits(budget),
                    recurrence={"every": "month", "rollover_pct": 50})
                for u in (u for u in users if u.team == team):
                    cmd("open_account", f"open-{u.account}", account_id=u.account, kind="user", parent_id=team)
                    cmd("bind_key", f"key-{u.account}", api_key_id=_key(u), account_id=u.account)
                heavy = max((u for u in users if u.team == team), key=lambda u: u.weight)
                cap = "hard" if i == 0 else "soft"
                cmd("allocate", f"alloc-{heavy.account}", from_account=team, to_account=heavy.account,
                    credits=_credits(budget * heavy.weight / share[team] * 0.5), cap=cap,
                    ends_at=format_time(self.start + timedelta(days=30)))
        self.report.commands += len(lines)
        return lines

    # ------------------------------------------------------------------ traffic

    def slices(self, step: float = 0.05) -> Iterator[tuple[float, list[bytes]]]:
        """(wall-clock offset, lines) per ``step`` seconds of the run, generated on demand."""
        elapsed = 0.0
        due = 0.0
        while elapsed < self.duration:
            step_now = min(step, self.duration - elapsed)
            t0 = self.start + timedelta(seconds=elapsed * self.speed)
            due += self.rate * step_now * daily_cycle(t0)
            count = int(due)
            due -= count
            yield elapsed, self.traffic(t0, step_now * self.speed, count)
            elapsed += step_now

    def traffic(self, t0: datetime, span: float, count: int) -> list[bytes]:
        """``count`` requests (plus spike extras) spread over ``span`` event-time seconds from ``t0``."""
        rng = self.rng
        offset = (t0 - self.start).total_seconds()
        chosen = [self._pick_user() for _ in range(count)]
        for spike in self.spikes:
            if spike.at <= offset < spike.at + self.spike_length:
                targets = [u for u in self.users if spike.matches(u.tenant, u.account)]
                share = sum(u.weight for u in targets) / self._weight_total
                expected = (spike.factor - 1) * share * count
                extra = int(expected) + (rng.random() < expected % 1)
                chosen += [rng.choice(targets) for _ in range(extra)]
                self.report.spiked += extra
        lines = []
        for i, user in enumerate(chosen):
            ts = t0 + timedelta(seconds=span * (i + rng.random()) / max(len(chosen), 1))
            if rng.random() < self.bad_fraction:
                lines.append(self._bad(user, ts))
            else:
                lines.append(self._usage(user, ts))
        return lines

    def _pick_user(self) -> User:
        return self.users[bisect.bisect(self._cumulative, self.rng.random() * self._weight_total)
                          if self._weight_total else 0]

    def _usage(self, user: User, ts: datetime) -> bytes:
        rng = self.rng
        model, operation, _share, inp, out = rng.choices(MODEL_MIX, weights=self._model_weights)[0]
        input_tokens = max(1, int(rng.lognormvariate(math.log(inp), 0.6)))
        output_tokens = int(rng.lognormvariate(math.log(out), 0.7)) if out else 0
        self._n += 1
        response = {"id": f"sim-{self.run_id}-{self._n}", "model": model,
                    "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}}
        env = rng.choices([e for e, _ in ENVS], weights=[w for _, w in ENVS])[0]
        event = usage_from_openai(response, tenant_id=user.tenant, account_id=user.account, api_key_id=_key(user),
                                  rate_card=RATE_CARD, operation_type=operation, ts=format_time(ts),
                                  usage_labels={"team": user.team, "cost_center": f"cc-{user.team}",
                                                "project": rng.choice(user.projects), "env": env})
        event["response_latency_ms"] = int(80 + (input_tokens * 0.05 + output_tokens * 8) * rng.uniform(0.7, 1.5))
        if rng.random() < 0.01:
            event["error_code"] = rng.choice(["rate_limited", "timeout", "server_error"])
        line = msgspec.json.encode(event)
        if len(self._sent_ids) < 100:
            self._sent_ids.append((user.tenant, line))
        self.report.usage += 1
        self.report.by_model[model] = self.report.by_model.get(model, 0) + 1
        self.report.first_ts = self.report.first_ts or event["ts"]
        self.report.last_ts = event["ts"]
        return line

    def _bad(self, user: User, ts: datetime) -> bytes:
        """One line of bad input, as apps get it wrong (sent without checking)."""
        self.report.bad += 1
        self._n += 1
        kind = self.rng.choice(BAD_KINDS)
        base = {"type": "usage", "id": f"sim-{self.run_id}-bad-{self._n}", "tenant_id": user.tenant,
                "ts": format_time(ts), "account_id": user.account, "api_key_id": _key(user), "model_name": "gpt-4o",
                "operation_type": "chat", "units_consumed": 100, "credits_consumed": "0.001"}
        if kind == "not_json":
            return b'{"type": "usage", "id": "' + base["id"].encode() + b'", "tenant_id": '
        if kind == "missing_field":
            del base["model_name"]
        elif kind == "negative_amount":
            base["credits_consumed"] = "-0.5"
        elif kind == "unknown_account":
            base["account_id"] = "no-such-user"
        elif kind == "too_many_decimals":
            base["credits_consumed"] = "0.0000001"
        elif kind == "conflicting_resend" and self._sent_ids:
            tenant, line = self.rng.choice(self._sent_ids)
            again = msgspec.json.decode(line)
            again["units_consumed"] = again["units_consumed"] + 1
            return msgspec.json.encode(again)
        return msgspec.json.encode(base)


def _key(user: User) -> str:
    return f"key-{user.tenant}-{user.account}"


def _credits(value: float) -> str:
    return f"{max(value, 0.000001):.6f}"


Sink = Callable[[list[bytes]], None]


def run(simulation: Simulation, send: Sink, *, paced: bool, progress: Callable[[int], None] = lambda _n: None,
        setup: bool = True) -> Report:
    """Send the setup, then the traffic slice by slice; ``paced`` keeps to the wall clock.
    ``progress(n)`` gets the number of requests sent so far. A ``send`` that publishes must
    keep each tenant's commands ahead of its usage in Kafka, as ``Publisher.send_all`` does."""
    started = time.monotonic()
    if setup:
        send(simulation.setup())
    done = 0
    for offset, lines in simulation.slices():
        if paced:
            delay = started + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        send(lines)
        done += len(lines)
        progress(done)
    simulation.report.seconds = time.monotonic() - started
    return simulation.report
