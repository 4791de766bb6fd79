"""Writes the bad-input corpus of this directory (``cases.json``, ``cases/*.jsonl``, ``control.jsonl``).

The written files are the source of truth (tests/integration/test_bad_input_corpus.py reads only them);
this script is how they were made, kept so the corpus can be extended and rewritten
byte-for-byte: ``python tests/data/bad-input/generate.py``.

Each case is one file of raw lines (bytes, kept exact: non-UTF-8 and not-JSON lines too)
of its own tenant ``bi-<name>``: setup lines that must be accepted, exactly one bad line
(``bad_line``, 0-based) that must be rejected with ``reason``, and maybe lines after it
that must be accepted (a tick that ends a usage's grace, an account opened too late).
Lines of a case have increasing ``ts``, so file order is event-time order (the Kafka
processor merges the usage and command topics by event time). Event times lie in the
past (Sep-Oct 2026), except those of the ``ts_in_future`` cases, which lie decades ahead.

``xfail_reason`` marks a case where the code does not do what wire-v1.md says (it stays
in the corpus with the contract's reason; the test checks that it still fails).
``note`` says why the expected reason is the contract's one, where that is not obvious.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).parent
BASE = datetime(2026, 9, 1, tzinfo=timezone.utc)
RAW = "\x00raw:"  # a field value written as raw JSON text (numbers JSON allows but Python would respell)

CASES: list[dict] = []


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(body: dict) -> bytes:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return re.sub(r'"\\u0000raw:([^"]*)"', r"\1", text).encode()


def raw(text: str) -> str:
    return RAW + text


class Case:
    """One case: its tenant, a clock in seconds after its start, and its lines."""

    def __init__(self, name: str) -> None:
        assert name not in {c["name"] for c in CASES}, name
        self.name = name
        self.tenant = f"bi-{name}"
        self.start = BASE + timedelta(minutes=10 * len(CASES))
        self.t = 0.0
        self.n = 0
        self.lines: list[bytes] = []
        self.bad: int | None = None

    def ts(self, after: float = 1.0) -> str:
        self.t += after
        return iso(self.start + timedelta(seconds=self.t))

    def id(self) -> str:
        self.n += 1
        return f"{self.tenant}-{self.n}"

    def body(self, type_: str | None, *, after: float = 1.0, drop=(), **fields) -> dict:
        ident = fields.pop("id", None)
        ts = fields.pop("ts", None)
        body = {"type": type_, "id": self.id() if ident is None else ident,
                "tenant_id": fields.pop("tenant_id", self.tenant), "ts": self.ts(after) if ts is None else ts, **fields}
        for name in drop:
            body.pop(name, None)
        return body

    def line(self, type_: str | None, **fields) -> bytes:
        line = dumps(self.body(type_, **fields))
        self.lines.append(line)
        return line

    def raw_line(self, line: bytes) -> bytes:
        self.lines.append(line)
        return line

    # good setup lines
    def purchase(self, credits=1000, **kw) -> bytes:
        return self.line("purchase", credits=credits, **kw)

    def open(self, account: str, parent: str | None = None, kind: str = "team", **kw) -> bytes:
        return self.line("open_account", account_id=account, kind=kind, parent_id=parent or self.tenant, **kw)

    def allocate(self, src: str | None, dst: str, credits, **kw) -> bytes:
        return self.line("allocate", from_account=src or self.tenant, to_account=dst, credits=credits, **kw)

    def use(self, account: str | None, credits=1, **kw) -> bytes:
        fields = {"api_key_id": kw.pop("api_key_id", "key-1"), "model_name": kw.pop("model_name", "gpt-4o"),
                  "operation_type": kw.pop("operation_type", "chat"), "units_consumed": kw.pop("units", 10)}
        if account is not None:
            fields["account_id"] = account
        if credits is not None:
            fields["credits_consumed"] = credits
        return self.line("usage", **fields, **kw)

    def tick(self, after: float = 1.0, **kw) -> bytes:
        return self.line("tick", after=after, **kw)

    def mark_bad(self) -> None:
        """The line just added is the bad one."""
        assert self.bad is None, self.name
        self.bad = len(self.lines) - 1


def case(name: str, reason: str, *, note: str | None = None, xfail: str | None = None):
    """Decorator: the function builds the case's lines and marks the bad one."""

    def register(build):
        c = Case(name)
        build(c)
        assert c.bad is not None, name
        entry = {"name": name, "reason": reason, "file": f"cases/{len(CASES):03d}-{name}.jsonl",
                 "bad_line": c.bad, "lines": c.lines}
        if note:
            entry["note"] = note
        # ``xfail`` records what the code did when the case was written; all such cases were
        # fixed since, so none is marked (add ``entry["xfail_reason"] = xfail`` to mark one again)
        CASES.append(entry)
        return build

    return register


def bad(case_name: str, reason: str, type_: str | None = "tick", /, *, note: str | None = None,
        xfail: str | None = None, setup=None, drop=(), **fields) -> None:
    """A case whose bad line is one message (of its own tenant, ``type_`` with ``fields``; ``drop``
    removes common fields), after optional ``setup(c)``."""

    @case(case_name, reason, note=note, xfail=xfail)
    def _(c: Case) -> None:
        if setup is not None:
            setup(c)
        c.line(type_, drop=drop, **fields)
        c.mark_bad()


def bad_raw(name: str, reason: str, make, *, note: str | None = None, xfail: str | None = None) -> None:
    """A case whose bad line is the bytes ``make(c)`` returns."""

    @case(name, reason, note=note, xfail=xfail)
    def _(c: Case) -> None:
        c.raw_line(make(c))
        c.mark_bad()


# Valid fields of every message type, to be spoiled one at a time.
USAGE = {"account_id": None, "api_key_id": "key-1", "model_name": "gpt-4o", "operation_type": "chat",
         "units_consumed": 10, "credits_consumed": 1}


def team(c: Case) -> None:
    c.purchase(1000)
    c.open("team")
    c.allocate(None, "team", 100)


# ============================================================================ reading errors

# --- not_json: the bytes are not JSON (or not UTF-8)
bad_raw("not-json-plain-text", "not_json", lambda c: f"{c.tenant} this is not json".encode())
bad_raw("not-json-truncated-object", "not_json",
        lambda c: dumps(c.body("purchase", credits=5))[:-1])
bad_raw("not-json-truncated-in-string", "not_json",
        lambda c: dumps(c.body("purchase", credits=5))[:40])
bad_raw("not-json-truncated-after-key", "not_json", lambda c: f'{{"type":"tick","id":"{c.id()}","ts":'.encode())
bad_raw("not-json-single-quotes", "not_json",
        lambda c: f"{{'type':'tick','id':'{c.id()}','tenant_id':'{c.tenant}','ts':'{c.ts()}'}}".encode())
bad_raw("not-json-unquoted-keys", "not_json",
        lambda c: f'{{type:"tick",id:"{c.id()}",tenant_id:"{c.tenant}",ts:"{c.ts()}"}}'.encode())
bad_raw("not-json-trailing-comma", "not_json", lambda c: dumps(c.body("tick"))[:-1] + b",}")
bad_raw("not-json-two-objects", "not_json", lambda c: dumps(c.body("tick")) + dumps(c.body("tick")))
bad_raw("not-json-trailing-comment", "not_json", lambda c: dumps(c.body("tick")) + b" // a comment")
bad_raw("not-json-nan", "not_json", lambda c: dumps(c.body("purchase", credits=raw("NaN"))))
bad_raw("not-json-infinity", "not_json", lambda c: dumps(c.body("purchase", credits=raw("Infinity"))))
bad_raw("not-json-hex-number", "not_json", lambda c: dumps(c.body("purchase", credits=raw("0x10"))))
bad_raw("not-json-leading-zero", "not_json", lambda c: dumps(c.body("purchase", credits=raw("01"))))
bad_raw("not-json-plus-sign", "not_json", lambda c: dumps(c.body("purchase", credits=raw("+1"))))
bad_raw("not-json-leading-dot", "not_json", lambda c: dumps(c.body("purchase", credits=raw(".5"))))
bad_raw("not-json-raw-control-char", "not_json",
        lambda c: dumps(c.body("tick", id=c.id() + "\x01")).replace(b"\\u0001", b"\x01"))
bad_raw("not-json-lone-surrogate-escape", "not_json",
        lambda c: dumps(c.body("tick", id=c.id() + "-X")).replace(b"-X", b"\\ud800"),
        note="\\ud800 alone encodes no character: the text is not UTF-8 once unescaped")
bad_raw("not-json-latin-1-byte", "not_json",
        lambda c: dumps(c.body("tick", id=c.id() + "-caf\xe9")).replace("é".encode(), b"\xe9"))
bad_raw("not-json-overlong-utf8", "not_json",
        lambda c: dumps(c.body("tick", id=c.id() + "-X")).replace(b"-X", b"-\xc0\xaf"))
bad_raw("not-json-utf8-encoded-surrogate", "not_json",
        lambda c: dumps(c.body("tick", id=c.id() + "-X")).replace(b"-X", b"-\xed\xa0\x80"))
bad_raw("not-json-invalid-utf8-in-tenant", "not_json",
        lambda c: dumps(c.body("tick")).replace(f'"tenant_id":"{c.tenant}'.encode(),
                                                f'"tenant_id":"{c.tenant}'.encode() + b"\xff"))
bad_raw("not-json-invalid-utf8-in-extra-field", "not_json",
        lambda c: dumps(c.body("tick", note="X")).replace(b'"X"', b'"\xfe\xff"'),
        note="wire-v1.md: one JSON object per message, UTF-8; reasons.py: not_json = not JSON or not UTF-8",
        xfail="code accepts the tick: bytes that are not UTF-8 inside an unknown extra field are never checked")
bad_raw("not-json-utf16", "not_json", lambda c: dumps(c.body("tick")).decode().encode("utf-16-le"))
bad_raw("not-json-binary-garbage", "not_json", lambda c: b"\x00\x01\x02\xfe" + c.tenant.encode() + b"\x80\x81")

# --- not_object: JSON, but not an object
bad_raw("not-object-array", "not_object", lambda c: f'["{c.tenant}", "a list"]'.encode())
bad_raw("not-object-array-of-message", "not_object", lambda c: b"[" + dumps(c.body("tick")) + b"]")
bad_raw("not-object-empty-array", "not_object", lambda c: b"[]")
bad_raw("not-object-string", "not_object", lambda c: json.dumps(c.tenant).encode())
bad_raw("not-object-number", "not_object", lambda c: b"12345")
bad_raw("not-object-true", "not_object", lambda c: b"true")
bad_raw("not-object-null", "not_object", lambda c: b"null",
        note="null is JSON (RFC 8259), not an object",
        xfail="code says not_json: its loose decode of `null` gives None, which it reads as 'could not decode'")

# --- missing_type
bad("missing-type-tick", "missing_type", None, drop=("type",))
bad("missing-type-usage-shaped", "missing_type", None, drop=("type",),
    **{k: v for k, v in USAGE.items() if v is not None})
bad("missing-type-capitalised-key", "missing_type", None, drop=("type",), Type="tick")
bad_raw("missing-type-empty-object", "missing_type", lambda c: b"{}")
bad("missing-type-kind-instead", "missing_type", None, drop=("type",), kind="purchase", credits=5)

# --- unknown_type
for name, value in [("refund", "refund_everything"), ("capitalised", "Purchase"), ("upper", "USAGE"),
                    ("trailing-space", "usage "), ("empty", ""), ("dotted-version", "purchase.v2"),
                    ("hyphen", "open-account"), ("plural", "ticks"), ("reservation", "reservation")]:
    bad(f"unknown-type-{name}", "unknown_type", value)

# --- unknown_version
bad("unknown-version-2-tick", "unknown_version", "tick", schema_version=2)
bad("unknown-version-0-purchase", "unknown_version", "purchase", credits=5, schema_version=0)
bad("unknown-version-negative-usage", "unknown_version", "usage", schema_version=-1,
    **{k: v for k, v in USAGE.items() if v is not None})
bad("unknown-version-3-open", "unknown_version", "open_account", account_id="a", kind="team",
    parent_id="x", schema_version=3)
bad("unknown-version-100-allocate", "unknown_version", "allocate", from_account="a", to_account="b", credits=1,
    schema_version=100)

# --- missing_id / missing_tenant
bad("missing-id-tick", "missing_id", "tick", drop=("id",))
bad("missing-id-purchase", "missing_id", "purchase", credits=5, drop=("id",))
bad("missing-id-usage", "missing_id", "usage", drop=("id",), **{k: v for k, v in USAGE.items() if v is not None})
bad("missing-id-settle", "missing_id", "settle", reservation_id="r", credits=1, drop=("id",))
bad("missing-tenant-tick", "missing_tenant", "tick", drop=("tenant_id",))
bad("missing-tenant-purchase", "missing_tenant", "purchase", credits=5, drop=("tenant_id",))
bad("missing-tenant-usage", "missing_tenant", "usage", drop=("tenant_id",),
    **{k: v for k, v in USAGE.items() if v is not None})
bad("missing-tenant-open-account", "missing_tenant", "open_account", account_id="a", kind="team", parent_id="p",
    drop=("tenant_id",))

# --- missing_field: another required field is absent
OPEN = {"account_id": "a", "kind": "team", "parent_id": "root"}
ALLOC = {"from_account": "root", "to_account": "a", "credits": 1}
for type_, fields, missing in [
    ("tick", {}, "ts"),
    ("purchase", {"credits": 5}, "ts"),
    ("purchase", {}, "credits"),
    ("open_account", OPEN, "account_id"),
    ("open_account", OPEN, "kind"),
    ("open_account", OPEN, "parent_id"),
    ("allocate", ALLOC, "from_account"),
    ("allocate", ALLOC, "to_account"),
    ("allocate", ALLOC, "credits"),
    ("reclaim", {"from_account": "a", "to_account": "root", "credits": 1}, "from_account"),
    ("set_members", {"account_id": "pool", "members": ["a"]}, "members"),
    ("bind_key", {"api_key_id": "k", "account_id": "a"}, "api_key_id"),
    ("bind_key", {"api_key_id": "k", "account_id": "a"}, "account_id"),
    ("reserve", {"account_id": "a", "credits": 1, "expires_at": "2026-12-01T00:00:00Z"}, "expires_at"),
    ("reserve", {"account_id": "a", "credits": 1, "expires_at": "2026-12-01T00:00:00Z"}, "credits"),
    ("settle", {"reservation_id": "r", "credits": 1}, "reservation_id"),
    ("settle", {"reservation_id": "r", "credits": 1}, "credits"),
    ("override_cap", {"account_id": "a", "until": "2026-12-01T00:00:00Z", "approvals": ["a", "b"]}, "until"),
    ("override_cap", {"account_id": "a", "until": "2026-12-01T00:00:00Z", "approvals": ["a", "b"]}, "approvals"),
    ("usage", {k: v for k, v in USAGE.items() if v is not None}, "api_key_id"),
    ("usage", {k: v for k, v in USAGE.items() if v is not None}, "model_name"),
    ("usage", {k: v for k, v in USAGE.items() if v is not None}, "operation_type"),
    ("usage", {k: v for k, v in USAGE.items() if v is not None}, "units_consumed"),
]:
    bad(f"missing-field-{type_.replace('_', '-')}-{missing.replace('_', '-')}", "missing_field", type_,
        drop=(missing,), **{k: v for k, v in fields.items() if k != missing})
bad("missing-field-recurrence-every", "missing_field", "allocate", **ALLOC, recurrence={"rollover_pct": 10})
bad("missing-field-rate-operation", "missing_field", "set_rates",
    rates=[{"model_name": "gpt-4o", "credits_per_unit": "0.001"}])


@case("missing-field-reclaim-neither-credits-nor-all", "missing_field",
      note="wire-v1.md: reclaim takes `credits` or `\"all\": true`")
def _(c):
    team(c)
    c.line("reclaim", from_account="team", to_account=c.tenant)
    c.mark_bad()


# --- invalid_timestamp
for name, value in [
    ("words", "yesterday"), ("no-offset", "2026-09-01T10:00:00"), ("date-only", "2026-09-01"),
    ("no-seconds", "2026-09-01T10:00Z"), ("month-13", "2026-13-01T10:00:00Z"), ("day-32", "2026-09-32T10:00:00Z"),
    ("february-30", "2026-02-30T10:00:00Z"), ("hour-25", "2026-09-01T25:00:00Z"),
    ("offset-25-hours", "2026-09-01T10:00:00+25:00"), ("comma-fraction", "2026-09-01T10:00:00,5Z"),
    ("empty-fraction", "2026-09-01T10:00:00.Z"), ("no-padding", "2026-9-1T10:00:00Z"),
    ("basic-format", "20260901T100000Z"), ("space-before-zone", "2026-09-01T10:00:00 Z"), ("empty", ""),
    ("signed-year", "+2026-09-01T10:00:00Z"), ("year-zero", "0000-01-01T00:00:00Z"),
    ("year-1969", "1969-12-31T23:59:59Z"), ("offset-into-1969", "1970-01-01T00:30:00+01:00"),
    ("offset-into-10000", "9999-12-31T23:59:59-01:00"), ("year-10000", "10000-01-01T00:00:00Z"),
]:
    bad(f"invalid-timestamp-ts-{name}", "invalid_timestamp", "tick", ts=value)
bad("invalid-timestamp-ts-offset-without-colon", "invalid_timestamp", "tick", ts="2026-09-01T10:00:00+0100",
    note="RFC 3339 time-numoffset is (+|-)HH:MM; +0100 is ISO 8601 basic format, not RFC 3339",
    xfail="code accepts +0100 as +01:00")
bad("invalid-timestamp-ts-epoch-number", "invalid_timestamp", "tick", ts=1788000000,
    note="a number is not an RFC 3339 time (one could also argue wrong_type; the code says invalid_timestamp)")
bad("invalid-timestamp-purchase-expires-month-13", "invalid_timestamp", "purchase", credits=5,
    expires_at="2026-13-01T00:00:00Z")
bad("invalid-timestamp-allocate-starts-no-offset", "invalid_timestamp", "allocate", **ALLOC,
    starts_at="2026-10-01T00:00:00")
bad("invalid-timestamp-allocate-ends-words", "invalid_timestamp", "allocate", **ALLOC, ends_at="tomorrow")
bad("invalid-timestamp-allocate-expires-1969", "invalid_timestamp", "allocate", **ALLOC,
    expires_at="1969-07-20T20:17:00Z")
bad("invalid-timestamp-reserve-expires-past-9999", "invalid_timestamp", "reserve", account_id="a", credits=1,
    expires_at="9999-12-31T23:30:00-01:00")
bad("invalid-timestamp-override-until-year-1", "invalid_timestamp", "override_cap", account_id="a",
    until="0001-01-01T00:00:00Z", approvals=["a", "b"])
bad("invalid-timestamp-usage-ts-no-zone", "invalid_timestamp", "usage", ts="2026-09-01T10:00:00.123",
    **{k: v for k, v in USAGE.items() if v is not None})


@case("invalid-timestamp-monthly-from-december-9999", "invalid_timestamp",
      note="wire-v1.md: a time that would leave the years 1970..9999 (also after adding a month)")
def _(c):
    team(c)
    c.open("sub", "team", kind="user")
    c.allocate("team", "sub", 1, starts_at="9999-12-05T00:00:00Z", recurrence={"every": "month"})
    c.mark_bad()


# --- invalid_amount: negative, more than 6 decimals, not a number, too large
for name, value in [
    ("negative-number", -5), ("negative-string", "-5"), ("negative-zero-string", "-0"),
    ("seven-decimals-string", "1.0000001"), ("seven-decimals-number", raw("1.0000001")),
    ("tiny-exponent-number", raw("1e-7")), ("exponent-string", "1e2"), ("upper-exponent-string", "1E2"),
    ("leading-space", " 5"), ("trailing-space", "5 "), ("thousands-comma", "1,000"), ("underscore", "1_000"),
    ("empty-string", ""), ("words", "ten"), ("nan-string", "NaN"), ("infinity-string", "Infinity"),
    ("true", True), ("false", False), ("arabic-indic-digit", "\u0663"), ("fullwidth-digit", "\uff15"),
    ("plus-string", "+5"), ("dot-first", ".5"), ("dot-last", "5."), ("hex-string", "0x10"),
    ("array", [1]), ("object", {"credits": 1}),
    ("above-max-string", "9223372036854.775808"), ("above-max-number", 9223372036855),
    ("huge-exponent", raw("1e400")),
]:
    bad(f"invalid-amount-purchase-{name}", "invalid_amount", "purchase", credits=value,
        **({"note": "1e400 is a JSON number (RFC 8259), too large for any balance",
            "xfail": "code says not_json: its loose decode fails on a number out of float range, so it "
                     "reads the line as not JSON"} if name == "huge-exponent" else {}))
bad("invalid-amount-allocate-negative", "invalid_amount", "allocate", from_account="a", to_account="b",
    credits="-1")
bad("invalid-amount-reclaim-seven-decimals", "invalid_amount", "reclaim", from_account="a", to_account="b",
    credits=raw("1.1234567"))
bad("invalid-amount-reserve-negative", "invalid_amount", "reserve", account_id="a", credits=-1,
    expires_at="2026-12-01T00:00:00Z")
bad("invalid-amount-settle-exponent-string", "invalid_amount", "settle", reservation_id="r", credits="1.5e3")
bad("invalid-amount-usage-negative-credits", "invalid_amount", "usage",
    **{**{k: v for k, v in USAGE.items() if v is not None}, "credits_consumed": raw("-0.5")})
bad("invalid-amount-usage-credits-words", "invalid_amount", "usage",
    **{**{k: v for k, v in USAGE.items() if v is not None}, "credits_consumed": "abc"})
bad("invalid-amount-rate-negative", "invalid_amount", "set_rates",
    rates=[{"model_name": "gpt-4o", "operation_type": "chat", "credits_per_unit": "-1"}])
bad("invalid-amount-rate-13-decimals", "invalid_amount", "set_rates",
    rates=[{"model_name": "gpt-4o", "operation_type": "chat", "credits_per_unit": raw("0.0000000000001")}])
bad("invalid-amount-rate-exponent-string", "invalid_amount", "set_rates",
    rates=[{"model_name": "gpt-4o", "operation_type": "chat", "credits_per_unit": "1e2"}],
    note="wire-v1.md: amount strings match [0-9]+(\\.[0-9]{1,6})? (no exponent); rates may have 12 decimals",
    xfail="code accepts the rate string '1e2' (read as Decimal)")
bad("invalid-amount-rate-words", "invalid_amount", "set_rates",
    rates=[{"model_name": "gpt-4o", "operation_type": "chat", "credits_per_unit": "cheap"}],
    note="reasons.py: invalid_amount = negative, more than 6 decimals, not a number, too large",
    xfail="code says invalid (msgspec's 'Invalid decimal string' message has no 'amount' in it)")
MAX = "9223372036854.775807"  # 2^63-1 micro-credits
bad("invalid-amount-purchase-past-max-balance", "invalid_amount", "purchase", credits="5000000000000",
    setup=lambda c: c.purchase("5000000000000"),
    note="wire-v1.md: a command that would take any balance or total past 2^63-1 micro-credits")
bad("invalid-amount-purchase-one-micro-past-max", "invalid_amount", "purchase", credits="0.000001",
    setup=lambda c: c.purchase(MAX))
bad("invalid-amount-5000-digits", "invalid_amount", "purchase", credits="1" * 5000,
    note="more digits than Python's int() reads (4,300) must not raise")
bad("invalid-amount-5000-digits-leading-zeros-then-too-many-decimals", "invalid_amount", "purchase",
    credits="0" * 5000 + "1.0000001")
bad("invalid-labels-nested-5000-deep", "invalid", "usage",
    **{**USAGE, "usage_labels": raw("[" * 5000 + "]" * 5000)},
    note="JSON nested deeper than the decoder's recursion limit is refused, not raised")


@case("invalid-amount-usage-consumed-past-max", "invalid_amount",
      note="the total consumed would pass 2^63-1 micro-credits (overage is booked, the total still counts)")
def _(c: Case) -> None:
    c.use(c.tenant, "9000000000000")
    c.use(c.tenant, "300000000000")
    c.mark_bad()


@case("invalid-amount-usage-price-past-max", "invalid_amount",
      note="wire-v1.md: a usage whose computed price would take a balance past 2^63-1 micro-credits")
def _(c: Case) -> None:
    c.purchase(10)
    c.line("set_rates", rates=[{"model_name": "gpt-4o", "operation_type": "chat", "credits_per_unit": "1000000"}])
    c.use(c.tenant, None, units=10_000_000_000)
    c.mark_bad()


# --- wrong_type: a field of the wrong JSON type
U = {k: v for k, v in USAGE.items() if v is not None}
RES = {"account_id": "a", "credits": 1, "expires_at": "2026-12-01T00:00:00Z"}
OVR = {"account_id": "a", "until": "2026-12-01T00:00:00Z", "approvals": ["cfo", "ceo"]}
for type_, base, field, value in [
    ("tick", {}, "id", 42),
    ("purchase", {"credits": 1}, "id", ["x"]),
    ("tick", {}, "tenant_id", 42),
    ("usage", U, "tenant_id", ["t"]),
    ("open_account", OPEN, "account_id", 5),
    ("open_account", OPEN, "kind", True),
    ("open_account", OPEN, "parent_id", {"id": "root"}),
    ("open_account", OPEN, "fallback", "yes"),
    ("open_account", OPEN, "fallback", 1),
    ("open_account", OPEN, "name", 5),
    ("allocate", ALLOC, "from_account", 1),
    ("allocate", ALLOC, "to_account", []),
    ("allocate", ALLOC, "recurrence", "monthly"),
    ("allocate", ALLOC, "thresholds", "50"),
    ("allocate", ALLOC, "thresholds", ["50", "70"]),
    ("allocate", ALLOC, "cap", 1),
    ("allocate", ALLOC, "on_expiry", False),
    ("reclaim", {"from_account": "a", "to_account": "root"}, "all", "true"),
    ("reclaim", {"from_account": "a", "to_account": "root", "all": True}, "to_account", 7),
    ("set_members", {"account_id": "pool"}, "members", "a"),
    ("set_members", {"account_id": "pool"}, "members", [1, 2]),
    ("set_members", {"members": ["a"]}, "account_id", ["pool"]),
    ("bind_key", {"account_id": "a"}, "api_key_id", 7),
    ("bind_key", {"api_key_id": "k"}, "account_id", {"id": "a"}),
    ("reserve", RES, "account_id", 1),
    ("settle", {"credits": 1}, "reservation_id", 5),
    ("override_cap", OVR, "approvals", "cfo,ceo"),
    ("override_cap", OVR, "approvals", [1, 2]),
    ("override_cap", OVR, "account_id", []),
    ("usage", U, "api_key_id", 1),
    ("usage", U, "model_name", ["gpt-4o"]),
    ("usage", U, "operation_type", {"op": "chat"}),
    ("usage", U, "units_consumed", "10"),
    ("usage", U, "units_consumed", True),
    ("usage", U, "units_consumed", [10]),
    ("usage", U, "account_id", 5),
    ("usage", U, "response_latency_ms", "fast"),
    ("set_rates", {}, "rates", "gpt-4o=0.01"),
    ("set_rates", {}, "rates", [1]),
    ("set_rates", {}, "rates", [{"model_name": 5, "operation_type": "chat", "credits_per_unit": "1"}]),
]:
    kind = type(value).__name__.replace("NoneType", "null").replace("str", "string").replace("bool", "boolean")
    kind = {"int": "number", "list": "array", "dict": "object"}.get(kind, kind)
    name = f"wrong-type-{type_.replace('_', '-')}-{field.replace('_', '-')}-{kind}"
    if any(e["name"] == name for e in CASES):
        name += "-2"
    bad(name, "wrong_type", type_, **{**base, field: value})
bad("wrong-type-recurrence-every-number", "wrong_type", "allocate", **ALLOC, recurrence={"every": 1})

# --- invalid: any other constraint (empty id, percent over 100, ...)
LONG = "x" * 257
NOTE_CONSTRAINT = "reasons.py: invalid = any other constraint (empty id, percent over 100, ...); the JSON type is right"
XFAIL_TYPE = "code says wrong_type (msgspec's constraint message starts with 'Expected `', read as a type error)"
for type_, base, field, value in [
    ("tick", {}, "id", ""),
    ("tick", {}, "id", LONG),
    ("tick", {}, "tenant_id", ""),
    ("tick", {}, "tenant_id", "bi-" + LONG),
    ("open_account", OPEN, "account_id", ""),
    ("open_account", OPEN, "account_id", LONG),
    ("open_account", OPEN, "kind", ""),
    ("open_account", OPEN, "parent_id", ""),
    ("usage", U, "api_key_id", ""),
    ("usage", U, "model_name", ""),
    ("settle", {"credits": 1}, "reservation_id", ""),
    ("set_members", {"account_id": "pool"}, "members", ["a", ""]),
    ("override_cap", OVR, "approvals", ["cfo", ""]),
    ("allocate", ALLOC, "recurrence", {"every": "month", "rollover_pct": 101}),
    ("allocate", ALLOC, "recurrence", {"every": "month", "rollover_pct": -1}),
    ("allocate", ALLOC, "thresholds", [0, 50]),
    ("allocate", ALLOC, "thresholds", [50, 1001]),
    ("usage", U, "units_consumed", -1),
    ("usage", U, "response_latency_ms", -3),
]:
    what = "empty" if value == "" else "too-long" if isinstance(value, str) and len(value) > 256 else \
        "negative" if isinstance(value, int) and value < 0 else "out-of-range"
    if isinstance(value, list):
        what = "empty-entry" if "" in value else "zero" if 0 in value else "over-1000"
    if isinstance(value, dict):
        what = "rollover-over-100" if value.get("rollover_pct") == 101 else "rollover-negative"
    bad(f"invalid-{type_.replace('_', '-')}-{field.replace('_', '-')}-{what}", "invalid", type_,
        **{**base, field: value}, note=NOTE_CONSTRAINT, xfail=XFAIL_TYPE)
for name, type_, fields in [
    ("cap-medium", "allocate", {**ALLOC, "cap": "medium"}),
    ("cap-upper-case", "allocate", {**ALLOC, "cap": "HARD"}),
    ("on-expiry-keep", "allocate", {**ALLOC, "on_expiry": "keep"}),
    ("recurrence-every-week", "allocate", {**ALLOC, "recurrence": {"every": "week"}}),
    ("recurrence-every-capitalised", "allocate", {**ALLOC, "recurrence": {"every": "Month"}}),
]:
    bad(f"invalid-{name}", "invalid", type_, **fields)
bad("invalid-usage-units-huge-exponent", "invalid", "usage", **{**U, "units_consumed": raw("1e400")},
    note="1e400 is a JSON number (RFC 8259) beyond any float: a constraint, not a syntax error",
    xfail="code says not_json (msgspec: 'Number out of range', and its loose decode fails too)")

# ============================================================================ ledger decisions

# --- duplicate_id_conflict: the same id again with other content
@case("duplicate-purchase-other-credits", "duplicate_id_conflict")
def _(c):
    c.purchase(10, id=f"{c.tenant}-p")
    c.purchase(11, id=f"{c.tenant}-p")
    c.mark_bad()


@case("duplicate-purchase-other-expiry", "duplicate_id_conflict")
def _(c):
    c.purchase(10, id=f"{c.tenant}-p", expires_at="2027-06-01T00:00:00Z")
    c.purchase(10, id=f"{c.tenant}-p", expires_at="2027-07-01T00:00:00Z")
    c.mark_bad()


@case("duplicate-usage-other-credits", "duplicate_id_conflict")
def _(c):
    c.purchase(10)
    c.use(c.tenant, 1, id=f"{c.tenant}-req")
    c.use(c.tenant, 2, id=f"{c.tenant}-req")
    c.mark_bad()


@case("duplicate-usage-other-account", "duplicate_id_conflict")
def _(c):
    team(c)
    c.use(c.tenant, 1, id=f"{c.tenant}-req")
    c.use("team", 1, id=f"{c.tenant}-req")
    c.mark_bad()


@case("duplicate-usage-other-labels", "duplicate_id_conflict",
      note="labels are content: only unknown extra fields are left out of 'same content'")
def _(c):
    c.purchase(10)
    c.use(c.tenant, 1, id=f"{c.tenant}-req", usage_labels={"team": "a"})
    c.use(c.tenant, 1, id=f"{c.tenant}-req", usage_labels={"team": "b"})
    c.mark_bad()


@case("duplicate-open-account-other-kind", "duplicate_id_conflict")
def _(c):
    c.open("team", id=f"{c.tenant}-o")
    c.open("team", kind="org", id=f"{c.tenant}-o")
    c.mark_bad()


@case("duplicate-allocate-other-amount", "duplicate_id_conflict")
def _(c):
    team(c)
    c.allocate(None, "team", 5, id=f"{c.tenant}-a")
    c.allocate(None, "team", 6, id=f"{c.tenant}-a")
    c.mark_bad()


@case("duplicate-reserve-other-expiry", "duplicate_id_conflict")
def _(c):
    team(c)
    c.line("reserve", id=f"{c.tenant}-r", account_id="team", credits=5, expires_at="2026-12-01T00:00:00Z")
    c.line("reserve", id=f"{c.tenant}-r", account_id="team", credits=5, expires_at="2026-12-02T00:00:00Z")
    c.mark_bad()


@case("duplicate-tick-other-time", "duplicate_id_conflict", note="ts is content")
def _(c):
    c.tick(id=f"{c.tenant}-t")
    c.tick(id=f"{c.tenant}-t")
    c.mark_bad()


@case("duplicate-id-across-types", "duplicate_id_conflict",
      note="wire-v1.md: id is unique within its tenant, whatever the type")
def _(c):
    c.purchase(10, id=f"{c.tenant}-x")
    c.tick(id=f"{c.tenant}-x")
    c.mark_bad()


# --- unknown_account
@case("unknown-account-allocate-to", "unknown_account")
def _(c):
    c.purchase(10)
    c.allocate(None, "ghost", 1)
    c.mark_bad()


@case("unknown-account-allocate-from", "unknown_account")
def _(c):
    team(c)
    c.allocate("ghost", "team", 1)
    c.mark_bad()


@case("unknown-account-allocate-from-other-tenants-root", "unknown_account",
      note="reliability.md row 12: a command naming another tenant's account is refused")
def _(c):
    other = f"{c.tenant}-other"
    c.purchase(10, tenant_id=other, id=f"{other}-p")
    team(c)
    c.allocate(other, "team", 1)
    c.mark_bad()


@case("unknown-account-reserve", "unknown_account")
def _(c):
    c.purchase(10)
    c.line("reserve", account_id="ghost", credits=1, expires_at="2026-12-01T00:00:00Z")
    c.mark_bad()


@case("unknown-account-bind-key", "unknown_account")
def _(c):
    c.line("bind_key", api_key_id="k", account_id="ghost")
    c.mark_bad()


@case("unknown-account-set-members-pool", "unknown_account")
def _(c):
    team(c)
    c.line("set_members", account_id="ghost", members=["team"])
    c.mark_bad()


@case("unknown-account-set-members-member", "unknown_account")
def _(c):
    team(c)
    c.line("set_members", account_id="team", members=["ghost"])
    c.mark_bad()


@case("unknown-account-override-cap", "unknown_account")
def _(c):
    c.line("override_cap", account_id="ghost", until="2026-12-01T00:00:00Z", approvals=["cfo", "ceo"])
    c.mark_bad()


@case("unknown-account-reclaim-from", "unknown_account")
def _(c):
    c.purchase(10)
    c.line("reclaim", from_account="ghost", to_account=c.tenant, credits=1)
    c.mark_bad()


@case("unknown-account-usage-never-opened", "unknown_account",
      note="held for the 1 h grace; rejected when a later message moves the tenant clock past it")
def _(c):
    c.purchase(10)
    c.use("ghost", 1)
    c.mark_bad()
    c.tick(after=7200)


@case("unknown-account-usage-key-never-bound", "unknown_account",
      note="no account_id and a key that is not bound: held for the grace, then rejected")
def _(c):
    c.purchase(10)
    c.use(None, 1, api_key_id="unbound-key")
    c.mark_bad()
    c.tick(after=7200)


@case("unknown-account-usage-account-opened-after-grace", "unknown_account",
      note="the account opens 2 h after the usage: the 1 h grace has ended, the open itself is accepted")
def _(c):
    team(c)
    c.use("late", 1)
    c.mark_bad()
    c.open("late", "team", kind="user", after=7200)


@case("unknown-account-usage-key-bound-after-grace", "unknown_account")
def _(c):
    team(c)
    c.use(None, 1, api_key_id="late-key")
    c.mark_bad()
    c.line("bind_key", api_key_id="late-key", account_id="team", after=7200)


@case("unknown-account-usage-other-tenants-account", "unknown_account")
def _(c):
    other = f"{c.tenant}-other"
    c.open("shared", other, tenant_id=other, id=f"{other}-o")
    c.purchase(10)
    c.use("shared", 1)
    c.mark_bad()
    c.tick(after=7200)


# --- account_exists / unknown_parent / not_parent
@case("account-exists-opened-twice", "account_exists")
def _(c):
    c.open("team")
    c.open("team")
    c.mark_bad()


@case("account-exists-root", "account_exists", note="the root account (id = tenant_id) exists implicitly")
def _(c):
    c.open(c.tenant, c.tenant, kind="tenant")
    c.mark_bad()


@case("account-exists-under-other-parent", "account_exists")
def _(c):
    c.open("team")
    c.open("org", kind="org")
    c.open("team", "org")
    c.mark_bad()


@case("unknown-parent-nowhere", "unknown_parent")
def _(c):
    c.open("team", "nowhere")
    c.mark_bad()


@case("unknown-parent-other-tenants-root", "unknown_parent")
def _(c):
    other = f"{c.tenant}-other"
    c.purchase(10, tenant_id=other, id=f"{other}-p")
    c.open("team", other)
    c.mark_bad()


@case("unknown-parent-itself", "unknown_parent")
def _(c):
    c.open("team", "team")
    c.mark_bad()


@case("not-parent-allocate-child-to-parent", "not_parent")
def _(c):
    team(c)
    c.allocate("team", c.tenant, 1)
    c.mark_bad()


@case("not-parent-allocate-between-siblings", "not_parent")
def _(c):
    team(c)
    c.open("other")
    c.allocate("team", "other", 1)
    c.mark_bad()


@case("not-parent-allocate-to-grandchild", "not_parent")
def _(c):
    team(c)
    c.open("user", "team", kind="user")
    c.allocate(None, "user", 1)
    c.mark_bad()


@case("not-parent-allocate-root-to-itself", "not_parent")
def _(c):
    c.purchase(10)
    c.allocate(None, c.tenant, 1)
    c.mark_bad()


@case("not-parent-reclaim-parent-to-child", "not_parent")
def _(c):
    team(c)
    c.line("reclaim", from_account=c.tenant, to_account="team", credits=1)
    c.mark_bad()


@case("not-parent-reclaim-grandchild-to-root", "not_parent")
def _(c):
    team(c)
    c.open("user", "team", kind="user")
    c.allocate("team", "user", 5)
    c.line("reclaim", from_account="user", to_account=c.tenant, credits=1)
    c.mark_bad()


# --- insufficient_funds
@case("insufficient-funds-allocate-more-than-root", "insufficient_funds")
def _(c):
    c.purchase(10)
    c.open("team")
    c.allocate(None, "team", 11)
    c.mark_bad()


@case("insufficient-funds-allocate-one-micro-too-many", "insufficient_funds")
def _(c):
    c.purchase(10)
    c.open("team")
    c.allocate(None, "team", "10.000001")
    c.mark_bad()


@case("insufficient-funds-allocate-from-empty-root", "insufficient_funds")
def _(c):
    c.open("team")
    c.allocate(None, "team", "0.000001")
    c.mark_bad()


@case("insufficient-funds-reclaim-more-than-child-has", "insufficient_funds")
def _(c):
    team(c)
    c.line("reclaim", from_account="team", to_account=c.tenant, credits="100.5")
    c.mark_bad()


@case("insufficient-funds-reserve-more-than-chain", "insufficient_funds")
def _(c):
    team(c)
    c.line("reserve", account_id="team", credits=1001, expires_at="2026-12-01T00:00:00Z")
    c.mark_bad()


@case("insufficient-funds-reserve-no-fallback", "insufficient_funds",
      note="fallback false: the reserve may not draw from the parent")
def _(c):
    c.purchase(1000)
    c.open("team", fallback=False)
    c.allocate(None, "team", 10)
    c.line("reserve", account_id="team", credits=11, expires_at="2026-12-01T00:00:00Z")
    c.mark_bad()


@case("insufficient-funds-reclaim-of-expired-grant", "insufficient_funds",
      note="reliability.md row 10: reclaim of an expired grant")
def _(c):
    c.purchase(100)
    c.open("team")
    c.allocate(None, "team", 10, ends_at=iso(c.start + timedelta(hours=1)))
    c.tick(after=7200)
    c.line("reclaim", from_account="team", to_account=c.tenant, credits=1)
    c.mark_bad()


@case("insufficient-funds-allocate-before-window", "insufficient_funds",
      note="the parent's only grant has a spend window that has not started")
def _(c):
    c.purchase(100)
    c.open("team")
    c.open("user", "team", kind="user")
    c.allocate(None, "team", 10, starts_at="2026-11-15T00:00:00Z")
    c.allocate("team", "user", 1)
    c.mark_bad()


# --- invalid_window
@case("invalid-window-purchase-expires-at-ts", "invalid_window")
def _(c):
    t = c.ts()
    c.line("purchase", ts=t, credits=10, expires_at=t)
    c.mark_bad()


@case("invalid-window-purchase-expires-before-ts", "invalid_window")
def _(c):
    c.purchase(10, expires_at="2026-08-01T00:00:00Z")
    c.mark_bad()


@case("invalid-window-allocate-ends-before-ts", "invalid_window")
def _(c):
    team(c)
    c.allocate(None, "team", 1, ends_at="2026-08-01T00:00:00Z")
    c.mark_bad()


@case("invalid-window-allocate-starts-after-ends", "invalid_window")
def _(c):
    team(c)
    c.allocate(None, "team", 1, starts_at="2026-11-20T00:00:00Z", ends_at="2026-11-10T00:00:00Z")
    c.mark_bad()


@case("invalid-window-allocate-ends-at-starts", "invalid_window")
def _(c):
    team(c)
    c.allocate(None, "team", 1, starts_at="2026-11-20T00:00:00Z", ends_at="2026-11-20T00:00:00Z")
    c.mark_bad()


@case("invalid-window-allocate-expires-before-starts", "invalid_window")
def _(c):
    team(c)
    c.allocate(None, "team", 1, starts_at="2026-11-20T00:00:00Z", expires_at="2026-11-19T00:00:00Z")
    c.mark_bad()


@case("invalid-window-reserve-expires-at-ts", "invalid_window")
def _(c):
    team(c)
    t = c.ts()
    c.line("reserve", ts=t, account_id="team", credits=1, expires_at=t)
    c.mark_bad()


@case("invalid-window-reserve-expires-before-ts", "invalid_window")
def _(c):
    team(c)
    c.line("reserve", account_id="team", credits=1, expires_at="2026-08-01T00:00:00+02:00")
    c.mark_bad()


@case("invalid-window-override-until-before-ts", "invalid_window")
def _(c):
    team(c)
    c.line("override_cap", account_id="team", until="2026-08-01T00:00:00Z", approvals=["cfo", "ceo"])
    c.mark_bad()


# --- unknown_reservation / reservation_closed
@case("unknown-reservation-never-reserved", "unknown_reservation")
def _(c):
    team(c)
    c.line("settle", reservation_id="never", credits=1)
    c.mark_bad()


@case("unknown-reservation-other-tenants-hold", "unknown_reservation")
def _(c):
    other = f"{c.tenant}-other"
    c.purchase(10, tenant_id=other, id=f"{other}-p")
    c.line("reserve", tenant_id=other, id=f"{other}-hold", account_id=other, credits=1,
           expires_at="2026-12-01T00:00:00Z")
    c.purchase(10)
    c.line("settle", reservation_id=f"{other}-hold", credits=1)
    c.mark_bad()


@case("unknown-reservation-id-of-a-purchase", "unknown_reservation")
def _(c):
    c.purchase(10, id=f"{c.tenant}-p")
    c.line("settle", reservation_id=f"{c.tenant}-p", credits=1)
    c.mark_bad()


@case("reservation-closed-settled-twice", "reservation_closed")
def _(c):
    team(c)
    c.line("reserve", id=f"{c.tenant}-hold", account_id="team", credits=5, expires_at="2026-12-01T00:00:00Z")
    c.line("settle", reservation_id=f"{c.tenant}-hold", credits=3)
    c.line("settle", reservation_id=f"{c.tenant}-hold", credits=3)
    c.mark_bad()


@case("reservation-closed-second-settle-after-expiry", "reservation_closed",
      note="wire-v1.md: a settle after its hold ended still charges; only a second settle is reservation_closed")
def _(c):
    team(c)
    c.line("reserve", id=f"{c.tenant}-hold", account_id="team", credits=5,
           expires_at=iso(c.start + timedelta(hours=1)))
    c.tick(after=7200)
    c.line("settle", reservation_id=f"{c.tenant}-hold", credits=2)
    c.line("settle", reservation_id=f"{c.tenant}-hold", credits=2)
    c.mark_bad()


# --- approvals_required (approvers compared after NFC, case folding, trimming spaces)
for name, approvals, note in [
    ("one", ["cfo"], None), ("none", [], None), ("same-twice", ["cfo", "cfo"], None),
    ("case", ["cfo", "CFO"], None), ("spaces", ["cfo", " cfo "], None),
    ("nfc", ["caf\u00e9", "cafe\u0301"], "precomposed and decomposed e-acute are one approver after NFC"),
    ("case-folding-sharp-s", ["stra\u00dfe", "STRASSE"], "full case folding: \u00df folds to ss"),
    ("all-three", [" \u00c9MILE ", "e\u0301mile"], "NFC, case folding and trimming together"),
    ("blank-after-trim", ["   ", "cfo"], "an approver of spaces only is no approver once trimmed"),
]:
    @case(f"approvals-required-{name}", "approvals_required", note=note)
    def _(c, approvals=approvals):
        team(c)
        c.line("override_cap", account_id="team", until="2026-12-01T00:00:00Z", approvals=approvals)
        c.mark_bad()


# --- no_rate
@case("no-rate-no-rate-card", "no_rate")
def _(c):
    c.purchase(10)
    c.use(c.tenant, None)
    c.mark_bad()


@case("no-rate-other-model", "no_rate")
def _(c):
    c.purchase(10)
    c.line("set_rates", rates=[{"model_name": "gpt-4o-mini", "operation_type": "chat", "credits_per_unit": "0.01"}])
    c.use(c.tenant, None)
    c.mark_bad()


@case("no-rate-other-operation", "no_rate")
def _(c):
    c.purchase(10)
    c.line("set_rates", rates=[{"model_name": "gpt-4o", "operation_type": "embed", "credits_per_unit": "0.01"}])
    c.use(c.tenant, None)
    c.mark_bad()


@case("no-rate-when-held-usage-is-released", "no_rate",
      note="held for its account, judged when the account opens: no rate then either")
def _(c):
    team(c)
    c.use("late", None)
    c.mark_bad()
    c.open("late", "team", kind="user", after=600)


# --- too_late (older than the tenant clock minus the 35-day horizon)
@case("too-late-purchase-after-40-days", "too_late")
def _(c):
    c.purchase(10)
    c.tick(after=40 * 86400)
    c.purchase(10, ts=iso(c.start + timedelta(seconds=30)))
    c.mark_bad()


@case("too-late-resend-same-content", "too_late",
      note="wire-v1.md: past the horizon the id can no longer be checked, so even the same content is too_late")
def _(c):
    line = c.purchase(10)
    c.tick(after=40 * 86400)
    c.raw_line(line)
    c.mark_bad()


@case("too-late-resend-other-content", "too_late")
def _(c):
    c.purchase(10, id=f"{c.tenant}-p")
    c.tick(after=40 * 86400)
    c.purchase(11, id=f"{c.tenant}-p", ts=iso(c.start + timedelta(seconds=1)))
    c.mark_bad()


@case("too-late-usage-after-usage-40-days-later", "too_late",
      note="the clock is moved by a later usage (same topic, so Kafka keeps the order)")
def _(c):
    c.purchase(100)
    c.use(c.tenant, 1, after=40 * 86400)
    c.use(c.tenant, 1, ts=iso(c.start + timedelta(seconds=30)))
    c.mark_bad()


@case("too-late-open-account", "too_late")
def _(c):
    c.tick(after=36 * 86400)
    c.open("team", ts=iso(c.start + timedelta(seconds=5)))
    c.mark_bad()


# --- ts_in_future (only with a stored time: Kafka's LogAppendTime, or `finops fold --now`)
bad("ts-in-future-tick-2099", "ts_in_future", "tick", ts="2099-06-01T00:00:00Z")
bad("ts-in-future-purchase-last-second-9999", "ts_in_future", "purchase", credits=5, ts="9999-12-31T23:59:59Z")
bad("ts-in-future-open-account-plus-14", "ts_in_future", "open_account", account_id="team", kind="team",
    parent_id="x", ts="2100-01-01T00:00:00+14:00")


@case("ts-in-future-usage-2088", "ts_in_future")
def _(c):
    c.purchase(10)
    c.use(c.tenant, 1, ts="2088-02-29T12:00:00Z")
    c.mark_bad()


# ============================================================================ control tenant

def control() -> tuple[list[bytes], dict]:
    """A control tenant whose good lines are spread between the cases; its expected balances.

    Its lines include inputs wire-v1.md says are *not* bad: label values that are not strings
    or null, null ``usage_labels``, unknown extra fields, an allocate without ``cap``, usage
    that arrives before its account opens (within the grace), and a resend of a purchase that
    spells the same content otherwise (key order, amount, offset, explicit default)."""
    c = Case.__new__(Case)  # not a case: no bad line, not in the manifest's list
    c.name, c.tenant, c.start = "control", "bi-control", BASE - timedelta(days=2)
    c.t, c.n, c.lines, c.bad = 0.0, 0, [], None
    first = c.purchase(1000, id="bi-control-topup")
    c.open("team")
    c.open("user", "team", kind="user")
    c.allocate(None, "team", 300)
    c.allocate("team", "user", 40)
    c.line("bind_key", api_key_id="ctl-key", account_id="user")
    for i in range(30):
        # 45 in all: 40 from user, then 5 from team (fallback)
        c.use("user", "1.5", after=60, usage_labels={"team": "a", "n": i, "flag": True, "gone": None})
        # 7.5 in all, charged to user (its key), paid by team
        c.use(None, "0.25", api_key_id="ctl-key", after=60, usage_labels=None, extra={"kept": "in raw history"})
    c.use("late-user", 2, usage_labels={"env": "prod"})  # before its account: held, applied when it opens
    c.open("late-user", "team", kind="user", after=600)
    body = json.loads(first)  # the same purchase, spelled otherwise: a no-op
    resend = {"credits": "1000.000", "schema_version": 1, "ts": body["ts"].replace("Z", "+00:00"), "id": body["id"],
              "tenant_id": body["tenant_id"], "type": "purchase", "note": "resent"}
    c.raw_line(dumps(resend))
    c.allocate(None, "team", raw("5E0"))  # no cap: the account keeps its cap; an exponent in a JSON number
    c.line("reserve", id="bi-control-hold", account_id="team", credits=10, expires_at="2026-12-01T00:00:00Z")
    c.line("settle", reservation_id="bi-control-hold", credits=4)
    expected = {
        "bi-control": {"available": "695", "consumed": "0", "reserved": "0", "overage": "0"},
        "team": {"available": "246.5", "consumed": "4", "reserved": "0", "overage": "0"},
        "user": {"available": "0", "consumed": "52.5", "reserved": "0", "overage": "0"},
        "late-user": {"available": "0", "consumed": "2", "reserved": "0", "overage": "0"},
    }
    return c.lines, {"purchased": "1000", "accounts": expected}


def main() -> None:
    cases_dir = HERE / "cases"
    cases_dir.mkdir(exist_ok=True)
    for old in cases_dir.glob("*.jsonl"):
        old.unlink()
    manifest = []
    for entry in CASES:
        lines = entry.pop("lines")
        assert all(b"\n" not in line and b"\r" not in line and line == line.strip() and line for line in lines), \
            entry["name"]
        (HERE / entry["file"]).write_bytes(b"\n".join(lines) + b"\n")
        manifest.append(entry)
    lines, expected = control()
    (HERE / "control.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    bad_lines = [(HERE / e["file"]).read_bytes().split(b"\n")[e["bad_line"]] for e in manifest]
    assert len(set(bad_lines)) == len(bad_lines), "bad lines must be distinct"
    doc = {
        "about": "Bad-input corpus (issue 14): every case file holds raw lines of one tenant; line `bad_line` "
                 "(0-based) must be rejected with `reason` and its raw input, every other line accepted. "
                 "See generate.py and tests/integration/test_bad_input_corpus.py.",
        "control": {"file": "control.jsonl", "tenant": "bi-control", **expected},
        "cases": manifest,
    }
    (HERE / "cases.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(manifest)} cases, {len({e['reason'] for e in manifest})} reasons")


if __name__ == "__main__":
    main()
