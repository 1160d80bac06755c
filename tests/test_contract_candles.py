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


# --- §7b derivatives fields -----------------------------------------------------------------------------

DERIVATIVES = {
    "mark_close": "87006.1",
    "index_close": 87001,
    "funding_rate": "-0.0001",
    "funding_interval_hours": 4,
    "next_funding_time": T0 + 3_600_000,
    "open_interest": "81234.567",
    "liq_long_quote": "1500000.123456789",
    "liq_short_quote": 0,
    "liq_count": 4,
}


def test_derivatives_fields_are_read_and_liquidation_sums_kept_exact():
    d = Candle.from_payload({**PAYLOAD, **DERIVATIVES}).derivatives
    assert (d.mark_close, d.index_close, d.funding_rate, d.funding_interval_hours) == (
        87006.1,
        87001.0,
        -0.0001,
        4.0,
    )
    assert (d.next_funding_time, d.open_interest, d.liq_count) == (T0 + 3_600_000, 81234.567, 4)
    assert (d.liq_long_quote_e8, d.liq_short_quote_e8) == (150000012345679, 0)  # 10⁻⁸, half-even


def test_absent_and_null_derivatives_fields_are_unknown():
    assert Candle.from_payload(PAYLOAD).derivatives is None
    assert Candle.from_payload({**PAYLOAD, **dict.fromkeys(DERIVATIVES)}).derivatives is None
    d = Candle.from_payload({**PAYLOAD, "open_interest": "5", "liq_count": None}).derivatives
    assert d.open_interest == 5.0 and d.mark_close is None and d.liq_count is None


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("mark_close", "abc", "not a number"),
        ("index_close", "-1", "negative"),
        ("funding_rate", "NaN", "not a finite number"),
        ("funding_rate", True, "not a number"),
        ("funding_interval_hours", [8], "not a number"),
        ("next_funding_time", "soon", "not an integer"),
        ("open_interest", "-3", "negative"),
        ("liq_long_quote", "-0.5", "negative"),
        ("liq_short_quote", "1e12", "too large"),
        ("liq_count", -1, "negative"),
        ("liq_count", 1.5, "not an integer"),
    ],
)
def test_a_bad_derivatives_field_is_refused_naming_it(field, value, why):
    with pytest.raises(ValueError) as caught:
        Candle.from_payload({**PAYLOAD, **DERIVATIVES, field: value})
    assert str(caught.value).startswith(f"{field}: ") and why in str(caught.value)


def test_the_payload_carries_every_derivatives_field_and_reads_back_equal():
    import msgspec

    candle = decode_payload(msgspec.json.encode({**PAYLOAD, **DERIVATIVES}))
    body = msgspec.json.decode(msgspec.json.encode(candle.payload()))
    assert body["liq_long_quote"] == 1500000.12345679 and body["funding_interval_hours"] == 4.0
    assert decode_payload(msgspec.json.encode(candle.payload())) == candle
    plain = msgspec.json.decode(msgspec.json.encode(Candle.from_payload(PAYLOAD).payload()))
    assert {name: plain[name] for name in DERIVATIVES} == dict.fromkeys(DERIVATIVES)
    changed = Candle.from_payload({**PAYLOAD, **DERIVATIVES, "open_interest": "1"})
    assert not changed.same_market_data(candle)  # a different field is a different market fact
