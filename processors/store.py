"""The ledger's state store: one RocksDB store per input partition, backed by a changelog topic.

The design Kafka Streams and quix-streams use (design.md, "Exactly once, end to end"):

* **State store.** Each input partition the ledger owns has a local RocksDB store
  (``rocksdict``) under ``<data dir>/ledger-state/<consumer group>/<instance>/p<N>``. It holds
  every tenant of that partition, one key per piece of state (:data:`.changelog.KINDS`): the tenant's
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
grow with traffic. The key layout and the values' encoding are :mod:`.changelog`'s.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

from .changelog import (
    ACCOUNT, CLOSED, HEADER, HELD, HOLD, IDS, INDEX, KEY, POLICY, RATES, RECURRING, SPEND, TIMER, decode_account,
    decode_header, decode_held, decode_hold, decode_key, decode_memory, decode_policy, decode_rates, decode_recurring,
    decode_spend, decode_timer, digest, encode, index_key, split_key, tenant_prefix, time_key,
)
from .state import Held, Policy, Rules, TenantState

log = logging.getLogger("finops.ledger.store")

_CHECKPOINT = b"\x00checkpoint"  # local only: the next changelog offset not yet in the store, and when written
# A store last written longer ago than this (wall time) is not trusted to catch up from its
# checkpoint: compaction may have removed tombstones it never saw (the changelog keeps them
# for delete.retention.ms, 7 days: CHANGELOG_TOMBSTONES_MS in schemas/topics.py).
TRUST_CHECKPOINT_S = 3 * 86400.0
_u64 = struct.Struct(">Q")  # the checkpoint: offset, then wall time in ms


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
        return default if raw is None else decode_memory(raw)

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
        stop = start + time_key(before)
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
        return None if raw is None else decode_memory(raw)

    def drain(self, changes: list, local: list) -> None:
        """Move this transaction's writes to ``changes`` (changelog and store) and ``local`` (store only)."""
        prefix = self.prefix
        for d, value in self.overlay.items():
            if value is None:
                changes.append((prefix + d, None))
            else:
                changes.append((prefix + d, encode(value)))
                local.append((index_key(self.kind, self.tenant_id, value[1], d), b""))
        for key in self.index_removed:
            local.append((key, None))
        self.overlay = {}
        self.index_removed = []

    def discard(self) -> None:
        """Drop this transaction's writes without storing them (the store keeps what it had)."""
        self.overlay = {}
        self.index_removed = []


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
                batch.append((index_key(kind, tenant_id, decode_memory(value)[1], d), b""))
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
                part["header"] = decode_header(value)
            elif kind == ACCOUNT:
                acct = decode_account(value)
                part["accounts"][acct.id] = acct
            elif kind == HOLD:
                hold = decode_hold(value)
                part["holds"][hold.id] = hold
            elif kind == RECURRING:
                rec = decode_recurring(value)
                part["recurring"][rec.id] = rec
            elif kind == KEY:
                api_key_id = rest.decode("utf-8", "surrogatepass")
                account_id, tags = decode_key(value)
                part["keys"][api_key_id] = account_id
                if tags:
                    part["key_tags"][api_key_id] = tags
            elif kind == POLICY:
                part["policy"] = decode_policy(value)
            elif kind == RATES:
                part["rates"] = decode_rates(value)
            elif kind == TIMER:
                part["timers"].append(decode_timer(value))
            elif kind == HELD:
                part["held"].append(decode_held(value))
            elif kind == SPEND:
                part["spend"][rest.decode("utf-8", "surrogatepass")] = decode_spend(value)
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
