"""Reads of the metrics worker: warm-up candles and the stored part of each symbol's watermark (docs/contract.md §7)."""

from __future__ import annotations

from django.db import connections

from cryptomon.contract.candles import Candle, Derivatives, volume_units
from cryptomon.contract.times import from_ms

ALIAS = "timeseries"

DERIVATIVE_COLUMNS = (
    "mark_close, index_close, funding_rate, funding_interval_hours, "
    "(extract(epoch FROM next_funding_time) * 1000)::bigint, open_interest, liq_long_quote::text, "
    "liq_short_quote::text, liq_count"
)
"""The §7b columns of `candles_1m` as `Derivatives.parse` reads them (nine values, in field order)."""


def newest_metrics() -> dict[str, int]:
    """Per symbol, the open time (ms) of its newest bar in `metrics_calculated`."""
    with connections[ALIAS].cursor() as cursor:
        cursor.execute(
            "SELECT symbol, (extract(epoch FROM max(time)) * 1000)::bigint FROM metrics_calculated "
            "WHERE timeframe = '1d' GROUP BY symbol"
        )
        return dict(cursor.fetchall())


def newest_candle_time() -> int | None:
    """Open time (ms) of the newest stored candle of any symbol."""
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT (extract(epoch FROM max(time)) * 1000)::bigint FROM candles_1m")
        return cursor.fetchone()[0]


def known_symbols() -> list[str]:
    """Symbols the collector knows (trading or not): the universe shards split."""
    from collector.models import Symbol

    return list(Symbol.objects.using(ALIAS).values_list("symbol", flat=True))


def candles_page(
    since_ms: int, after: tuple[str, int] | None = None, limit: int = 20_000, symbols: list[str] | None = None
) -> list[Candle]:
    """Stored candles opening at or after `since_ms`, ordered by (symbol, time), the page after `after`.

    Keyset pages over the primary key, so the warm-up of every symbol is one pass without holding the
    whole of it in memory. Prices arrive as float8 (PostgreSQL rounds numeric text correctly) and volumes
    as exact text.
    """
    sql = (
        "SELECT symbol, (extract(epoch FROM time) * 1000)::bigint, open::float8, high::float8, low::float8, "
        "close::float8, volume::text, quote_volume::text, trades, taker_buy_volume::text, "
        "taker_buy_quote_volume::text, source, (extract(epoch FROM event_time) * 1000)::bigint, "
        f"{DERIVATIVE_COLUMNS} FROM candles_1m WHERE time >= %s"
    )
    params: list = [from_ms(since_ms)]
    if after is not None:
        sql += " AND (symbol, time) > (%s, %s)"
        params += [after[0], from_ms(after[1])]
    if symbols is not None:
        sql += " AND symbol = ANY(%s)"
        params.append(list(symbols))
    sql += " ORDER BY symbol, time LIMIT %s"
    params.append(limit)
    with connections[ALIAS].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        Candle(
            symbol,
            t,
            t + 59_999,
            o,
            h,
            lo,
            c,
            volume_units(v, "volume"),
            volume_units(q, "quote_volume"),
            n,
            volume_units(tv, "taker_buy_volume"),
            volume_units(tq, "taker_buy_quote_volume"),
            event_time,
            source or None,
            Derivatives.parse(row[13:]),
        )
        for row in rows
        for symbol, t, o, h, lo, c, v, q, n, tv, tq, source, event_time in (row[:13],)
    ]
