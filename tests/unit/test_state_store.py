"""The ledger's state store and its changelog, and the pure plan step, without a broker.

A small in-memory shell stands in for the runner's I/O: it calls :func:`plan`, keeps the
changelog records a transaction would produce, and writes them to a real RocksDB store
after each "commit", as the runner does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings, strategies as st

from finops.processors.fold import FoldResult
from finops.processors.ledger import Ledger
from finops.processors.merge import Item
from finops.processors.plan import plan
from finops.processors.state import DEFAULT_RULES
from finops.processors.store import INDEX, PartitionStore
from finops.schemas import outputs, topics, wire
from ledger_helpers import Script, at, c
from test_ledger_properties import EXAMPLES, scripts


def items_of(lines: list[bytes], first_offset: int = 0, stored_at=None) -> list[Item]:
    items = []
    for n, raw in enumerate(lines):
        message = wire.decode(raw)
        readable = not isinstance(message, wire.Rejection)
        topic = topics.USAGE if readable and isinstance(message, wire.Usage) else topics.COMMANDS
        items.append(Item(topic, 0, first_offset + n, message.ts if readable else None, message, raw, stored_at))
    return items


class Shell:
    """One partition's processor without Kafka: plan, "commit" (keep the changelog), write the store."""

    def __init__(self, path: Path, changelog: list | None = None) -> None:
        self.store = PartitionStore(path)
        self.changelog: list = []
        if changelog is not None:  # restore: apply what the changelog holds past the store's checkpoint
            self.store.apply_changelog(changelog[self.store.checkpoint:], len(changelog))
            self.changelog = list(changelog)
        self.ledger = Ledger(DEFAULT_RULES)
        self.ledger.tenants.update(self.store.load(DEFAULT_RULES))
        self.home = {tenant: 0 for tenant in self.ledger.tenants}
        self.offset = 0
        self.sizes: list[int] = []  # changelog bytes per transaction

    def run(self, lines: list[bytes], batch: int = 7, stored_at=None, publish_spend=lambda _n: True) -> list[tuple]:
        """Plan ``lines`` in transactions of ``batch``; ``publish_spend(n)``: does transaction n publish spend?"""
        records = []
        for n, i in enumerate(range(0, len(lines), batch)):
            items = items_of(lines[i:i + batch], self.offset, stored_at)
            self.offset += len(items)
            records.extend(self.transaction(items, publish_spend(n)))
        return records

    def transaction(self, items: list[Item], publish_spend: bool = True) -> list[tuple]:
        """One transaction: plan, keep the changelog, write the store (an empty one publishes pending spend)."""
        result = plan(self.ledger, items, self.home, lambda t, _p: self.store.new_tenant(t, DEFAULT_RULES),
                      publish_spend=publish_spend)
        changes = result.changelog.get(0, [])
        self.changelog.extend(changes)
        self.sizes.append(sum(len(k) + len(v or b"") for k, v in changes))
        self.store.write(changes + result.local.get(0, []), len(self.changelog))
        return result.records

    def contents(self) -> dict[bytes, bytes]:
        """Every key the changelog carries (not the checkpoint, not the local time index)."""
        return {k: v for k, v in self.store.db.items() if not k.startswith(b"\x00") and not k.startswith(INDEX)}

    def close(self) -> None:
        self.store.close()


common = settings(max_examples=max(EXAMPLES // 2, 50), deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@common
@given(scripts(), st.data())
def test_a_store_restored_from_the_changelog_goes_on_exactly_as_the_live_one(lines, data):
    """Cut anywhere: a store rebuilt from the changelog alone, and the warm store itself, give
    byte-identical outputs and state to the processor that never stopped."""
    cut = data.draw(st.integers(0, len(lines)))
    batch = data.draw(st.integers(1, 9))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        live = Shell(tmp / "live")
        live.run(lines[:cut], batch)
        expected = live.run(lines[cut:], batch)
        crashed = Shell(tmp / "crashed")
        crashed.run(lines[:cut], batch)
        changelog = crashed.changelog
        crashed.close()
        restored = Shell(tmp / "restored", changelog)  # a new instance: nothing local
        warm = Shell(tmp / "crashed", changelog)  # the same instance restarted on its own store
        for shell in (restored, warm):
            shell.offset = cut
            assert shell.run(lines[cut:], batch) == expected
            assert shell.contents() == live.contents()
            shell.close()
        live.close()


@common
@given(scripts())
def test_the_plan_makes_the_same_ledger_entries_as_the_fold(lines):
    fold = FoldResult(keep_outputs=True)
    for line in lines:
        fold.feed(line)
    entries = [msg for msg in fold.outputs if isinstance(msg, outputs.LedgerEntry)]
    with tempfile.TemporaryDirectory() as tmp:
        shell = Shell(Path(tmp) / "s")
        records = shell.run(lines, 5)
        shell.close()
    planned = [outputs.entry_decoder.decode(value) for topic, value, _k, _p in records if topic == topics.LEDGER]
    assert planned == entries


@common
@given(scripts(), st.data())
def test_spend_kept_back_between_publications_survives_a_restore(lines, data):
    """Spend published only now and then (FINOPS_SPEND_EVERY) is kept in the store meanwhile:
    a store restored from the changelog at any cut goes on with byte-identical outputs and
    state, and once all is published the spend records add up to each account's usage."""
    cut = data.draw(st.integers(0, len(lines)))
    batch = data.draw(st.integers(1, 9))
    pattern = data.draw(st.lists(st.booleans(), min_size=1, max_size=8))
    publish = lambda n: pattern[n % len(pattern)]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        live = Shell(tmp / "live")
        records = live.run(lines[:cut], batch, publish_spend=publish)
        expected = live.run(lines[cut:], batch, publish_spend=publish)
        crashed = Shell(tmp / "crashed")
        crashed.run(lines[:cut], batch, publish_spend=publish)
        changelog = crashed.changelog
        crashed.close()
        restored = Shell(tmp / "restored", changelog)
        restored.offset = cut
        assert restored.run(lines[cut:], batch, publish_spend=publish) == expected
        assert restored.contents() == live.contents()
        records += expected + live.transaction([])  # an empty transaction publishes what is left
        assert not any(k.startswith(b"S") for k in live.contents())  # nothing pending is left in the store
        every = Shell(tmp / "every")  # the same input, spend published in every transaction
        reference = every.run(lines, batch)
        every.close()
        assert _spend_sums(records) == _spend_sums(reference)
        restored.close()
        live.close()


def _spend_sums(records: list[tuple]) -> dict[tuple[str, str], list[int]]:
    """(account, hour) -> [micro-credits, requests], added up over the finops.spend.v1 records."""
    sums: dict[tuple[str, str], list[int]] = {}
    for topic, value, _k, _p in records:
        if topic == topics.SPEND:
            record = msgspec.json.decode(value)
            total = sums.setdefault((record["account_id"], record["hour"]), [0, 0])
            total[0] += record["spent_micros"]
            total[1] += record["requests"]
    return sums


class TestWhatATransactionWrites:
    def test_grows_with_what_changed_not_with_the_tenants_history(self):
        """A busy tenant: every batch of 500 usage events writes about the same bytes, however
        many ids the tenant already has (the whole-tenant snapshot grew with them)."""
        s = Script()
        s.purchase(1_000_000)
        s.open("team", "acme")
        s.allocate("acme", "team", 500_000)
        setup = list(s.lines)
        usage = [s.use("team", "0.01", id=f"req-{n}", ts=at(seconds=n)) for n in range(10_000)]
        with tempfile.TemporaryDirectory() as tmp:
            shell = Shell(Path(tmp) / "s")
            shell.run(setup, len(setup))
            shell.sizes.clear()
            shell.run(usage, 500)
            shell.close()
        first, last = shell.sizes[1], shell.sizes[-1]
        assert last <= first * 1.02, shell.sizes
        per_event = last / 500
        print(f"changelog bytes per usage event (keys and values, before compression): {per_event:.1f}")
        assert per_event <= 100


class TestHeldUsage:
    """wire-v1.md, "Usage before its account": held for 1 h of event time."""

    def test_usage_for_an_account_opened_10_minutes_later_is_charged_to_it(self):
        s = Script()
        s.purchase(100)
        s.use("team", 7, ts=at(minutes=1))
        s.open("team", "acme", ts=at(minutes=11))
        s.allocate("acme", "team", 50, ts=at(minutes=11))
        r = s.fold()
        assert r.rejected == []
        team = r.ledger.tenants["acme"].accounts["team"]
        assert team.consumed == c(7)

    def test_usage_with_a_key_bound_later_is_charged_to_the_keys_account(self):
        s = Script()
        s.purchase(100)
        s.open("team", "acme")
        s.use(None, 3, api_key_id="k-late", ts=at(minutes=5))
        s.msg("bind_key", api_key_id="k-late", account_id="team", ts=at(minutes=20))
        r = s.fold()
        assert r.rejected == []
        assert r.ledger.tenants["acme"].accounts["team"].consumed == c(3)

    def test_is_rejected_unknown_account_when_the_grace_ends_and_gives_its_id_back(self):
        s = Script()
        s.purchase(100)
        held = s.use("team", 7, id="req-1", ts=at(minutes=1))
        s.tick(ts=at(minutes=62))  # the grace (1 h after its ts) ends at minute 61
        s.open("team", "acme", ts=at(minutes=63))
        s.lines.append(held)  # a rejection uses up no id: the resend is judged again, and charged (late)
        r = s.fold()
        assert [(x.id, x.reason) for x in r.rejected] == [("req-1", "unknown_account")]
        assert r.rejected[0].input == held.decode()
        assert r.ledger.tenants["acme"].accounts["team"].consumed == c(7)

    def test_the_end_of_a_fold_ends_every_grace(self):
        s = Script()
        s.purchase(100)
        s.use("ghost", 7)
        r = s.fold()
        assert [x.reason for x in r.rejected] == ["unknown_account"]
        assert r.ledger.tenants["acme"].totals.consumed == 0


class TestFarFutureTime:
    """wire-v1.md, "Far-future time": 5 minutes of skew against the time Kafka stored the message."""

    def test_a_usage_stamped_a_year_ahead_is_rejected_and_touches_nothing(self):
        s = Script()
        s.purchase(100, ts=at())
        s.open("team", "acme", ts=at())
        s.allocate("acme", "team", 50, ts=at(), recurrence={"every": "month", "rollover_pct": 0})
        s.use("team", 5, ts=at(days=365), id="future")
        s.use("team", 1, ts=at(minutes=1), id="now")
        with tempfile.TemporaryDirectory() as tmp:
            shell = Shell(Path(tmp) / "s")
            stored = wire.decode(s.lines[0]).ts  # every line stored at the first one's time
            records = shell.run(s.lines, 10, stored_at=stored.replace(minute=2))
            state = shell.ledger.tenants["acme"]
            rejected = [outputs_rejection(v) for t, v, _k, _p in records if t == topics.REJECTED]
            assert [(r["id"], r["reason"]) for r in rejected] == [("future", "ts_in_future")]
            assert state.clock < wire.decode(s.lines[-2]).ts
            team = state.accounts["team"]
            assert (team.available, team.consumed) == (c(49), c(1))
            shell.close()

    def test_fold_with_now_applies_the_same_rule(self):
        s = Script()
        s.purchase(100, ts=at())
        s.use("acme", 5, ts=at(days=365), id="future")
        now = wire.decode(s.lines[0]).ts
        folded = FoldResult(keep_outputs=True, now=now)
        for line in s.lines:
            folded.feed(line)
        assert [(r.id, r.reason) for r in folded.rejected] == [("future", "ts_in_future")]
        assert not s.fold().rejected  # without --now there is no stored time: the rule is skipped


def outputs_rejection(value: bytes) -> dict:
    import json

    return json.loads(value)
