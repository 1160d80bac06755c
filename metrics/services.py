"""Writes of the metrics worker: `candles_1m` (insert, DO NOTHING) and `metrics_calculated` (upsert), batched.

A batch is one multi-row statement pipeline in one transaction. If the database refuses the batch because of
its data (a bad value in one row), the batch is written again row by row so the good rows are kept and each
bad row is reported by the caller (docs/contract.md §6: a bad row never loses its batch). Connection problems are
raised: the caller does not acknowledge, and JetStream redelivers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal

import msgspec
from django.db import DataError, IntegrityError, connections, transaction

from cryptomon.contract.candles import Candle, Derivatives, units_text
from cryptomon.contract.names import (
    DERIVATIVES_BAR_NAMES,
    DERIVATIVES_WINDOW_STEMS,
    EVERY_ROW_NAMES,
    TIMEFRAMES,
    WINDOW_STEMS,
)
from cryptomon.contract.times import from_ms
from metrics.windows import Bar

logger = logging.getLogger(__name__)

ALIAS = "timeseries"

_CANDLE_COLUMNS = (
    "symbol, time, open, high, low, close, volume, quote_volume, trades, taker_buy_volume, "
    "taker_buy_quote_volume, source, event_time, mark_close, index_close, funding_rate, "
    "funding_interval_hours, next_funding_time, open_interest, liq_long_quote, liq_short_quote, liq_count"
)
_CANDLE_SQL = (
    f"INSERT INTO candles_1m ({_CANDLE_COLUMNS}) VALUES ({', '.join(['%s'] * 22)}) ON CONFLICT DO NOTHING"
)
_WINDOW_STEMS = (*WINDOW_STEMS, *DERIVATIVES_WINDOW_STEMS)
_ROW_NAMES = (*EVERY_ROW_NAMES, *DERIVATIVES_BAR_NAMES)
_METRIC_COLUMNS = (*_WINDOW_STEMS, *_ROW_NAMES)
_METRIC_SQL = (
    f"INSERT INTO metrics_calculated (symbol, timeframe, time, {', '.join(_METRIC_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * (3 + len(_METRIC_COLUMNS)))}) "
    "ON CONFLICT (symbol, timeframe, time) DO UPDATE SET "
    + ", ".join(f"{column} = EXCLUDED.{column}" for column in _METRIC_COLUMNS)
)
_WINDOW_NAMES = tuple((window, tuple(f"{stem}_{window}" for stem in _WINDOW_STEMS)) for window in TIMEFRAMES)


# Whole batches go in as one statement over one JSON array of rows: far faster than a statement per row,
# and the rows are encoded in C (msgspec) instead of being quoted value by value by the driver. `json`
# (not `jsonb`) keeps each number's text, so PostgreSQL parses exactly the text a parameter would have.
def _select(types: tuple[str, ...]) -> str:
    return ", ".join(
        f"{_EPOCH} + (r->>{k})::bigint * interval '1 millisecond'" if kind == "ms" else f"(r->>{k})::{kind}"
        for k, kind in enumerate(types)
    )


_EPOCH = "timestamptz 'epoch'"
_CANDLE_TYPES = (
    *("text", "ms", *["numeric"] * 6, "bigint", "numeric", "numeric", "text", "ms"),
    *("float8", "float8", "float8", "float8", "ms", "float8", "numeric", "numeric", "bigint"),
)
_CANDLE_BULK = (
    f"INSERT INTO candles_1m ({_CANDLE_COLUMNS}) "
    f"SELECT {_select(_CANDLE_TYPES)} FROM json_array_elements(%s::json) AS r ON CONFLICT DO NOTHING"
)
_NO_DERIVATIVES = (None,) * 9
_METRIC_BULK = (
    f"INSERT INTO metrics_calculated (symbol, timeframe, time, {', '.join(_METRIC_COLUMNS)}) "
    f"SELECT {_select(('text', 'text', 'ms', *['float8'] * len(_METRIC_COLUMNS)))} "
    "FROM json_array_elements(%s::json) AS r "
    "ON CONFLICT (symbol, timeframe, time) DO UPDATE SET "
    + ", ".join(f"{column} = EXCLUDED.{column}" for column in _METRIC_COLUMNS)
)


def _price_text(value: float) -> msgspec.Raw:
    return msgspec.Raw(repr(value).encode())  # the text `Candle.decimal` gives the numeric column


def _candle_json(candle: Candle) -> tuple:
    return (
        candle.symbol,
        candle.open_time,
        _price_text(candle.open),
        _price_text(candle.high),
        _price_text(candle.low),
        _price_text(candle.close),
        msgspec.Raw(units_text(candle.volume_e8).encode()),
        msgspec.Raw(units_text(candle.quote_volume_e8).encode()),
        candle.trades,
        msgspec.Raw(units_text(candle.taker_buy_volume_e8).encode()),
        msgspec.Raw(units_text(candle.taker_buy_quote_volume_e8).encode()),
        candle.source or "",
        candle.close_time if candle.event_time is None else candle.event_time,
        *(_NO_DERIVATIVES if candle.derivatives is None else candle.derivatives.values()),
    )


def _metric_json(bar: Bar) -> list[tuple]:
    metrics = bar.metrics_dict()
    shared = tuple(metrics[name] for name in _ROW_NAMES)
    return [
        (bar.symbol, window, bar.open_time, *(metrics[name] for name in names), *shared)
        for window, names in _WINDOW_NAMES
    ]


_encoder = msgspec.json.Encoder()


def _encode(rows: list) -> str:
    return _encoder.encode(rows).decode()


def candle_row(candle: Candle) -> tuple:
    """The `candles_1m` row; volumes exact, a missing event time is taken as the close time."""
    return (
        candle.symbol,
        from_ms(candle.open_time),
        candle.decimal("open"),
        candle.decimal("high"),
        candle.decimal("low"),
        candle.decimal("close"),
        candle.decimal("volume"),
        candle.decimal("quote_volume"),
        candle.trades,
        candle.decimal("taker_buy_volume"),
        candle.decimal("taker_buy_quote_volume"),
        candle.source or "",
        from_ms(candle.close_time if candle.event_time is None else candle.event_time),
        *_derivative_row(candle.derivatives),
    )


def _derivative_row(d: Derivatives | None) -> tuple:
    """The §7b columns of a `candles_1m` row (None where unknown)."""
    if d is None:
        return _NO_DERIVATIVES
    long_q, short_q = d.liq_long_quote_e8, d.liq_short_quote_e8
    return (
        d.mark_close,
        d.index_close,
        d.funding_rate,
        d.funding_interval_hours,
        None if d.next_funding_time is None else from_ms(d.next_funding_time),
        d.open_interest,
        None if long_q is None else Decimal(long_q).scaleb(-8),
        None if short_q is None else Decimal(short_q).scaleb(-8),
        d.liq_count,
    )


def metric_rows(bar: Bar) -> list[tuple]:
    """The 6 `metrics_calculated` rows of a bar (one per timeframe)."""
    time = from_ms(bar.open_time)
    metrics = bar.metrics_dict()
    shared = tuple(metrics[name] for name in _ROW_NAMES)
    return [
        (bar.symbol, window, time, *(_float(metrics[name]) for name in names), *shared)
        for window, names in _WINDOW_NAMES
    ]


def _float(value: float | None) -> float | None:
    """Every metric column is float8 (trades counts are ints in the payload)."""
    return None if value is None else float(value)


def store(candles: Sequence[Candle] = (), bars: Sequence[Bar] = ()) -> list[tuple[object, str]]:
    """Insert candles (DO NOTHING) and upsert bars in one transaction; returns the refused (item, reason).

    Only rows the database refuses for their data are returned; everything else is committed.
    """
    latest = {(bar.symbol, bar.open_time): index for index, bar in enumerate(bars)}
    bars = [bars[index] for index in sorted(latest.values())]  # one upsert per key and statement
    try:
        with transaction.atomic(using=ALIAS), connections[ALIAS].cursor() as cursor:
            if candles:
                cursor.execute(_CANDLE_BULK, [_encode([_candle_json(candle) for candle in candles])])
            if bars:
                cursor.execute(_METRIC_BULK, [_encode([row for bar in bars for row in _metric_json(bar)])])
        return []
    except (DataError, IntegrityError) as error:
        logger.warning(
            "a batch of %d candles / %d bars was refused (%s); storing row by row",
            len(candles),
            len(bars),
            error,
        )
    candle_rows = [candle_row(candle) for candle in candles]
    bar_rows = [metric_rows(bar) for bar in bars]
    refused: list[tuple[object, str]] = []
    with connections[ALIAS].cursor() as cursor:
        for item, rows, sql in [
            *((c, [r], _CANDLE_SQL) for c, r in zip(candles, candle_rows, strict=True)),
            *((b, r, _METRIC_SQL) for b, r in zip(bars, bar_rows, strict=True)),
        ]:
            try:
                with transaction.atomic(using=ALIAS):
                    cursor.executemany(sql, rows)
            except (DataError, IntegrityError) as error:
                reason = str(error).strip().splitlines()[0]
                refused.append((item, reason))
                logger.error(
                    "refused %s %s at %s: %s", type(item).__name__, item.symbol, item.open_time, reason
                )
    return refused
