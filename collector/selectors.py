"""Reads the collector needs from the time-series database: resume points and holes in `candles_1m`."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connections

from cryptomon.contract.times import MINUTE_MS, from_ms, to_ms


def newest_stored(symbols: list[str]) -> dict[str, tuple[int, str]]:
    """Per symbol, the newest candle in `candles_1m`: (open time ms, close as decimal text)."""
    if not symbols:
        return {}
    with connections["timeseries"].cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT ON (symbol) symbol, time, close::text FROM candles_1m "
            "WHERE symbol = ANY(%s) ORDER BY symbol, time DESC",
            [list(symbols)],
        )
        return {symbol: (to_ms(time), close) for symbol, time, close in cursor.fetchall()}


@dataclass(frozen=True)
class Hole:
    """Minutes first..last (open times, inclusive) missing from `candles_1m`; `previous_close` if known."""

    symbol: str
    first: int
    last: int
    previous_close: str | None

    @property
    def minutes(self) -> int:
        return (self.last - self.first) // MINUTE_MS + 1


def holes(bounds: dict[str, tuple[int, int]], behind_tolerance_ms: int) -> tuple[list[Hole], list[str]]:
    """Holes of each symbol's window `[start, end]` in `candles_1m`, and the symbols whose storage lags.

    Only interior holes and a leading hole count: the minutes after the newest stored candle are the
    metrics writer's backlog, not holes. A symbol whose newest stored candle is more than
    `behind_tolerance_ms` before `end` is skipped (storage is behind; repairing would republish it all).
    """
    if not bounds:
        return [], []
    symbols = list(bounds)
    starts = [from_ms(bounds[s][0]) for s in symbols]
    ends = [from_ms(bounds[s][1]) for s in symbols]
    found: list[Hole] = []
    behind: list[str] = []
    with connections["timeseries"].cursor() as cursor:
        cursor.execute(
            """
            WITH w AS (SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS w(symbol, s, e))
            SELECT w.symbol, min(c.time), max(c.time) FROM w
            LEFT JOIN candles_1m c ON c.symbol = w.symbol AND c.time >= w.s AND c.time <= w.e
            GROUP BY w.symbol
            """,
            [symbols, starts, ends],
        )
        extent = {symbol: (low, high) for symbol, low, high in cursor.fetchall()}
        cursor.execute(
            """
            WITH w AS (SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS w(symbol, s, e))
            SELECT symbol, prev_time, prev_close, time FROM (
                SELECT c.symbol, c.time,
                       lag(c.time) OVER (PARTITION BY c.symbol ORDER BY c.time) AS prev_time,
                       lag(c.close::text) OVER (PARTITION BY c.symbol ORDER BY c.time) AS prev_close
                FROM w JOIN candles_1m c ON c.symbol = w.symbol AND c.time >= w.s AND c.time <= w.e
            ) s
            WHERE prev_time IS NOT NULL AND time - prev_time > interval '1 minute'
            ORDER BY symbol, time
            """,
            [symbols, starts, ends],
        )
        gaps = cursor.fetchall()
    for symbol in symbols:
        start, end = bounds[symbol]
        low, high = extent.get(symbol, (None, None))
        if high is None or to_ms(high) < end - behind_tolerance_ms:
            behind.append(symbol)
            continue
        if to_ms(low) > start:
            found.append(Hole(symbol, start, to_ms(low) - MINUTE_MS, None))
    skip = set(behind)
    for symbol, prev_time, prev_close, time in gaps:
        if symbol not in skip:
            found.append(Hole(symbol, to_ms(prev_time) + MINUTE_MS, to_ms(time) - MINUTE_MS, prev_close))
    return found, behind


def known_symbols() -> dict[str, dict]:
    """The `symbols` table as plain dicts (the collector's memory of the universe across restarts)."""
    from collector.models import Symbol

    return {
        row["symbol"]: row
        for row in Symbol.objects.values("symbol", "trading", "history_start", "first_seen", "last_seen")
    }
