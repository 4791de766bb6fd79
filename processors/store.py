"""The ledger's state store: one RocksDB store per input partition, backed by a changelog topic.

The design Kafka Streams and quix-streams use (design.md, "Exactly once, end to end"):

* **State store.** Each input partition the ledger owns has a local RocksDB store
  (``rocksdict``) under ``<data dir>/ledger-state/<consumer group>/<instance>/p<N>``. It holds
  every tenant of that partition, one key per piece of state (:data:`KINDS`): the tenant's
  header (clock, sequence, totals), each account with its grants, each hold, recurring
  allocation, key binding, timer and held usage, the usage spend not yet published on
  ``finops.spend.v1``, the rate card, and the id memories (a
  16-byte BLAKE2b digest of each id with its content fingerprint and event time).
* **Changelog.** Every transaction of the ledger also produces each key it changed, with its
  new value (or a tombstone), to the compacted changelog topic
  ``<consumer group>-state-changelog``, partition N, in the same Kafka transaction as its
  outputs and input offsets. What a transaction writes grows with what it changed, never
  with a tenant's history.
* **Checkpoint.** After the transaction commits, the same changes go to the local store in
  one atomic write batch together with the *checkpoint*: the changelog offset up to which
  the store holds everything (``_CHECKPOINT``).
* **Restore.** Before an assigned partition is processed, its store is brought up to the
  changelog's end: records from the checkpoint on are applied (all of them for a new or
  lost store). A store whose checkpoint lies beyond the changelog's end (the topic was
  recreated) is wiped and restored from offset 0. Applying a changelog record twice is
  harmless: each holds a key's whole value.

Only the tenants' small state (accounts, holds, timers, ...) is loaded into memory; the id
memories stay on disk and are read per lookup (:class:`StoredIds`), so memory does not
grow with traffic. Key layout: ``kind (1 byte) + len(tenant) (2 bytes) + tenant (UTF-8) + rest``.
"""

from __future__ import annotations

import heapq
import hashlib
import logging
import os
import shutil
import struct
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Iterator

import msgspec
from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

from .state import Account, Held, Hold, Policy, Recurring, Rules, TenantState, Totals

log = logging.getLogger("finops.ledger.store")

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
_CHECKPOINT = b"\x00checkpoint"  # local only: the next changelog offset not yet in the store, and when written
# A store last written longer ago than this (wall time) is not trusted to catch up from its
# checkpoint: compaction may have removed tombstones it never saw (the changelog keeps them
# for delete.retention.ms, 7 days: CHANGELOG_TOMBSTONES_MS in schemas/topics.py).
TRUST_CHECKPOINT_S = 3 * 86400.0
_TIME_BIAS = 1 << 62  # µs since 1970 + bias: sortable big-endian for any year msgspec can read

class KeyEntry(msgspec.Struct, frozen=True):
    """A KEY value of a key with registry tags. A key without tags is stored as its account id
    alone, as before the registry: an older store reads, and so does an older reader."""

    account_id: str
    tags: dict[str, str]


_enc = msgspec.msgpack.Encoder()
_key = msgspec.msgpack.Decoder(str | KeyEntry)
_policy = msgspec.msgpack.Decoder(Policy)
_header = msgspec.msgpack.Decoder(tuple[datetime | None, int, Totals, float])
_account = msgspec.msgpack.Decoder(Account)
_hold = msgspec.msgpack.Decoder(Hold)
_recurring = msgspec.msgpack.Decoder(Recurring)
_rates = msgspec.msgpack.Decoder(dict[str, Decimal])
_timer = msgspec.msgpack.Decoder(tuple[datetime, int, str, str, str])
_held = msgspec.msgpack.Decoder(Held)
_spend = msgspec.msgpack.Decoder(list[int | float])
_memory = msgspec.msgpack.Decoder(tuple[int | str, float])
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


def _time_key(t: datetime | float) -> bytes:
    seconds = t.timestamp() if isinstance(t, datetime) else t
    return _u64.pack(int(seconds * 1_000_000) + _TIME_BIAS)


def _index_key(kind: bytes, tenant_id: str, ts: float, d: bytes) -> bytes:
    return tenant_prefix(INDEX, tenant_id) + kind + _time_key(ts) + d


class StoredIds:
    """An id memory of one tenant in a partition store: this transaction's writes over RocksDB.

    The interface of :class:`.state.MemoryIds` (``get``, item assignment, ``pop``,
    ``prune``): ``id -> (value, event time as epoch seconds)``. Writes stay in ``overlay``
    until the runner drains them into the changelog and, after the commit, the store.
    """

    __slots__ = ("db", "tenant_id", "kind", "prefix", "overlay", "index_removed", "_last")

    def __init__(self, db: Rdict, tenant_id: str, kind: bytes) -> None:
        self.db = db
        self.tenant_id = tenant_id
        self.kind = kind
        self.prefix = tenant_prefix(kind, tenant_id)
        self.overlay: dict[bytes, tuple | None] = {}  # digest -> value, None: removed
        self.index_removed: list[bytes] = []
        self._last: tuple[str, bytes] = ("", b"")  # the last id and its digest: a lookup, then a write

    def _digest(self, ident: str) -> bytes:
        """``digest(ident)``, computed once for a lookup and the write that follows it."""
        last = self._last
        if last[0] == ident and last[1]:
            return last[1]
        d = digest(ident)
        self._last = (ident, d)
        return d

    def get(self, ident: str, default=None):
        """``(value, event time as epoch s)`` of ``ident``: this transaction's write if any, else RocksDB;
        ``default`` when it is not remembered."""
        d = self._digest(ident)
        if d in self.overlay:
            value = self.overlay[d]
            return default if value is None else value
        raw = self.db.get(self.prefix + d)
        return default if raw is None else _memory.decode(raw)

    def __setitem__(self, ident: str, value: tuple) -> None:
        self.overlay[self._digest(ident)] = value

    def pop(self, ident: str, default=None):
        """Forget ``ident`` (in this transaction); what it held, or ``default``."""
        value = self.get(ident, default)
        self.overlay[self._digest(ident)] = None
        return value

    def prune(self, before: float) -> None:
        """Remove entries older than ``before`` (epoch s), found through the local time index."""
        start = tenant_prefix(INDEX, self.tenant_id) + self.kind
        stop = start + _time_key(before)
        for key in self.db.keys(from_key=start):
            if key >= stop or not key.startswith(start):
                break
            self.index_removed.append(key)
            d = key[len(start) + 8:]
            current = self.get_digest(d)
            if current is not None and current[1] < before:
                self.overlay[d] = None

    def get_digest(self, d: bytes):
        """The entry of a 16-byte id digest (this transaction's write, else RocksDB), or None."""
        if d in self.overlay:
            return self.overlay[d]
        raw = self.db.get(self.prefix + d)
        return None if raw is None else _memory.decode(raw)

    def drain(self, changes: list, local: list) -> None:
        """Move this transaction's writes to ``changes`` (changelog and store) and ``local`` (store only)."""
        prefix = self.prefix
        for d, value in self.overlay.items():
            if value is None:
                changes.append((prefix + d, None))
            else:
                changes.append((prefix + d, _enc.encode(value)))
                local.append((_index_key(self.kind, self.tenant_id, value[1], d), b""))
        for key in self.index_removed:
            local.append((key, None))
        self.overlay = {}
        self.index_removed = []

    def discard(self) -> None:
        """Drop this transaction's writes without storing them (the store keeps what it had)."""
        self.overlay = {}
        self.index_removed = []


def drain_changes(state: TenantState) -> tuple[list[tuple[bytes, bytes | None]], list[tuple[bytes, bytes | None]]]:
    """The keys ``state`` changed since the last drain, as (key, value or None for removed).

    Returns (changes, local): ``changes`` go to the changelog and the store, ``local`` (the
    time index of the id memories) to the store only. Clears the change logs; the accounts
    that changed stay in ``state.balance_outbox`` for the runner to publish their balances.
    """
    t = state.tenant_id
    changes: list[tuple[bytes, bytes | None]] = [
        (tenant_prefix(HEADER, t), _enc.encode((state.clock, state.seq, state.totals, state.pruned_at)))]
    accounts = state.accounts
    prefix = tenant_prefix(ACCOUNT, t)
    for account_id in state.balance_outbox:
        changes.append((prefix + account_id.encode("utf-8", "surrogatepass"), _enc.encode(accounts[account_id])))
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
        changes.append((key, None if value is None else _enc.encode(value)))
    prefix = tenant_prefix(TIMER, t)
    for (when, seq), timer in state.timer_changes.items():
        changes.append((prefix + _time_key(when) + _u64.pack(seq), None if timer is None else _enc.encode(timer)))
    prefix = tenant_prefix(HELD, t)
    for seq, held in state.held_changes.items():
        changes.append((prefix + _u64.pack(seq), None if held is None else _enc.encode(held)))
    if state.spend_outbox_dirty:
        prefix = tenant_prefix(SPEND, t)
        spend, stored = state.spend_outbox, state.spend_outbox_stored
        for key in state.spend_outbox_dirty:
            pending = spend.get(key)
            if pending is not None:
                changes.append((prefix + key.encode("utf-8", "surrogatepass"), _enc.encode(pending)))
                stored.add(key)
            elif key in stored:  # published since it was stored
                changes.append((prefix + key.encode("utf-8", "surrogatepass"), None))
                stored.discard(key)
        state.spend_outbox_dirty = set()
    local: list[tuple[bytes, bytes | None]] = []
    for memory in (state.ids, state.closed_holds):
        if isinstance(memory, StoredIds):
            memory.drain(changes, local)
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
    decoded = _key.decode(value)
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
        decoded: object = _account.decode(value)
    elif kind == HEADER:
        decoded = _header.decode(value)
    elif kind == KEY:
        decoded = key_account(value)
    elif kind == RATES:
        decoded = _rates.decode(value)
    elif kind == HOLD:
        decoded = _hold.decode(value)
    else:
        decoded = _recurring.decode(value)
    return kind, tenant_id, rest.decode("utf-8", "surrogatepass"), decoded


# One block cache for every store of the process, holding data blocks and the index and
# Bloom-filter blocks too, so that memory stays bounded however many ids the stores keep
# (RocksDB would otherwise keep every file's filter in memory: about 3 bytes per id).
BLOCK_CACHE_BYTES = 128 * 1024 * 1024
_block_cache: Cache | None = None


def store_options() -> Options:
    """RocksDB options of every partition store (raw bytes, Bloom filters, bounded memory)."""
    global _block_cache
    if _block_cache is None:
        _block_cache = Cache(BLOCK_CACHE_BYTES)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # most id lookups are misses (a new request id)
    table.set_block_cache(_block_cache)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    # Partitioned index and filters: a big file's one filter block (megabytes) would not fit a
    # shard of the cache and be read again on every lookup (measured: 40x slower lookups past
    # about 1.7 million ids in one store); partitions of it do, with the top level pinned.
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_pin_top_level_index_and_filter(True)
    options.set_block_based_table_factory(table)
    # Memory per store: up to two 16 MB memtables (RocksDB's default is 64 MB each, which with a
    # store per partition would dominate the ledger's memory).
    options.set_write_buffer_size(16 * 1024 * 1024)
    options.set_max_write_buffer_number(2)
    return options


class PartitionStore:
    """The local RocksDB store of one input partition (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # The options again for the existing column family: rocksdict would otherwise reopen it
        # with defaults (no Bloom filter).
        self.db = Rdict(str(path), store_options(), column_families={"default": store_options()})
        options = WriteOptions()
        # Write-ahead log on, not synced: a killed process loses nothing (the OS holds the log),
        # so a warm restart replays only what the changelog got after the last write. A machine
        # crash may lose the unsynced tail: the changelog is the durable copy, and a batch is
        # atomic, so the checkpoint never runs ahead of the data.
        options.sync = False
        self.db.set_write_options(options)

    @classmethod
    def open(cls, base: Path, partition: int) -> PartitionStore:
        """The store of ``partition`` under ``base``; a fresh private one if another process holds it
        (a frozen instance with the same instance id): that one is restored from the changelog."""
        path = base / f"p{partition}"
        try:
            return cls(path)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises a bare Exception for a held lock
            if "lock" not in str(exc).lower():
                raise
            private = base / f"p{partition}.{os.getpid()}"
            shutil.rmtree(private, ignore_errors=True)
            log.warning("state store %s is locked by another process; restoring into %s", path, private)
            store = cls(private)
            store.private = True
            return store

    private = False

    def close(self) -> None:
        """Close RocksDB; a private copy (made while another process held the store) is removed."""
        self.db.close()
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)

    def wipe(self) -> None:
        """Remove everything (the changelog was recreated: restore from its start)."""
        self.db.close()
        Rdict.destroy(str(self.path), store_options())
        self.__init__(self.path)

    # ------------------------------------------------------------------ checkpoint and writes

    @property
    def checkpoint(self) -> int:
        """The changelog offset up to which this store holds every change (0: nothing)."""
        raw = self.db.get(_CHECKPOINT)
        return 0 if raw is None else _u64.unpack(raw[:8])[0]

    def checkpoint_age(self) -> float:
        """Wall seconds since the checkpoint was written (infinite when there is none)."""
        raw = self.db.get(_CHECKPOINT)
        if raw is None or len(raw) < 16:
            return float("inf")
        return max(time.time() - _u64.unpack(raw[8:16])[0] / 1000, 0.0)

    def write(self, changes: Iterable[tuple[bytes, bytes | None]], checkpoint: int | None) -> None:
        """Apply committed changes atomically, with the changelog position they reach."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if checkpoint is not None:
            batch.put(_CHECKPOINT, _u64.pack(checkpoint) + _u64.pack(int(time.time() * 1000)))
        self.db.write(batch)

    def apply_changelog(self, records: Iterable[tuple[bytes, bytes | None]],
                        checkpoint: int | Callable[[], int]) -> int:
        """Restore: write changelog records (and the id memories' time index) in batches as they
        come, then the checkpoint (an offset, or a function giving it once ``records`` is
        exhausted); returns how many records."""
        n = 0
        batch: list[tuple[bytes, bytes | None]] = []
        for key, value in records:
            n += 1
            batch.append((key, value))
            kind = key[:1]
            if value is not None and (kind == IDS or kind == CLOSED):
                _kind, tenant_id, d = split_key(key)
                batch.append((_index_key(kind, tenant_id, _memory.decode(value)[1], d), b""))
            if len(batch) >= 50_000:
                self.write(batch, None)
                batch = []
        self.write(batch, checkpoint() if callable(checkpoint) else checkpoint)
        return n

    # ------------------------------------------------------------------ loading tenants

    def load(self, rules: Rules) -> dict[str, TenantState]:
        """Every tenant of this partition, in memory but for the id memories (read from disk per lookup)."""
        parts: dict[str, dict] = {}
        for key, value in self._small_state():
            kind, tenant_id, rest = split_key(key)
            part = parts.setdefault(tenant_id, {"accounts": {}, "holds": {}, "recurring": {}, "keys": {},
                                                "key_tags": {}, "rates": {}, "policy": Policy(), "timers": [],
                                                "held": [], "spend": {}, "header": None})
            if kind == HEADER:
                part["header"] = _header.decode(value)
            elif kind == ACCOUNT:
                acct = _account.decode(value)
                part["accounts"][acct.id] = acct
            elif kind == HOLD:
                hold = _hold.decode(value)
                part["holds"][hold.id] = hold
            elif kind == RECURRING:
                rec = _recurring.decode(value)
                part["recurring"][rec.id] = rec
            elif kind == KEY:
                api_key_id = rest.decode("utf-8", "surrogatepass")
                account_id, tags = decode_key(value)
                part["keys"][api_key_id] = account_id
                if tags:
                    part["key_tags"][api_key_id] = tags
            elif kind == POLICY:
                part["policy"] = _policy.decode(value)
            elif kind == RATES:
                part["rates"] = _rates.decode(value)
            elif kind == TIMER:
                part["timers"].append(_timer.decode(value))
            elif kind == HELD:
                part["held"].append(_held.decode(value))
            elif kind == SPEND:
                part["spend"][rest.decode("utf-8", "surrogatepass")] = _spend.decode(value)
        tenants = {}
        for tenant_id, part in parts.items():
            if part["header"] is None:
                continue
            clock, seq, totals, pruned_at = part["header"]
            timers = part["timers"]
            heapq.heapify(timers)
            held: dict[str, list[Held]] = {}
            for h in sorted(part["held"], key=lambda h: h.seq):
                held.setdefault(h.ref, []).append(h)
            state = self.new_tenant(tenant_id, rules, accounts=part["accounts"], holds=part["holds"],
                                    recurring=part["recurring"], keys=part["keys"], key_tags=part["key_tags"],
                                    rates=part["rates"], policy=part["policy"],
                                    timers=timers, held=held, clock=clock, seq=seq, totals=totals,
                                    pruned_at=pruned_at, spend_outbox=part["spend"], spend_outbox_stored=set(part["spend"]))
            tenants[tenant_id] = state
        return tenants

    def new_tenant(self, tenant_id: str, rules: Rules, **state) -> TenantState:
        """A tenant whose id memories live in this store."""
        tenant = TenantState(tenant_id, ids=StoredIds(self.db, tenant_id, IDS),  # type: ignore[arg-type]
                        closed_holds=StoredIds(self.db, tenant_id, CLOSED), rules=rules, **state)  # type: ignore[arg-type]
        return tenant

    def _small_state(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key but the id memories and their index (which stay on disk)."""
        for kind in (HEADER, ACCOUNT, HOLD, RECURRING, KEY, RATES, POLICY, TIMER, HELD, SPEND):
            for key, value in self.db.items(from_key=kind):
                if not key.startswith(kind):
                    break
                yield key, value

    def count(self, kind: bytes) -> int:
        """How many keys of one kind (``HEADER``, ``ACCOUNT``, ...) the store holds, the id memories included."""
        n = 0
        for key in self.db.keys(from_key=kind):
            if not key.startswith(kind):
                break
            n += 1
        return n
