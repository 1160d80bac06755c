"""Reading candles from `candles.1m` payloads, JSON Lines and Binance CSV files, exactly and with clear errors."""

from __future__ import annotations

import pytest

from metrics.candles import Candle, CandleFileError, decode_payload, read_candle_file

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


def test_a_binance_csv_file_is_read_with_its_header_microseconds_and_exponents(tmp_path):
    path = tmp_path / "ETHUSDT-1m-2026-01-01.csv"
    path.write_text(
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
        "taker_buy_quote_volume,ignore\n"
        f"{T0},3000,3001,2999,3000.5,1.5,{T0 + 59_999},4500.75,7,1,3000.5,0\n"
        f"{(T0 + 60_000) * 1000},3000.5,3002,3000,3001,2E0,{(T0 + 119_999) * 1000},6.0015e3,9,1,3001,0\n"
    )
    first, second = read_candle_file(path)
    assert first.symbol == second.symbol == "ETHUSDT"
    assert second.open_time == T0 + 60_000 and second.close_time == T0 + 119_999
    assert second.quote_volume_e8 == 600150000000 and second.volume_e8 == 200000000
    assert first.trades == 7 and first.event_time is None


def test_a_bad_csv_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "X-1m.csv"
    path.write_text(
        f"{T0},1,1,1,1,1,{T0 + 59_999},1,1,1,1,0\n{T0 + 60_000},1,1,1,oops,1,{T0 + 119_999},1,1,1,1,0\n"
    )
    with pytest.raises(CandleFileError, match=r"X-1m.csv:2: close: not a number"):
        list(read_candle_file(path))


def test_a_wrong_csv_header_is_refused(tmp_path):
    path = tmp_path / "X-1m.csv"
    path.write_text("time,open,high,low,close,volume,close_time,quote_volume,count,a,b,c\n")
    with pytest.raises(CandleFileError, match="header must be"):
        list(read_candle_file(path))


def test_json_lines_are_read_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "candles.jsonl"
    good = (
        f'{{"symbol":"X","open_time":{T0},"close_time":{T0 + 59_999},"open":"1","high":"2","low":"1",'
        '"close":"2","volume":"1","quote_volume":"1.5","trades":1,"taker_buy_volume":"0",'
        '"taker_buy_quote_volume":"0"}'
    )
    path.write_text(good + "\n\n" + good.replace('"close":"2"', '"close":"x"') + "\n")
    reader = read_candle_file(path)
    assert next(reader).quote_volume_e8 == 150000000
    with pytest.raises(CandleFileError, match=r"candles.jsonl:3: close: not a number"):
        next(reader)
