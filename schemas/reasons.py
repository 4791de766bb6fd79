"""The fixed vocabulary of rejection reasons (``finops.rejected.v1`` field ``reason``).

Reading errors (the message could not be taken apart):

==========================  =====================================================
``not_json``                the bytes are not JSON (or not UTF-8)
``not_object``              JSON, but not an object
``missing_type``            no ``type`` field
``unknown_type``            a ``type`` that wire v1 does not know
``unknown_version``         a ``schema_version`` other than 1
``missing_id``              no ``id`` field
``missing_tenant``          no ``tenant_id`` field
``missing_field``           another required field is absent
``invalid_timestamp``       a time that is not RFC 3339 with a time zone
``invalid_amount``          negative, more than 6 decimals, not a number, too large
``wrong_type``              a field of the wrong JSON type
``invalid``                 any other constraint (empty id, percent over 100, ...)
==========================  =====================================================

Ledger decisions (the message was read, but refused):

==========================  =====================================================
``duplicate_id_conflict``   the id was used before with different content
``unknown_account``         an account that does not exist in this tenant (usage: not opened, or its
                            key not bound, within the grace of 1 h of event time after its ts)
``account_exists``          ``open_account`` for an id already open
``unknown_parent``          ``open_account`` under a parent that does not exist
``not_parent``              allocate/reclaim between accounts that are not parent and child
``insufficient_funds``      more than the account can spend now
``invalid_window``          ``ends_at``/``expires_at`` not after ``starts_at`` / ``ts``
``unknown_reservation``     ``settle`` of a hold id that was never reserved
``reservation_closed``      a second ``settle`` of a hold (a settle after its release at expiry is charged)
``approvals_required``      ``override_cap`` without two distinct approvers
``no_rate``                 usage without ``credits_consumed`` and no rate for its model/operation
``not_supported``           a v1 command this version of the ledger cannot apply yet
``too_late``                ``ts`` older than the tenant clock minus the idempotency horizon (35 days):
                            its id can no longer be checked, so it is not applied
``ts_in_future``            ``ts`` more than the allowed skew (5 minutes) ahead of the time Kafka
                            stored the message (its LogAppendTime)
==========================  =====================================================
"""

from __future__ import annotations

import re

NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_TYPE = "missing_type"
UNKNOWN_TYPE = "unknown_type"
UNKNOWN_VERSION = "unknown_version"
MISSING_ID = "missing_id"
MISSING_TENANT = "missing_tenant"
MISSING_FIELD = "missing_field"
INVALID_TIMESTAMP = "invalid_timestamp"
INVALID_AMOUNT = "invalid_amount"
WRONG_TYPE = "wrong_type"
INVALID = "invalid"

DUPLICATE_ID_CONFLICT = "duplicate_id_conflict"
UNKNOWN_ACCOUNT = "unknown_account"
ACCOUNT_EXISTS = "account_exists"
UNKNOWN_PARENT = "unknown_parent"
NOT_PARENT = "not_parent"
INSUFFICIENT_FUNDS = "insufficient_funds"
INVALID_WINDOW = "invalid_window"
UNKNOWN_RESERVATION = "unknown_reservation"
RESERVATION_CLOSED = "reservation_closed"
APPROVALS_REQUIRED = "approvals_required"
NO_RATE = "no_rate"
NOT_SUPPORTED = "not_supported"
TOO_LATE = "too_late"
TS_IN_FUTURE = "ts_in_future"

_MISSING = re.compile(r"missing required field `([^`]+)`")
_PATH = re.compile(r"at `\$\.?([^`\[]*)")
_TIME_FIELDS = {"ts", "expires_at", "starts_at", "ends_at", "until"}


NOT_READ = object()  # classify_decode_error's ``loose`` when the bytes are not JSON at all
_CONSTRAINT = re.compile(r"^Expected `[a-z]+` (of length )?[<>]=? ")


def classify_decode_error(exc: Exception, loose: object) -> str:
    """Map a msgspec error (and the loosely decoded value, or NOT_READ) to a reason."""
    if loose is NOT_READ:
        return NOT_JSON
    if not isinstance(loose, dict):
        return NOT_OBJECT
    text = str(exc)
    missing = _MISSING.search(text)
    if missing:
        return {"type": MISSING_TYPE, "id": MISSING_ID, "tenant_id": MISSING_TENANT}.get(
            missing.group(1), MISSING_FIELD)
    match = _PATH.search(text)
    field = match.group(1).split(".")[0] if match else ""
    if field == "type":
        return UNKNOWN_TYPE
    if field == "schema_version":
        return UNKNOWN_VERSION
    if "amount" in text:
        return INVALID_AMOUNT
    if field in _TIME_FIELDS and ("datetime" in text or "timezone" in text):
        return INVALID_TIMESTAMP
    if _CONSTRAINT.match(text):  # the right JSON type, out of its bounds (empty, too long, over 100)
        return INVALID
    if text.startswith("Expected `"):
        return WRONG_TYPE
    return INVALID
