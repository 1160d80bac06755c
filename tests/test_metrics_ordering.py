"""Which final bars are emitted and when (docs/contract.md §7), without servers: watermark, waits, gap timeout, late."""

from __future__ import annotations

import dataclasses

from cryptomon.contract.candles import Candle
from metrics.ordering import BarSequencer

MINUTE = 60_000
T0 = 1_767_225_600_000


def candle(minute: int, symbol: str = "BTCUSDT", delay_ms: int = 2_000, close: float = 100.0) -> Candle:
    return Candle.from_payload(
        {
            "symbol": symbol,
            "open_time": T0 + minute * MINUTE,
            "open": 100,
            "high": 101,
            "low": 99,
            "close": close,
            "volume": "1",
            "quote_volume": "100",
            "trades": 1,
            "taker_buy_volume": "0",
            "taker_buy_quote_volume": "0",
            "event_time": T0 + minute * MINUTE + MINUTE - 1 + delay_ms,
        }
    )


def minutes(bars) -> list[int]:
    return [(bar.open_time - T0) // MINUTE for bar in bars]


def test_bars_are_emitted_once_each_in_order_and_duplicates_change_nothing():
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    assert minutes(sequencer.offer(candle(0), now=0)) == [0]
    assert minutes(sequencer.offer(candle(1), now=0)) == [1]
    assert sequencer.offer(candle(1), now=0) == []
    assert sequencer.offer(dataclasses.replace(candle(0), close=5.0), now=0) == []
    assert sequencer.watermarks["BTCUSDT"] == T0 + MINUTE


def test_a_candle_after_a_missing_minute_waits_and_the_missing_one_releases_both_in_order():
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    sequencer.offer(candle(0), now=0)
    assert sequencer.offer(candle(2), now=1) == []
    assert sequencer.offer(candle(3), now=2) == []
    assert sequencer.waiting("BTCUSDT") == 2
    bars = sequencer.offer(candle(1), now=3)
    assert minutes(bars) == [1, 2, 3]
    assert bars[-1].metrics["open_5m"] is None and sequencer.states["BTCUSDT"].run_length == 4
    assert sequencer.gaps_forced_total == 0


def test_after_the_timeout_the_missing_minute_is_a_permanent_gap_counted_once():
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    for m in range(5):
        sequencer.offer(candle(m), now=0)
    sequencer.offer(candle(6), now=100)
    sequencer.offer(candle(7), now=200)
    assert sequencer.expire(now=999) == []  # 899 s of waiting: not yet
    bars = sequencer.expire(now=1000)
    assert minutes(bars) == [6, 7] and sequencer.gaps_forced_total == 1
    assert sequencer.states["BTCUSDT"].run_length == 2  # a new run after the gap
    assert sequencer.offer(candle(5), now=1001) == []  # arrives too late: changes no bar
    assert minutes(sequencer.offer(candle(8), now=1002)) == [8]


def test_a_second_hole_among_waiting_candles_starts_its_own_wait():
    sequencer = BarSequencer(gap_timeout=10, late_after_ms=180_000)
    sequencer.offer(candle(0), now=0)
    sequencer.offer(candle(2), now=0)
    sequencer.offer(candle(4), now=5)
    assert minutes(sequencer.expire(now=10)) == [2]
    assert sequencer.expire(now=19) == []
    assert minutes(sequencer.expire(now=20)) == [4]
    assert sequencer.gaps_forced_total == 2


def test_the_watermark_decides_not_whether_a_candle_was_seen():
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    sequencer.set_watermark("BTCUSDT", T0 + 9 * MINUTE)
    assert all(sequencer.warm(candle(m)) for m in range(10))  # stored history: state only
    assert not sequencer.warm(candle(10))
    assert sequencer.offer(candle(9), now=0) == []
    bar = sequencer.offer(candle(10), now=0)[0]
    assert bar.metrics["open_5m"] == 100.0  # the warm state carried the run


def test_a_candle_received_long_after_its_close_makes_a_late_bar():
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    on_time = sequencer.offer(candle(0, delay_ms=180_000), now=0)[0]
    late = sequencer.offer(candle(1, delay_ms=180_001), now=0)[0]
    assert (on_time.late, late.late) == (False, True)
    assert sequencer.late_total == 1


def test_symbols_are_sequenced_independently():
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    sequencer.offer(candle(0, "AAA"), now=0)
    sequencer.offer(candle(0, "BBB"), now=0)
    assert sequencer.offer(candle(2, "AAA"), now=0) == []
    assert minutes(sequencer.offer(candle(1, "BBB"), now=0)) == [1]


def test_a_live_preview_after_the_newest_bar_only():
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    for m in range(20):
        sequencer.offer(candle(m, close=100.0 + m), now=0)
    live = sequencer.preview(candle(20, close=150.0))
    assert live is not None and live.final is False and live.metrics["bb_middle"] is not None
    assert sequencer.preview(candle(19)) is None
    assert sequencer.states["BTCUSDT"].last_open_time == T0 + 19 * MINUTE


def test_after_a_crash_before_the_commit_the_redelivered_candles_complete_the_state_without_new_bars():
    # Bars 0..9 were published (watermark 9) but only minutes 0..5 were committed before the crash.
    sequencer = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    sequencer.set_watermark("BTCUSDT", T0 + 9 * MINUTE)
    for minute in range(6):
        assert sequencer.warm(candle(minute, close=100.0 + minute))
    healed = [sequencer.heal(candle(minute, close=100.0 + minute)) for minute in range(6, 10)]
    assert minutes(healed) == [6, 7, 8, 9]  # to be stored again; offer() emits none of them
    assert sequencer.heal(candle(9)) is None and sequencer.offer(candle(9), now=0) == []
    after = sequencer.offer(candle(10, close=110.0), now=0)
    uninterrupted = BarSequencer(gap_timeout=900, late_after_ms=180_000)
    for minute in range(11):
        want = uninterrupted.offer(candle(minute, close=100.0 + minute), now=0)
    assert minutes(after) == [10] and after[0].metrics_dict() == want[0].metrics_dict()
