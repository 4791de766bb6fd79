"""``finops fold``: the ledger over a JSONL file, without Kafka, with the stream processor's code."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from ..schemas import outputs, wire
from ..schemas.money import credits_str
from .ledger import Ledger, Output
from .state import DEFAULT_RULES, Rules


class FoldResult:
    """A folded ledger plus what was refused, in input order.

    ``now``: judge every line as if Kafka had stored it at this time (the far-future rule,
    ``ts_in_future``); None skips that rule. Call :meth:`finish` after the last line: the end
    of the input ends every grace of usage held for its account (``fold_lines`` does).
    """

    def __init__(self, keep_outputs: bool = False, *, now: datetime | None = None,
                 rules: Rules = DEFAULT_RULES) -> None:
        self.ledger = Ledger(rules)
        self.rejected: list[wire.Rejection] = []
        self.keep_outputs = keep_outputs
        self.outputs: list[Output] = []  # alerts; every output (entries too) with keep_outputs
        # the latest finops.enforcement.v1 record per (tenant, account), as the compacted topic keeps it
        self.enforcement: dict[tuple[str, str], outputs.Enforcement] = {}
        self.lines = 0
        self.now = now

    def _keep(self, produced: list[Output]) -> None:
        for o in produced:
            kind = type(o)
            if kind is wire.Rejection:
                self.rejected.append(o)
            elif self.keep_outputs or kind is outputs.Alert:
                self.outputs.append(o)
            if kind is outputs.Enforcement:
                self.enforcement[(o.tenant_id, o.account_id)] = o

    def feed(self, raw: bytes | str) -> None:
        """Fold one line (bytes or text, one wire-v1 message): a line that cannot be read, or a message the
        ledger refuses, becomes a rejection; the outputs are kept as the constructor says."""
        self.lines += 1
        message = wire.decode(raw)
        if isinstance(message, wire.Rejection):
            self.rejected.append(message)
            return
        produced, refused = self.ledger.handle(message, raw if isinstance(raw, bytes) else raw.encode(), self.now)
        self._keep(produced)
        if refused is not None:
            self.rejected.append(wire.rejection(message, refused.reason, refused.detail, raw))

    def finish(self) -> None:
        """End of input: usage still held for an account that never opened is rejected ``unknown_account``."""
        self._keep(self.ledger.finish())

    def summary(self) -> dict:
        """The wire-v1 ``finops fold`` object (amounts as exact decimal credit strings)."""
        accounts: dict[str, dict] = {}
        totals = {"purchased": 0, "consumed": 0, "expired": 0, "overage": 0}
        multi = len(self.ledger.tenants) > 1
        for tenant_id, state in sorted(self.ledger.tenants.items()):
            for acct in state.accounts.values():
                key = f"{tenant_id}/{acct.id}" if multi else acct.id
                accounts[key] = {"available": credits_str(acct.available), "consumed": credits_str(acct.consumed),
                                 "reserved": credits_str(acct.reserved), "overage": credits_str(acct.overage)}
            for name in totals:
                totals[name] += getattr(state.totals, name)
        summary = {
            "accounts": accounts,
            "totals": {name: credits_str(v) for name, v in totals.items()},
            "rejected": [{"id": r.id, "tenant_id": r.tenant_id, "reason": r.reason, "detail": r.detail}
                         for r in self.rejected],
            "alerts": [{"type": a.type, "severity": a.severity, "account_id": a.account_id,
                        "threshold": a.threshold, "status": a.status, "tenant_id": a.tenant_id, "id": a.id,
                        **({"action": a.action} if a.action is not None else {})}
                       for a in self.outputs if isinstance(a, outputs.Alert)],
        }
        if self.enforcement:  # only when a block or a rate limit happened: the object is as before otherwise
            summary["enforcement"] = [
                {"account_id": (f"{t}/{a}" if multi else a), "state": e.state, "reason": e.reason,
                 "api_key_ids": e.api_key_ids, **({"rate_limits": e.rate_limits} if e.rate_limits is not None else {})}
                for (t, a), e in sorted(self.enforcement.items())]
        return summary


def fold_lines(lines: Iterable[bytes | str], keep_outputs: bool = False, *, now: datetime | None = None,
               rules: Rules = DEFAULT_RULES) -> FoldResult:
    """Fold JSONL lines in order, then end the input (:meth:`FoldResult.finish`)."""
    result = FoldResult(keep_outputs, now=now, rules=rules)
    for line in lines:
        line = line.strip()  # as `finops publish` sends it, so ids fingerprint alike
        if line:
            result.feed(line)
    result.finish()
    return result
