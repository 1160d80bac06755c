"""The §7 metrics: hand-computed fixtures, nulls exactly where §7 says, and incremental == direct recomputation."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import statistics
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.contract.candles import Candle
from cryptomon.contract.names import METRIC_NAMES
from metrics.replay import replay
from metrics.windows import SymbolState

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
SIZES = {"5m": 5, "15m": 15, "1h": 60, "4h": 240, "8h": 480, "1d": 1440}
INDICATORS = ("rsi_14", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "vcp")


def candle(
    minute,
    close=100.0,
    *,
    open_=None,
    high=None,
    low=None,
    qv="1000",
    tbq="400",
    trades=10,
    symbol="BTCUSDT",
    **derivatives,
):
    open_ = close if open_ is None else open_
    return Candle.from_payload(
        {
            **derivatives,
            "symbol": symbol,
            "open_time": T0 + minute * MINUTE,
            "open": open_,
            "high": max(open_, close) if high is None else high,
            "low": min(open_, close) if low is None else low,
            "close": close,
            "volume": "1",
            "quote_volume": qv,
            "trades": trades,
            "taker_buy_volume": "0.5",
            "taker_buy_quote_volume": tbq,
        }
    )


def bars_of(candles):
    return list(replay(candles))


# --- a direct, independent recomputation of §7 for a whole sequence ------------------------------------


def direct(candles: list[Candle], only: set[int] | None = None) -> dict[int, dict]:
    """Bars' metrics (by index) recomputed from scratch: windows by slicing, indicators from the run's start."""
    starts = []
    for index, c in enumerate(candles):
        contiguous = index and c.open_time == candles[index - 1].open_time + MINUTE
        starts.append(starts[-1] if contiguous else index)
    out = {}
    for index, c in enumerate(candles):
        if only is not None and index not in only:
            continue
        run = candles[max(starts[index], index - 2879) : index + 1]
        metrics: dict = {"price": c.close}
        for window, n in SIZES.items():
            names = [
                f"{stem}_{window}"
                for stem in (
                    "open",
                    "high",
                    "low",
                    "change",
                    "volume",
                    "volume_ratio",
                    "trades",
                    "taker_buy_ratio",
                )
            ]
            if len(run) < n:
                metrics.update(dict.fromkeys(names))
                continue
            w = run[-n:]
            volume = sum(Fraction(x.quote_volume_e8, 10**8) for x in w)
            metrics[f"open_{window}"] = w[0].open
            metrics[f"high_{window}"] = max(x.high for x in w)
            metrics[f"low_{window}"] = min(x.low for x in w)
            metrics[f"change_{window}"] = (c.close - w[0].open) / w[0].open * 100 if w[0].open else None
            metrics[f"volume_{window}"] = float(volume)
            ratio = None
            if len(run) >= 2 * n:
                before = sum(Fraction(x.quote_volume_e8, 10**8) for x in run[-2 * n : -n])
                ratio = float(volume / before) if before else None
            metrics[f"volume_ratio_{window}"] = ratio
            metrics[f"trades_{window}"] = sum(x.trades for x in w)
            taker = sum(Fraction(x.taker_buy_quote_volume_e8, 10**8) for x in w)
            metrics[f"taker_buy_ratio_{window}"] = float(taker / volume) if volume else None
        closes = [x.close for x in run]
        metrics.update(direct_indicators(closes))
        h, lo, o, x = c.high, c.low, c.open, c.close
        metrics["vcp"] = None if h == lo else (x / ((o + x) / 2)) * ((x - lo) - (h - x)) / (h - lo)
        metrics.update(direct_derivatives(candles, index, len(run)))
        out[index] = metrics
    return out


def direct_derivatives(candles: list[Candle], index: int, run: int) -> dict:
    """§7b for bar `index`, straight from the definitions (minute s found by open time, sums as Fractions)."""
    c = candles[index]
    d = c.derivatives
    by_time = {x.open_time: x for x in candles[: index + 1]}
    field = lambda x, name: None if x is None or x.derivatives is None else getattr(x.derivatives, name)  # noqa: E731
    mark, index_price = field(c, "mark_close"), field(c, "index_close")
    rate, hours, oi = field(c, "funding_rate"), field(c, "funding_interval_hours"), field(c, "open_interest")
    out: dict = {
        "mark_price": mark,
        "index_price": index_price,
        "basis": None if mark is None or not index_price else (mark - index_price) / index_price * 100,
        "funding_rate": None if rate is None else rate * 100,
        "funding_apr": None if rate is None or not hours else rate * 100 * 24 / hours * 365,
        "oi": None if oi is None or mark is None else oi * mark,
    }
    for window, n in SIZES.items():
        start = field(by_time.get(c.open_time - n * MINUTE), "open_interest")
        out[f"oi_change_{window}"] = None if oi is None or not start else (oi - start) / start * 100
        for side in ("long", "short"):
            values = [field(x, f"liq_{side}_quote_e8") for x in candles[index - n + 1 : index + 1]]
            complete = d is not None and run >= n and None not in values
            out[f"liq_{side}_{window}"] = float(Fraction(sum(values), 10**8)) if complete else None
    return out


def ema(values: list[float], n: int) -> list[float | None]:
    result: list[float | None] = [None] * len(values)
    if len(values) < n:
        return result
    current = sum(values[:n]) / n
    result[n - 1] = current
    for i in range(n, len(values)):
        current = current + (values[i] - current) * 2 / (n + 1)
        result[i] = current
    return result


def direct_indicators(closes: list[float]) -> dict:
    out: dict = dict.fromkeys(INDICATORS)
    changes = [b - a for a, b in itertools.pairwise(closes)]
    if len(changes) >= 14:
        ag = sum(max(d, 0.0) for d in changes[:14]) / 14
        al = sum(max(-d, 0.0) for d in changes[:14]) / 14
        for d in changes[14:]:
            ag = (ag * 13 + max(d, 0.0)) / 14
            al = (al * 13 + max(-d, 0.0)) / 14
        out["rsi_14"] = (100.0 if ag > 0 else 50.0) if al == 0 else 100 - 100 / (1 + ag / al)
    if len(closes) >= 26:
        e12, e26 = ema(closes, 12), ema(closes, 26)
        macd = [a - b for a, b in zip(e12[25:], e26[25:], strict=True)]
        out["macd"] = macd[-1]
        if len(macd) >= 9:
            signal = ema(macd, 9)[-1]
            out["macd_signal"] = signal
            out["macd_hist"] = macd[-1] - signal
    if len(closes) >= 20:
        last = closes[-20:]
        middle = statistics.fmean(last)
        deviation = statistics.pstdev(last)
        out["bb_middle"] = middle
        out["bb_upper"] = middle + 2 * deviation
        out["bb_lower"] = middle - 2 * deviation
    return out


def assert_same(got: dict, want: dict, where: str) -> None:
    assert list(got) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        g, w = got[name], want[name]
        assert (g is None) == (w is None), f"{where} {name}: {g!r} != {w!r}"
        if g is None:
            continue
        if name.startswith(("rsi", "macd", "bb_")):
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9), f"{where} {name}: {g!r} != {w!r}"
        else:
            assert g == w, f"{where} {name}: {g!r} != {w!r}"


# --- hand-computed fixtures -----------------------------------------------------------------------------


def test_every_metric_name_is_present_on_every_bar():
    bar = bars_of([candle(0)])[0]
    assert list(bar.metrics) == list(METRIC_NAMES)
    assert bar.price == 100.0 and bar.open_time == T0 and bar.symbol == "BTCUSDT"


def test_a_five_minute_window_is_null_until_its_fifth_minute_then_exact():
    candles = [
        candle(i, close=10.0 + i, open_=9.5 + i, qv=q, tbq="0.1")
        for i, q in enumerate(["0.1", "0.2", "0.3", "0.4", "0.5"])
    ]
    bars = bars_of(candles)
    for bar in bars[:4]:
        assert all(
            bar.metrics[f"{stem}_5m"] is None
            for stem in ("open", "high", "low", "change", "volume", "trades")
        )
    m = bars[4].metrics
    assert m["open_5m"] == 9.5
    assert m["high_5m"] == 14.0 and m["low_5m"] == 9.5
    assert m["change_5m"] == (14.0 - 9.5) / 9.5 * 100
    assert m["volume_5m"] == 1.5  # 0.1+0.2+0.3+0.4+0.5 summed exactly (floats would give 1.5000000000000002)
    assert m["trades_5m"] == 50
    assert m["taker_buy_ratio_5m"] == 0.5 / 1.5
    assert m["volume_ratio_5m"] is None  # needs the 5 minutes before as well
    assert m["open_15m"] is None


def test_volume_ratio_compares_with_the_window_before_and_is_null_on_a_zero_denominator():
    quiet = [candle(i, qv="0", tbq="0") for i in range(5)]
    busy = [candle(5 + i, qv="2", tbq="1") for i in range(5)]
    more = [candle(10 + i, qv="3", tbq="1") for i in range(5)]
    bars = bars_of(quiet + busy + more)
    assert bars[9].metrics["volume_ratio_5m"] is None  # the 5 minutes before had no volume
    assert bars[14].metrics["volume_ratio_5m"] == 15 / 10
    assert bars[4].metrics["taker_buy_ratio_5m"] is None  # zero volume: unknown, not zero
    assert bars[4].metrics["volume_5m"] == 0.0  # but the volume itself is a known zero


def test_zero_volume_minutes_are_present_and_keep_windows_complete():
    candles = [candle(i, qv="0" if i % 2 else "5", trades=0 if i % 2 else 3) for i in range(15)]
    m = bars_of(candles)[-1].metrics
    assert m["volume_15m"] == 40.0 and m["trades_15m"] == 24
    assert m["open_15m"] == 100.0


def test_a_missing_minute_starts_a_new_run_for_windows_and_indicators():
    candles = [candle(i, close=100.0 + i) for i in range(40)] + [
        candle(41 + i, close=200.0 + i) for i in range(20)
    ]
    bars = bars_of(candles)
    assert bars[39].metrics["macd_signal"] is not None
    after = bars[40].metrics  # the first minute after the hole
    assert after["open_5m"] is None and after["rsi_14"] is None and after["macd"] is None
    assert bars[44].metrics["open_5m"] == 200.0  # five minutes into the new run
    assert bars[54].metrics["rsi_14"] == 100.0 and bars[53].metrics["rsi_14"] is None  # 15th close of the run
    assert bars[59].metrics["bb_middle"] == sum(200.0 + i for i in range(20)) / 20


def test_a_listing_mid_window_gives_null_windows_until_the_window_is_full():
    bars = bars_of([candle(i) for i in range(60)])
    assert bars[58].metrics["volume_1h"] is None
    assert bars[59].metrics["volume_1h"] == 60_000.0
    assert bars[59].metrics["volume_4h"] is None and bars[59].metrics["change_1d"] is None


def test_rsi_first_appears_at_the_fifteenth_close_with_wilder_smoothing():
    closes = [10.0 + (i % 2) for i in range(16)]  # 10, 11, 10, 11, ...: 7 gains and 7 losses of 1
    bars = bars_of([candle(i, close=x) for i, x in enumerate(closes)])
    assert bars[13].metrics["rsi_14"] is None
    assert bars[14].metrics["rsi_14"] == 50.0  # average gain = average loss = 0.5
    ag, al = (0.5 * 13 + 1) / 14, (0.5 * 13) / 14
    assert bars[15].metrics["rsi_14"] == pytest.approx(100 - 100 / (1 + ag / al), rel=1e-15)  # 53.57…


def test_rsi_is_100_when_only_gains_and_50_when_nothing_moves():
    rising = bars_of([candle(i, close=1.0 + i) for i in range(15)])
    flat = bars_of([candle(i, close=5.0) for i in range(15)])
    assert rising[-1].metrics["rsi_14"] == 100.0
    assert flat[-1].metrics["rsi_14"] == 50.0


def test_macd_is_seeded_by_means_and_first_appears_at_the_26th_and_34th_close():
    # On a ramp 1, 2, 3, … EMA(12) seeded at mean(1..12) = 6.5 stays 5.5 behind, EMA(26) 12.5 behind.
    bars = bars_of([candle(i, close=float(i + 1)) for i in range(40)])
    assert bars[24].metrics["macd"] is None
    assert bars[25].metrics["macd"] == pytest.approx(7.0, abs=1e-12)
    assert bars[32].metrics["macd_signal"] is None and bars[32].metrics["macd_hist"] is None
    assert bars[33].metrics["macd_signal"] == pytest.approx(7.0, abs=1e-12)
    assert bars[33].metrics["macd_hist"] == pytest.approx(0.0, abs=1e-12)


def test_bollinger_bands_use_the_population_deviation_of_20_closes_from_the_20th():
    bars = bars_of([candle(i, close=float(i + 1)) for i in range(20)])
    assert bars[18].metrics["bb_middle"] is None
    deviation = math.sqrt((20**2 - 1) / 12)  # population variance of 1..20
    m = bars[19].metrics
    assert m["bb_middle"] == 10.5
    assert m["bb_upper"] == pytest.approx(10.5 + 2 * deviation, rel=1e-15)
    assert m["bb_lower"] == pytest.approx(10.5 - 2 * deviation, rel=1e-15)


def test_vcp_uses_the_newest_candle_and_is_null_when_high_equals_low():
    m = bars_of([candle(0, open_=10.0, close=11.0, high=12.0, low=9.0)])[0].metrics
    assert m["vcp"] == (11.0 / 10.5) * (2.0 - 1.0) / 3.0
    assert bars_of([candle(0, close=7.0)])[0].metrics["vcp"] is None


def test_a_zero_open_makes_change_unknown_not_infinite():
    bars = bars_of([candle(i, close=1.0, open_=0.0 if i == 0 else 1.0, low=0.0) for i in range(5)])
    assert bars[4].metrics["change_5m"] is None
    assert bars[4].metrics["open_5m"] == 0.0


def test_a_repeated_or_older_minute_is_refused():
    state = SymbolState("BTCUSDT")
    state.add_final(candle(5))
    with pytest.raises(ValueError, match="not after"):
        state.add_final(candle(5))
    with pytest.raises(ValueError, match="not after"):
        state.add_final(candle(4))
    assert state.last_open_time == T0 + 5 * MINUTE


def test_a_day_window_and_its_volume_ratio_need_2880_present_minutes():
    candles = [candle(i, qv=str(1 + i % 7)) for i in range(2881)]
    bars = bars_of(candles)
    assert bars[2878].metrics["volume_ratio_1d"] is None
    assert bars[2879].metrics["volume_ratio_1d"] is not None
    want = direct(candles, only={2880})[2880]
    assert all(bars[2880].metrics[name] == want[name] for name in METRIC_NAMES if name not in INDICATORS)
    total = sum(1 + i % 7 for i in range(1441, 2881))
    assert bars[2880].metrics["volume_1d"] == float(total)


def test_preview_gives_the_final_bar_without_changing_the_state():
    candles = [candle(i, close=100.0 + (i * 37 % 11), qv=str(i % 5)) for i in range(60)]
    state = SymbolState("BTCUSDT")
    for c in candles[:-1]:
        state.add_final(c)
    live = state.preview(candles[-1])
    again = state.preview(candles[-1])
    final = state.add_final(candles[-1])
    assert not live.final and final.final
    assert live.metrics == final.metrics == again.metrics


def test_preview_after_a_missing_minute_starts_a_new_run():
    state = SymbolState("BTCUSDT")
    for i in range(10):
        state.add_final(candle(i))
    live = state.preview(candle(11))
    assert live.metrics["open_5m"] is None and live.metrics["price"] == 100.0
    assert state.last_open_time == T0 + 9 * MINUTE


def test_restarting_from_the_stored_candles_gives_the_same_bars():
    candles = [candle(i, close=100.0 + math.sin(i) * 3, qv=str(i % 13)) for i in range(500)]
    whole = bars_of(candles)
    for cut in (1, 33, 250, 499):
        restarted = SymbolState("BTCUSDT")
        for c in candles[:cut]:
            restarted.add_final(c)
        rest = [restarted.add_final(c) for c in candles[cut:]]
        assert [b.metrics for b in rest] == [b.metrics for b in whole[cut:]]


def test_replay_marks_late_bars_from_event_time():
    on_time = dataclasses.replace(candle(0), event_time=T0 + MINUTE + 2_000)
    late = dataclasses.replace(candle(1), event_time=T0 + 2 * MINUTE + 200_000)
    bars = list(replay([on_time, late], late_after_ms=180_000))
    assert [b.late for b in bars] == [False, True]


# --- property: incremental == direct recomputation -----------------------------------------------------

price = st.sampled_from(["0.5", "1", "1.25", "99.99", "100", "100.01", "1e-8", "31337.1"])
volume = st.sampled_from(
    ["0", "0.00000001", "0.1", "0.2", "3", "12345678.12345678", "99999999999.99999999", "50000000000"]
)


maybe = lambda values: st.one_of(st.none(), st.sampled_from(values))  # noqa: E731


@st.composite
def derivative_fields(draw):
    """A candle's §7b fields: mostly all present, sometimes some or all null or absent."""
    if draw(st.integers(0, 9)) == 0:
        return {}
    fields = {
        "mark_close": draw(maybe(["100", "100.5", "0.00123", "31337.1"])),
        "index_close": draw(maybe(["100", "99.5", "0", "0.00122"])),
        "funding_rate": draw(maybe(["0.0001", "-0.00375", "0", "0.03"])),
        "funding_interval_hours": draw(maybe([8, 4, 1, 0])),
        "open_interest": draw(maybe(["0", "1000", "1000.5", "123456789.123", "7"])),
        "liq_long_quote": draw(maybe(["0", "0.00000001", "1000000.5", "99999999999.99999999"])),
        "liq_short_quote": draw(maybe(["0", "12.34", "5000000"])),
        "liq_count": draw(maybe([0, 1, 3])),
    }
    if draw(st.booleans()):  # the collector's usual candle: every field known
        fields = {name: value if value is not None else "1" for name, value in fields.items()}
        fields["liq_count"] = 2
    return fields


@st.composite
def sequences(draw):
    symbols = draw(st.lists(st.sampled_from(["AAA", "BBB", "ÄÖÜUSDT"]), min_size=1, max_size=2, unique=True))
    candles = []
    for symbol in symbols:
        minute = 0
        for _ in range(draw(st.integers(min_value=1, max_value=90))):
            minute += draw(st.sampled_from([1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3]))
            prices = sorted(float(draw(price)) for _ in range(4))
            o, x = draw(st.permutations([prices[1], prices[2]]))
            qv = draw(volume)
            tbq = draw(st.sampled_from(["0", qv, "0.1"]))
            candles.append(
                candle(
                    minute,
                    close=x,
                    open_=o,
                    high=prices[3],
                    low=prices[0],
                    qv=qv,
                    tbq=tbq,
                    trades=draw(st.integers(0, 5)),
                    symbol=symbol,
                    **draw(derivative_fields()),
                )
            )
    candles.sort(key=lambda c: c.open_time)  # symbols interleave, each in order
    return candles


@settings(max_examples=120, deadline=None)
@given(sequences())
def test_incremental_metrics_equal_a_direct_recomputation(candles):
    bars = bars_of(candles)
    for symbol in {c.symbol for c in candles}:
        mine = [c for c in candles if c.symbol == symbol]
        got = [b for b in bars if b.symbol == symbol]
        for bar, want, c in zip(got, direct(mine).values(), mine, strict=True):
            assert bar.open_time == c.open_time
            assert_same(bar.metrics, want, f"{symbol}@{c.open_time}")


def test_long_windows_equal_a_direct_recomputation_with_gaps():
    candles = [
        candle(i, close=100 + (i * 7919 % 101) / 10, qv=str(i * 104729 % 1000), tbq=str(i % 3))
        for i in range(1300)
        if i not in (700, 701)
    ]
    candles += [candle(1300 + i, close=50.0 + i % 17, qv=str(i % 29)) for i in range(500)]
    bars = bars_of(candles)
    indices = (0, 59, 239, 699, 700, 760, 1000, 1297, 1500, 1797)
    want = direct(candles, only=set(indices))
    for index in indices:
        assert_same(bars[index].metrics, want[index], f"#{index}")


def test_huge_volumes_are_still_summed_exactly():
    candles = [candle(i, qv="99999999999.99999999", tbq="12345678901.23456789") for i in range(2880)]
    m = bars_of(candles)[-1].metrics
    assert m["volume_1d"] == float(Fraction(10**19 - 1, 10**8) * 1440)
    assert m["volume_ratio_1d"] == 1.0
    assert m["taker_buy_ratio_1d"] == float(Fraction(1234567890123456789, 10**19 - 1))


def test_absorbing_history_leaves_the_same_state_as_adding_it():
    candles = [candle(i, close=100.0 + math.cos(i / 3) * 4, qv=str(i % 17)) for i in range(300) if i != 150]
    added, absorbed = SymbolState("BTCUSDT"), SymbolState("BTCUSDT")
    for c in candles[:-1]:
        added.add_final(c)
        absorbed.absorb(c)
    assert absorbed.add_final(candles[-1]).metrics == added.add_final(candles[-1]).metrics


def test_day_windows_of_a_random_walk_equal_a_direct_recomputation():
    walk = random.Random(11)
    closes = [100.0]
    for _ in range(3099):
        closes.append(round(closes[-1] * (1 + walk.gauss(0, 0.003)), 6))
    candles = [
        candle(i, close=x, open_=closes[i - 1] if i else x, qv=str(walk.randrange(0, 10_000)), tbq="1")
        for i, x in enumerate(closes)
    ]
    bars = bars_of(candles)
    indices = (1439, 1440, 2000, 2879, 2880, 3099)
    want = direct(candles, only=set(indices))
    for index in indices:
        got = bars[index].metrics
        assert all(got[name] == want[index][name] for name in METRIC_NAMES if name not in INDICATORS), index


def test_bars_read_long_after_they_were_made_equal_bars_read_at_once_also_beyond_a_trimmed_run():
    walk = random.Random(3)
    candles = [
        candle(i, close=100.0 + walk.uniform(-5, 5), qv=str(walk.randrange(0, 10**6)), tbq=str(i % 5))
        for i in range(4700)
    ]
    kept = bars_of(candles)  # read only now, after the state has moved on (and cut its columns)
    state = SymbolState("BTCUSDT")
    for c, bar in zip(candles, kept, strict=True):
        now = state.add_final(c).metrics_dict()
        if c.open_time % (97 * MINUTE) == 0 or c.open_time >= T0 + 4300 * MINUTE:
            assert dict(bar.metrics) == now, c.open_time
    want = direct(candles, only={4400, 4699})
    for index in (4400, 4699):
        got = kept[index].metrics
        assert all(got[name] == want[index][name] for name in METRIC_NAMES if name not in INDICATORS), index


# --- §7b derivatives metrics: hand-computed fixtures -------------------------------------------------------

FULL = dict(
    mark_close="101",
    index_close="100",
    funding_rate="0.0005",
    funding_interval_hours=4,
    open_interest="2000",
    liq_long_quote="250000.25",
    liq_short_quote="0",
    liq_count=1,
)


def test_per_bar_derivatives_metrics_follow_their_definitions():
    m = bars_of([candle(0, **FULL)])[0].metrics
    assert m["mark_price"] == 101.0 and m["index_price"] == 100.0
    assert m["basis"] == (101.0 - 100.0) / 100.0 * 100  # 1 %
    assert m["funding_rate"] == 0.0005 * 100  # 0.05 % per 4-hour interval
    assert m["funding_apr"] == 0.0005 * 100 * 24 / 4 * 365  # 109.5 % a year
    assert m["oi"] == 2000 * 101.0  # contracts × mark
    assert m["oi_change_5m"] is None and m["liq_long_5m"] is None  # no history yet


def test_a_candle_without_derivatives_fields_has_every_derivatives_metric_null():
    bars = bars_of([candle(i, **FULL) for i in range(5)] + [candle(5)])
    assert bars[4].metrics["liq_long_5m"] == 5 * 250000.25
    assert all(bars[5].metrics[name] is None for name in DERIVATIVE_METRICS)


def test_any_null_operand_makes_the_per_bar_metric_null():
    m = bars_of([candle(0, **{**FULL, "index_close": None, "funding_interval_hours": 0})])[0].metrics
    assert m["mark_price"] == 101.0 and m["index_price"] is None and m["basis"] is None
    assert m["funding_rate"] == 0.05 and m["funding_apr"] is None  # a zero interval is a zero denominator
    m = bars_of([candle(0, **{**FULL, "mark_close": None})])[0].metrics
    assert m["oi"] is None and m["basis"] is None
    m = bars_of([candle(0, **{**FULL, "index_close": "0"})])[0].metrics
    assert m["basis"] is None


def test_oi_change_compares_with_the_minute_n_before_even_across_missing_minutes():
    ois = {0: "1000", 5: "1100", 15: "1200"}
    candles = [candle(i, **{**FULL, "open_interest": ois.get(i, "1")}) for i in range(16) if i not in (7, 8)]
    bars = {bar.open_time: bar for bar in bars_of(candles)}
    at_5 = bars[T0 + 5 * MINUTE].metrics
    assert at_5["oi_change_5m"] == (1100 - 1000) / 1000 * 100  # 10 %
    at_15 = bars[T0 + 15 * MINUTE].metrics
    assert at_15["oi_change_15m"] == (1200 - 1000) / 1000 * 100  # minutes 7 and 8 missing: still known
    assert at_15["liq_long_15m"] is None  # ... but a 15-minute window with missing minutes is not
    assert at_15["oi_change_5m"] == (1200 - 1) / 1 * 100
    assert at_15["oi_change_1h"] is None


def test_oi_change_is_null_when_minute_s_is_missing_or_its_open_interest_is_null_or_zero():
    candles = [candle(0, **{**FULL, "open_interest": "0"}), candle(1, **{**FULL, "open_interest": None})]
    candles += [candle(i, **FULL) for i in range(3, 9)]  # minute 2 missing
    bars = bars_of(candles)
    # minute 5 reads minute 0 (zero: no denominator), 6 reads 1 (null), 7 reads 2 (missing), 8 reads 3
    assert [bar.metrics["oi_change_5m"] for bar in bars[2:]] == [None, None, None, None, None, 0.0]


def test_liquidation_sums_are_exact_and_null_when_any_minute_of_the_window_is_null():
    huge = "99999999999.99999999"
    candles = [
        candle(i, **{**FULL, "liq_long_quote": huge, "liq_short_quote": "0.00000001"}) for i in range(5)
    ]
    m = bars_of(candles)[-1].metrics
    assert m["liq_long_5m"] == float(Fraction(10**19 - 1, 10**8) * 5)
    assert m["liq_short_5m"] == 5e-8
    candles[2] = candle(2, **{**FULL, "liq_short_quote": None})
    m = bars_of(candles)[-1].metrics
    assert m["liq_short_5m"] is None and m["liq_long_5m"] is not None


def test_derivatives_windows_survive_previews_day_gaps_and_trimmed_tracks():
    walk = random.Random(5)
    minutes = [i for i in range(9000) if not 2000 <= i < 3500 and i not in (4000, 4001)]
    candles = [
        candle(
            i,
            **{
                **FULL,
                "open_interest": str(walk.randrange(1, 10**6)),
                "liq_long_quote": str(walk.randrange(0, 10**9) / 100),
                "liq_short_quote": None if walk.random() < 0.001 else str(walk.randrange(0, 500)),
            },
        )
        for i in minutes
    ]
    state = SymbolState("BTCUSDT")
    kept = []
    for index, c in enumerate(candles):
        preview = state.preview(c) if index % 7 == 0 or index > len(candles) - 800 else None
        kept.append(state.add_final(c))
        assert preview is None or preview.metrics_dict() == kept[-1].metrics_dict() | {}
    assert state._track.base > T0 // MINUTE + 4002  # the track was cut meanwhile (twice)
    indices = [1440, 1999, 2000, 2100, 3439, 3440, 4000, 6000, len(candles) - 1500, len(candles) - 1]
    for index in indices:
        want = direct_derivatives(candles, index, _run_length(candles, index))
        got = kept[index].metrics  # read long after: the track was cut and restarted meanwhile
        assert {name: got[name] for name in want} == want, index


def _run_length(candles: list[Candle], index: int) -> int:
    run = 1
    while index - run >= 0 and candles[index - run].open_time == candles[index].open_time - run * MINUTE:
        run += 1
    return run


DERIVATIVE_METRICS = [
    name for name in METRIC_NAMES if name.split("_")[0] in ("mark", "index", "basis", "funding", "oi", "liq")
]
