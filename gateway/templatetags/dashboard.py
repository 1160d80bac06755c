"""Number formatting for the dashboard: unknown values show as a dash, never as zero (docs/contract.md §7)."""

from __future__ import annotations

from django import template

from gateway.prices import format_price

register = template.Library()


@register.filter
def num(value, digits: int = 4) -> str:
    """A metric for reading: '–' when unknown, otherwise up to `digits` significant decimals."""
    if value is None or value == "":  # "" is what a template gives for a missing value
        return "–"
    value = float(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return (
        f"{value:.{int(digits)}g}" if abs(value) < 1 else f"{value:,.{int(digits)}f}".rstrip("0").rstrip(".")
    )


@register.filter
def pct(value) -> str:
    """A percentage change with its sign, '–' when unknown."""
    return "–" if value is None or value == "" else f"{float(value):+.2f}%"


@register.filter
def price(value, decimals=None) -> str:
    """A price with its symbol's tick-size decimals (gateway/prices.py); '–' when unknown."""
    return format_price(value, decimals if isinstance(decimals, int) else None)


@register.simple_tag
def symbol_price(value, symbol: str, decimals_by_symbol: dict) -> str:
    """A price of `symbol` on a page listing many symbols (the history)."""
    return format_price(value, (decimals_by_symbol or {}).get(symbol))


@register.filter
def compact(value) -> str:
    """A large count or USDT amount in a narrow column: 950, 12.3k, 2.50M, 1.20B; '–' when unknown."""
    if value is None or value == "":
        return "–"
    number = float(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M")):
        if abs(number) >= limit:
            return f"{number / limit:.2f}{suffix}"
    if abs(number) >= 1e4:
        return f"{number / 1e3:.1f}k"
    return f"{number:.0f}" if number == int(number) else f"{number:.2f}"


@register.filter
def share(value) -> str:
    """A ratio of 0..1 as a percentage (taker-buy share); '–' when unknown."""
    return "–" if value is None or value == "" else f"{float(value) * 100:.1f}%"
