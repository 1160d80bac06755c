"""Reads: the alerts a viewer may see (the rule itself is :mod:`alerts.visibility`), for the live feed,
the JSON API and history pages, and the alert engine's reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db.models import QuerySet

from alerts.models import AlertHistory
from alerts.visibility import AlertAudience
from cryptomon.contract.times import from_ms, to_ms


def audience_of(viewer) -> AlertAudience:
    """Accept either an :class:`AlertAudience` or a user (anonymous or None included)."""
    return viewer if isinstance(viewer, AlertAudience) else AlertAudience.for_user(viewer)


def _since(value: datetime | int | float | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return from_ms(value)  # epoch milliseconds, as on the wire


def visible_alerts_queryset(
    viewer,
    symbols: Iterable[str] | None = None,
    rules: Iterable[str] | None = None,
    since: datetime | int | None = None,
) -> QuerySet[AlertHistory]:
    """Every alert the viewer may see, newest bar first (ties: newest row first); not sliced, so pages
    can paginate it. ``symbols``/``rules``: None = all, an empty list = none. ``since``: a datetime or epoch
    milliseconds, compared with the bar's open time."""
    audience = audience_of(viewer)
    queryset = AlertHistory.objects.filter(audience.q())
    if symbols is not None:
        queryset = queryset.filter(symbol__in=list(symbols))
    if rules is not None:
        queryset = queryset.filter(rule__in=list(rules))
    if (moment := _since(since)) is not None:
        queryset = queryset.filter(time__gte=moment)
    return queryset.order_by("-time", "-id")


def visible_alerts(
    viewer,
    symbols: Iterable[str] | None = None,
    rules: Iterable[str] | None = None,
    since: datetime | int | None = None,
    limit: int = 100,
) -> list[dict]:
    """The newest ``limit`` visible alerts as docs/contract.md §5 payloads, newest first (the §10 snapshot)."""
    symbols = None if symbols is None else list(symbols)
    rules = None if rules is None else list(rules)
    if symbols == [] or rules == [] or limit <= 0:
        return []
    rows = visible_alerts_queryset(viewer, symbols, rules, since)[:limit]
    return [row.to_payload() for row in rows]


# --- reads of the alert engine (alerts/engine.py) ------------------------------------------------------


def enabled_rules() -> list:
    """Every enabled rule (global and personal), as stored; the engine compiles them."""
    from alerts.models import AlertRule

    return list(AlertRule.objects.filter(enabled=True).order_by("slug"))


def rules_version() -> tuple:
    """Changes whenever a rule is created, edited, enabled, disabled or deleted: the engine polls it."""
    from django.db.models import Count, Max

    from alerts.models import AlertRule

    row = AlertRule.objects.aggregate(newest=Max("updated_at"), count=Count("id"))
    return (row["newest"], row["count"])


def last_fired_marks() -> list[tuple[str, str, int]]:
    """(rule, symbol, open time ms of its newest alert) for every pair in `alert_history`: the cooldown
    state the engine rebuilds on start (docs/contract.md §8)."""
    from django.db import connections

    with connections["timeseries"].cursor() as cursor:
        cursor.execute("SELECT rule, symbol, max(time) FROM alert_history GROUP BY rule, symbol")
        return [(rule, symbol, to_ms(time)) for rule, symbol, time in cursor.fetchall()]


def alerts_triggered_since(moment: datetime) -> list[dict]:
    """§5 payloads of the alerts stored since `moment` (wall clock), oldest first: republished on start in
    case a crash came between the commit and the publish (JetStream drops what it already has)."""
    rows = AlertHistory.objects.filter(triggered_at__gte=moment).order_by("triggered_at", "id")
    return [row.to_payload() for row in rows]


def trading_symbols() -> list[str]:
    """The universe as the collector last saw it (shards filter their consumers on it)."""
    from collector.models import Symbol

    return list(Symbol.objects.filter(trading=True).values_list("symbol", flat=True))
