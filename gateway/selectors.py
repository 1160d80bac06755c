"""Reads behind the dashboard pages and the JSON API (HackSoft: reads here, writes in services).

Which alerts a viewer may see is decided once, in :mod:`alerts.selectors`; this module only narrows that
query (rule, symbol, direction, time range) and reads symbols, candles and metrics, which every viewer
may see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connections
from django.db.models import QuerySet

from alerts.models import AlertHistory, AlertRule, UserSettings
from alerts.selectors import visible_alerts_queryset
from collector.models import Symbol
from cryptomon.contract.names import (
    DERIVATIVES_BAR_NAMES,
    DERIVATIVES_WINDOW_STEMS,
    INDICATOR_NAMES,
    TIMEFRAMES,
    WINDOW_STEMS,
)
from cryptomon.contract.times import from_ms, to_ms
from gateway.prices import decimals_of
from metrics.models import MetricBar, StoredCandle

CANDLE_NUMBERS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "taker_buy_volume",
    "taker_buy_quote_volume",
)
DERIVATIVE_NUMBERS = (
    "mark_close",
    "index_close",
    "funding_rate",
    "funding_interval_hours",
    "open_interest",
    "liq_long_quote",
    "liq_short_quote",
)
"""The §7b fields of a candle that are numbers (null when unknown); `next_funding_time` and `liq_count` too."""


def _number(value) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class AlertFilters:
    """The history page's and `/api/alerts`' filters; None = no filter. Times compare with the bar's open."""

    rule: str | None = None
    symbol: str | None = None
    direction: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def filtered_alerts(viewer, filters: AlertFilters) -> QuerySet[AlertHistory]:
    """The viewer's visible alerts narrowed by `filters`, newest first (not sliced: callers paginate)."""
    queryset = visible_alerts_queryset(
        viewer,
        symbols=None if filters.symbol is None else [filters.symbol],
        rules=None if filters.rule is None else [filters.rule],
    )
    if filters.direction is not None:
        queryset = queryset.filter(direction=filters.direction)
    if filters.since is not None:
        queryset = queryset.filter(time__gte=filters.since)
    if filters.until is not None:
        queryset = queryset.filter(time__lt=filters.until)
    return queryset


def rule_choices(user) -> list[tuple[str, str]]:
    """(slug, name) of the global rules and the user's own, for the history filter."""
    rules = AlertRule.objects.filter(owner__isnull=True)
    if user is not None and user.is_authenticated:
        rules = rules | AlertRule.objects.filter(owner_id=user.pk)
    return list(rules.order_by("name", "slug").values_list("slug", "name"))


def symbols() -> list[dict]:
    """Every known symbol with its newest stored 1-day figures (price, change_1d, volume_1d, open_time)."""
    with connections["timeseries"].cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT ON (symbol) symbol, time, price, change, volume FROM metrics_calculated "
            "WHERE timeframe = '1d' ORDER BY symbol, time DESC"
        )
        latest = {row[0]: row[1:] for row in cursor.fetchall()}
    rows = []
    for symbol in Symbol.objects.order_by("symbol"):
        time, price, change, volume = latest.get(symbol.symbol, (None, None, None, None))
        rows.append(
            {
                "symbol": symbol.symbol,
                "status": symbol.status,
                "trading": symbol.trading,
                "contract_type": symbol.contract_type,
                "base_asset": symbol.base_asset,
                "quote_asset": symbol.quote_asset,
                "history_start": to_ms(symbol.history_start),
                "price": price,
                "change_1d": change,
                "volume_1d": volume,
                "open_time": None if time is None else to_ms(time),
            }
        )
    return rows


def symbol_exists(symbol: str) -> bool:
    """Known to the collector, or at least has stored candles (e.g. imported history)."""
    if "\x00" in symbol:  # no symbol has one, and PostgreSQL text cannot hold NUL (a query would fail)
        return False
    return (
        Symbol.objects.filter(symbol=symbol).exists() or StoredCandle.objects.filter(symbol=symbol).exists()
    )


def candles(symbol: str, start: datetime | None, end: datetime | None, limit: int) -> list[dict]:
    """Stored 1-minute candles of `symbol` in [start, end), oldest first; the newest `limit` of them."""
    queryset = StoredCandle.objects.filter(symbol=symbol)
    if start is not None:
        queryset = queryset.filter(time__gte=start)
    if end is not None:
        queryset = queryset.filter(time__lt=end)
    rows = list(queryset.order_by("-time")[:limit])
    rows.reverse()
    return [
        {
            "open_time": to_ms(row.time),
            **{name: float(getattr(row, name)) for name in CANDLE_NUMBERS},
            "trades": row.trades,
            "source": row.source,
            **{name: _number(getattr(row, name)) for name in DERIVATIVE_NUMBERS},
            "next_funding_time": None if row.next_funding_time is None else to_ms(row.next_funding_time),
            "liq_count": row.liq_count,
        }
        for row in rows
    ]


def latest_metrics(symbol: str, at: datetime | None = None) -> dict | None:
    """The newest stored final bar of `symbol` (at or before `at`): every §7 metric by name, or None.

    Names follow docs/contract.md §7 (`change_1h`, `rsi_14`, ...); `timeframes` repeats the window metrics per
    timeframe for tables. A timeframe without a row for that bar has nulls (unknown, never zero)."""
    bars = MetricBar.objects.filter(symbol=symbol)
    if at is not None:
        bars = bars.filter(time__lte=at)
    newest = bars.order_by("-time").values_list("time", flat=True).first()
    if newest is None:
        return None
    rows = {row.timeframe: row for row in MetricBar.objects.filter(symbol=symbol, time=newest)}
    metrics: dict[str, float | None] = {}
    timeframes: dict[str, dict[str, float | None]] = {}
    for timeframe in TIMEFRAMES:
        row = rows.get(timeframe)
        values = {column: getattr(row, column) if row else None for column in WINDOW_STEMS}
        timeframes[timeframe] = values
        metrics.update({f"{column}_{timeframe}": value for column, value in values.items()})
    any_row = next(iter(rows.values()))
    indicators = {column: getattr(any_row, column) for column in INDICATOR_NAMES}
    derivatives = {column: getattr(any_row, column) for column in DERIVATIVES_BAR_NAMES}
    for timeframe in TIMEFRAMES:
        row = rows.get(timeframe)
        for column in DERIVATIVES_WINDOW_STEMS:
            derivatives[f"{column}_{timeframe}"] = getattr(row, column) if row else None
    return {
        "symbol": symbol,
        "open_time": to_ms(newest),
        "price": any_row.price,
        "metrics": {"price": any_row.price, **metrics, **indicators, **derivatives},
        "timeframes": timeframes,
        "indicators": indicators,
    }


def user_settings(user) -> UserSettings:
    """The user's settings row, or an unsaved default one (nothing is written by reading)."""
    return UserSettings.objects.filter(user_id=user.pk).first() or UserSettings(user_id=user.pk)


def personal_rules(user) -> QuerySet[AlertRule]:
    return AlertRule.objects.filter(owner_id=user.pk).order_by("name")


def personal_rule(user, rule_id: int) -> AlertRule | None:
    """One of the user's own rules; None for another user's or a global rule (never reveal which)."""
    return AlertRule.objects.filter(owner_id=user.pk, pk=rule_id).first()


# --- the symbol page's chart -------------------------------------------------------------------------------

CHART_INTERVALS: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440}  # minutes
CHART_MARKERS = 500


def price_decimals(symbols: list[str] | None = None) -> dict[str, int | None]:
    """Each symbol's price decimals from its tick size (gateway/prices.py); all known symbols by default."""
    rows = Symbol.objects.all() if symbols is None else Symbol.objects.filter(symbol__in=symbols)
    return {
        symbol: decimals_of(tick, precision)
        for symbol, tick, precision in rows.values_list("symbol", "tick_size", "price_precision")
    }


def price_format(symbol: str) -> tuple[str, int | None]:
    """(tick size or "", decimals or None) of one symbol."""
    info = Symbol.objects.filter(symbol=symbol).values_list("tick_size", "price_precision").first()
    return (info[0], decimals_of(*info)) if info else ("", None)


def chart(viewer, symbol: str, interval: str, bars: int, end: datetime | None = None) -> dict:
    """The newest `bars` candles of `interval` ending before `end`, aggregated from candles_1m in SQL.

    Buckets are aligned to the epoch in UTC, as Binance's own intervals. Each bucket also carries the
    docs/contract.md §7 indicators of its last stored final bar (they are indicators of 1-minute closes,
    sampled at the bucket's close; never recomputed here) and the viewer's visible alerts in the range.
    """
    minutes = CHART_INTERVALS[interval]
    seconds = minutes * 60
    candles_range = StoredCandle.objects.filter(symbol=symbol)
    if end is not None:
        candles_range = candles_range.filter(time__lt=end)
    newest = candles_range.order_by("-time").values_list("time", flat=True).first()
    tick_size, decimals = price_format(symbol)
    result: dict = {
        "symbol": symbol,
        "interval": interval,
        "tick_size": tick_size or None,
        "price_decimals": decimals,
        "bars": [],
        "indicators": [],
        "alerts": [],
    }
    if newest is None:
        return result
    last_bucket = int(newest.timestamp()) // seconds * seconds
    start = from_ms((last_bucket - (bars - 1) * seconds) * 1000)
    stop = from_ms((last_bucket + seconds) * 1000)
    bucket = "floor(extract(epoch FROM time) / %s)::bigint * %s"
    with connections["timeseries"].cursor() as cursor:
        cursor.execute(
            f"SELECT {bucket} AS b, (array_agg(open ORDER BY time))[1], max(high), min(low), "
            "(array_agg(close ORDER BY time DESC))[1], sum(volume), sum(quote_volume), sum(trades) "
            "FROM candles_1m WHERE symbol = %s AND time >= %s AND time < %s GROUP BY b ORDER BY b",
            [seconds, seconds, symbol, start, stop],
        )
        result["bars"] = [
            {
                "open_time": b * 1000,
                "open": float(o),
                "high": float(h),
                "low": float(lo),
                "close": float(c),
                "volume": float(v),
                "quote_volume": float(q),
                "trades": int(t),
            }
            for b, o, h, lo, c, v, q, t in cursor.fetchall()
        ]
        cursor.execute(
            f"SELECT DISTINCT ON (b) {bucket} AS b, {', '.join(INDICATOR_NAMES)} FROM metrics_calculated "
            "WHERE symbol = %s AND timeframe = %s AND time >= %s AND time < %s ORDER BY b, time DESC",
            [seconds, seconds, symbol, TIMEFRAMES[0], start, stop],
        )
        result["indicators"] = [
            {"open_time": row[0] * 1000, **dict(zip(INDICATOR_NAMES, row[1:], strict=True))}
            for row in cursor.fetchall()
        ]
    alerts = filtered_alerts(viewer, AlertFilters(symbol=symbol, since=start, until=stop))
    result["alerts"] = [
        {
            "open_time": to_ms(time),
            "rule": rule,
            "rule_name": name,
            "direction": direction,
            "severity": severity,
            "late": late,
        }
        for time, rule, name, direction, severity, late in alerts.values_list(
            "time", "rule", "rule_name", "direction", "severity", "late"
        )[:CHART_MARKERS]
    ]
    return result
