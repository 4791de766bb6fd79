"""The ledger state's changelog records: the key layout, the values' encoding, and what a
transaction changed. Pure (no RocksDB, no Kafka): the plan (:mod:`.plan`) drains a tenant's
changes into records here, the runner produces them to ``<ledger group>-state-changelog`` and,
after the commit, the store (:mod:`.store`) writes them to RocksDB; the live view
(``projections/live.py``) reads them back with :func:`replica_change`.

Key layout: ``kind (1 byte) + len(tenant) (2 bytes) + tenant (UTF-8) + rest``, one key per
piece of a tenant's state (:data:`KINDS`); values are msgpack (msgspec). A record is
``(key, value)``, the value None for a removed key (a tombstone on the compacted topic).
"""

from __future__ import annotations

import hashlib
import struct
from datetime import datetime
from decimal import Decimal

import msgspec

from .state import Account, Held, Hold, Policy, Recurring, TenantState, Totals

HEADER = b"T"  # clock, seq, totals, pruned_at
ACCOUNT = b"A"  # one account with its grants
HOLD = b"H"
RECURRING = b"C"
KEY = b"K"  # api key -> account id (str), or a KeyEntry when the key has registry tags
RATES = b"R"  # the whole rate card of a tenant (configuration-sized)
TIMER = b"M"  # rest: event time in µs (8 bytes, biased) + seq (8 bytes): ordered
HELD = b"P"  # rest: seq (8 bytes)
POLICY = b"Y"  # the tenant's settings (set_policy)
SPEND = b"S"  # rest: "<account id>\x1f<hour start>": usage spend not yet published on finops.spend.v1
IDS = b"I"  # rest: BLAKE2b-128 of the message id
CLOSED = b"X"  # rest: BLAKE2b-128 of the hold id
INDEX = b"x"  # local only, not in the changelog: (memory kind, event time µs, digest) for pruning
KINDS = (HEADER, ACCOUNT, HOLD, RECURRING, KEY, RATES, POLICY, TIMER, HELD, SPEND, IDS, CLOSED)
TIME_BIAS = 1 << 62  # µs since 1970 + bias: sortable big-endian for any year msgspec can read


class KeyEntry(msgspec.Struct, frozen=True):
    """A KEY value of a key with registry tags. A key without tags is stored as its account id
    alone, as before the registry: an older store reads, and so does an older reader."""

    account_id: str
    tags: dict[str, str]


# The values' codec: encode any value; decode each kind's (a KEY value: decode_key).
encode = msgspec.msgpack.Encoder().encode
_decode_key_value = msgspec.msgpack.Decoder(str | KeyEntry).decode
decode_policy = msgspec.msgpack.Decoder(Policy).decode
decode_header = msgspec.msgpack.Decoder(tuple[datetime | None, int, Totals, float]).decode
decode_account = msgspec.msgpack.Decoder(Account).decode
decode_hold = msgspec.msgpack.Decoder(Hold).decode
decode_recurring = msgspec.msgpack.Decoder(Recurring).decode
decode_rates = msgspec.msgpack.Decoder(dict[str, Decimal]).decode
decode_timer = msgspec.msgpack.Decoder(tuple[datetime, int, str, str, str]).decode
decode_held = msgspec.msgpack.Decoder(Held).decode
decode_spend = msgspec.msgpack.Decoder(list[int | float]).decode
decode_memory = msgspec.msgpack.Decoder(tuple[int | str, float]).decode  # an id memory's (value, epoch s)
_u64 = struct.Struct(">Q")


def tenant_prefix(kind: bytes, tenant_id: str) -> bytes:
    """The first bytes of every key of one kind of one tenant."""
    t = tenant_id.encode("utf-8", "surrogatepass")
    return kind + len(t).to_bytes(2, "big") + t


def split_key(key: bytes) -> tuple[bytes, str, bytes]:
    """(kind, tenant id, rest) of a store key."""
    n = int.from_bytes(key[1:3], "big")
    return key[:1], key[3:3 + n].decode("utf-8", "surrogatepass"), key[3 + n:]


def digest(ident: str) -> bytes:
    """The 16-byte BLAKE2b digest under which an id is remembered. Two of a tenant's ids share
    one with probability about n^2 / 2^129 for n ids (1e-20 for three billion)."""
    return hashlib.blake2b(ident.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def time_key(t: datetime | float) -> bytes:
    """8 bytes that sort as the time does: microseconds since 1970 (event time), biased, big-endian."""
    seconds = t.timestamp() if isinstance(t, datetime) else t
    return _u64.pack(int(seconds * 1_000_000) + TIME_BIAS)


def index_key(kind: bytes, tenant_id: str, ts: float, d: bytes) -> bytes:
    """The local time-index key of an id memory's entry (digest ``d`` of ``kind``, event time ``ts``
    in epoch seconds): the store prunes old ids in time order through it."""
    return tenant_prefix(INDEX, tenant_id) + kind + time_key(ts) + d


def drain_changes(state: TenantState) -> tuple[list[tuple[bytes, bytes | None]], list[tuple[bytes, bytes | None]]]:
    """The keys ``state`` changed since the last drain, as (key, value or None for removed).

    Returns (changes, local): ``changes`` go to the changelog and the store, ``local`` (the
    time index of the id memories) to the store only. Clears the change logs; the accounts
    that changed stay in ``state.balance_outbox`` for the runner to publish their balances.
    """
    t = state.tenant_id
    changes: list[tuple[bytes, bytes | None]] = [
        (tenant_prefix(HEADER, t), encode((state.clock, state.seq, state.totals, state.pruned_at)))]
    accounts = state.accounts
    prefix = tenant_prefix(ACCOUNT, t)
    for account_id in state.balance_outbox:
        changes.append((prefix + account_id.encode("utf-8", "surrogatepass"), encode(accounts[account_id])))
    for kind, ident in state.dirty:
        if kind == "hold":
            value = state.holds.get(ident)
            key = tenant_prefix(HOLD, t) + ident.encode("utf-8", "surrogatepass")
        elif kind == "recurring":
            value = state.recurring.get(ident)
            key = tenant_prefix(RECURRING, t) + ident.encode("utf-8", "surrogatepass")
        elif kind == "key":
            value = state.keys.get(ident)
            tags = state.key_tags.get(ident)
            if value is not None and tags:
                value = KeyEntry(value, tags)
            key = tenant_prefix(KEY, t) + ident.encode("utf-8", "surrogatepass")
        elif kind == "policy":
            value = state.policy
            key = tenant_prefix(POLICY, t)
        else:  # rates
            value = state.rates
            key = tenant_prefix(RATES, t)
        changes.append((key, None if value is None else encode(value)))
    prefix = tenant_prefix(TIMER, t)
    for (when, seq), timer in state.timer_changes.items():
        changes.append((prefix + time_key(when) + _u64.pack(seq), None if timer is None else encode(timer)))
    prefix = tenant_prefix(HELD, t)
    for seq, held in state.held_changes.items():
        changes.append((prefix + _u64.pack(seq), None if held is None else encode(held)))
    if state.spend_outbox_dirty:
        prefix = tenant_prefix(SPEND, t)
        spend, stored = state.spend_outbox, state.spend_outbox_stored
        for key in state.spend_outbox_dirty:
            pending = spend.get(key)
            if pending is not None:
                changes.append((prefix + key.encode("utf-8", "surrogatepass"), encode(pending)))
                stored.add(key)
            elif key in stored:  # published since it was stored
                changes.append((prefix + key.encode("utf-8", "surrogatepass"), None))
                stored.discard(key)
        state.spend_outbox_dirty = set()
    local: list[tuple[bytes, bytes | None]] = []
    for memory in (state.ids, state.closed_holds):
        drain = getattr(memory, "drain", None)  # an id memory in a store has writes to drain (store.StoredIds)
        if drain is not None:
            drain(changes, local)
    state.dirty = set()
    state.timer_changes = {}
    state.held_changes = {}
    return changes, local


# What a read replica of the ledger (``finops serve``'s live view) keeps of the changelog: the
# kinds a balance or an entitlement check reads. Id memories, timers, held usage and pending
# spend are the processor's business; a replica skips them by their first byte.
REPLICA_KINDS = frozenset((HEADER, ACCOUNT, KEY, RATES, HOLD, RECURRING))
_REPLICA_FIRST = frozenset(k[0] for k in REPLICA_KINDS)


def decode_key(value: bytes) -> tuple[str, dict[str, str]]:
    """(account id, registry tags) of a KEY value: a plain account id (no tags) or a :class:`KeyEntry`."""
    decoded = _decode_key_value(value)
    if type(decoded) is str:
        return decoded, {}
    return decoded.account_id, decoded.tags


def key_account(value: bytes) -> str:
    """The account id of a KEY value (what a read replica keeps of it)."""
    return decode_key(value)[0]


def replica_change(key: bytes, value: bytes | None) -> tuple[bytes, str, str, object] | None:
    """One changelog record as a read replica applies it, or None for a kind it skips.

    Returns (kind, tenant id, the rest of the key as text, the decoded value or None for a
    tombstone): HEADER's value is (clock, seq, :class:`Totals`, pruned_at); ACCOUNT's an
    :class:`Account` (rest: its id); KEY's the account id (rest: the api key id); RATES's the
    rate card; HOLD's a :class:`Hold`; RECURRING's a :class:`Recurring`. Raises
    ``msgspec.DecodeError`` for a value this version cannot read.
    """
    if not key or key[0] not in _REPLICA_FIRST:
        return None
    kind, tenant_id, rest = split_key(key)
    if value is None:
        return kind, tenant_id, rest.decode("utf-8", "surrogatepass"), None
    if kind == ACCOUNT:
        decoded: object = decode_account(value)
    elif kind == HEADER:
        decoded = decode_header(value)
    elif kind == KEY:
        decoded = key_account(value)
    elif kind == RATES:
        decoded = decode_rates(value)
    elif kind == HOLD:
        decoded = decode_hold(value)
    else:
        decoded = decode_recurring(value)
    return kind, tenant_id, rest.decode("utf-8", "surrogatepass"), decoded
