"""Framework-free tests of the derivatives parsing and the docs/contract.md §7b attach rules (no servers)."""

from __future__ import annotations

import asyncio

import msgspec

from collector.binance import Kline, parse_frame, parse_funding_info, parse_open_interest
from collector.derivatives import DerivativesBook, quote_units, units_text
from collector.rest import VenueClock, WeightLimiter
from cryptomon.contract.times import MINUTE_MS
from cryptomon.workers import Stats

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
SYMBOLS = {"BTCUSDT", "币安人生USDT"}


def mark_frame(*updates: dict) -> bytes:
    return msgspec.json.encode({"stream": "!markPrice@arr@1s", "data": list(updates)})


def mark(symbol="BTCUSDT", event=T0 + 1_000, p="87440.10000000", i="87431.2", r="0.00010000", **changes):
    update = {
        "e": "markPriceUpdate",
        "E": event,
        "s": symbol,
        "p": p,
        "P": i,
        "i": i,
        "r": r,
        "T": T0 + 8 * 3_600_000,
    }
    update.update(changes)
    return update


def force_order(symbol="BTCUSDT", side="SELL", z="0.014", ap="9910", trade_time=T0 + 5_000) -> bytes:
    order = {
        "s": symbol,
        "S": side,
        "o": "LIMIT",
        "f": "IOC",
        "q": z,
        "p": ap,
        "ap": ap,
        "X": "FILLED",
        "l": z,
        "z": z,
        "T": trade_time,
    }
    return msgspec.json.encode(
        {"stream": "!forceOrder@arr", "data": {"e": "forceOrder", "E": trade_time, "o": order}}
    )


def candle(minute=T0, source="ws", symbol="BTCUSDT") -> Kline:
    return Kline(
        symbol, minute, minute + MINUTE_MS - 1, "1", "1", "1", "1", "1", "1", 1, "0", "0", minute, source
    )


class Venue:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


def book_at(now: int, stream_up_since: int | None = T0 - MINUTE_MS) -> tuple[DerivativesBook, Venue]:
    clock = Venue(stream_up_since if stream_up_since is not None else now)
    book = DerivativesBook(Stats(), clock)
    if stream_up_since is not None:
        book.liquidation_stream(True)
    clock.now = now
    book.intervals = {"币安人生USDT": 1}
    return book, clock


def feed(book: DerivativesBook, *frames: bytes) -> None:
    for data in frames:
        frame = parse_frame(data, SYMBOLS)
        if frame.kind == "mark":
            book.on_marks(frame.marks, SYMBOLS)
        elif frame.kind == "liquidation":
            book.on_liquidation(frame.liquidation, SYMBOLS)
        else:
            raise AssertionError(frame)


# --- parsing ------------------------------------------------------------------------------------------------


def test_a_mark_price_array_keeps_its_valid_updates_and_counts_the_bad_ones():
    frame = parse_frame(
        mark_frame(mark(), mark(symbol="币安人生USDT", r="-0.00030000"), mark(p="NaN"), mark(i="-1")), SYMBOLS
    )
    assert frame.kind == "mark" and frame.refused == 2
    assert [(u.s, u.p, u.i, u.r) for u in frame.marks] == [
        ("BTCUSDT", "87440.10000000", "87431.2", "0.00010000"),
        ("币安人生USDT", "87440.10000000", "87431.2", "-0.00030000"),
    ]


def test_a_force_order_is_parsed_and_one_with_a_bad_side_or_quantity_is_refused():
    frame = parse_frame(force_order(), SYMBOLS)
    assert frame.kind == "liquidation"
    assert (frame.liquidation.S, frame.liquidation.z, frame.liquidation.ap) == ("SELL", "0.014", "9910")
    assert parse_frame(force_order(side="SIDEWAYS"), SYMBOLS).reason == "bad_side"
    assert parse_frame(force_order(z="lots"), SYMBOLS).reason == "bad_number"
    assert parse_frame(force_order(ap="0"), SYMBOLS).reason == "negative"


def test_open_interest_and_funding_info_answers_are_parsed_and_bad_ones_named():
    answer = parse_open_interest(b'{"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}')
    assert (answer.symbol, answer.openInterest, answer.time) == ("BTCUSDT", "10659.509", 1589437530011)
    for bad in (b'{"openInterest":"-1","symbol":"BTCUSDT","time":1}', b"[]", b"{"):
        try:
            parse_open_interest(bad)
        except ValueError as error:
            assert "openInterest" in str(error)
        else:
            raise AssertionError(bad)
    info = parse_funding_info(
        b'[{"symbol":"BLZUSDT","adjustedFundingRateCap":"0.02500000","adjustedFundingRateFloor":"-0.02500000",'
        b'"fundingIntervalHours":4,"disclaimer":false}]'
    )
    assert info == {"BLZUSDT": 4}


# --- attach rules -------------------------------------------------------------------------------------------


def test_a_final_candle_carries_the_newest_mark_update_of_its_minute_and_the_interval():
    book, _ = book_at(T0 + 62_000)
    feed(
        book,
        mark_frame(mark(event=T0 - 1, p="1")),  # the minute before
        mark_frame(mark(event=T0 + 30_000, p="2")),
        mark_frame(mark(event=T0 + 59_999, p="3", r="-0.00020000")),
        mark_frame(mark(event=T0 + 60_000, p="4")),  # the next minute
        mark_frame(mark(event=T0 + 10_000, p="5")),  # arrives late but is older than the newest
    )
    book.on_open_interest("BTCUSDT", T0 + 2_000, "100.5")
    book.on_open_interest("BTCUSDT", T0 + 40_000, "101.5")
    book.on_open_interest("BTCUSDT", T0 + 61_000, "999")
    final = candle()
    book.attach(final)
    assert (final.mark_close, final.index_close, final.funding_rate) == ("3", "87431.2", "-0.00020000")
    assert final.next_funding_time == T0 + 8 * 3_600_000 and final.funding_interval_hours == 8
    assert final.open_interest == "101.5"
    assert (final.liq_long_quote, final.liq_short_quote, final.liq_count) == ("0", "0", 0)
    body = msgspec.json.decode(msgspec.json.encode(final.payload()))
    assert body["funding_rate"] == -0.0002 and body["mark_close"] == 3 and body["liq_count"] == 0
    other = candle(symbol="币安人生USDT")
    book.attach(other)
    assert other.funding_interval_hours == 1 and other.mark_close is None and other.liq_count is None


def test_liquidation_sums_are_exact_per_side_and_count_in_their_trade_minute():
    book, _ = book_at(T0 + 62_000)
    feed(
        book,
        mark_frame(mark(event=T0 + 50_000)),
        force_order(side="SELL", z="0.014", ap="9910.1", trade_time=T0 + 1_000),
        force_order(side="SELL", z="0.1", ap="0.00000003", trade_time=T0 + 2_000),
        force_order(side="BUY", z="3", ap="0.1", trade_time=T0 + 59_999),
        force_order(side="BUY", z="7", ap="1", trade_time=T0 + 60_000),  # the next minute
    )
    final = candle()
    book.attach(final)
    assert final.liq_long_quote == "138.7414"  # 138.7414 + 0.000000003 rounded half-even to 10⁻⁸
    assert final.liq_short_quote == "0.3" and final.liq_count == 3
    nxt = candle(T0 + MINUTE_MS)
    book.on_marks(parse_frame(mark_frame(mark(event=T0 + 61_000)), SYMBOLS).marks, SYMBOLS)
    book.clock.now = T0 + 122_000
    book.attach(nxt)
    assert (nxt.liq_short_quote, nxt.liq_count) == ("7", 1)


def test_a_liquidation_arriving_after_its_minute_was_published_counts_in_the_oldest_unpublished_minute():
    book, clock = book_at(T0 + 62_000)
    feed(book, mark_frame(mark(event=T0 + 50_000)))
    book.attach(candle())  # minute T0 is out
    clock.now = T0 + 125_000
    feed(
        book,
        mark_frame(mark(event=T0 + 70_000)),
        force_order(side="SELL", z="2", ap="10", trade_time=T0 + 30_000),  # minute T0: too late
    )
    nxt = candle(T0 + MINUTE_MS)
    book.attach(nxt)
    assert (nxt.liq_long_quote, nxt.liq_count) == ("20", 1)
    assert book.stats.total("collector_late_liquidations_total") == 1


def test_rest_candles_carry_nulls_and_filled_ones_zero_liquidations():
    book, _ = book_at(T0 + 200_000)
    feed(book, mark_frame(mark(event=T0 + 1_000)), force_order(trade_time=T0 + 1_000))
    book.on_open_interest("BTCUSDT", T0 + 2_000, "5")
    rest = candle(source="rest")
    book.attach(rest)
    fields = ("mark_close", "index_close", "funding_rate", "funding_interval_hours", "next_funding_time")
    assert all(
        getattr(rest, name) is None for name in (*fields, "open_interest", "liq_long_quote", "liq_count")
    )
    filled = candle(T0 + MINUTE_MS, source="filled")
    book.attach(filled)
    assert (filled.liq_long_quote, filled.liq_short_quote, filled.liq_count) == ("0", "0", 0)
    assert all(getattr(filled, name) is None for name in (*fields, "open_interest"))


def test_liquidations_are_unknown_for_a_minute_the_force_order_stream_was_not_up_all_along():
    book, clock = book_at(T0 + 62_000, stream_up_since=None)
    clock.now = T0 + 20_000
    book.liquidation_stream(True)  # connected within the minute
    clock.now = T0 + 62_000
    feed(book, mark_frame(mark(event=T0 + 50_000)), force_order(trade_time=T0 + 30_000))
    first = candle()
    book.attach(first)
    assert first.mark_close is not None and first.liq_count is None and first.liq_long_quote is None
    clock.now = T0 + 100_000
    book.liquidation_stream(False)  # dropped in the next minute
    clock.now = T0 + 122_000
    feed(book, mark_frame(mark(event=T0 + 110_000)))
    second = candle(T0 + MINUTE_MS)
    book.attach(second)
    assert second.liq_count is None


def test_liquidation_quotes_are_integers_of_1e_8_written_exactly():
    assert quote_units("0.001", "87432.12345678") == 8_743_212_346  # 87.43212345678 rounded to 10⁻⁸
    assert quote_units("0.5", "0.00000005") == 2 and quote_units("0.5", "0.00000003") == 2  # half-even
    assert quote_units("3", "0.1") == 30_000_000
    assert units_text(123_456_789_012_345_678) == "1234567890.12345678"
    assert units_text(100_000_000) == "1" and units_text(1) == "0.00000001" and units_text(0) == "0"


async def test_open_interest_polls_take_spare_weight_only_and_let_a_waiting_backfill_go_first():
    clock = VenueClock(rate=600.0)  # a venue minute lasts 0.1 s of wall time
    limiter = WeightLimiter(clock, budget=10)
    await limiter.acquire(9)  # backfill used most of this minute
    minute = clock.now_ms() // MINUTE_MS
    await limiter.acquire_spare(1, ceiling=5)  # over the ceiling: waits for a later minute
    assert clock.now_ms() // MINUTE_MS > minute
    order: list[str] = []

    async def backfill() -> None:
        await limiter.acquire(limiter.budget - limiter.used + 1)  # must wait for the next minute
        order.append("backfill")

    async def poll() -> None:
        await asyncio.sleep(0)
        await limiter.acquire_spare(1, ceiling=10)
        order.append("poll")

    await asyncio.gather(backfill(), poll())
    assert order == ["backfill", "poll"]
