"""Storing candles and bars in PostgreSQL, and reading the warm-up back exactly."""

from __future__ import annotations

import msgspec
import pytest

from cryptomon.contract.candles import Candle, decode_payload
from metrics import selectors, services
from metrics.replay import replay

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])]

MINUTE = 60_000
T0 = 1_767_225_600_000


def candle(
    symbol: str, minute: int, close: str = "87000.12345678", qv: str = "12345678901.12345678"
) -> Candle:
    return Candle.from_payload(
        {
            "symbol": symbol,
            "open_time": T0 + minute * MINUTE,
            "open": "87000.5",
            "high": "1e31" if close == "1e31" else "90000",
            "low": "1",
            "close": close,
            "volume": "0.00000001",
            "quote_volume": qv,
            "trades": 7,
            "taker_buy_volume": "0",
            "taker_buy_quote_volume": "1.5",
            "event_time": T0 + minute * MINUTE + 61_234,
            "source": "rest",
        }
    )


def test_stored_candles_read_back_identical_in_keyset_pages():
    candles = [candle(symbol, m) for symbol in ("ETHUSDT", "BTCUSDT", "ÆUSDT") for m in range(7)]
    assert services.store(candles) == []
    assert services.store(candles[:3]) == []  # again: DO NOTHING
    pages, after = [], None
    while page := selectors.candles_page(T0 + MINUTE, after, limit=4):
        pages.append(page)
        after = (page[-1].symbol, page[-1].open_time)
    read = [c for page in pages for c in page]
    want = sorted((c for c in candles if c.open_time >= T0 + MINUTE), key=lambda c: (c.symbol, c.open_time))
    assert [(c.symbol, c.open_time) for c in read] == [(c.symbol, c.open_time) for c in want]
    assert read == want  # prices, exact volumes, event time and source survive the round trip
    assert selectors.newest_candle_time() == T0 + 6 * MINUTE
    assert {c.symbol for c in selectors.candles_page(T0, symbols=["ÆUSDT", "XRPUSDT"])} == {
        "ÆUSDT"
    }  # a shard's


def test_a_bad_row_is_refused_alone_and_the_rest_of_its_batch_is_stored():
    good = [candle("BTCUSDT", m) for m in range(3)]
    bad = candle("BTCUSDT", 3, close="1e31")  # beyond numeric(38, 8)
    refused = services.store([good[0], bad, good[1], good[2]])
    assert [item for item, _ in refused] == [bad]
    assert "numeric" in refused[0][1]
    assert [c.open_time for c in selectors.candles_page(T0)] == [T0, T0 + MINUTE, T0 + 2 * MINUTE]


def test_bars_are_upserted_as_six_rows_and_the_newest_is_the_watermark():
    candles = [candle("BTCUSDT", m, close=str(87000 + m)) for m in range(6)]
    bars = list(replay(candles))
    assert services.store(candles, bars) == []
    assert services.store([], bars[-2:]) == []  # upsert again: no duplicates, no error
    assert selectors.newest_metrics() == {"BTCUSDT": T0 + 5 * MINUTE}
    from metrics.models import MetricBar

    assert MetricBar.objects.count() == 36
    row = MetricBar.objects.get(symbol="BTCUSDT", timeframe="5m", time__gte="2026-01-01T00:05:00Z")
    assert row.volume == bars[-1].metrics["volume_5m"] and row.trades == 35.0
    assert (
        MetricBar.objects.get(symbol="BTCUSDT", timeframe="15m", time__gte="2026-01-01T00:05:00Z").open
        is None
    )


DERIVATIVES = {
    "mark_close": "87001.5",
    "index_close": "86990.25",
    "funding_rate": "-0.00012345",
    "funding_interval_hours": 4,
    "next_funding_time": T0 + 4 * 60 * MINUTE,
    "open_interest": "12345.678",
    "liq_long_quote": "1234567.12345678",
    "liq_short_quote": "0",
    "liq_count": 3,
}


def with_derivatives(c: Candle, **changes) -> Candle:
    return decode_payload(msgspec.json.encode({**c.payload(), **DERIVATIVES, **changes}))


def test_derivatives_fields_are_stored_and_read_back_exactly_by_the_warm_up_and_the_backtest():
    from alerts.backtest import stored_candles

    candles = [
        with_derivatives(candle("BTCUSDT", 0)),
        with_derivatives(candle("BTCUSDT", 1), index_close=None, liq_count=None, next_funding_time=None),
        candle("BTCUSDT", 2),  # none at all: every column null
    ]
    assert candles[0].derivatives.liq_long_quote_e8 == 123456712345678
    assert candles[2].derivatives is None
    assert services.store(candles) == []
    assert selectors.candles_page(T0) == candles
    assert [c.derivatives for c in stored_candles("BTCUSDT")] == [c.derivatives for c in candles]
    from metrics.models import StoredCandle

    row = StoredCandle.objects.get(symbol="BTCUSDT", time__lt="2026-01-01T00:01:00Z")
    assert (row.funding_rate, row.funding_interval_hours, str(row.liq_long_quote)) == (
        -0.00012345,
        4.0,
        "1234567.12345678",
    )


def test_the_derivatives_metrics_are_stored_on_every_timeframe_row():
    candles = [with_derivatives(candle("BTCUSDT", m), open_interest=str(1000 + m)) for m in range(6)]
    bars = list(replay(candles))
    assert services.store(candles, bars) == []
    from metrics.models import MetricBar

    rows = {r.timeframe: r for r in MetricBar.objects.filter(time__gte="2026-01-01T00:05:00Z")}
    m = bars[-1].metrics
    assert rows["5m"].oi_change == m["oi_change_5m"] == (1005 - 1000) / 1000 * 100
    assert rows["5m"].liq_long == m["liq_long_5m"] == 5 * 1234567.12345678
    assert rows["5m"].liq_short == 0.0 and rows["15m"].liq_short is None and rows["15m"].oi_change is None
    for row in rows.values():
        assert (row.mark_price, row.index_price, row.basis) == (m["mark_price"], m["index_price"], m["basis"])
        assert (row.funding_rate, row.funding_apr, row.oi) == (m["funding_rate"], m["funding_apr"], m["oi"])
    assert rows["1d"].funding_apr == -0.012345 * 24 / 4 * 365
