"""Number formatting for the dashboard: unknown values show as a dash, never as zero (docs/contract.md §7)."""

from __future__ import annotations

from django import template

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
