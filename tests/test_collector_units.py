"""Framework-free tests of the collector's parsing, limiter and sequencer (no servers needed)."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from collector.binance import Kline, parse_frame, parse_rest_rows
from collector.rest import VenueClock, WeightLimiter, klines_weight
from collector.sequencer import Sequencer
from collector.universe import select_symbols
from cryptomon import messaging
from cryptomon.contract.times import MINUTE_MS
from cryptomon.workers import Stats

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def kline_frame(symbol="BTCUSDT", t=T0, final=True, **changes) -> bytes:
    k = {
        "t": t,
        "T": t + MINUTE_MS - 1,
        "s": symbol,
        "i": "1m",
        "f": 1,
        "L": 2,
        "o": "100.5",
        "c": "101.25",
        "h": "102",
        "l": "99.00000001",
        "v": "12.5",
        "n": 42,
        "x": final,
        "q": "1266.75",
        "V": "6",
        "Q": "600.1",
        "B": "0",
    }
    k.update(changes)
    event = {"e": "kline", "E": t + MINUTE_MS + 2000, "s": symbol, "k": k}
    return msgspec.json.encode({"stream": f"{symbol.lower()}@kline_1m", "data": event})


SYMBOLS = {"BTCUSDT", "ETHUSDT", "币安人生USDT"}


def test_a_final_kline_becomes_an_exact_candle():
    frame = parse_frame(kline_frame(), SYMBOLS)
    assert frame.kind == "kline" and frame.final
    candle = frame.candle
    assert (candle.symbol, candle.open_time, candle.close_time) == ("BTCUSDT", T0, T0 + 59_999)
    assert (candle.open, candle.high, candle.low, candle.close) == ("100.5", "102", "99.00000001", "101.25")
    assert (candle.trades, candle.quote_volume, candle.taker_buy_quote_volume) == (42, "1266.75", "600.1")


def test_the_payload_carries_the_venues_decimals_as_json_numbers():
    candle = parse_frame(kline_frame(), SYMBOLS).candle
    raw = messaging.encode(candle.payload())
    assert b'"low":99.00000001' in raw
    decoded = messaging.decode(raw)
    assert decoded["v"] == 1 and decoded["source"] == "ws" and decoded["open"] == 100.5
    assert "source" not in messaging.decode(messaging.encode(candle.payload(live=True)))


def test_a_non_ascii_symbol_is_accepted():
    frame = parse_frame(kline_frame("币安人生USDT"), SYMBOLS)
    assert frame.kind == "kline" and frame.candle.symbol == "币安人生USDT"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[1,2,3]", "wrong_type"),
        (kline_frame(o=100.5), "wrong_type"),
        (kline_frame(n="many"), "wrong_type"),
        (kline_frame(h="98"), "high_below_low"),
        (kline_frame(t=T0 + 1), "time_off_minute"),
        (kline_frame(T=T0 + 60_000), "time_off_minute"),
        (kline_frame("DOGEUSDT"), "unknown_symbol"),
        (kline_frame(c="NaN"), "nan_or_infinite"),
        (kline_frame(v="-1"), "negative"),
        (kline_frame(q="abc"), "bad_number"),
        (kline_frame(o="150"), "ohlc_outside_range"),
        (kline_frame(i="5m"), "wrong_stream"),
        (b'{"stream":"x","data":{"e":"aggTrade","E":1,"s":"BTCUSDT"}}', "unknown_event"),
    ],
)
def test_an_invalid_frame_is_refused_with_its_reason(data, reason):
    frame = parse_frame(data, SYMBOLS)
    assert (frame.kind, frame.reason) == ("invalid", reason)


def test_subscribe_replies_and_contract_events_are_recognised():
    assert parse_frame(b'{"result":null,"id":7}', SYMBOLS).kind == "reply"
    event = b'{"stream":"!contractInfo","data":{"e":"contractInfo","E":5,"T":5,"s":"NEWUSDT","ps":"NEWUSDT","ct":"PERPETUAL","dt":0,"ot":1,"cs":"TRADING"}}'
    frame = parse_frame(event, SYMBOLS)
    assert frame.kind == "contract" and frame.contract.s == "NEWUSDT" and frame.contract.cs == "TRADING"


def rest_row(t: int, close: str = "10", **fields) -> list:
    row = [t, "10", "11", "9", close, "5", t + MINUTE_MS - 1, "50", 3, "2", "20", "0"]
    return row


def test_a_rest_row_counts_only_once_closed_by_venue_time():
    body = msgspec.json.encode([rest_row(T0), rest_row(T0 + MINUTE_MS)])
    now = T0 + 2 * MINUTE_MS + 4_000  # second row closed 4 s ago: not yet final
    candles, refused = parse_rest_rows("BTCUSDT", body, now)
    assert [c.open_time for c in candles] == [T0] and refused == []
    candles, _ = parse_rest_rows("BTCUSDT", body, now + 2_000)
    assert [c.open_time for c in candles] == [T0, T0 + MINUTE_MS]
    assert candles[0].source == "rest"


def test_invalid_rest_rows_are_refused_by_reason():
    bad = rest_row(T0)
    bad[2] = "8"  # high below low
    candles, refused = parse_rest_rows("BTCUSDT", msgspec.json.encode([bad]), T0 + 10 * MINUTE_MS)
    assert candles == [] and refused == [(T0, "high_below_low")]


def test_klines_weight_follows_the_limit():
    assert [klines_weight(n) for n in (1, 100, 101, 500, 501, 1000, 1001, 1500)] == [1, 1, 2, 2, 5, 5, 10, 10]


def test_the_universe_filter_keeps_usdt_perpetuals_that_trade():
    info = {
        "symbols": [
            {"symbol": "BTCUSDT", "quoteAsset": "USDT", "contractType": "PERPETUAL", "status": "TRADING"},
            {
                "symbol": "币安人生USDT",
                "quoteAsset": "USDT",
                "contractType": "PERPETUAL",
                "status": "TRADING",
            },
            {"symbol": "BTCUSDC", "quoteAsset": "USDC", "contractType": "PERPETUAL", "status": "TRADING"},
            {
                "symbol": "BTCUSDT_260626",
                "quoteAsset": "USDT",
                "contractType": "CURRENT_QUARTER",
                "status": "TRADING",
            },
            {
                "symbol": "XAUUSDT",
                "quoteAsset": "USDT",
                "contractType": "TRADIFI_PERPETUAL",
                "status": "TRADING",
            },
            {"symbol": "OLDUSDT", "quoteAsset": "USDT", "contractType": "PERPETUAL", "status": "SETTLING"},
        ]
    }
    assert sorted(select_symbols(info)) == ["BTCUSDT", "币安人生USDT"]
    assert sorted(select_symbols(info, include_tradifi=True)) == ["BTCUSDT", "XAUUSDT", "币安人生USDT"]
    assert sorted(select_symbols(info, only=["BTCUSDT", "BTCUSDC"])) == ["BTCUSDT"]


async def test_the_limiter_never_exceeds_the_budget_of_a_venue_minute():
    clock = VenueClock(rate=600.0)  # a venue minute lasts 0.1 s of wall time
    limiter = WeightLimiter(clock, budget=10)
    taken: list[tuple[int, int]] = []

    async def caller() -> None:
        for _ in range(5):
            await limiter.acquire(3)
            taken.append((clock.now_ms() // MINUTE_MS, 3))

    await asyncio.gather(*(caller() for _ in range(4)))
    per_minute: dict[int, int] = {}
    for minute, weight in taken:
        per_minute[minute] = per_minute.get(minute, 0) + weight
    assert len(taken) == 20
    assert max(per_minute.values()) <= 10
    assert len(per_minute) >= 6  # 60 weight at 9 per minute needs at least 6 minutes


async def test_a_block_holds_every_caller_until_its_venue_time():
    clock = VenueClock(rate=600.0)
    limiter = WeightLimiter(clock, budget=100)
    until = clock.now_ms() + 30_000  # 0.05 s of wall time
    limiter.block_until(until)
    await limiter.acquire(1)
    assert clock.now_ms() >= until


def test_the_venue_clock_counts_half_the_anchors_round_trip_at_its_rate_before_calling_a_minute_closed():
    clock = VenueClock(rate=60.0)  # the emulator at speed 60
    clock.set(T0 + MINUTE_MS + 10_000, time.time(), anchor_error_seconds=0.3)  # within a 0.6 s round trip
    assert clock.earliest_now_ms() <= clock.now_ms() - 18_000  # 0.3 s of wall time is 18 s of venue time
    candles, _ = parse_rest_rows("BTCUSDT", minute_row(T0), clock.earliest_now_ms())
    assert candles == []  # closed 10 s ago by the midpoint, but it may still be open on the venue
    candles, _ = parse_rest_rows("BTCUSDT", minute_row(T0), clock.now_ms())
    assert len(candles) == 1  # what the midpoint alone would have accepted


def test_a_measured_rates_error_widens_the_margin_as_the_anchor_ages():
    clock = VenueClock(rate=None)
    clock.set(T0, time.time() - 10.0, rate=60.0, anchor_error_seconds=0.0, rate_error=0.01)
    assert clock.earliest_now_ms() <= clock.now_ms() - 6_000  # 10 s × 1 % × rate 60
    binance = VenueClock(rate=1.0)
    binance.set(T0, time.time(), anchor_error_seconds=0.05)
    assert binance.now_ms() - 100 <= binance.earliest_now_ms() <= binance.now_ms() - 50


def minute_row(open_time: int) -> bytes:
    row = [open_time, "1", "1", "1", "1", "1", open_time + MINUTE_MS - 1, "1", 1, "0.5", "0.5", "0"]
    return msgspec.json.encode([row])


def test_the_venues_weight_header_is_respected():
    limiter = WeightLimiter(VenueClock(), budget=2400)
    limiter.observe("2300")
    assert limiter.used == 2300


# --- sequencer, against a scripted venue and a collecting publisher ------------------------------------


class ScriptedVenue:
    """Stands in for the REST client: rows by minute, a venue clock, request log."""

    def __init__(self, rows: dict[int, str], now_ms: int):
        self.rows = rows  # open_time -> close
        self.clock = VenueClock(rate=1.0)
        self.clock.set(now_ms, time.time())
        self.requests: list[tuple[int, int]] = []

    def venue_now_ms(self) -> int:
        return self.clock.now_ms()

    async def klines(self, symbol: str, start: int, limit: int) -> list[Kline]:
        self.requests.append((start, limit))
        now = self.venue_now_ms()
        out = []
        for t in sorted(self.rows):
            if t >= start and len(out) < limit and t + MINUTE_MS - 1 < now - 5000:
                out.append(
                    Kline(
                        symbol,
                        t,
                        t + MINUTE_MS - 1,
                        "1",
                        "2",
                        "0.5",
                        self.rows[t],
                        "1",
                        "1",
                        1,
                        "0",
                        "0",
                        now,
                        "rest",
                    )
                )
        return out


class Collecting:
    def __init__(self, room: int = 1_000_000):
        self.sent: list[Kline] = []
        self.room = room
        self.on_room = None

    def has_room(self) -> bool:
        return len(self.sent) < self.room

    def offer(self, candle: Kline) -> bool:
        if not self.has_room():
            return False
        self.sent.append(candle)
        return True

    async def put(self, candle: Kline) -> None:
        while not self.has_room():
            await asyncio.sleep(0.01)
        self.sent.append(candle)

    def forget(self, symbol: str) -> None:
        pass


def ws_candle(t: int, close: str = "7") -> Kline:
    return Kline(
        "BTCUSDT", t, t + MINUTE_MS - 1, "1", "8", "0.5", close, "1", "1", 1, "0", "0", t + 62_000, "ws"
    )


async def settle(sequencer: Sequencer) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not sequencer.backfilling():
            return
    raise AssertionError("backfill did not settle")


def make(rows: dict[int, str], now: int, resume=None, room=1_000_000, warmup=10):
    venue = ScriptedVenue(rows, now)
    publisher = Collecting(room)

    async def lookup(symbols):
        return {s: resume for s in symbols} if resume else {}

    sequencer = Sequencer(venue, publisher, Stats(), lookup, warmup_minutes=warmup, retry_max_seconds=0.05)
    return venue, publisher, sequencer


def minutes(published) -> list[int]:
    return [(c.open_time - T0) // MINUTE_MS for c in published]


async def test_a_fresh_symbol_starts_with_the_last_2880_minutes_then_goes_live_in_order():
    now = T0 + 10 * MINUTE_MS + 10_000
    _venue, publisher, sequencer = make({T0 + m * MINUTE_MS: "5" for m in range(10)}, now)
    sequencer.add("BTCUSDT", 0)
    await settle(sequencer)
    assert minutes(publisher.sent) == list(range(10)) and {c.source for c in publisher.sent} == {"rest"}
    sequencer.on_final(ws_candle(T0 + 10 * MINUTE_MS))
    sequencer.on_final(ws_candle(T0 + 10 * MINUTE_MS))  # a duplicate changes nothing
    assert minutes(publisher.sent) == list(range(11)) and publisher.sent[-1].source == "ws"


async def test_a_live_gap_is_backfilled_before_the_waiting_final():
    now = T0 + 5 * MINUTE_MS + 10_000
    rows = {T0 + m * MINUTE_MS: "5" for m in range(5)}
    venue, publisher, sequencer = make(rows, now, resume=(T0 + MINUTE_MS, "5"))
    sequencer.add("BTCUSDT", 0)
    await settle(sequencer)
    assert minutes(publisher.sent) == [2, 3, 4]
    sequencer.on_final(ws_candle(T0 + 6 * MINUTE_MS))  # minute 5 never came live
    assert minutes(publisher.sent) == [2, 3, 4]  # the live final waits
    venue.rows[T0 + 5 * MINUTE_MS] = "6"
    venue.clock.set(T0 + 7 * MINUTE_MS + 6_000, time.time())
    await settle(sequencer)
    assert minutes(publisher.sent) == [2, 3, 4, 5, 6]
    assert [c.source for c in publisher.sent[-2:]] == ["rest", "ws"]


async def test_a_minute_rest_confirms_missing_is_published_flat_at_the_previous_close():
    now = T0 + 6 * MINUTE_MS + 10_000
    rows = {T0 + m * MINUTE_MS: str(m) for m in (0, 1, 4, 5)}  # 2 and 3: maintenance
    _venue, publisher, sequencer = make(rows, now, resume=(T0, "0"))
    sequencer.add("BTCUSDT", 0)
    await settle(sequencer)
    assert minutes(publisher.sent) == [1, 2, 3, 4, 5]
    filled = publisher.sent[1:3]
    assert [c.source for c in filled] == ["filled", "filled"]
    for c in filled:
        assert (c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades) == (
            "1",
            "1",
            "1",
            "1",
            "0",
            "0",
            0,
        )


async def test_an_unconfirmed_missing_minute_waits_instead_of_being_filled():
    now = T0 + 4 * MINUTE_MS + 10_000
    rows = {T0 + m * MINUTE_MS: "5" for m in (0, 1)}  # 2 and 3 have no kline and nothing later exists
    _venue, publisher, sequencer = make(rows, now, resume=(T0, "5"))
    sequencer.add("BTCUSDT", 0)
    await asyncio.sleep(0.3)
    assert minutes(publisher.sent) == [1]
    sequencer.remove("BTCUSDT")


async def test_a_full_buffer_drops_live_finals_and_backfills_them_once_there_is_room():
    now = T0 + 2 * MINUTE_MS + 10_000
    rows = {T0 + m * MINUTE_MS: "5" for m in range(2)}
    venue, publisher, sequencer = make(rows, now, resume=(T0 + MINUTE_MS, "5"), room=0)
    sequencer.add("BTCUSDT", 0)
    await settle(sequencer)
    sequencer.on_final(ws_candle(T0 + 2 * MINUTE_MS))
    sequencer.on_final(ws_candle(T0 + 3 * MINUTE_MS))
    assert publisher.sent == [] and sequencer.states["BTCUSDT"].stalled
    assert sequencer.stats.total("collector_candles_dropped_total") == 1
    venue.rows.update({T0 + 2 * MINUTE_MS: "6", T0 + 3 * MINUTE_MS: "7"})
    venue.clock.set(T0 + 4 * MINUTE_MS + 10_000, time.time())
    publisher.room = 100
    sequencer.resume_stalled()
    await settle(sequencer)
    assert minutes(publisher.sent) == [2, 3] and {c.source for c in publisher.sent} == {"rest"}


async def test_a_universe_that_cannot_be_stored_is_applied_again_and_the_refresh_loop_keeps_running():
    from django.db import OperationalError

    from collector.rest import RestClient
    from collector.universe import Universe
    from tests import venue_adapter

    applied: list[set[str]] = []

    async def apply(selected: dict, starts: dict) -> None:
        if not applied:
            applied.append(set())
            raise OperationalError("the database is restarting")
        applied.append(set(selected))

    async with (
        venue_adapter.start(["AAAUSDT", "BBBUSDT"]) as venue,
        RestClient(venue.rest_url, clock_rate=60.0) as rest,
    ):
        universe = Universe(rest, apply, refresh_seconds=0.05, only=["AAAUSDT", "BBBUSDT"])
        loop = asyncio.create_task(universe.run())
        try:
            async with asyncio.timeout(30):
                while len(applied) < 2:
                    await asyncio.sleep(0.02)
            assert not loop.done(), "a failed refresh ended the refresh loop"
            assert applied[1] == {"AAAUSDT", "BBBUSDT"}
        finally:
            loop.cancel()
