"""Reading candles from `candles.1m` payloads, JSON Lines and Binance CSV files, exactly and with clear errors."""

from __future__ import annotations

import pytest

from cryptomon.contract.candles import Candle, decode_payload

T0 = 1_767_225_600_000

PAYLOAD = {
    "v": 1,
    "symbol": "BTCUSDT",
    "open_time": T0,
    "close_time": T0 + 59_999,
    "open": "87000.1",
    "high": 87010.5,
    "low": "86990",
    "close": "87005.25",
    "volume": "12.345",
    "quote_volume": "1074000.12345678",
    "trades": 321,
    "taker_buy_volume": "6",
    "taker_buy_quote_volume": 522000.5,
    "event_time": T0 + 62_000,
    "source": "ws",
    "extra": "ignored",
}


def test_a_payload_with_numbers_and_decimal_strings_becomes_a_candle():
    c = Candle.from_payload(PAYLOAD)
    assert (c.symbol, c.open_time, c.close_time, c.trades) == ("BTCUSDT", T0, T0 + 59_999, 321)
    assert (c.open, c.high, c.low, c.close) == (87000.1, 87010.5, 86990.0, 87005.25)
    assert c.quote_volume_e8 == 107400012345678 and c.taker_buy_quote_volume_e8 == 52200050000000
    assert c.volume == 12.345 and c.event_time == T0 + 62_000 and c.source == "ws"


def test_volumes_keep_every_decimal_of_the_json_text():
    data = b'{"symbol":"X","open_time":%d,"open":1,"high":1,"low":1,"close":1,"volume":0,' % T0
    data += (
        b'"quote_volume":12345678901.12345678,"trades":0,"taker_buy_volume":0,"taker_buy_quote_volume":1e-8}'
    )
    c = decode_payload(data)
    assert c.quote_volume_e8 == 1234567890112345678  # a float would have lost the last digits
    assert c.taker_buy_quote_volume_e8 == 1


def test_the_payload_round_trips_exactly():
    c = Candle.from_payload(PAYLOAD)
    import msgspec

    assert decode_payload(msgspec.json.encode(c.payload())) == c


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("open", "abc", "open: not a number"),
        ("high", None, "high: missing"),
        ("close", "NaN", "close: not a finite number"),
        ("low", -1, "low: negative"),
        ("quote_volume", "-5", "quote_volume: negative"),
        ("volume", "1e20", "volume: too large"),
        ("trades", 1.5, "trades: not an integer"),
        ("trades", True, "trades: not an integer"),
        ("open_time", T0 + 1, "open_time: not at the start of a minute"),
        ("close_time", T0 + 60_000, "close_time: not inside"),
        ("symbol", "BTC.USDT", "symbol: not a symbol"),
        ("high", "1", "high: below low"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        Candle.from_payload(PAYLOAD | {field: value})
