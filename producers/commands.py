"""The SDK for allocation commands, with their outcome.

    from finops.producers import CommandClient

    with CommandClient() as commands:
        outcome = commands.allocate("acme", from_account="acme", to_account="team-search", credits=500)
        if not outcome.applied:
            print(outcome.reason, outcome.detail)        # e.g. insufficient_funds

Each method checks the command (:class:`InvalidEvent` at once when it is not valid wire
v1), publishes it to ``finops.commands.v1`` keyed by tenant and, unless ``wait=False``,
waits until the ledger processor has committed it: the outcome is then final. Either way
it returns only once Kafka has acknowledged the command, so usage the app sends after it
(:class:`~finops.producers.usage.UsageProducer`) is behind it, as wire v1 asks of a
publisher of commands and usage.

How the outcome is known: the ledger commits its input offsets in the same Kafka
transaction as its outputs. Once the ledger's consumer group has committed past the
command's offset, the command is decided, and it was rejected exactly when
``finops.rejected.v1`` holds its id (read from where it stood when this client started,
once that partition's transactions are settled: see :func:`finops.clients.settle`).
A repeat of an applied command (same id and content) is a no-op and counts as applied.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import msgspec
from confluent_kafka import KafkaException, TopicPartition

from .. import clients
from ..errors import FinopsError
from ..schemas import topics, wire
from ..settings import Settings
from .usage import InvalidEvent, checked, complete, resolve_settings


class OutcomeTimeout(FinopsError, TimeoutError):
    """The ledger did not decide a command in time (is ``finops run`` running?)."""


class CommandRejected(FinopsError):
    """Raised by :meth:`Outcome.raise_for_rejection`."""


@dataclass(frozen=True)
class Pending:
    """A command delivered to Kafka, not yet known to be decided."""

    id: str
    tenant_id: str
    type: str
    partition: int
    offset: int
    # the end of finops.rejected.v1 (that partition) before it was sent: a rejection of this
    # sending can only come after it (an earlier rejection of the same id was of an earlier one)
    rejected_from: int = 0


@dataclass(frozen=True)
class Outcome:
    """What the ledger decided about one command: ``status`` ``"applied"`` or ``"rejected"``, with the
    rejection's ``reason`` (schemas/reasons.py) and ``detail``."""

    id: str
    tenant_id: str
    type: str
    status: str  # "applied" or "rejected"
    reason: str | None = None  # the rejection reason (the vocabulary of schemas/reasons.py)
    detail: str = ""

    @property
    def applied(self) -> bool:
        """Was the command applied (a no-op repeat of an applied one counts as applied)?"""
        return self.status == "applied"

    def raise_for_rejection(self) -> Outcome:
        """This outcome when applied; raises :class:`CommandRejected` naming the reason when rejected."""
        if not self.applied:
            raise CommandRejected(f"{self.type} {self.id} of tenant {self.tenant_id} was rejected: "
                                  f"{self.reason}{': ' + self.detail if self.detail else ''}")
        return self


class _Seen(msgspec.Struct):
    id: str | None = None
    tenant_id: str | None = None
    reason: str = ""
    detail: str = ""


_seen_decoder = msgspec.json.Decoder(_Seen)


class CommandClient:
    """Publish commands and learn their outcome. ``settings`` defaults to the ``FINOPS_*``
    environment; the ledger's consumer group is ``<FINOPS_GROUP_PREFIX>-ledger``."""

    def __init__(self, settings: Settings | None = None, *, bootstrap: str | None = None,
                 timeout: float = 30.0) -> None:
        self.settings = resolve_settings(settings, bootstrap)
        self.timeout = timeout
        self._producer = clients.producer(self.settings, **{"message.timeout.ms": 30_000, "linger.ms": 0})
        # Committed offsets of the ledger's group (queried only: this consumer never joins it).
        self._ledger = clients.consumer(self.settings, self.settings.group("ledger"))
        self._rejected = clients.consumer(self.settings, self.settings.group("commands-client"),
                                          **{"enable.partition.eof": True})
        # Rejections are read from where the topic ends now: any command sent later is after this.
        try:
            meta = self._rejected.list_topics(topics.REJECTED, timeout=10)
        except KafkaException as exc:
            raise FinopsError(f"cannot reach Kafka at {self.settings.bootstrap} within 10 s "
                              f"({exc.args[0].str() if exc.args else exc})") from None
        if meta.topics[topics.REJECTED].error is not None:
            raise FinopsError(f"cannot read {topics.REJECTED} at {self.settings.bootstrap}: "
                              f"{meta.topics[topics.REJECTED].error.str()} (run `finops stack up`)")
        self._cursor = {p: self._rejected.get_watermark_offsets(TopicPartition(topics.REJECTED, p), timeout=10)[1]
                        for p in meta.topics[topics.REJECTED].partitions}
        self._rejections: dict[tuple[str, str], tuple[int, _Seen]] = {}  # (tenant, id) -> (offset, rejection)
        self._lock = threading.RLock()  # the clients are shared by threads (the HTTP API's)
        self._awaited: set[tuple[str, str]] = set()  # (tenant, id) sent and not yet waited for: kept when read

    # ------------------------------------------------------------------ sending

    def send(self, command: Mapping[str, Any], *, wait: bool = True, timeout: float | None = None
             ) -> Outcome | Pending:
        """Check, publish and (``wait``) return the :class:`Outcome`; else the :class:`Pending`."""
        raw, decoded = checked(complete(command))
        if isinstance(decoded, wire.Usage):
            raise InvalidEvent("invalid", "usage is not a command: send it with UsageProducer")
        delivered: list = []
        with self._lock:
            self._awaited.add((decoded.tenant_id, decoded.id))
            fence = {p: self._rejected.get_watermark_offsets(TopicPartition(topics.REJECTED, p), timeout=10)[1]
                     for p in self._cursor}
            self._producer.produce(topics.COMMANDS, raw, decoded.tenant_id.encode(),
                                   on_delivery=lambda error, msg: delivered.append((error, msg)))
            self._producer.flush(30)
        if not delivered:
            raise FinopsError(f"command {decoded.id} was not delivered to {self.settings.bootstrap} within 30 s")
        error, msg = delivered[0]
        if error is not None:
            raise FinopsError(f"command {decoded.id} was not delivered: {error.str()}")
        pending = Pending(decoded.id, decoded.tenant_id, decoded.__struct_config__.tag, msg.partition(),
                          msg.offset(), fence.get(msg.partition(), 0))
        return self.wait(pending, timeout) if wait else pending

    def wait(self, pending: Pending, timeout: float | None = None) -> Outcome:
        """The outcome of one command sent with ``wait=False``; raises :class:`OutcomeTimeout` after
        ``timeout`` seconds (default: the client's)."""
        return self.wait_all([pending], timeout)[0]

    def wait_all(self, pendings: Iterable[Pending], timeout: float | None = None) -> list[Outcome]:
        """The outcomes of these commands, once the ledger has committed all of them."""
        pendings = list(pendings)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        needed: dict[int, int] = {}
        for p in pendings:
            needed[p.partition] = max(needed.get(p.partition, -1), p.offset)
        while True:
            with self._lock:
                committed = clients.committed_offsets(
                    self._ledger, [TopicPartition(topics.COMMANDS, p) for p in sorted(needed)],
                    timeout=max(1.0, deadline - time.monotonic()))
            if all(tp.offset > needed[tp.partition] for tp in committed):
                break
            if time.monotonic() > deadline:
                raise OutcomeTimeout(
                    f"no outcome for {len(pendings)} command(s) within {self.timeout if timeout is None else timeout:g}"
                    f" s: is the ledger processor running (`finops run`) against {self.settings.bootstrap}?")
            time.sleep(0.05)
        # Decided; the rejections of those transactions are readable once their markers are written.
        clients.settle(self.settings, [(topics.REJECTED, p) for p in needed],
                       timeout=max(deadline - time.monotonic(), 5))
        with self._lock:
            self._read_rejections(sorted(needed))
            found = {(p.tenant_id, p.id): self._rejections.pop((p.tenant_id, p.id), None) for p in pendings}
            self._awaited.difference_update(found)
        outcomes = []
        for p in pendings:
            offset, seen = found[(p.tenant_id, p.id)] or (-1, None)
            outcomes.append(Outcome(p.id, p.tenant_id, p.type, "applied") if seen is None or offset < p.rejected_from
                            else Outcome(p.id, p.tenant_id, p.type, "rejected", seen.reason, seen.detail))
        return outcomes

    def _read_rejections(self, partitions: list[int]) -> None:
        """Read the rejected topic's partitions to their current end (the decided commands' records are there)."""
        pending = {(topics.REJECTED, p) for p in partitions}
        self._rejected.assign([TopicPartition(topics.REJECTED, p, self._cursor[p]) for p in partitions])
        for m in clients.consume_to_end(self._rejected, pending, deadline=time.monotonic() + 30, max_messages=1000,
                                        wait_s=0.2, strict=False):
            self._cursor[m.partition()] = m.offset() + 1
            try:
                seen = _seen_decoder.decode(m.value())
            except msgspec.MsgspecError:
                continue
            if (seen.tenant_id, seen.id) in self._awaited:  # of a command sent here (the rest: not kept)
                self._rejections[(seen.tenant_id, seen.id)] = (m.offset(), seen)
        self._rejected.unassign()
        if pending:  # without the end of a partition, a rejection could be missed: no guess
            raise OutcomeTimeout(f"could not read {topics.REJECTED} partitions {sorted(p for _t, p in pending)} "
                                 f"to their end within 30 s at {self.settings.bootstrap}")

    # ------------------------------------------------------------------ one method per command

    def purchase(self, tenant_id: str, credits: Any, **fields: Any) -> Outcome | Pending:
        """Credits (a number or decimal string, at most 6 decimals) into the tenant's root pool;
        ``expires_at`` may be given. Returns :meth:`send`'s result (an :class:`Outcome`, or :class:`Pending`
        with ``wait=False``); :class:`InvalidEvent` when the command is not valid wire v1."""
        return self._command("purchase", tenant_id, credits=credits, **fields)

    def open_account(self, tenant_id: str, account_id: str, *, kind: str, parent_id: str,
                     **fields: Any) -> Outcome | Pending:
        """An account under ``parent_id`` (``fallback``, ``name`` optional); :meth:`send`'s result."""
        return self._command("open_account", tenant_id, account_id=account_id, kind=kind, parent_id=parent_id,
                             **fields)

    def allocate(self, tenant_id: str, *, from_account: str, to_account: str, credits: Any,
                 **fields: Any) -> Outcome | Pending:
        """Credits from a parent to its child as a grant (window, expiry, recurrence, cap and thresholds
        as wire-v1.md's ``allocate``); :meth:`send`'s result."""
        return self._command("allocate", tenant_id, from_account=from_account, to_account=to_account,
                             credits=credits, **fields)

    def reclaim(self, tenant_id: str, *, from_account: str, to_account: str, credits: Any = None,
                all: bool = False, **fields: Any) -> Outcome | Pending:
        """``credits`` (or everything spendable, with ``all``) back from the child ``from_account`` to
        its parent; :meth:`send`'s result."""
        amount = {"all": True} if all else {"credits": credits}
        return self._command("reclaim", tenant_id, from_account=from_account, to_account=to_account,
                             **amount, **fields)

    def set_members(self, tenant_id: str, account_id: str, members: list[str], **fields: Any) -> Outcome | Pending:
        """Only ``members`` (and their descendants) may draw from the pool ``account_id``; :meth:`send`'s result."""
        return self._command("set_members", tenant_id, account_id=account_id, members=members, **fields)

    def bind_key(self, tenant_id: str, api_key_id: str, account_id: str, **fields: Any) -> Outcome | Pending:
        """Usage of ``api_key_id`` without an account is charged to ``account_id``; registry tags
        (``cost_center``, ``team``, ``project``, ``env``) may be given. :meth:`send`'s result."""
        return self._command("bind_key", tenant_id, api_key_id=api_key_id, account_id=account_id, **fields)

    def set_rates(self, tenant_id: str, rates: list[Mapping[str, Any]], **fields: Any) -> Outcome | Pending:
        """The tenant's rate card: ``rates`` of ``model_name``, ``operation_type`` and
        ``credits_per_unit`` (up to 12 decimals); :meth:`send`'s result."""
        return self._command("set_rates", tenant_id, rates=rates, **fields)

    def set_policy(self, tenant_id: str, *, require_key_registry: bool | None = None,
                   **fields: Any) -> Outcome | Pending:
        """Tenant settings (wire-v1.md additions): a setting left out (None) is kept."""
        return self._command("set_policy", tenant_id, require_key_registry=require_key_registry, **fields)

    def reserve(self, tenant_id: str, account_id: str, credits: Any, expires_at: str,
                **fields: Any) -> Outcome | Pending:
        """Hold ``credits`` on ``account_id`` until ``expires_at`` (RFC 3339, event time); the hold's id
        is the command's ``id``. :meth:`send`'s result."""
        return self._command("reserve", tenant_id, account_id=account_id, credits=credits, expires_at=expires_at,
                             **fields)

    def settle(self, tenant_id: str, reservation_id: str, credits: Any, **fields: Any) -> Outcome | Pending:
        """Consume ``credits`` of the hold ``reservation_id`` and release the rest; :meth:`send`'s result."""
        return self._command("settle", tenant_id, reservation_id=reservation_id, credits=credits, **fields)

    def override_cap(self, tenant_id: str, account_id: str, until: str, approvals: list[str],
                     **fields: Any) -> Outcome | Pending:
        """Lift the hard cap of ``account_id`` until ``until`` (RFC 3339, event time), with two distinct
        ``approvals``; :meth:`send`'s result."""
        return self._command("override_cap", tenant_id, account_id=account_id, until=until, approvals=approvals,
                             **fields)

    def _command(self, type_: str, tenant_id: str, *, wait: bool = True, timeout: float | None = None,
                 **fields: Any) -> Outcome | Pending:
        body = {k: v for k, v in fields.items() if v is not None}  # Decimal amounts encode as strings
        return self.send({"type": type_, "tenant_id": tenant_id, **body}, wait=wait, timeout=timeout)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Flush what is queued (30 s at most) and close the Kafka clients."""
        self._producer.flush(30)
        self._ledger.close()
        self._rejected.close()

    def __enter__(self) -> CommandClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
