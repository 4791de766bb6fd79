"""The usage fast path (``ledger.charge_common_usage``) against the general path.

Given random usage-heavy workloads (bursts of usage a few seconds apart, on funded and
unfunded accounts, through keys (tagged in the key registry or not) and rate cards, with resends, conflicts, late and
far-future usage, usage before its account, caps, thresholds and commands in between),
when the same input is planned once with the fast path and once with every message on the
general path (``Ledger(fast=False)``), then every output record, every state change for the
changelog and the final store are byte-identical.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

import finops.processors.ledger as ledger_module
from finops.processors.fold import FoldResult
from finops.processors.ledger import Ledger
from finops.schemas import wire
from ledger_helpers import T0, Script, at
from test_state_store import Shell

EXAMPLES = int(os.environ.get("FINOPS_HYPOTHESIS_EXAMPLES", "500"))
ACCOUNTS = ["org", "team", "alice", "bob", "pool"]
PARENTS = {"org": None, "team": "org", "alice": "team", "bob": "team", "pool": "org"}
TAGS_DEV = {"team": "search", "cost_center": "cc-7", "env": "dev"}
TAGS_PROD = {"team": "search", "project": "ranker", "env": "prod"}


@st.composite
def usage_heavy(draw) -> list[bytes]:
    """Two tenants' funded trees, then mostly usage a few seconds apart, commands now and then."""
    scripts = [Script("acme"), Script("globex")]
    lines: list[bytes] = []
    for s in scripts:
        lines.append(s.purchase(draw(st.integers(0, 300)), ts=at()))
        for child, parent in PARENTS.items():
            if draw(st.integers(0, 5)):  # now and then an account opens late: its usage is held first
                lines.append(s.open(child, parent or s.tenant, fallback=draw(st.booleans()), ts=at()))
        for child in ("team", "alice", "pool"):
            lines.append(s.allocate(PARENTS[child] or s.tenant, child, draw(st.integers(0, 100)), ts=at(),
                                    cap=draw(st.sampled_from(["soft", "hard"])),
                                    **({"recurrence": {"every": "month", "rollover_pct": 50}}
                                       if draw(st.booleans()) else {}),
                                    **({"on_critical": {"type": "rate_limit", "params": {"max_rps": 5}}}
                                       if draw(st.booleans()) else {})))
        lines.append(s.msg("bind_key", api_key_id="key-1", account_id="alice", ts=at(),
                           **draw(st.sampled_from([{}, TAGS_DEV, TAGS_PROD]))))
        lines.append(s.msg("bind_key", api_key_id="key-3", account_id="team", ts=at(), **TAGS_PROD))
        if draw(st.booleans()):
            lines.append(s.msg("set_policy", require_key_registry=True, ts=at()))
        lines.append(s.msg("set_rates", rates=[{"model_name": "gpt-4o", "operation_type": "chat",
                                                "credits_per_unit": "0.000003"}], ts=at()))
    seconds = 1.0
    sent: list[bytes] = []
    for _ in range(draw(st.integers(1, 120))):
        s = draw(st.sampled_from(scripts))
        seconds += draw(st.sampled_from([0, 0.5, 1, 1, 2, 2, 5, 5, 30, 3600, 86400 * 3]))
        ts = at(seconds=seconds - draw(st.sampled_from([0] * 14 + [5, 3600 * 24 * 40])))
        kind = draw(st.sampled_from(["use"] * 16 + ["resend", "conflict", "future", "key", "key", "rate",
                                                    "command"]))
        if kind == "use":
            line = s.use(draw(st.sampled_from(ACCOUNTS + ["nobody", s.tenant])),
                         draw(st.integers(0, 40) | st.decimals(0, 40, places=6).map(str)), ts=ts,
                         **({"usage_labels": {"team": "a", "n": draw(st.integers(0, 3))}}
                            if draw(st.booleans()) else {}))
        elif kind == "resend" and sent:
            line = draw(st.sampled_from(sent))
        elif kind == "conflict" and sent:
            line = s.use("alice", draw(st.integers(41, 50)), ts=ts, id=f"usage-{draw(st.integers(1, 40))}")
        elif kind == "future":
            line = s.use("bob", 1, ts=(T0 + timedelta(days=400)).isoformat())
        elif kind == "key":
            line = s.use(draw(st.sampled_from([None, None, "bob"])), draw(st.integers(0, 20)), ts=ts,
                         api_key_id=draw(st.sampled_from(["key-1", "key-2", "key-3", "key-4"])),
                         **({"usage_labels": draw(st.sampled_from([{"team": "ads"}, {"team": "search", "env": "prod"},
                                                                    {"feature": "x"}]))}
                            if draw(st.booleans()) else {}))
        elif kind == "rate":
            line = s.use("bob", None, ts=ts, units_consumed=draw(st.integers(0, 10**6)))
        else:
            line = draw(st.sampled_from([
                s.allocate("org", "team", draw(st.integers(0, 50)), ts=ts),
                s.msg("override_cap", account_id="alice", until=at(seconds=seconds + 600), ts=ts),
                s.msg("tick", ts=ts),
                s.msg("bind_key", api_key_id="key-2", account_id="bob", ts=ts),
                s.msg("bind_key", api_key_id="key-4", account_id="alice", ts=ts, **TAGS_DEV),
                s.msg("bind_key", api_key_id="key-1", account_id="bob", ts=ts, **TAGS_PROD),
                s.msg("set_policy", require_key_registry=draw(st.booleans()), ts=ts),
                s.allocate("org", "team", draw(st.integers(0, 50)), ts=ts,
                           on_critical=draw(st.sampled_from([{"type": "none"},
                                                             {"type": "rate_limit", "params": {"max_rps": 2}}]))),
                s.open("carol", "team", ts=ts),
                s.msg("reserve", account_id="alice", credits=draw(st.integers(0, 20)), ts=ts,
                      expires_at=at(seconds=seconds + 60)),
            ]))
        lines.append(line)
        if line not in sent:
            sent.append(line)
    return lines


@settings(max_examples=max(EXAMPLES // 2, 100), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(usage_heavy(), st.integers(1, 40))
def test_the_fast_path_gives_byte_identical_outputs_and_state(lines, batch):
    with tempfile.TemporaryDirectory() as tmp:
        fast = Shell(Path(tmp) / "fast")
        general = Shell(Path(tmp) / "general")
        general.ledger.fast = False
        stored_at = T0 + timedelta(days=365)  # every record stored after its time, except the far-future ones
        assert fast.run(lines, batch, stored_at) == general.run(lines, batch, stored_at)
        assert fast.contents() == general.contents()
        fast.close()
        general.close()


@settings(max_examples=max(EXAMPLES // 4, 50), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(usage_heavy())
def test_finops_fold_is_the_same_on_both_paths(lines):
    fast, general = FoldResult(keep_outputs=True), FoldResult(keep_outputs=True)
    general.ledger = Ledger(general.ledger.rules, fast=False)
    for line in lines:
        fast.feed(line)
        general.feed(line)
    fast.finish()
    general.finish()
    assert fast.outputs == general.outputs
    assert fast.rejected == general.rejected
    assert fast.summary() == general.summary()


def fast_path_count(monkeypatch):
    """Count the usages the ledger's fast path (``charge_common_usage``) charged; returns the reader."""
    taken = 0
    original = ledger_module.charge_common_usage

    def counting(state, message):
        nonlocal taken
        produced = original(state, message)
        taken += produced is not None
        return produced

    monkeypatch.setattr(ledger_module, "charge_common_usage", counting)
    return lambda: taken


def test_usual_usage_does_take_the_fast_path(monkeypatch):
    """The properties above mean something only if the fast path runs: usual usage takes it."""
    s = Script("acme")
    lines = [s.purchase(100, ts=at()), s.open("team", "acme", ts=at()), s.open("alice", "team", ts=at())]
    lines += [s.use("alice", "0.5", ts=at(seconds=n)) for n in range(1, 50)]
    ledger = Ledger()
    taken = fast_path_count(monkeypatch)
    for line in lines:
        assert ledger.handle(wire.decode(line), line)[1] is None
    assert taken() >= 45  # the first usage prunes the id memories (a fresh tenant): the general path


def test_usage_of_a_registered_key_takes_the_fast_path_stamped(monkeypatch):
    """The key registry's stamping runs on the fast path too (the properties above compare it)."""
    s = Script("acme")
    lines = [s.purchase(100, ts=at()), s.open("team", "acme", ts=at()),
             s.msg("bind_key", api_key_id="key-1", account_id="team", ts=at(), **TAGS_DEV),
             s.msg("set_policy", require_key_registry=True, ts=at())]
    lines += [s.use(None, "0.5", ts=at(seconds=n), usage_labels={"team": "ads"}) for n in range(1, 50)]
    ledger = Ledger()
    taken = fast_path_count(monkeypatch)
    stamped = []
    for line in lines:
        produced, refused = ledger.handle(wire.decode(line), line)
        assert refused is None
        stamped += [(o.usage_labels, o.caller_labels, o.untagged) for o in produced if getattr(o, "kind", "") == "consume"]
    assert taken() >= 45
    assert len(stamped) == 49 and all(entry == (TAGS_DEV, {"team": "ads"}, False) for entry in stamped)
