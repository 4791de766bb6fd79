"""Money: integer micro-credits. A float never touches a balance.

On the wire an amount is credits, as a JSON number or a decimal string, at most six
decimal places, never negative. Inside, every amount is an ``int`` of micro-credits
(1 credit = 1,000,000 micro-credits).
"""

from __future__ import annotations

from decimal import Decimal

MICROS_PER_CREDIT = 1_000_000
_SCALE = Decimal(MICROS_PER_CREDIT)
# No amount, balance or total may pass this (wire-v1.md, "Amounts are exact"): ClickHouse's
# Int64 and every consumer's 64-bit integers hold it.
MAX_MICROS = 2**63 - 1


class AmountError(ValueError):
    """An amount that is not a non-negative credit value with at most six decimals."""


class Micros(int):
    """Micro-credits read from a wire amount; encodes back to a decimal credit string."""

    __slots__ = ()


def to_micros(value: object) -> Micros:
    """Parse a wire amount into micro-credits, exactly.

    Accepts an ``int``, a ``Decimal`` (a JSON number, read from its text by the wire
    decoder: ``1e2`` is 100), a decimal string of the contract's grammar
    ``[0-9]+(\\.[0-9]{1,6})?`` (ASCII digits; no sign, exponent, separator or space), or a
    Python ``float`` (from code, not the wire: exact when it is the float nearest to a
    number with at most six decimals). Raises :class:`AmountError`.
    """
    kind = type(value)
    if kind is int:
        micros = value * MICROS_PER_CREDIT  # type: ignore[operator]
    elif kind is str:
        micros = _parse_decimal_string(value)  # type: ignore[arg-type]
    elif kind is Decimal:
        d: Decimal = value  # type: ignore[assignment]
        if not d.is_finite():
            raise AmountError("amount must be a finite number")
        if d and d.adjusted() > 19:  # checked before any arithmetic: 1e999999 must not overflow the context
            raise AmountError(f"amount is above the largest balance, {credits_str(MAX_MICROS)} credits")
        if d and d.adjusted() < -6:  # a non-zero amount below a micro-credit (1e-9999999 too)
            raise AmountError(f"amount {d} has more than 6 decimal places")
        scaled = d * _SCALE
        if scaled != scaled.to_integral_value():
            raise AmountError(f"amount {d} has more than 6 decimal places")
        micros = int(scaled)
    elif kind is float:
        f: float = value  # type: ignore[assignment]
        if f != f or f in (float("inf"), float("-inf")):
            raise AmountError("amount must be a finite number")
        micros = round(f * MICROS_PER_CREDIT)
        if micros / MICROS_PER_CREDIT != f:
            raise AmountError(f"amount {f!r} has more than 6 decimal places")
    else:
        raise AmountError(f"amount must be a number or a decimal string, not {kind.__name__}")
    if micros < 0:
        raise AmountError("amount must not be negative")
    if micros > MAX_MICROS:
        raise AmountError(f"amount is above the largest balance, {credits_str(MAX_MICROS)} credits")
    return Micros(micros)


def _parse_decimal_string(text: str) -> int:
    whole, dot, frac = text.partition(".")
    if whole.isdigit() and whole.isascii() and (
            not dot or 1 <= len(frac) <= 6 and frac.isdigit() and frac.isascii()):
        significant = whole.lstrip("0") or "0"
        if len(significant) > 20:  # more digits than the largest balance (and than int() reads past 4,300)
            raise AmountError(f"amount is above the largest balance, {credits_str(MAX_MICROS)} credits")
        return int(significant) * MICROS_PER_CREDIT + (int(frac.ljust(6, "0")) if frac else 0)
    if dot and whole.isdigit() and frac.isdigit() and len(frac) > 6:
        raise AmountError(f"amount {text!r} has more than 6 decimal places")
    raise AmountError(f"amount {text!r} is not a decimal string like 12.5 (digits, at most 6 decimals)")


def credits_str(micros: int) -> str:
    """Micro-credits as an exact decimal credit string: 1500000 -> '1.5', 2000000 -> '2'."""
    if micros >= 0:
        whole, frac = divmod(micros, MICROS_PER_CREDIT)
        return f"{whole}.{frac:06d}".rstrip("0") if frac else str(whole)
    whole, frac = divmod(-micros, MICROS_PER_CREDIT)
    return f"-{whole}.{frac:06d}".rstrip("0") if frac else f"-{whole}"


def credits(value: str | int | float) -> int:
    """Credits written by a person (``credits("1.5")``) as micro-credits; for code and tests."""
    return int(to_micros(value))
