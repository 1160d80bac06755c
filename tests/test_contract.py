"""The contract module: its messages parse as every reader expects, and the apps import one way."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryptomon.contract import names, subjects, times
from cryptomon.contract.messages import (
    BadPayload,
    Heartbeat,
    alert_id,
    check_alert,
    decode_heartbeat,
    metrics_payload,
    parse_metrics,
)
from cryptomon.messaging import encode

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def test_milliseconds_and_datetimes_convert_both_ways_in_utc():
    moment = times.from_ms(T0 + 61_500)
    assert moment == datetime(2026, 1, 1, 0, 1, 1, 500_000, tzinfo=UTC)
    assert times.to_ms(moment) == T0 + 61_500
    assert times.minute_of(T0 + 61_500) == T0 + times.MINUTE_MS


def test_every_timeframe_has_its_minutes_and_its_metric_names():
    assert tuple(names.TIMEFRAME_MINUTES) == names.TIMEFRAMES
    assert len(names.METRIC_NAMES) == (
        1
        + len(names.TIMEFRAMES) * len(names.WINDOW_STEMS)
        + len(names.INDICATOR_NAMES)
        + len(names.DERIVATIVES_BAR_NAMES)
        + len(names.TIMEFRAMES) * len(names.DERIVATIVES_WINDOW_STEMS)
    )
    assert set(names.MARKET_METRICS) <= set(names.METRIC_NAMES)


def test_subjects_are_built_from_the_stream_wildcards_and_give_their_symbol_back():
    assert subjects.STREAMS == {
        "CANDLES": "candles.1m.>",
        "METRICS": "metrics.calculated.>",
        "ALERTS": "alerts.triggered.>",
    }
    assert subjects.candle_subject("BTCUSDT") == "candles.1m.BTCUSDT"
    assert subjects.symbol_of(subjects.metrics_live_subject("币安人生USDT")) == "币安人生USDT"
    assert subjects.symbol_of(subjects.alert_subject("ETHUSDT")) == "ETHUSDT"


def test_a_metrics_message_written_by_the_engine_is_read_back_by_the_alert_engine():
    data = encode(metrics_payload("BTCUSDT", T0, 87_000.5, {"change_5m": 1.5, "rsi_14": None}, True, False))
    message = parse_metrics(data, subjects.metrics_subject("BTCUSDT"))
    assert (message.symbol, message.open_time, message.price, message.final, message.late) == (
        "BTCUSDT",
        T0,
        87_000.5,
        True,
        False,
    )
    assert message.metrics == {"change_5m": 1.5, "rsi_14": None}


def test_a_metrics_message_on_another_symbols_subject_is_refused():
    data = encode(metrics_payload("BTCUSDT", T0, 1.0, {}, True, False))
    with pytest.raises(BadPayload, match="does not match the subject"):
        parse_metrics(data, subjects.metrics_subject("ETHUSDT"))


def test_an_alert_needs_its_id_symbol_and_rule_and_a_user_id_or_null_owner():
    alert = check_alert(
        {"v": 1, "id": alert_id("r", "BTCUSDT", T0), "rule": "r", "symbol": "BTCUSDT", "owner": 7}
    )
    assert alert.id == f"r:BTCUSDT:{T0}" and alert.owner == 7
    for bad in ({"rule": "r", "symbol": "X"}, {"id": "x", "rule": "r", "symbol": "X", "owner": "someone"}):
        with pytest.raises(ValueError, match="bad alert"):
            check_alert(bad)


def test_a_heartbeat_round_trips_and_names_the_bad_field():
    beat = Heartbeat(shard="1/2", symbols_live=3, stale=False, lag_ms=800, rest="banned", banned_until=T0)
    again = decode_heartbeat(encode(beat))
    assert again == beat and again.shards == 2
    assert again.as_dict()["banned_until"] == T0
    with pytest.raises(ValueError, match="symbols_live"):
        decode_heartbeat(b'{"shard": "0/1", "symbols_live": true, "stale": false}')
    with pytest.raises(ValueError, match="shard"):
        decode_heartbeat(b'{"shard": "3/2", "symbols_live": 1, "stale": false}')
