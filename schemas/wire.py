"""Wire format v1: every input message, decoded straight from bytes with msgspec.

``decode(raw)`` returns a typed message or a :class:`Rejection` with a reason from the
fixed vocabulary in :mod:`finops.schemas.reasons`; it never raises for bad input.
Unknown extra fields are ignored here (raw history keeps them).
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

import msgspec

from . import reasons
from .money import AmountError, Micros, credits_str, to_micros

Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
Threshold = Annotated[int, msgspec.Meta(ge=1, le=1000)]

DEFAULT_THRESHOLDS = (50, 70, 90, 100)


class _Message(msgspec.Struct, frozen=True, tag_field="type", kw_only=True, omit_defaults=True, gc=False):
    """Common fields of every v1 message."""

    id: NonEmpty
    tenant_id: NonEmpty
    ts: Timestamp
    schema_version: Literal[1] = 1


# ----------------------------------------------------------------------------- commands


class Purchase(_Message, tag="purchase", frozen=True, kw_only=True):
    """Credits bought by the tenant: they enter the root pool (the account whose id is the tenant id).

    ``credits`` in micro-credits; at ``expires_at`` (event time) what is left leaves as ``expired``
    (wire-v1.md, "Commands")."""

    credits: Micros
    expires_at: Timestamp | None = None


class OpenAccount(_Message, tag="open_account", frozen=True, kw_only=True):
    """A scoped account under ``parent_id`` (wire-v1.md, "Accounts"); it starts with nothing in it.

    ``fallback`` lets its usage draw from the parent when its own grants run dry. Reopening an
    id is ``account_exists``, an unopened parent ``unknown_parent``."""

    account_id: NonEmpty
    kind: NonEmpty
    parent_id: NonEmpty
    fallback: bool = True
    name: str | None = None


class Recurrence(msgspec.Struct, frozen=True):
    """``{"every": "month", "rollover_pct": 0..100}`` of an ``allocate``: the same amount again each
    calendar month (UTC); of the unspent remainder, up to ``rollover_pct`` % of the amount carries
    over and the rest returns to the parent (wire-v1.md, "Commands")."""

    every: Literal["month"]
    rollover_pct: Percent = 0


class RateLimitParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Addition to wire v1: what the seed's critical action limits (only ``non-prod`` keys for now)."""

    scope: Literal["non-prod"] = "non-prod"
    max_rps: Annotated[int, msgspec.Meta(ge=1)]


class RateLimitAction(msgspec.Struct, frozen=True, tag="rate_limit", tag_field="type", kw_only=True):
    """``{"type": "rate_limit", "params": {"scope": "non-prod", "max_rps": N}}``: when the account's
    critical threshold fires, the keys under it whose registry ``env`` is not ``prod`` are limited."""

    params: RateLimitParams


class NoAction(msgspec.Struct, frozen=True, tag="none", tag_field="type"):
    """``{"type": "none"}``: the account's critical threshold asks for no action (clears one)."""


class Allocate(_Message, tag="allocate", frozen=True, kw_only=True):
    """Credits moved from a parent to its child as a grant (wire-v1.md, "Commands").

    ``credits`` in micro-credits. ``starts_at``/``ends_at`` is the spend window and
    ``expires_at`` the grant's expiry (event time); ``on_expiry`` says whether the remainder
    then leaves as ``expired`` or returns to the parent. ``thresholds`` are percent of the
    period budget at which alerts fire. Refused ``insufficient_funds`` when the parent cannot pay
    it now, else ``not_parent``, ``unknown_account``, ``invalid_window``, ``invalid_amount`` or
    ``invalid_timestamp`` (schemas/reasons.py)."""

    from_account: NonEmpty
    to_account: NonEmpty
    credits: Micros
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    recurrence: Recurrence | None = None
    expires_at: Timestamp | None = None
    on_expiry: Literal["expire", "return"] = "expire"
    # Caps belong to the account (wire-v1.md): given, it sets the account's cap; absent, the
    # account keeps its cap (a new account starts soft).
    cap: Literal["soft", "hard"] | None = None
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS
    # Addition to wire v1: the action of the account's critical (90 %) threshold alert. Given,
    # it sets the account's action; absent, the account keeps it ({"type": "none"} clears it).
    on_critical: RateLimitAction | NoAction | None = None


class Reclaim(_Message, tag="reclaim", frozen=True, kw_only=True):
    """Unspent credits returned from a child to its parent: ``credits`` (micro-credits), or
    everything the child can spend with ``all`` true (wire-v1.md, "Commands")."""

    from_account: NonEmpty
    to_account: NonEmpty
    credits: Micros | None = None
    all: bool = False


class SetMembers(_Message, tag="set_members", frozen=True, kw_only=True):
    """Restricts who may draw from a pool account to ``members`` and their descendants; for anyone
    else the fallback cascade stops below the pool (wire-v1.md, "Commands")."""

    account_id: NonEmpty
    members: tuple[NonEmpty, ...]


class BindKey(_Message, tag="bind_key", frozen=True, kw_only=True):
    """Binds an API key to an account: usage with this key and no ``account_id`` is charged to it.

    The optional tags are the key registry (an addition to wire v1, docs/ledger.md "The key registry"); a later
    ``bind_key`` of the same key replaces its whole entry."""

    api_key_id: NonEmpty
    account_id: NonEmpty
    # Addition to wire v1: the key registry. The tags given here are the key's labels: the
    # ledger stamps them on the key's usage over what the caller sent (a later bind_key of the
    # key replaces its whole entry).
    cost_center: NonEmpty | None = None
    team: NonEmpty | None = None
    project: NonEmpty | None = None
    env: NonEmpty | None = None


KEY_TAGS = ("cost_center", "team", "project", "env")  # the registry tags of a bind_key, in label order


class Reserve(_Message, tag="reserve", frozen=True, kw_only=True):
    """Holds ``credits`` (micro-credits) on an account for an in-flight request; the hold is released
    at ``expires_at`` (event time) unless settled first (wire-v1.md, "Commands")."""

    account_id: NonEmpty
    credits: Micros
    expires_at: Timestamp


class Settle(_Message, tag="settle", frozen=True, kw_only=True):
    """Turns the hold ``reservation_id`` into consumption of ``credits`` (micro-credits) and releases
    the rest. After the hold ended it is still charged, like usage; a second settle of the same
    hold is ``reservation_closed`` (wire-v1.md, "A settle after its hold ended")."""

    reservation_id: NonEmpty
    credits: Micros


class OverrideCap(_Message, tag="override_cap", frozen=True, kw_only=True):
    """Lifts an account's hard cap until ``until`` (event time); needs two distinct ``approvals``
    (compared after NFC, case folding and trimming: wire-v1.md, "Approvers")."""

    account_id: NonEmpty
    until: Timestamp
    approvals: tuple[NonEmpty, ...]


class Tick(_Message, tag="tick", frozen=True, kw_only=True):
    """Only the common fields: advances the tenant's event time so expiries, window ends and monthly
    renewals happen when no other traffic arrives."""


class Price(Decimal):
    """A rate-card price: decoded by ``dec_hook`` into an exact ``Decimal`` of credits per
    unit, from a JSON number (its text) or a string ``[0-9]+(\\.[0-9]{1,12})?`` (wire-v1.md)."""


class Rate(msgspec.Struct, frozen=True):
    """Credits per unit for one model and operation (up to 12 decimals: token prices are tiny)."""

    model_name: NonEmpty
    operation_type: NonEmpty
    credits_per_unit: Price


class SetRates(_Message, tag="set_rates", frozen=True, kw_only=True):
    """Addition to wire v1: the tenant's rate card, used for usage without ``credits_consumed``."""

    rates: tuple[Rate, ...]


class SetPolicy(_Message, tag="set_policy", frozen=True, kw_only=True):
    """Addition to wire v1: tenant settings. A field given sets it; an absent one keeps it.

    ``require_key_registry``: usage whose key has no registry entry (no ``bind_key`` with a
    tag) is still charged, and its ledger entries are flagged ``untagged``."""

    require_key_registry: bool | None = None


# ----------------------------------------------------------------------------- usage


class Usage(_Message, tag="usage", frozen=True, kw_only=True):
    """One metered request, a fact that is never refused for want of funds (wire-v1.md, "Usage").

    ``credits_consumed`` in micro-credits, else priced from the tenant's rate card by
    ``units_consumed``; ``account_id``, else the account bound to ``api_key_id``.
    ``response_latency_ms`` in milliseconds. ``ts`` is event time."""

    api_key_id: NonEmpty
    model_name: NonEmpty
    operation_type: NonEmpty
    units_consumed: Annotated[float, msgspec.Meta(ge=0)]
    account_id: NonEmpty | None = None
    credits_consumed: Micros | None = None
    # Labels never refuse usage (wire-v1.md, "Labels never refuse usage"): any JSON value is
    # read, and ``decode`` keeps a non-string one as its JSON text, drops a null one, and
    # reads missing, null (or non-object) ``usage_labels`` as no labels.
    usage_labels: Any = {}
    response_latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    error_code: str | None = None


Command = Union[
    Purchase, OpenAccount, Allocate, Reclaim, SetMembers, BindKey, Reserve, Settle,
    OverrideCap, Tick, SetRates, SetPolicy,
]
Message = Union[Usage, Command]

COMMAND_TYPES = frozenset(t.__struct_config__.tag for t in Command.__args__)  # type: ignore[attr-defined]
MESSAGE_TYPES = COMMAND_TYPES | {"usage"}


class Rejection(msgspec.Struct, frozen=True):
    """An input that was refused, as published on ``finops.rejected.v1``."""

    id: str | None
    tenant_id: str | None
    reason: str
    detail: str = ""
    input: str = ""  # the raw message as text (invalid UTF-8 replaced; then see input_base64)
    input_base64: str | None = None  # the exact raw bytes, when they are not valid UTF-8


# ----------------------------------------------------------------------------- decode / encode


_PRICE = re.compile(r"[0-9]+(\.[0-9]{1,12})?")


def dec_hook(kind: type, obj: object) -> object:
    """msgspec's decode hook: a wire amount to :class:`Micros` (a bool is refused), a rate-card price
    to :class:`Price`. Raises :class:`AmountError`, which the decoder reports as a validation error."""
    if kind is Micros:
        if type(obj) is bool:
            raise AmountError("amount must be a number or a decimal string, not bool")
        return to_micros(obj)
    if kind is Price:
        return to_price(obj)
    raise NotImplementedError(kind)


def to_price(obj: object) -> Price:
    """A rate-card price in credits per unit, exactly (at most 12 decimals). Raises AmountError."""
    if type(obj) is str:
        if not (obj.isascii() and _PRICE.fullmatch(obj)):
            raise AmountError(f"rate amount {obj!r} is not a decimal string like 0.000002 (at most 12 decimals)")
        return Price(obj)
    if type(obj) is int:
        price = Decimal(obj)
    elif type(obj) is Decimal:
        price = obj
    else:
        raise AmountError(f"rate amount must be a number or a decimal string, not {type(obj).__name__}")
    if not price.is_finite() or price < 0 or price and not -12 <= price.adjusted() <= 18 or \
            price != price.quantize(Decimal(1).scaleb(-12)):
        raise AmountError(f"rate amount {price} must be finite, non-negative, at most 12 decimals")
    return Price(price)


def enc_hook(obj: object) -> object:
    """msgspec's encode hook: :class:`Micros` back to a decimal credit string, a :class:`Price` to
    its shortest decimal text."""
    if type(obj) is Micros or isinstance(obj, Micros):
        return credits_str(obj)
    if isinstance(obj, Price):
        return format(obj.normalize(), "f")  # "0.50" and 0.5 are one price: one spelling
    raise NotImplementedError(type(obj))


# JSON numbers for amounts are read from their text (float_hook reaches the Micros hook as a
# Decimal): 8600000000.000001 stays exact. Typed float fields (units, latency) stay floats.
_decoder = msgspec.json.Decoder(Message, dec_hook=dec_hook, float_hook=Decimal)
_label_encoder = msgspec.json.Encoder(decimal_format="number")
_encoder = msgspec.json.Encoder(enc_hook=enc_hook)
_loose = msgspec.json.Decoder(float_hook=Decimal)


_UTC = timezone.utc
_TIME_FIELDS = {kind: tuple(f for f in kind.__struct_fields__ if f in ("ts", "expires_at", "starts_at", "ends_at",
                                                                       "until"))
                for kind in Message.__args__}  # type: ignore[attr-defined]
_TIME_NAMES_OF = {kind.__struct_config__.tag: names for kind, names in _TIME_FIELDS.items()}  # by "type"


def _in_utc(message: Message) -> Message:
    """The message with every time in UTC (wire-v1.md, "Time is UTC"): the same instant
    written with another offset is the same message, in the same calendar month."""
    changes = {}
    for name in _TIME_FIELDS[type(message)]:
        value = getattr(message, name)
        if value is not None and value.tzinfo is not _UTC:
            changes[name] = value.astimezone(_UTC)
    return msgspec.structs.replace(message, **changes) if changes else message


# Time fields: digits past the microsecond are cut, never rounded (wire-v1.md, "Time is
# UTC"; msgspec would round 23:59:59.9999999 into the next day, and the next month), and an
# offset like +0100, which RFC 3339 does not allow (it needs +01:00), is refused. Only the
# time fields are looked at: a label or an id that looks like a time is left as it is.
_ODD_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:(\.\d{7,})|(?:\.\d{1,6})?([+-]\d{4})\Z)")
_TS_KEY = b'"ts"'
_TS_AT = b'"ts":"'
_TIME_LOOSE = msgspec.json.Decoder(float_hook=Decimal)
_LOOSE_ENCODER = msgspec.json.Encoder(decimal_format="number")


def _odd(text: str) -> tuple[str | None, str | None]:
    """(the time cut at the microsecond, or None; an offset without colon, or None) of a time's text."""
    odd = _ODD_TIME.match(text)
    if odd is None:
        return None, None
    if odd.group(2):
        return None, odd.group(2)
    return text[:odd.start(1) + 7] + text[odd.end(1):], None


def _plain_ts(data: bytes) -> bool:
    """Is ``ts`` written the usual way (``"ts":"2026-11-30T10:00:00Z"``, or with six decimals), once,
    and no escape anywhere that could spell another key ``ts``? Then a usage needs no other look."""
    at = data.find(_TS_AT)
    if at < 0:
        return False
    end = data.find(b'"', at + 6)
    size = end - at - 6
    return data[end - 1] == 90 and (size == 20 or size == 27 and data[at + 25] == 46) and \
        b"\\" not in data and data.count(_TS_KEY) == 1  # 90: "Z", 46: "."


def _time_texts(raw: bytes | str) -> bytes | str | Rejection:
    """``raw`` with every time field's digits past the microsecond cut (re-encoded from a plain
    JSON read when one is), or a Rejection for an offset without colon."""
    try:
        loose = _TIME_LOOSE.decode(raw)
    except msgspec.DecodeError:
        return raw  # the typed decode says what is wrong with it
    if type(loose) is not dict:
        return raw
    cuts: dict[str, tuple[str, str]] = {}
    tag = loose.get("type")
    for name in _TIME_NAMES_OF.get(tag, ()) if type(tag) is str else ():  # its type's time fields, not extras
        value = loose.get(name)
        if type(value) is str:
            cut, offset = _odd(value)
            if offset is not None:
                return _no_colon(raw, offset, name)
            if cut is not None:
                cuts[name] = (value, cut)
    if not cuts:
        return raw
    # In place when each time is spelt once and plainly, so the rest (duplicate keys
    # included) reads as before; otherwise the plain JSON read, re-encoded with the cuts.
    data = raw if type(raw) is bytes else raw.encode()
    for value, cut in cuts.values():
        quoted = _LOOSE_ENCODER.encode(value)
        if data.count(quoted) != 1:
            loose.update({name: cut for name, (_value, cut) in cuts.items()})
            return _LOOSE_ENCODER.encode(loose)
        data = data.replace(quoted, _LOOSE_ENCODER.encode(cut))
    return data


def _no_colon(raw: bytes | str, offset: str, name: str) -> Rejection:
    return reject_unreadable(raw, msgspec.ValidationError(
        f"Invalid RFC3339 encoded datetime: offset {offset!r} has no colon - at `$.{name}`"))


def _typed(text: bytes | str, raw: bytes | str) -> Message | Rejection:
    """``text`` read as a v1 message, or the Rejection of ``raw`` that it cannot be."""
    try:
        return _decoder.decode(text)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return reject_unreadable(raw, exc)


def decode(raw: bytes | str) -> Message | Rejection:
    """Decode one v1 message; bad input becomes a :class:`Rejection`, never an exception.

    Every time of the result is in UTC, whatever offset it was written with. JSON nested
    deeper than Python's recursion limit (about 1,000 levels) is refused ``invalid``."""
    try:
        return _decode(raw)
    except RecursionError:
        return Rejection(id=None, tenant_id=None, reason=reasons.INVALID,
                         detail="JSON nested too deeply to read (about 1,000 levels at most)",
                         **raw_fields(raw if type(raw) is bytes else raw.encode("utf-8", "replace")))


def _decode(raw: bytes | str) -> Message | Rejection:
    data = raw
    try:
        if type(raw) is bytes:
            if not raw.isascii():
                raw.decode("utf-8")
        else:
            data = raw.encode()
    except UnicodeError as exc:  # anywhere, unknown fields too: not JSON (RFC 8259 is UTF-8)
        return Rejection(id=None, tenant_id=None, reason=reasons.NOT_JSON, detail=f"not UTF-8: {exc}",
                         **raw_fields(raw if type(raw) is bytes else raw.encode("utf-8", "replace")))
    text = raw
    if not _plain_ts(data):
        text = _time_texts(raw)
        if type(text) is Rejection:
            return text
    message = _typed(text, raw)
    if type(message) is Usage:
        if message.ts.tzinfo is _UTC and 1970 <= message.ts.year <= 9999 and _plain(message.usage_labels):
            return message  # the common case, checked first
    elif type(message) is Rejection:
        return message
    elif text is raw:  # a command's other time fields (expires_at, until, ...) are looked at too
        text = _time_texts(raw)
        if type(text) is Rejection:
            return text
        if text is not raw:
            message = _typed(text, raw)
            if type(message) is Rejection:
                return message
    try:
        message = _in_utc(message)
    except (OverflowError, ValueError) as exc:  # an offset that moves the time out of years 1..9999
        return reject_unreadable(raw, msgspec.ValidationError(f"datetime out of range in UTC ({exc}) - at `$.ts`"))
    for name in _TIME_FIELDS[type(message)]:
        value = getattr(message, name)
        if value is not None and not 1970 <= value.year <= 9999:
            return reject_unreadable(raw, msgspec.ValidationError(
                f"datetime {value.isoformat()} is outside the years 1970..9999 - at `$.{name}`"))
    if type(message) is Usage and not _plain(message.usage_labels):
        message = msgspec.structs.replace(message, usage_labels=_label_texts(message.usage_labels))
    return message


def _plain(labels) -> bool:
    """Are these labels already strings only (nothing to normalise)?"""
    if type(labels) is not dict:
        return False
    for value in labels.values():
        if type(value) is not str:
            return False
    return True


def _label_texts(labels) -> dict[str, str]:
    """Labels as strings: a non-string value as its JSON text, a null one dropped; no object, no labels."""
    if not labels or type(labels) is not dict:
        return {}
    return {key: value if type(value) is str else _label_encoder.encode(value).decode()
            for key, value in labels.items() if value is not None}


def encode(message: Message) -> bytes:
    """A v1 message as JSON bytes, amounts as decimal credit strings: ``decode(encode(m)) == m``."""
    return _encoder.encode(message)


def raw_fields(raw: bytes | str, limit: int = 100_000) -> dict:
    """``input`` (and ``input_base64`` for bytes that are not UTF-8) of a :class:`Rejection`."""
    if isinstance(raw, str):
        return {"input": raw[:limit]}
    try:
        return {"input": raw.decode("utf-8")[:limit]}
    except UnicodeDecodeError:
        return {"input": raw.decode("utf-8", errors="replace")[:limit],
                "input_base64": base64.b64encode(raw[:limit]).decode()}


def rejection(message: Message, reason: str, detail: str, raw: bytes | str) -> Rejection:
    """The :class:`Rejection` of a message that was read but refused (by the ledger): its id and
    tenant, ``reason`` (the vocabulary of schemas/reasons.py) with ``detail``, and the raw input
    as received (:func:`raw_fields`). An unreadable input's is :func:`reject_unreadable`'s."""
    return Rejection(id=message.id, tenant_id=message.tenant_id, reason=reason, detail=detail, **raw_fields(raw))


def parse_time(text: str) -> datetime | None:
    """A time written as wire v1 writes them (RFC 3339 with an offset), in UTC; None when it is not
    one. The same rules as a message's ``ts`` (read by :func:`decode`, so the two never differ)."""
    message = decode(msgspec.json.encode({"type": "tick", "id": "-", "tenant_id": "-", "ts": text}))
    return None if isinstance(message, Rejection) else message.ts


def format_time(t: datetime | float, timespec: str = "microseconds") -> str:
    """A time as wire v1 writes it: RFC 3339 in UTC with ``Z`` (what :func:`parse_time` reads).

    ``t`` is an aware datetime (a naive one is taken as UTC) or epoch seconds. ``timespec`` is
    :meth:`datetime.isoformat`'s: ``"microseconds"`` (``2026-11-30T14:00:00.000000Z``, the
    messages the generators write), ``"seconds"`` (``2026-11-30T14:00:00Z``: an alert's hour
    period, a tick), ``"auto"`` (digits after the second only when there are any: the API).
    """
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, timezone.utc)
    elif t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def reject_unreadable(raw: bytes | str, exc: Exception) -> Rejection:
    """Classify a decoding error into a reason; keep id and tenant when they can be read."""
    ident: str | None = None
    tenant: str | None = None
    try:
        loose = _loose.decode(raw)
    except msgspec.DecodeError:
        loose = reasons.NOT_READ
    if isinstance(loose, dict):
        ident = loose.get("id") if isinstance(loose.get("id"), str) else None
        tenant = loose.get("tenant_id") if isinstance(loose.get("tenant_id"), str) else None
    reason = reasons.classify_decode_error(exc, loose)
    return Rejection(id=ident, tenant_id=tenant, reason=reason, detail=str(exc), **raw_fields(raw))
