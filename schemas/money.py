"""Money: integer micro-credits. A float never touches a balance.

On the wire an amount is credits, as a JSON number or a decimal string, at most six
decimal places, never negative. Inside, every amount is an ``int`` of micro-credits
(1 credit = 1,000,000 micro-credits).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_CREDIT = 1_000_000
_SCALE = Decimal(MICROS_PER_CREDIT)
# An amount above this cannot be a real credit balance and would overflow ClickHouse Int64.
MAX_MICROS = 9_000_000_000_000_000_000 // 1000


class AmountError(ValueError):
    """An amount that is not a non-negative credit value with at most six decimals."""


class Micros(int):
    """Micro-credits read from a wire amount; encodes back to a decimal credit string."""

    __slots__ = ()


def to_micros(value: object) -> Micros:
    """Parse a wire amount (int, float from JSON, or decimal string) into micro-credits.

    Floats come from JSON numbers: ``round(f * 1e6) / 1e6 == f`` holds exactly when the
    number as written has at most six decimals (both sides are the float nearest to
    the same decimal), so the fast path needs no ``Decimal``.
    """
    kind = type(value)
    if kind is int:
        micros = value * MICROS_PER_CREDIT  # type: ignore[operator]
    elif kind is float:
        f: float = value  # type: ignore[assignment]
        if f != f or f in (float("inf"), float("-inf")):
            raise AmountError("amount must be a finite number")
        micros = round(f * MICROS_PER_CREDIT)
        if micros / MICROS_PER_CREDIT != f:
            raise AmountError(f"amount {f!r} has more than 6 decimal places")
    elif kind is str:
        micros = _parse_decimal_string(value)  # type: ignore[arg-type]
    else:
        raise AmountError(f"amount must be a number or a decimal string, not {kind.__name__}")
    if micros < 0:
        raise AmountError("amount must not be negative")
    if micros > MAX_MICROS:
        raise AmountError("amount is too large")
    return Micros(micros)


def _parse_decimal_string(text: str) -> int:
    whole, dot, frac = text.partition(".")
    if whole.isdigit() and whole.isascii() and len(frac) <= 6 and (frac.isdigit() and frac.isascii() or not dot):
        return int(whole) * MICROS_PER_CREDIT + (int(frac.ljust(6, "0")) if frac else 0)  # plain "12.345"
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise AmountError(f"amount {text!r} is not a decimal number") from None
    if not d.is_finite():
        raise AmountError("amount must be a finite number")
    scaled = d * _SCALE
    if scaled != scaled.to_integral_value():
        raise AmountError(f"amount {text!r} has more than 6 decimal places")
    return int(scaled)


def credits_str(micros: int) -> str:
    """Micro-credits as an exact decimal credit string: 1500000 -> '1.5', 2000000 -> '2'."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_CREDIT)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def credits(value: str | int | float) -> int:
    """Credits written by a person (``credits("1.5")``) as micro-credits; for code and tests."""
    return int(to_micros(value))
