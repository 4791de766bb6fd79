"""The bad-input corpus (issue 14, reliability.md row 11) through `finops fold` and through Kafka.

tests/data/bad-input/cases.json lists every case: a file of raw lines of its own tenant
(setup lines, one bad line, maybe lines after it), the reason the bad line must get, and,
where the code does not do what wire-v1.md says yet, an ``xfail_reason``. The cases and the
good lines of a control tenant are sent as one stream, in the same order, both ways:

* ``finops fold FILE --now NOW`` (the CLI, as a subprocess; ``--now`` so far-future times
  are judged), its rejections attributed to their lines through the same fold in-process
  (the CLI prints no raw input; the two lists must be equal);
* published as-is into the real broker (``validate=False``) and applied by a running ledger
  processor; the rejections read back from ``finops.rejected.v1`` with their raw ``input``
  (or ``input_base64`` for bytes that are not UTF-8). Tenant and ids get a per-run marker
  there (``bi-`` becomes ``bi-<run>-``), so a broker that already saw the corpus does not
  remember it.

Every case is checked the same way on both paths (:func:`verdict`): its bad line is rejected
once, with its reason and its raw input, and none of its other lines is rejected. Then:
nothing else is rejected, the control tenant's balances are the expected ones, conservation
holds, and (Kafka) every balance equals the fold's.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from finops.processors.fold import fold_lines
from finops.schemas import reasons as vocabulary

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad-input"
MANIFEST = json.loads((CORPUS / "cases.json").read_text())
CASES: list[dict] = MANIFEST["cases"]
CONTROL: dict = MANIFEST["control"]
REASONS = {v for k, v in vars(vocabulary).items() if k.isupper() and isinstance(v, str)}
# The one reason no input can produce: every v1 command has a decider in this version.
NOT_FROM_BAD_INPUT = {vocabulary.NOT_SUPPORTED}


def read_lines(name: str) -> list[bytes]:
    data = (CORPUS / name).read_bytes()
    assert data.endswith(b"\n"), name
    return data[:-1].split(b"\n")


def marked(line: bytes, run: str | None) -> bytes:
    return line.replace(b"bi-", f"bi-{run}-".encode()) if run else line


@dataclass
class Stream:
    """The corpus as one stream: every case's lines, the control tenant's spread between them."""

    run: str | None
    lines: list[bytes] = field(default_factory=list)
    case_lines: dict[str, list[bytes]] = field(default_factory=dict)

    @classmethod
    def build(cls, run: str | None) -> Stream:
        stream = cls(run)
        control = [marked(line, run) for line in read_lines(CONTROL["file"])]
        slots = defaultdict(list)  # control line j goes before case j * cases // control lines
        for j, line in enumerate(control):
            slots[j * len(CASES) // len(control)].append(line)
        for i, case in enumerate(CASES):
            stream.lines += slots.pop(i, [])
            lines = [marked(line, run) for line in read_lines(case["file"])]
            stream.case_lines[case["name"]] = lines
            stream.lines += lines
        assert not slots
        return stream

    def tenant(self, tenant: str) -> str:
        return marked(tenant.encode(), self.run).decode()

    def is_shared(self, line: bytes) -> bool:
        """A line the run marker cannot make unique (e.g. ``[]``): the broker may hold copies of it."""
        return self.run is not None and f"bi-{self.run}-".encode() not in line


def raw_input(record) -> bytes:
    """The raw bytes a rejection carries (``input``, or ``input_base64`` for bytes that are not UTF-8)."""
    get = record.get if isinstance(record, dict) else (lambda k: getattr(record, k))
    if get("input_base64"):
        return base64.b64decode(get("input_base64"))
    return get("input").encode("utf-8")


def verdict(case: dict, stream: Stream, rejected: dict[bytes, list[str]]) -> str | None:
    """None when the case is handled as the contract says; else what went wrong."""
    lines = stream.case_lines[case["name"]]
    bad = lines[case["bad_line"]]
    got = rejected.get(bad, [])
    if stream.is_shared(bad):  # a copy sent by an earlier run may be rejected too, always alike
        if not got or set(got) != {case["reason"]}:
            return f"bad line rejected {got or 'never'}, expected {case['reason']!r}"
    elif got != [case["reason"]]:
        return f"bad line rejected {got or 'never'}, expected once with {case['reason']!r}"
    for n, line in enumerate(lines):
        if line != bad and rejected.get(line):
            return f"good line {n} was rejected {rejected[line]}: {line[:160]!r}"
    return None


def case_params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case["xfail_reason"])] if case.get("xfail_reason") else []
        yield pytest.param(case, id=case["name"], marks=marks)


def check_all(results: dict[str, str | None]) -> tuple[int, int]:
    """Every case without xfail_reason passed, every case with one still fails: (passed, known failures)."""
    wrong = {n: why for n, why in results.items() if why is not None and not xfails(n)}
    fixed = [n for n, why in results.items() if why is None and xfails(n)]
    assert not wrong, f"{len(wrong)} cases not handled as wire-v1.md says: " + \
        "; ".join(f"{n}: {why}" for n, why in sorted(wrong.items())[:20])
    assert not fixed, f"cases marked xfail_reason now pass (remove the mark): {fixed}"
    return sum(why is None for why in results.values()), sum(why is not None for why in results.values())


def xfails(name: str) -> bool:
    return bool(next(c for c in CASES if c["name"] == name).get("xfail_reason"))


def summary_line(path: str, passed: int, known: int) -> str:
    reasons = len({c["reason"] for c in CASES})
    return (f"bad-input corpus: {len(CASES)} cases, {reasons} reasons; through {path}: {passed} rejected with "
            f"their reason and raw input, {known} known discrepancies with wire-v1.md (strict xfail)")


# ----------------------------------------------------------------------------- the corpus itself


def test_the_corpus_is_large_distinct_and_covers_every_reason_bad_input_can_get():
    assert len(CASES) >= 100
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names)
    bad_lines = [read_lines(c["file"])[c["bad_line"]] for c in CASES]
    assert len(set(bad_lines)) == len(bad_lines), "every bad input is distinct"
    assert {c["reason"] for c in CASES} <= REASONS
    assert {c["reason"] for c in CASES} == REASONS - NOT_FROM_BAD_INPUT
    for c in CASES:
        lines = read_lines(c["file"])
        assert 0 <= c["bad_line"] < len(lines) and all(line and line == line.strip() for line in lines), c["name"]
        assert "xfail_reason" not in c or c["xfail_reason"].strip(), c["name"]
    assert any(b"\xff" in line or b"\xc0" in line for line in bad_lines), "bytes that are not UTF-8"


# ----------------------------------------------------------------------------- finops fold


@dataclass
class FoldRun:
    stream: Stream
    summary: dict  # the CLI's JSON
    rejected: dict[bytes, list[str]]  # raw input -> reasons, in order
    conservation: dict[str, tuple[int, int]]  # tenant -> (left side, purchased) in micro-credits
    negative: list[str]


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory) -> FoldRun:
    stream = Stream.build(run=None)
    path = tmp_path_factory.mktemp("bad-input") / "corpus.jsonl"
    path.write_bytes(b"\n".join(stream.lines) + b"\n")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    out = subprocess.run([sys.executable, "-m", "finops.cli", "fold", str(path), "--now",
                          now.strftime("%Y-%m-%dT%H:%M:%SZ")], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    summary = json.loads(out.stdout)
    # The same fold in-process: the CLI prints no raw input, this run says which line each rejection is.
    folded = fold_lines(stream.lines, now=now)
    assert [(r["id"], r["tenant_id"], r["reason"]) for r in summary["rejected"]] == \
        [(r.id, r.tenant_id, r.reason) for r in folded.rejected]
    rejected: dict[bytes, list[str]] = defaultdict(list)
    for r in folded.rejected:
        rejected[raw_input(r)].append(r.reason)
    conservation, negative = {}, []
    for tenant, state in folded.ledger.tenants.items():
        held = sum(a.available + a.reserved for a in state.accounts.values())
        t = state.totals
        conservation[tenant] = (held + t.consumed - t.overage + t.expired, t.purchased)
        negative += [f"{tenant}/{a.id}" for a in state.accounts.values() if a.available < 0]
    return FoldRun(stream, summary, dict(rejected), conservation, negative)


@pytest.mark.parametrize("case", list(case_params()))
def test_fold_rejects_the_case_with_its_reason(case, fold_run):
    why = verdict(case, fold_run.stream, fold_run.rejected)
    assert why is None, why


def test_fold_rejects_only_the_bad_lines_and_the_control_tenant_is_undisturbed(fold_run):
    bad_lines = {lines[c["bad_line"]] for c in CASES for lines in [fold_run.stream.case_lines[c["name"]]]}
    stray = [(line[:120], r) for line, r in fold_run.rejected.items() if line not in bad_lines]
    assert not stray, f"lines rejected that are no case's bad line: {stray[:10]}"
    accounts = fold_run.summary["accounts"]
    tenant = CONTROL["tenant"]
    assert {a: accounts[f"{tenant}/{a}"] for a in CONTROL["accounts"]} == CONTROL["accounts"]
    assert fold_run.conservation[tenant] == (int(Decimal(CONTROL["purchased"]) * 10**6),) * 2
    broken = {t: v for t, v in fold_run.conservation.items() if v[0] != v[1]}
    assert not broken, f"conservation broken for {broken}"
    assert not fold_run.negative, f"available below zero: {fold_run.negative}"
    totals = {k: Decimal(v) for k, v in fold_run.summary["totals"].items()}
    held = sum(Decimal(a["available"]) + Decimal(a["reserved"]) for a in accounts.values())
    assert held + totals["consumed"] - totals["overage"] + totals["expired"] == totals["purchased"]
    passed, known = check_all({c["name"]: verdict(c, fold_run.stream, fold_run.rejected) for c in CASES})
    print("\n" + summary_line("finops fold", passed, known))


# ----------------------------------------------------------------------------- Kafka


@dataclass
class KafkaRun:
    stream: Stream
    rejected: dict[bytes, list[str]]
    # (tenant, account) -> (available, consumed, reserved, overage) in micro-credits
    balances: dict[tuple[str, str], tuple[int, int, int, int]]
    expected: dict[tuple[str, str], tuple[int, int, int, int]]  # the same from the fold of the same bytes
    stray: list


@pytest.fixture(scope="module")
def kafka_run(kafka_settings) -> KafkaRun:
    from finops import clients
    from finops.pipeline import Pipeline
    from finops.producers.publish import publish_lines
    from finops.projections.balances import read_balances
    from finops.schemas import topics
    from support import wait_until

    run = uuid.uuid4().hex[:8]
    settings = kafka_settings.model_copy(update={"group_prefix": f"test-{run}"})
    stream = Stream.build(run=run)
    # Everything is in Kafka before the ledger starts: its merge of the usage and command topics is then
    # event-time order, as a restart or a replay would see it. Event times lie in the past of the broker's
    # LogAppendTime, except the ts_in_future cases'.
    report = publish_lines(settings, stream.lines, validate=False)
    assert report.failed == 0, report.errors
    with Pipeline(settings, ("ledger",)) as pipeline:
        ends = clients.input_ends(settings)
        wait_until(lambda: pipeline.ledger.caught_up(ends), 400, "the ledger to apply the corpus", pipeline)
    ours = set(stream.lines)
    prefix = f"bi-{run}-"
    rejected: dict[bytes, list[str]] = defaultdict(list)
    stray = []
    for m in clients.read_to_end(settings, topics.REJECTED, range(settings.topic_partitions)):
        record = json.loads(m.value())
        line = raw_input(record)
        if line in ours:
            rejected[line].append(record["reason"])
        elif (record.get("tenant_id") or "").startswith(prefix):
            stray.append(record)
    balances = {(b.tenant_id, b.account_id): (b.available_micros, b.consumed_micros, b.reserved_micros,
                                              b.overage_micros)
                for b in read_balances(settings).values() if b.tenant_id.startswith(prefix)}
    folded = fold_lines(stream.lines, now=datetime.now(timezone.utc))
    expected = {(t, a.id): (a.available, a.consumed, a.reserved, a.overage)
                for t, state in folded.ledger.tenants.items() for a in state.accounts.values()}
    return KafkaRun(stream, dict(rejected), balances, expected, stray)


@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", list(case_params()))
def test_kafka_rejects_the_case_with_its_reason_and_raw_input(case, kafka_run):
    why = verdict(case, kafka_run.stream, kafka_run.rejected)
    assert why is None, why


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_kafka_rejects_only_the_bad_lines_and_balances_equal_the_fold(kafka_run):
    assert not kafka_run.stray, f"rejections of the run's tenants for no line it sent: {kafka_run.stray[:5]}"
    bad_lines = {lines[c["bad_line"]] for c in CASES for lines in [kafka_run.stream.case_lines[c["name"]]]}
    stray = [(line[:120], r) for line, r in kafka_run.rejected.items() if line not in bad_lines]
    assert not stray, f"lines rejected that are no case's bad line: {stray[:10]}"
    zero = (0, 0, 0, 0)
    differ = {k: (kafka_run.balances.get(k, zero), kafka_run.expected.get(k, zero))
              for k in set(kafka_run.balances) | set(kafka_run.expected)
              if kafka_run.balances.get(k, zero) != kafka_run.expected.get(k, zero)}
    assert not differ, f"{len(differ)} balances differ from the fold (kafka, fold): {sorted(differ.items())[:5]}"
    tenant = kafka_run.stream.tenant(CONTROL["tenant"])
    micros = lambda v: int(Decimal(v) * 10**6)  # noqa: E731
    control = {a: kafka_run.balances[(tenant, kafka_run.stream.tenant(a) if a == CONTROL["tenant"] else a)]
               for a in CONTROL["accounts"]}
    assert control == {a: (micros(v["available"]), micros(v["consumed"]), micros(v["reserved"]),
                           micros(v["overage"])) for a, v in CONTROL["accounts"].items()}
    available, consumed, reserved, overage = (sum(v[i] for v in control.values()) for i in range(4))
    assert available + reserved + consumed - overage == micros(CONTROL["purchased"])  # nothing expires here
    assert all(v[0] >= 0 for v in kafka_run.balances.values())
    passed, known = check_all({c["name"]: verdict(c, kafka_run.stream, kafka_run.rejected) for c in CASES})
    print("\n" + summary_line("Kafka", passed, known))
