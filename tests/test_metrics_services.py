"""Storing candles and bars in PostgreSQL, and reading the warm-up back exactly."""

from __future__ import annotations

import pytest

from cryptomon.contract.candles import Candle
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
