"""How a price is written on the dashboard: with the decimals of its symbol's tick size (docs/dashboard.md).

Framework-free, mirrored by `static/prices.js` for the browser. A market's prices move in steps of its
exchangeInfo `tickSize` (0.1 for BTCUSDT, 0.0000001 for a coin priced 0.0011), so the tick size's decimals
are the decimals a trader expects: `123456.7`, `0.0011230`. When the tick size is unknown (a symbol known
only from imported candles) the price keeps 6 significant digits, never fewer than 2 decimals, so a small
price never reads as "0.00".
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

MAX_DECIMALS = 12  # no USDⓈ-M market ticks finer than 10⁻⁸; beyond 12 a tick size is bad data
SIGNIFICANT_DIGITS = 6
MIN_DECIMALS = 2


def decimals_of(tick_size: str, price_precision: int | None = None) -> int | None:
    """The decimals of a tick size ("0.00010" → 4, "1" → 0); `pricePrecision` when the tick is unusable."""
    try:
        tick = Decimal(tick_size).normalize() if tick_size else None
    except InvalidOperation:
        tick = None
    if tick is not None and tick.is_finite() and tick > 0:
        return min(MAX_DECIMALS, max(0, -tick.as_tuple().exponent))
    if price_precision is not None and 0 <= price_precision <= MAX_DECIMALS:
        return price_precision
    return None


def fallback_decimals(value: float) -> int:
    """Decimals for `SIGNIFICANT_DIGITS` significant digits of `value` (at least 2, at most 12)."""
    if value == 0 or not math.isfinite(value):
        return MIN_DECIMALS
    magnitude = math.floor(math.log10(abs(value)))
    return min(MAX_DECIMALS, max(MIN_DECIMALS, SIGNIFICANT_DIGITS - 1 - magnitude))


def format_price(value: float | Decimal | None, decimals: int | None) -> str:
    """'–' when unknown (never zero: docs/contract.md §7), else fixed-point with the symbol's decimals."""
    if value is None or value == "":
        return "–"
    number = float(value)
    if not math.isfinite(number):
        return "–"
    if decimals is None:
        text = f"{number:.{fallback_decimals(number)}f}"
        whole, _, fraction = text.partition(".")
        fraction = fraction.rstrip("0").ljust(MIN_DECIMALS, "0")
        return f"{whole}.{fraction}"
    return f"{number:.{decimals}f}"
