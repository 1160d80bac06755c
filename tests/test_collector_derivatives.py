"""The collector's derivatives fields (docs/contract.md §7b) against the Binance emulator over real sockets.

What a user would notice: every candle published from the live stream carries the mark, index, funding,
open interest and liquidations the venue pushed for its minute, exactly; a liquidation that arrives after
its minute went out lands in the next one; a stream that dies leaves nulls and never holds candles back; a
stream that goes quiet on a live connection is noticed, its connection replaced and its minutes backfilled.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from collector.binance import MARK_PRICE_STREAM
from tests import venue_adapter as venue_mod
from tests.test_collector_integration import (
    MINUTE,
    SPEED,
    assert_contiguous,
    assert_equal_to_venue,
    caught_up,
    config_for,
    published,
    running,
    wait_until,
)

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])]

MARK_FIELDS = ("mark_close", "index_close", "funding_rate", "next_funding_time")
LIQ_FIELDS = ("liq_long_quote", "liq_short_quote", "liq_count")
ALL_FIELDS = (*MARK_FIELDS, "funding_interval_hours", "open_interest", *LIQ_FIELDS)


def derivatives_config(venue, **changes):
    return config_for(venue, funding_info_seconds=1.0, **changes)


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Decimal(str(a)) == Decimal(str(b))


def assert_fields_equal_to_venue(venue, candles: list[dict]) -> dict[str, int]:
    """Every `ws` candle's §7b fields equal what the venue pushed; returns how many were known per field."""
    known = dict.fromkeys(ALL_FIELDS, 0)
    for candle in candles:
        if candle["source"] != "ws":
            continue
        truth = venue.derivatives_truth(candle["symbol"], candle["open_time"])
        where = (candle["symbol"], candle["open_time"])
        for name in MARK_FIELDS:
            assert same(candle.get(name), truth[name]), (name, where, candle.get(name), truth[name])
        if candle.get("funding_interval_hours") is not None:
            assert candle.get("funding_interval_hours") == truth["funding_interval_hours"], where
        assert same(candle.get("open_interest"), truth["open_interest"]), (
            where,
            candle.get("open_interest"),
            truth,
        )
        if candle.get("liq_count") is not None:  # known only when the forceOrder stream was up all minute
            for name in LIQ_FIELDS:
                assert same(candle.get(name), truth[name]), (name, where, candle.get(name), truth[name])
        for name in ALL_FIELDS:
            known[name] += candle.get(name) is not None
    return known


def assert_backfilled_fields(candles: list[dict]) -> None:
    for candle in candles:
        if candle["source"] == "rest":
            assert all(candle.get(name) is None for name in ALL_FIELDS), candle
        elif candle["source"] == "filled":
            assert candle["liq_long_quote"] == candle["liq_short_quote"] == candle.get("liq_count") == 0
            assert all(candle.get(name) is None for name in (*MARK_FIELDS, "open_interest")), candle


async def test_every_derivatives_field_equals_what_the_venue_pushed_through_faults(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT", "EEEUSDT", "GGGUSDT", "币安人生USDT"]  # funding every 8 h, 1 h, 4 h, 1 h
    crash = {
        "name": "long-squeeze",
        "symbol": "AAAUSDT",
        "start_minute": 2,
        "steps": [
            {"minutes": 40, "liq_long_quote": 300000, "liq_short_quote": 50000, "funding_rate": -0.0007}
        ],
    }
    async with (
        venue_mod.start(symbols, speed=SPEED, scenarios=[crash]) as venue,
        running(derivatives_config(venue, streams_per_connection=2)) as collector,
    ):
        await wait_until(lambda: caught_up(js, venue, symbols))
        await asyncio.sleep(3)
        venue.send_garbage()  # klines and derivatives alike
        await venue.drop_all_connections()
        await asyncio.sleep(2)
        venue.answer_429(times=2)
        await asyncio.sleep(3)
        await wait_until(lambda: caught_up(js, venue, symbols))
        invalid = collector.stats.total("collector_invalid_frames_total")
    by_symbol = await published(js)
    for symbol in symbols:
        candles = by_symbol[symbol]
        assert_contiguous(candles)
        assert_equal_to_venue(venue, candles)
        assert_backfilled_fields(candles)
        known = assert_fields_equal_to_venue(venue, candles)
        live = sum(1 for c in candles if c["source"] == "ws")
        assert known["mark_close"] >= live // 2, (symbol, known, live)
        assert known["open_interest"] >= 1 and known["liq_count"] >= live // 2, (symbol, known, live)
        assert known["funding_interval_hours"] >= 1, symbol
        intervals = {c.get("funding_interval_hours") for c in candles} - {None}
        assert intervals == {venue.funding_interval_hours(symbol)}, symbol
    squeezed = [c for c in by_symbol["AAAUSDT"] if c.get("liq_count")]
    assert squeezed and max(Decimal(str(c["liq_long_quote"])) for c in squeezed) > 250000
    assert any(c.get("funding_rate") == -0.0007 for c in by_symbol["AAAUSDT"])
    assert invalid >= 1


async def test_a_liquidation_arriving_after_its_minute_was_published_counts_in_the_next_one(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT"]
    async with (
        venue_mod.start(symbols, speed=SPEED) as venue,
        running(derivatives_config(venue)) as collector,
    ):
        await wait_until(lambda: caught_up(js, venue, symbols, minutes_behind=1))
        await asyncio.sleep(2)  # the forceOrder stream has been up for whole minutes

        async def mid_minute() -> bool:
            return 15_000 <= venue.now_ms() % MINUTE <= 35_000 and await caught_up(js, venue, symbols, 1)

        await wait_until(mid_minute, interval=0.01)
        counted_in = venue.push_late_liquidation("AAAUSDT", quote=123_456.0, minutes_ago=2)
        assert counted_in == venue.now_ms() // MINUTE * MINUTE  # the open minute: the oldest not final

        async def published_minute():
            return [c for c in (await published(js))["AAAUSDT"] if c["open_time"] == counted_in]

        candle = (await wait_until(published_minute))[0]
        late = collector.stats.total("collector_late_liquidations_total")
    truth = venue.derivatives_truth("AAAUSDT", counted_in)
    assert candle["source"] == "ws" and candle.get("liq_count") == truth["liq_count"] >= 1
    assert Decimal(str(candle["liq_long_quote"])) == Decimal(truth["liq_long_quote"]) >= Decimal("123000")
    assert late >= 1


async def test_a_quiet_kline_stream_on_a_live_connection_is_replaced_and_backfilled(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT", "BBBUSDT"]
    async with venue_mod.start(symbols, speed=SPEED) as venue:
        config = derivatives_config(
            venue, streams_per_connection=2, kline_silence_seconds=1.5, watchdog_seconds=60.0
        )
        async with running(config) as collector:
            await wait_until(lambda: caught_up(js, venue, symbols))
            venue.silence_stream("aaausdt@kline_1m")  # BBBUSDT keeps the connection busy

            async def noticed() -> bool:
                return collector.stats.total("collector_stream_silences_total") >= 1

            await wait_until(noticed, 20)
            assert collector.status().silent_streams >= 1
            await asyncio.sleep(2)
            await wait_until(lambda: caught_up(js, venue, symbols))
            assert collector.stats.total("collector_watchdog_replacements_total") == 0
    by_symbol = await published(js)
    for symbol in symbols:
        assert_contiguous(by_symbol[symbol])
        assert_equal_to_venue(venue, by_symbol[symbol])


async def test_a_quiet_mark_price_stream_is_noticed_and_its_fields_come_back(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT"]
    async with venue_mod.start(symbols, speed=SPEED) as venue:
        config = derivatives_config(venue, mark_silence_seconds=1.5, watchdog_seconds=60.0)
        async with running(config) as collector:
            await wait_until(lambda: caught_up(js, venue, symbols))
            venue.silence_stream(MARK_PRICE_STREAM)  # forceOrder stays subscribed on the same connection

            async def noticed() -> bool:
                return collector.stats.total("collector_stream_silences_total") >= 1

            await wait_until(noticed, 20)
            silenced_at = venue.now_ms()

            async def marks_again() -> bool:
                candles = (await published(js)).get("AAAUSDT", [])
                return any(c["open_time"] > silenced_at and c.get("mark_close") is not None for c in candles)

            await wait_until(marks_again, 20)
    assert_fields_equal_to_venue(venue, (await published(js))["AAAUSDT"])


async def test_a_dead_derivatives_stream_leaves_nulls_and_never_delays_candles(jetstream):
    _nc, js = jetstream
    symbols = ["AAAUSDT", "BBBUSDT"]
    async with venue_mod.start(symbols, speed=SPEED) as venue:
        # no silence detection and no watchdog in reach: the derivatives connection stays dead
        config = derivatives_config(venue, mark_silence_seconds=3600.0, watchdog_seconds=3600.0)
        async with running(config):
            await wait_until(lambda: caught_up(js, venue, symbols))
            venue.stall_stream_connection(MARK_PRICE_STREAM)
            stalled_at = venue.now_ms()
            await asyncio.sleep(4)
            await wait_until(lambda: caught_up(js, venue, symbols, minutes_behind=1))
    by_symbol = await published(js)
    for symbol in symbols:
        candles = by_symbol[symbol]
        assert_contiguous(candles)
        assert_equal_to_venue(venue, candles)
        after = [c for c in candles if c["open_time"] >= stalled_at // MINUTE * MINUTE + MINUTE]
        assert len(after) >= 3 and all(c["source"] == "ws" for c in after)
        assert all(c.get("mark_close") is None and c.get("liq_count") is None for c in after)
