"""No input stops the fold (issue "rules made precise", kind 4): arbitrary bytes, and arbitrary
JSON values in every field of otherwise valid messages, are refused with a reason while
everything else goes on, and conservation holds after every line.

Runs FINOPS_FOLD_NEVER_STOPS_EXAMPLES examples (default 2,000)."""

from __future__ import annotations

import os

import msgspec
from hypothesis import HealthCheck, given, settings, strategies as st

from finops.processors.fold import FoldResult
from finops.schemas import reasons as vocabulary
from ledger_helpers import conservation_holds
from test_ledger_properties import scripts

EXAMPLES = int(os.environ.get("FINOPS_FOLD_NEVER_STOPS_EXAMPLES", "2000"))
REASONS = {value for name, value in vars(vocabulary).items() if name.isupper() and isinstance(value, str)}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30) | st.sampled_from(["", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00",
                                             "2026-11-01T10:00:00.9999999Z", "1e400", "-0", "NaN", "month"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


@st.composite
def damaged(draw) -> list[bytes]:
    """A valid script of one tenant, with some lines damaged: a field set to any JSON value, a
    field dropped, an extra field, the bytes cut or replaced by arbitrary bytes."""
    lines = draw(scripts())
    out: list[bytes] = []
    for line in lines:
        how = draw(st.sampled_from(["keep"] * 4 + ["field", "drop", "extra", "cut", "bytes"]))
        if how == "keep":
            out.append(line)
            continue
        if how == "cut":
            out.append(line[:draw(st.integers(0, len(line)))])
            continue
        if how == "bytes":
            out.append(draw(st.binary(max_size=60)))
            continue
        message = msgspec.json.decode(line)
        name = draw(st.sampled_from(sorted(message)))
        if how == "field":
            message[name] = draw(json_values)
        elif how == "drop":
            del message[name]
        else:
            message[draw(st.text(max_size=8))] = draw(json_values)
        out.append(msgspec.json.encode(message))
    return out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])
@given(damaged())
def test_any_input_is_refused_with_a_reason_and_the_fold_goes_on(lines):
    result = FoldResult(keep_outputs=True)
    for line in lines:
        result.feed(line)  # never raises
        assert conservation_holds(result)
    result.finish()
    assert conservation_holds(result)
    assert {r.reason for r in result.rejected} <= REASONS
    for state in result.ledger.tenants.values():
        for acct in state.accounts.values():
            assert acct.available >= 0 and acct.available == sum(g.remaining for g in acct.grants)
    result.summary()  # and the output can be written
