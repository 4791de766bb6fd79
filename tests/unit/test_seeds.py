"""The seed situations, with exact numbers: in-process and through `finops fold`.

Each seed builds its messages, states the balances it must end with (credits), and is
checked twice: folded in this process, and by the `finops fold` command on a file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finops.schemas.money import credits_str
from ledger_helpers import Script, at, c, conservation_holds


def fallback_chain() -> tuple[Script, dict]:
    """A tenant buys 1,000; an org gets 600; a workspace a one-time budget inside a window;
    a user with no grant of its own falls back workspace -> org -> tenant."""
    s = Script()
    s.purchase(1000)
    s.open("org", "acme", kind="org")
    s.allocate("acme", "org", 600)
    s.open("ws", "org", kind="workspace")
    s.allocate("org", "ws", 100, starts_at=at(), ends_at=at(days=30))
    s.open("alice", "ws", kind="user")
    s.use("alice", 80, ts=at(days=1))  # ws 100 -> 20
    s.use("alice", 70, ts=at(days=2))  # ws 20 + org 50
    s.use("alice", 900, ts=at(days=3))  # org 450 + tenant 400, 50 uncovered
    return s, {"acme": (0, 0, 0), "org": (0, 0, 0), "ws": (0, 0, 0), "alice": (0, 1050, 50)}


def levels_run_dry() -> tuple[Script, dict]:
    """user -> team -> org, where each level runs dry in turn."""
    s = Script()
    s.purchase(300)
    s.open("org", "acme", kind="org")
    s.allocate("acme", "org", 250)
    s.open("team", "org")
    s.allocate("org", "team", 100)
    s.open("bob", "team", kind="user")
    s.allocate("team", "bob", 30)
    s.use("bob", 25)  # bob 30 -> 5
    s.use("bob", 25)  # bob 5 + team 20 (70 -> 50)
    s.use("bob", 100)  # team 50 + org 50 (150 -> 100)
    s.use("bob", 120)  # org 100 + tenant 20 (50 -> 30)
    return s, {"bob": (0, 270, 0), "team": (0, 0, 0), "org": (0, 0, 0), "acme": (30, 0, 0)}


def members_only_pool() -> tuple[Script, dict]:
    """A pool restricted to members: a member draws from it, a non-member stops at its own allocation."""
    s = Script()
    s.purchase(1000)
    s.open("pool", "acme", kind="pool")
    s.allocate("acme", "pool", 500)
    s.open("member", "pool", kind="user")
    s.open("outsider", "pool", kind="user")
    s.allocate("pool", "outsider", 10)
    s.msg("set_members", account_id="pool", members=["member"])
    s.use("member", 100)
    s.use("outsider", 30)
    return s, {"acme": (500, 0, 0), "pool": (390, 0, 0), "member": (0, 100, 0), "outsider": (0, 30, 20)}


def monthly_rollover() -> tuple[Script, dict]:
    """Monthly recurring 100 credits with 50 % rollover across three months with different spend.

    Nov: spend 40, 60 left: 50 carry, 10 return -> Dec starts at 150 (tenant 810).
    Dec: spend 130, 20 left: 20 carry -> Jan starts at 120 (tenant 710).
    Jan: spend 0, 120 left: 50 carry, 70 return -> Feb starts at 150 (tenant 680).
    """
    s = Script()
    s.purchase(1000, ts="2026-11-01T00:00:00Z")
    s.open("team", "acme", ts="2026-11-01T00:00:01Z", fallback=False)
    s.allocate("acme", "team", 100, recurrence={"every": "month", "rollover_pct": 50}, ts="2026-11-01T00:00:02Z")
    s.use("team", 40, ts="2026-11-15T00:00:00Z")
    s.use("team", 130, ts="2026-12-20T00:00:00Z")
    s.tick(ts="2027-02-02T00:00:00Z")
    return s, {"acme": (680, 0, 0), "team": (150, 170, 0)}


def reserve_and_settle() -> tuple[Script, dict]:
    """Reserve, settle for less, and an unsettled hold released by a later tick, then settled late."""
    s = Script()
    s.purchase(100)
    s.open("user", "acme", kind="user", fallback=False)
    s.allocate("acme", "user", 50)
    s.msg("reserve", id="res-1", account_id="user", credits=30, expires_at=at(hours=1))
    s.msg("settle", reservation_id="res-1", credits=12)  # 18 come back
    s.msg("reserve", id="res-2", account_id="user", credits=10, expires_at=at(hours=1))
    s.tick(ts=at(hours=2))  # res-2 released
    # after its hold ended: still charged, through the cascade (wire-v1.md, "A settle after its hold ended")
    s.msg("settle", reservation_id="res-2", credits=5, ts=at(hours=3))
    return s, {"acme": (50, 0, 0), "user": (33, 17, 0)}


def hard_cap_override() -> tuple[Script, dict]:
    """A hard cap reached: blocked; an override with one approval is refused; with two it
    opens until ``until``, then blocks again."""
    s = Script()
    s.purchase(1000)
    s.open("team", "acme")
    s.msg("bind_key", api_key_id="key-team", account_id="team")
    s.allocate("acme", "team", 100, cap="hard")
    s.use("team", 60)
    s.use("team", 40)  # 100 %: blocked
    s.use("team", 10)  # a fact, kept: overage, no fallback past a hard cap
    s.msg("override_cap", account_id="team", until=at(days=1), approvals=["cfo"])
    s.msg("override_cap", account_id="team", until=at(days=1), approvals=["cfo", "cto"])
    s.use("team", 5)  # while overridden: the cascade reaches the tenant pool
    s.tick(ts=at(days=2))  # override over: blocked again
    return s, {"acme": (895, 0, 0), "team": (0, 115, 10)}


SEEDS = [fallback_chain, levels_run_dry, members_only_pool, monthly_rollover, reserve_and_settle,
         hard_cap_override]


def as_credits(expected: dict) -> dict:
    return {k: {"available": str(a), "consumed": str(u), "overage": str(o)} for k, (a, u, o) in expected.items()}


@pytest.mark.parametrize("seed", SEEDS, ids=[f.__name__ for f in SEEDS])
def test_seed_in_process(seed):
    script, expected = seed()
    result = script.fold()
    state = result.ledger.tenants["acme"]
    got = {k: (state.accounts[k].available, state.accounts[k].consumed, state.accounts[k].overage)
           for k in expected}
    assert got == {k: (c(a), c(u), c(o)) for k, (a, u, o) in expected.items()}
    assert conservation_holds(result)


@pytest.mark.parametrize("seed", SEEDS, ids=[f.__name__ for f in SEEDS])
def test_seed_through_finops_fold(seed, tmp_path):
    script, expected = seed()
    path = tmp_path / f"{seed.__name__}.jsonl"
    path.write_bytes(b"\n".join(script.lines) + b"\n")
    out = subprocess.run([sys.executable, "-m", "finops.cli", "fold", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    accounts = json.loads(out.stdout)["accounts"]
    got = {k: {f: accounts[k][f] for f in ("available", "consumed", "overage")} for k in expected}
    assert got == as_credits(expected)


class TestSeedDetails:
    def test_reserve_and_settle_charges_the_late_settle_and_holds_nothing(self):
        script, _ = reserve_and_settle()
        r = script.fold()
        assert r.rejected == []
        assert r.ledger.tenants["acme"].accounts["user"].reserved == 0
        script.msg("settle", reservation_id="res-2", credits=5, id="again")  # a second settle of it
        assert [x.reason for x in script.fold().rejected] == ["reservation_closed"]

    def test_hard_cap_blocks_opens_and_blocks_again(self):
        script, _ = hard_cap_override()
        r = script.fold()
        from finops.schemas.outputs import Alert, Enforcement

        states = [(e.state, e.api_key_ids) for e in r.outputs if isinstance(e, Enforcement)]
        assert states == [("blocked", ["key-team"]), ("open", ["key-team"]), ("blocked", ["key-team"])]
        assert [x.reason for x in r.rejected] == ["approvals_required"]
        fired = [(a.threshold, a.severity, a.action) for a in r.outputs if isinstance(a, Alert)]
        assert fired == [(50, "info", None), (70, "warning", None), (90, "critical", None),
                         (100, "critical", {"type": "block"})]

    def test_monthly_rollover_returns_and_renews_on_the_boundaries(self):
        script, _ = monthly_rollover()
        r = script.fold()
        renewals = [(e.cause_id, e.kind, e.account_id, credits_str(e.amount_micros)) for e in r.outputs
                    if getattr(e, "cause_type", "") == "renew"]
        first = script.lines[2]
        rid = json.loads(first)["id"]
        assert renewals == [
            (f"renew:{rid}:2026-12", "reclaim", "team", "10"), (f"renew:{rid}:2026-12", "credit", "acme", "10"),
            (f"renew:{rid}:2026-12", "allocation_out", "acme", "100"),
            (f"renew:{rid}:2026-12", "allocation_in", "team", "100"),
            (f"renew:{rid}:2027-01", "allocation_out", "acme", "100"),
            (f"renew:{rid}:2027-01", "allocation_in", "team", "100"),
            (f"renew:{rid}:2027-02", "reclaim", "team", "70"), (f"renew:{rid}:2027-02", "credit", "acme", "70"),
            (f"renew:{rid}:2027-02", "allocation_out", "acme", "100"),
            (f"renew:{rid}:2027-02", "allocation_in", "team", "100"),
        ]
