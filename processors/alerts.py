"""The alert processor: statistical and time-based alerts, on faust-streaming.

Input: ``finops.spend.v1``, the spend per account and event-time hour that the ledger
processor sums up (a few records per account per second at most, however many usage
events there are: the hot path stays off faust). Output: ``finops.alerts.v1``.

State, changelog-backed and recovered on restart: ``alert-profiles``, per account, the
last input offset applied, the closed hourly totals of the last week, daily totals of the
last ~70 days, the account's last known state and the alerts firing now. (One table: each
table write is a changelog record, and faust's per-record cost caps its rate; two windowed
tables of the same totals, which nothing read, cost two thirds of it.)

Rules (see :class:`Rules`), judged on event time, one alert per account, type and period,
and a ``resolved`` alert when the condition clears:
- ``zscore_spike``: this hour's spend is more than ``zscore`` standard deviations above
  the mean of the closed hours before it (at least ``min_hours`` of history);
- ``mom_spike``: month-to-date spend is ``mom_pct`` % or more above the same point of the
  previous month;
- ``runway``: at the last 24 hours' burn rate the account runs dry before its window ends;
- ``ending_soon``: its window ends within ``ending_soon_days`` with credits left;
- ``low_balance``: available credits below ``low_balance_pct`` % of the period's grant
  (or below ``low_balance_credits``).

Repeats: a record at or below an account's applied offset is skipped, so a restart that
reads records again neither double-counts spend nor repeats alerts already published. Alert
ids are stable (``tenant/account/type/period/status``), so a subscriber drops any repeat.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from ..schemas import outputs, topics, wire
from ..schemas.money import MICROS_PER_CREDIT, credits_str
from ..settings import Settings

log = logging.getLogger("finops.alerts")

HOUR = 3600
DAY = 86_400
DAYS_KEPT = 70
_DEFAULT = Settings.model_fields  # the FINOPS_ALERT_* settings' defaults (finops/settings.py)


@dataclass(frozen=True)
class Rules:
    """The alert processor's thresholds (the module docstring says each rule), from FINOPS_ALERT_* settings.

    ``history_hours``: closed hours of spend kept for ``zscore_spike`` (a week); ``mom_min_credits``:
    ``mom_spike`` stays quiet while last month's spend to the same point is below this many credits;
    ``low_balance_credits`` in credits (0: off); percentages in percent, days in days."""

    zscore: float = _DEFAULT["alert_zscore"].default
    min_hours: int = _DEFAULT["alert_min_hours"].default
    history_hours: int = 168
    mom_pct: float = _DEFAULT["alert_mom_pct"].default
    mom_min_credits: float = 1.0
    ending_soon_days: float = _DEFAULT["alert_ending_soon_days"].default
    low_balance_pct: float = _DEFAULT["alert_low_balance_pct"].default
    low_balance_credits: float = _DEFAULT["alert_low_balance_credits"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        """The rules of ``settings`` (``alert_zscore``, ``alert_min_hours``, ...); the rest keep their defaults."""
        return cls(zscore=settings.alert_zscore, min_hours=settings.alert_min_hours,
                   mom_pct=settings.alert_mom_pct, ending_soon_days=settings.alert_ending_soon_days,
                   low_balance_pct=settings.alert_low_balance_pct,
                   low_balance_credits=settings.alert_low_balance_credits)


def _epoch(value) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()


class AccountState(msgspec.Struct, kw_only=True):
    """The account as its latest spend record (``outputs.Spend``) left it."""

    available: int  # micro-credits it can spend now
    granted: int  # micro-credits granted to it for its current budget period
    period: str  # its budget period ("YYYY-MM", or "" for its lifetime)
    window_end: str | None  # RFC 3339: the earliest end of a grant it can still spend; None: none ends
    ts: float  # the latest event time the record includes, epoch s


class Profile(msgspec.Struct, kw_only=True):
    """One account's alert state: the value of the ``alert-profiles`` table.

    Stored as a JSON object with these field names (:meth:`stored`, :meth:`from_stored`), the
    shape the table had when it held plain dicts, so a changelog written either way restores.
    Event time throughout; amounts in micro-credits.
    """

    offset: int = -1  # the last finops.spend.v1 offset applied (records at or below it are repeats)
    hour: int | None = None  # start of the open hour, epoch s; None: no record yet
    hour_spend: int = 0  # spent in the open hour so far
    history: list[int] = []  # each closed hour's spend, oldest first (at most ``Rules.history_hours``)
    days: dict[str, int] = {}  # "YYYY-MM-DD" (UTC) -> spend that day, the last ``DAYS_KEPT`` days
    state: AccountState | None = None  # None until the first record
    firing: dict[str, str] = {}  # alert type -> the period it fires for now

    @classmethod
    def from_stored(cls, value: dict | None) -> Profile:
        """A profile from its table value (a JSON object; None or empty: a new account).
        Raises ``msgspec.ValidationError`` for a value of another shape."""
        return msgspec.convert(value, cls) if value else cls()

    def stored(self) -> dict:
        """The table value: a JSON-able dict with the field names as keys."""
        return msgspec.to_builtins(self)


class Judge:
    """The rules as a pure function of (profile, record): the faust agent only stores and sends."""

    def __init__(self, rules: Rules = Rules()) -> None:
        self.rules = rules

    def apply(self, profile: Profile, r: dict, offset: int) -> tuple[Profile, list[outputs.Alert]]:
        """Fold one spend record (``outputs.Spend`` as JSON) at input ``offset`` into ``profile``
        (changed in place); the alerts it raises (none for a repeat: ``offset`` not above
        ``profile.offset``)."""
        if offset <= profile.offset:
            return profile, []
        profile.offset = offset
        hour = int(_epoch(r["hour"]))
        spent = int(r["spent_micros"])
        alerts: list[outputs.Alert] = []
        current = profile.hour
        history = profile.history
        if current is None:
            profile.hour, profile.hour_spend = hour, 0
        elif hour > current:
            alerts += self._close_hour(profile, r, current)
            history.append(profile.hour_spend)
            history.extend([0] * min((hour - current) // HOUR - 1, self.rules.history_hours))
            del history[:-self.rules.history_hours]
            profile.hour, profile.hour_spend = hour, 0
        if hour < profile.hour:  # a late record for an hour already closed
            back = (profile.hour - hour) // HOUR
            if back <= len(history):
                history[-back] += spent
        else:
            profile.hour_spend += spent
        day = datetime.fromtimestamp(hour, timezone.utc).date().isoformat()
        days = profile.days
        days[day] = days.get(day, 0) + spent
        if len(days) > DAYS_KEPT:
            for old in sorted(days)[:-DAYS_KEPT]:
                del days[old]
        profile.state = AccountState(available=int(r["available_micros"]), granted=int(r["granted_micros"]),
                                     period=r.get("period") or "", window_end=r.get("window_end"),
                                     ts=_epoch(r["ts"]))
        alerts += self._judge(profile, r)
        return profile, alerts

    # ------------------------------------------------------------------ rules

    def _judge(self, profile: Profile, r: dict) -> list[outputs.Alert]:
        rules, state = self.rules, profile.state
        now = state.ts
        out: list[outputs.Alert] = []
        hour_label = wire.format_time(profile.hour, "seconds")
        history = profile.history

        z, mean = self._zscore(profile.hour_spend, history)
        out += self._set(profile, r, "zscore_spike", hour_label, z is not None and z > rules.zscore,
                         "warning", round(rules.zscore), profile.hour_spend, state.granted)

        mtd, previous = self._month_to_date(profile, now)
        mom = previous is not None and previous >= rules.mom_min_credits * MICROS_PER_CREDIT and \
            mtd * 100 >= previous * (100 + rules.mom_pct)
        month = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m")
        out += self._set(profile, r, "mom_spike", month, mom, "warning", round(rules.mom_pct), mtd,
                         state.granted)

        window_end = state.window_end
        ends = _epoch(window_end) if window_end else None
        last_day = history[-24:]
        burn = sum(last_day) / len(last_day) if last_day else 0.0  # micros per hour
        window = wire.format_time(ends, "seconds")[:10] if ends else ""
        dry = ends is not None and burn > 0 and now < ends and state.available / burn < (ends - now) / HOUR
        out += self._set(profile, r, "runway", window, dry, "critical",
                         int((ends - now) // DAY) if ends and ends > now else 0, state.available, state.granted)

        soon = ends is not None and 0 < ends - now <= rules.ending_soon_days * DAY and state.available > 0
        out += self._set(profile, r, "ending_soon", window, soon, "info", round(rules.ending_soon_days),
                         state.available, state.granted)

        granted, available = state.granted, state.available
        low = (granted > 0 and available * 100 < granted * rules.low_balance_pct) or \
            (rules.low_balance_credits > 0 and available < rules.low_balance_credits * MICROS_PER_CREDIT)
        out += self._set(profile, r, "low_balance", state.period or "-", low, "warning",
                         round(rules.low_balance_pct), available, granted)
        return out

    def _zscore(self, spend: int, history: list[int]) -> tuple[float | None, float]:
        n = len(history)
        if n < self.rules.min_hours:
            return None, 0.0
        mean = sum(history) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in history) / n)
        std = max(std, 0.05 * mean, 1.0)  # a flat history: a rise of 5 % of the mean is one deviation
        return (spend - mean) / std, mean

    def _month_to_date(self, profile: Profile, now: float) -> tuple[int, int | None]:
        today = datetime.fromtimestamp(now, timezone.utc).date()
        start = today.replace(day=1)
        prev_start = (start - timedelta(days=1)).replace(day=1)
        days = profile.days
        mtd = sum(v for d, v in days.items() if start.isoformat() <= d <= today.isoformat())
        if not days or min(days) > prev_start.isoformat():
            return mtd, None  # no full previous month to compare with
        same_point = prev_start.replace(day=min(today.day, (start - timedelta(days=1)).day))
        previous = sum(v for d, v in days.items() if prev_start.isoformat() <= d <= same_point.isoformat())
        return mtd, previous

    def _close_hour(self, profile: Profile, r: dict, hour: int) -> list[outputs.Alert]:
        """The hour is over: a spike alert on it clears."""
        label = wire.format_time(hour, "seconds")
        if profile.firing.get("zscore_spike") == label:
            granted = profile.state.granted if profile.state is not None else 0
            return self._set(profile, r, "zscore_spike", label, False, "info", round(self.rules.zscore),
                             profile.hour_spend, granted)
        return []

    def _set(self, profile: Profile, r: dict, kind: str, period: str, active: bool, severity: str, threshold: int,
             usage: int, granted: int) -> list[outputs.Alert]:
        """Fire once when ``active`` starts for ``period``, resolve once when it stops."""
        firing = profile.firing
        was = firing.get(kind)
        if active and was == period:
            return []
        out = []
        if was is not None and (not active or was != period):
            del firing[kind]
            out.append(self._alert(r, kind, was, "resolved", "info", threshold, usage, granted))
        if active:
            firing[kind] = period
            out.append(self._alert(r, kind, period, "firing", severity, threshold, usage, granted))
        return out

    def _alert(self, r: dict, kind: str, period: str, status: str, severity: str, threshold: int, usage: int,
               granted: int) -> outputs.Alert:
        ts = r["ts"] if isinstance(r["ts"], datetime) else datetime.fromisoformat(str(r["ts"]).replace("Z", "+00:00"))
        return outputs.Alert(event=outputs.ALERT_EVENT,
                             id=f"{r['tenant_id']}/{r['account_id']}/{kind}/{period}/{status}",
                             tenant_id=r["tenant_id"], account_id=r["account_id"], type=kind, severity=severity,
                             threshold=threshold, current_usage=credits_str(max(usage, 0)),
                             monthly_allocation=credits_str(max(granted, 0)), ts=ts, status=status, period=period)


# ----------------------------------------------------------------------------- the faust app


def build_app(settings: Settings, rules: Rules | None = None):
    """The faust app: one agent over finops.spend.v1, one changelog-backed table."""
    import faust

    from faust.transport.producer import ProducerBuffer

    # Table writes queue in faust's producer buffer; past 100 pending the stream waits for it
    # to drain, in 0.1 s steps, which caps an agent with three tables at a few hundred
    # records a second. A deeper buffer keeps the stream flowing (memory: ~3 KB a message).
    ProducerBuffer.max_messages = 20_000
    judge = Judge(rules or Rules.from_settings(settings))
    encoder = msgspec.json.Encoder()
    # faust makes its folder but not the data dir above it (a new machine has none yet)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.group("alerts"), broker=f"kafka://{settings.bootstrap}", store="memory://",
        web_enabled=False, topic_partitions=settings.topic_partitions, consumer_auto_offset_reset="earliest",
        producer_acks=-1, producer_linger=0.005, broker_commit_every=100, broker_commit_interval=1.0,
        table_standby_replicas=0, datadir=str(settings.data_dir / f"{settings.group('alerts')}-data"),
        topic_replication_factor=1, stream_wait_empty=False, key_serializer="json", value_serializer="json")

    class SpendEvent(faust.Record, serializer="json"):
        tenant_id: str
        account_id: str
        hour: str
        spent_micros: int
        requests: int
        ts: str
        available_micros: int
        granted_micros: int
        period: str = ""
        window_end: str | None = None

    spend = app.topic(topics.SPEND, key_type=bytes, key_serializer="raw", value_type=SpendEvent)
    alerts = app.topic(topics.ALERTS, key_type=bytes, key_serializer="raw", value_type=bytes,
                       value_serializer="raw")
    # values: Profile.stored() (JSON objects); a key never written reads as {} (a new account)
    profiles = app.Table("alert-profiles", default=dict, partitions=settings.topic_partitions, key_type=str)

    @app.agent(spend)
    async def fold(stream):
        async for event in stream.events():
            account, record = event.key.decode(), event.value
            profile = Profile.from_stored(profiles[account])
            offset = event.message.offset
            if offset <= profile.offset:
                continue  # applied before a restart: nothing twice
            profile, raised = judge.apply(profile, record.asdict(), offset)
            profiles[account] = profile.stored()
            for alert in raised:
                await alerts.send(key=alert.tenant_id.encode(), value=encoder.encode(alert))

    app.finops_tables = (profiles,)  # for tests and introspection
    return app


def run_worker(settings: Settings, verbose: bool = False) -> None:
    """Run the faust worker in the foreground until SIGTERM or Ctrl-C."""
    import faust

    from ..clients import check_reachable

    check_reachable(settings)  # one line, not a faust traceback, when the broker is not there
    app = build_app(settings)
    worker = faust.Worker(app, loglevel="INFO" if verbose else "WARNING", quiet=not verbose)
    worker.execute_from_commandline()
