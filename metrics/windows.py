"""The §7 window engine: per-symbol state of the last 2880 minutes, O(1) per candle, bars computed lazily.

Framework-free and shared by the live worker (`metrics.engine`) and the offline replay (`metrics.replay`,
which the backtest builds on), so live bars and backtests are the same numbers: one implementation.

Adding a candle only appends it to the symbol's columns and steps the recursive indicators (RSI, EMAs);
a `Bar` keeps a reference to the columns and computes a metric when it is first read, per window (so a
backtest computes only the windows its rules reference; storage and publishing read them all). The columns
are append-only: a value once written is never changed, and trimming a long run rebinds the state to
shorter copies instead of cutting the old columns, so a bar stays valid however long it is kept.

How each metric is O(1) (or small) per bar:
- volumes, taker-buy volumes and trades are running totals appended per minute, so a window sum is one
  subtraction. Totals are exact integers of 10⁻⁸ kept modulo 2⁶⁴ in machine arrays. A window sum of 2⁶⁴
  units (1.8·10¹¹ USDT) or more would wrap, so once a run has a minute above 2⁶⁴/2880 units its sums are
  corrected by the number of wraps, read off float shadow totals (whose error is far below 2⁶⁴);
- `high_W`/`low_W` combine three maxima: of the window's part of its first 120-minute block (suffix
  maxima, made once per block when first needed), of the whole blocks in between (appended as each block
  completes) and of the minutes of its last block;
- RSI (Wilder) and EMA(12/26/9) are recursive and stepped with every candle; Bollinger bands read the
  last 20 closes.

A minute without a candle starts a new run (docs/contract.md §7): windows need their N minutes present (`volume_ratio`
2N), indicators count closes from the run's start. Runs longer than 2880 minutes keep their recursive
indicators going; windows never need more than 2880 minutes.

The §7b derivatives metrics read a second append-only column that does not restart at a missing minute,
`_Track`: each minute's `Derivatives` (None when the minute is missing or has none), because `oi_change_W`
needs only minutes t and t − N, whatever lies between. Adding a candle appends one reference; the
liquidation running totals (exact integers of 10⁻⁸) and null counts behind `liq_long_W`/`liq_short_W` are
extended only when a bar first reads them, so a market without derivatives pays one append per candle.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping
from itertools import accumulate
from typing import Any, Literal, overload

from cryptomon.contract.candles import Candle, Derivatives
from cryptomon.contract.messages import metrics_payload
from cryptomon.contract.names import (
    DERIVATIVES_BAR_NAMES,
    DERIVATIVES_WINDOW_STEMS,
    INDICATOR_NAMES,
    METRIC_NAMES,
    TIMEFRAME_MINUTES,
    TIMEFRAMES,
    WINDOW_STEMS,
)
from cryptomon.contract.times import MINUTE_MS

__all__ = ["HISTORY_MINUTES", "METRIC_NAMES", "WINDOW_SIZES", "Bar", "BarMetrics", "SymbolState"]

HISTORY_MINUTES = 2880  # 1-day windows plus the day before them (volume_ratio_1d)
WINDOW_SIZES: tuple[int, ...] = tuple(TIMEFRAME_MINUTES[window] for window in TIMEFRAMES)
_WRAP = 1 << 64
_MASK = _WRAP - 1
_BIG_MINUTE = _WRAP // HISTORY_MINUTES  # from this volume per minute on, a window sum may wrap
_SCALE = 100_000_000
_BLOCK = 120  # minutes per block of the high/low block extremes
_TRIM_BY = 12 * _BLOCK  # a run's columns are cut by this many minutes (whole blocks) ...
_TRIM_AT = HISTORY_MINUTES + _TRIM_BY  # ... when they reach this length, keeping the newest 2880
_NULL_WINDOW = (None,) * len(WINDOW_STEMS)
_DAY = TIMEFRAME_MINUTES["1d"]  # the longest look-back of a §7b metric (oi_change_1d reads t − 1440)
_TRACK_TRIM_AT = 2 * _DAY  # a derivatives track holding 2 days is cut by one (oi_change_1d reads a day back)
_NULL_LIQ = _WRAP - 1  # a null liquidation sum in a track (a real one is below 10^19 < 2^64 − 1)
_NAN = math.nan
_NULL_DERIVATIVES = (None,) * (len(DERIVATIVES_BAR_NAMES) + len(TIMEFRAMES) * len(DERIVATIVES_WINDOW_STEMS))

# The engine emits values in exactly this order; checked once at import against the contract.
_ORDER = (
    "price",
    *(f"{stem}_{window}" for window in TIMEFRAMES for stem in WINDOW_STEMS),
    *INDICATOR_NAMES,
    *DERIVATIVES_BAR_NAMES,
    *(f"{stem}_{window}" for window in TIMEFRAMES for stem in DERIVATIVES_WINDOW_STEMS),
)
if _ORDER != METRIC_NAMES:  # pragma: no cover - a change in the contract must be mirrored here
    raise ImportError("metrics.windows is out of step with cryptomon.contract.names.METRIC_NAMES")

# Which group computes a name: per window its sums and its range (high/low, the dearer part), then the
# recursive indicators, the bands and vcp. A backtest reads only the groups its rules reference.
_STEMS_CORE = ("open", "change", "volume", "volume_ratio", "trades", "taker_buy_ratio")
_RANGES = len(TIMEFRAMES)
_RECURSIVE, _BANDS, _VCP = 2 * _RANGES, 2 * _RANGES + 1, 2 * _RANGES + 2
_DERIVATIVES = _VCP + 1  # the §7b metrics of the bar itself; then one group per window
_GROUP_NAMES: tuple[tuple[str, ...], ...] = (
    *(tuple(f"{stem}_{window}" for stem in _STEMS_CORE) for window in TIMEFRAMES),
    *((f"high_{window}", f"low_{window}") for window in TIMEFRAMES),
    ("price", "rsi_14", "macd", "macd_signal", "macd_hist"),
    ("bb_upper", "bb_middle", "bb_lower"),
    ("vcp",),
    DERIVATIVES_BAR_NAMES,
    *(tuple(f"{stem}_{window}" for stem in DERIVATIVES_WINDOW_STEMS) for window in TIMEFRAMES),
)
_GROUP_OF: dict[str, int] = {name: group for group, names in enumerate(_GROUP_NAMES) for name in names}
if WINDOW_STEMS[:3] != ("open", "high", "low") or WINDOW_STEMS[3:] != _STEMS_CORE[1:]:  # pragma: no cover
    raise ImportError("metrics.windows is out of step with cryptomon.contract.names.WINDOW_STEMS")
_UNSET = object()


class _Columns:
    """One run's minutes (or its newest part), append-only; `offset` minutes of the run precede index 0.

    `q`, `tb`, `n` hold the running totals (mod 2⁶⁴) before index 0 and after every minute, so they are
    one longer than the price columns. `fq`/`ftb` are their float shadows, kept once the run is big."""

    __slots__ = (
        "bhigh",
        "blow",
        "closes",
        "fq",
        "ftb",
        "highs",
        "lows",
        "n",
        "offset",
        "opens",
        "q",
        "shigh",
        "slow",
        "tb",
    )

    def __init__(self) -> None:
        self.offset = 0
        self.opens = array("d")
        self.highs = array("d")
        self.lows = array("d")
        self.closes = array("d")
        self.q = array("Q", (0,))
        self.tb = array("Q", (0,))
        self.n = array("Q", (0,))
        self.fq: array | None = None
        self.ftb: array | None = None
        self.bhigh = array("d")  # max high / min low of each completed block of _BLOCK minutes
        self.blow = array("d")
        self.shigh: list[tuple | None] = []  # per completed block, its suffix and prefix extremes once made
        self.slow: list[tuple | None] = []

    def shadow(self) -> None:
        """Start the float shadows of the volume totals (the per-minute differences are exact)."""
        for name, shadow_name in (("q", "fq"), ("tb", "ftb")):
            totals = getattr(self, name)
            shadow = array("d", (0.0,))
            running = 0.0
            previous = totals[0]
            for total in totals[1:]:
                running += (total - previous) & _MASK
                shadow.append(running)
                previous = total
            setattr(self, shadow_name, shadow)

    def trimmed(self) -> _Columns:
        """A copy without the oldest _TRIM_BY minutes (whole blocks); this object is left unchanged."""
        cut = _TRIM_BY
        new = _Columns.__new__(_Columns)
        new.offset = self.offset + cut
        new.opens, new.highs, new.lows, new.closes = (
            self.opens[cut:],
            self.highs[cut:],
            self.lows[cut:],
            self.closes[cut:],
        )
        new.q, new.tb, new.n = self.q[cut:], self.tb[cut:], self.n[cut:]
        new.fq = None if self.fq is None else self.fq[cut:]
        new.ftb = None if self.ftb is None else self.ftb[cut:]
        blocks = cut // _BLOCK
        new.bhigh, new.blow = self.bhigh[blocks:], self.blow[blocks:]
        new.shigh, new.slow = self.shigh[blocks:], self.slow[blocks:]
        return new

    def truncate(self, length: int, shadowed: bool) -> None:
        """Forget the minutes from index `length` on (undoing a preview's append)."""
        for column in (self.opens, self.highs, self.lows, self.closes):
            del column[length:]
        for column in (self.q, self.tb, self.n):
            del column[length + 1 :]
        if not shadowed:
            self.fq = self.ftb = None
        elif self.fq is not None:
            del self.fq[length + 1 :]
            del self.ftb[length + 1 :]
        blocks = length // _BLOCK
        for blocked in (self.bhigh, self.blow, self.shigh, self.slow):
            del blocked[blocks:]

    def extremes(self, first: int, last: int) -> tuple[float, float]:
        """(max high, min low) of the minutes first..last: the end of the first block (suffix extremes),
        the whole blocks between, the start of the last block (prefix extremes; minutes of the block still
        filling are read directly)."""
        highs, lows = self.highs, self.lows
        head, tail = first // _BLOCK, last // _BLOCK
        if head == tail:
            if last - first < 24 or tail >= len(self.bhigh):
                return max(highs[first : last + 1]), min(lows[first : last + 1])
            high, low = self._block_extremes(head)
            start = head * _BLOCK
            if first == start:
                return high[1][last - start], low[1][last - start]
            return max(highs[first : last + 1]), min(lows[first : last + 1])
        high, low = self._block_extremes(head)
        offset = first - head * _BLOCK
        high_value, low_value = high[0][offset], low[0][offset]
        if tail < len(self.bhigh):
            high, low = self._block_extremes(tail)
            offset = last - tail * _BLOCK
            high_value, low_value = max(high_value, high[1][offset]), min(low_value, low[1][offset])
        else:
            start = tail * _BLOCK
            high_value = max(high_value, max(highs[start : last + 1]))
            low_value = min(low_value, min(lows[start : last + 1]))
        if tail - head > 1:
            high_value = max(high_value, max(self.bhigh[head + 1 : tail]))
            low_value = min(low_value, min(self.blow[head + 1 : tail]))
        return high_value, low_value

    def _block_extremes(self, block: int) -> tuple[tuple[array, array], tuple[array, array]]:
        """((suffix max, prefix max) of highs, (suffix min, prefix min) of lows) of a completed block,
        made when first needed and kept."""
        made = self.shigh[block]
        if made is None:
            start, end = block * _BLOCK, (block + 1) * _BLOCK
            made = self.shigh[block] = _ends(self.highs[start:end], max)
            self.slow[block] = _ends(self.lows[start:end], min)
        return made, self.slow[block]  # type: ignore[return-value]


def _ends(values: array, pick) -> tuple[array, array]:
    suffix = array("d", accumulate(reversed(values), pick))
    suffix.reverse()
    return suffix, array("d", accumulate(values, pick))


class _Track:
    """A symbol's §7b window inputs per absolute minute from `base` on, append-only, across missing minutes.

    Compact machine arrays (the live worker keeps 600 symbols' tracks): `oi` (NaN = null), `lq`/`sq` the
    liquidation sums (integers of 10⁻⁸; `_NULL_LIQ` = null). They may end before the symbol's newest minute
    — minutes past their end are null (missing, or a candle without fields), so a market without
    derivatives appends nothing. `tl`/`ts` (running totals mod 2⁶⁴), `fl`/`fs` (their float shadows) and
    `nl`/`ns` (running null counts) cover the minutes before index 0 and after each minute, extended when a
    bar first reads them."""

    __slots__ = ("base", "fl", "fs", "lq", "nl", "ns", "oi", "sq", "tl", "ts")

    def __init__(self, base: int) -> None:
        self.base = base
        self.oi = array("d")
        self.lq = array("Q")
        self.sq = array("Q")
        self._totals()

    def _totals(self) -> None:
        self.tl, self.ts = array("Q", (0,)), array("Q", (0,))
        self.fl, self.fs = array("d", (0.0,)), array("d", (0.0,))
        self.nl, self.ns = array("I", (0,)), array("I", (0,))

    def pad(self, minute: int) -> None:
        """Nulls for the minutes from the arrays' end to `minute` (whose fields come next)."""
        pad = minute - self.base - len(self.oi)
        self.oi.extend(array("d", (_NAN,)) * pad)
        self.lq.extend(array("Q", (_NULL_LIQ,)) * pad)
        self.sq.extend(array("Q", (_NULL_LIQ,)) * pad)

    def trimmed(self) -> _Track:
        """A copy without the oldest `_DAY` minutes; this object is left unchanged."""
        cut = _DAY
        new = _Track.__new__(_Track)
        new.base = self.base + cut
        new.oi, new.lq, new.sq = self.oi[cut:], self.lq[cut:], self.sq[cut:]
        if len(self.tl) > cut:
            new.tl, new.ts, new.fl, new.fs = self.tl[cut:], self.ts[cut:], self.fl[cut:], self.fs[cut:]
            new.nl, new.ns = self.nl[cut:], self.ns[cut:]
        else:
            new._totals()
        return new

    def truncate(self, length: int) -> None:
        """Forget the minutes from index `length` on (undoing a preview's append)."""
        for values in (self.oi, self.lq, self.sq):
            del values[length:]
        for totals in (self.tl, self.ts, self.fl, self.fs, self.nl, self.ns):
            del totals[length + 1 :]

    def open_interest(self, k: int) -> float | None:
        """`open_interest` of minute index k (None when null, missing or before the track)."""
        if k < 0 or k >= len(self.oi):
            return None
        value = self.oi[k]
        return None if value != value else value

    def liquidations(self, first: int, last: int) -> tuple[float | None, float | None]:
        """(Σ liq_long_quote, Σ liq_short_quote) of minutes first..last; None where one of them is null."""
        tl, ts, fl, fs, nl, ns = self.tl, self.ts, self.fl, self.fs, self.nl, self.ns
        done = len(tl) - 1
        if done <= last:
            lq, sq = self.lq, self.sq
            known = len(lq)
            total_l, total_s, float_l, float_s = tl[-1], ts[-1], fl[-1], fs[-1]
            null_l, null_s = nl[-1], ns[-1]
            for k in range(done, last + 1):
                if k < known:
                    value = lq[k]
                    if value == _NULL_LIQ:
                        null_l += 1
                    else:
                        total_l = (total_l + value) & _MASK
                        float_l += value
                    value = sq[k]
                    if value == _NULL_LIQ:
                        null_s += 1
                    else:
                        total_s = (total_s + value) & _MASK
                        float_s += value
                else:
                    null_l += 1
                    null_s += 1
                tl.append(total_l)
                ts.append(total_s)
                fl.append(float_l)
                fs.append(float_s)
                nl.append(null_l)
                ns.append(null_s)
        end = last + 1
        return (
            None
            if nl[end] - nl[first]
            else _unwrap((tl[end] - tl[first]) & _MASK, fl[end] - fl[first]) / _SCALE,
            None
            if ns[end] - ns[first]
            else _unwrap((ts[end] - ts[first]) & _MASK, fs[end] - fs[first]) / _SCALE,
        )


def _bar_derivatives(d: Derivatives) -> tuple:
    """mark_price, index_price, basis, funding_rate, funding_apr, oi of a bar whose candle carries `d`."""
    mark, index = d.mark_close, d.index_close
    basis = None if mark is None or not index else (mark - index) / index * 100
    rate = None if d.funding_rate is None else d.funding_rate * 100
    hours = d.funding_interval_hours
    apr = None if rate is None or not hours else rate * 24 / hours * 365
    oi = d.open_interest
    return mark, index, basis, rate, apr, None if oi is None or mark is None else oi * mark


def _oi_change(track: _Track, j: int, n: int, oi: float | None) -> float | None:
    """(OI_t − OI_s) / OI_s × 100 for s = t − n; None when either is unknown or OI_s is 0."""
    if oi is None:
        return None
    start = track.open_interest(j - n)
    return None if not start else (oi - start) / start * 100


class BarMetrics(Mapping):
    """A bar's §7 metrics by name (every name of `METRIC_NAMES`, in that order), computed when read."""

    __slots__ = ("_bar",)

    def __init__(self, bar: Bar) -> None:
        self._bar = bar

    def __getitem__(self, name: str) -> Any:
        return self._bar.metric(name)

    def get(self, name: str, default: Any = None) -> Any:
        cache = self._bar._cache  # the backtest's hot path: one lookup when the name is known already
        if cache is not None:
            value = cache.get(name, _UNSET)
            if value is not _UNSET:
                return value
        return self._bar.metric(name) if name in _GROUP_OF else default

    def __contains__(self, name: object) -> bool:
        return name in _GROUP_OF

    def __iter__(self) -> Iterator[str]:
        return iter(METRIC_NAMES)

    def __len__(self) -> int:
        return len(METRIC_NAMES)

    def __repr__(self) -> str:
        return f"BarMetrics({self._bar.metrics_dict()!r})"


class Bar:
    """The metrics of one minute of one symbol; `late` is decided by the caller (docs/contract.md §5).

    `metrics` is a read-only mapping computed on first read of each name; `metrics_dict()` all of them."""

    __slots__ = (
        "_cache",
        "_columns",
        "_d",
        "_index",
        "_macd",
        "_rsi",
        "_signal",
        "_track",
        "final",
        "late",
        "open_time",
        "price",
        "symbol",
    )

    def __init__(
        self,
        symbol: str,
        open_time: int,
        price: float,
        columns: _Columns,
        index: int,
        rsi: float | None,
        macd: float | None,
        signal: float | None,
        track: _Track,
        d: Derivatives | None,
    ) -> None:
        self.symbol = symbol
        self.open_time = open_time
        self.price = price
        self._columns = columns
        self._index = index
        self._rsi = rsi
        self._macd = macd
        self._signal = signal
        self._track = track
        self._d = d
        self._cache: dict[str, Any] | None = None
        self.final = True
        self.late = False

    @property
    def metrics(self) -> BarMetrics:
        return BarMetrics(self)

    def metric(self, name: str) -> Any:
        """One §7 metric (KeyError for an unknown name); its group is computed once and kept."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        else:
            value = cache.get(name, _UNSET)
            if value is not _UNSET:
                return value
        group = _GROUP_OF[name]
        cache.update(zip(_GROUP_NAMES[group], self._group(group)))  # noqa: B905
        return cache[name]

    def metrics_dict(self) -> dict[str, Any]:
        """Every §7 metric, in `METRIC_NAMES` order (the `metrics` object of §5)."""
        cache = self._cache
        if cache is not None and len(cache) == len(METRIC_NAMES):
            return cache
        columns, i = self._columns, self._index
        run = columns.offset + i + 1
        x = self.price
        values: list[Any] = [x]
        # The windows' sums as in `_sums`, written out here once: the live path reads every bar whole.
        opens, q, tb, trades, fq, ftb = (
            columns.opens,
            columns.q,
            columns.tb,
            columns.n,
            columns.fq,
            columns.ftb,
        )
        q_end, tb_end, trades_end = q[i + 1], tb[i + 1], trades[i + 1]
        extremes = columns.extremes
        high = low = None
        covered = i + 1  # windows nest (all end at i): each one only adds the minutes before the last
        for n in WINDOW_SIZES:
            if run < n:
                values += _NULL_WINDOW
                continue
            first = i - n + 1
            more_high, more_low = extremes(first, covered - 1)
            covered = first
            if high is None:
                high, low = more_high, more_low
            else:
                if more_high > high:
                    high = more_high
                if more_low < low:
                    low = more_low
            open_w = opens[first]
            q_first = q[first]
            volume = (q_end - q_first) & _MASK
            taker = (tb_end - tb[first]) & _MASK
            if fq is not None:
                volume = _unwrap(volume, fq[i + 1] - fq[first])
                taker = _unwrap(taker, ftb[i + 1] - ftb[first])  # type: ignore[index]
            ratio = None
            if run >= 2 * n:
                previous = (q_first - q[first - n]) & _MASK
                if fq is not None:
                    previous = _unwrap(previous, fq[first] - fq[first - n])
                if previous:
                    ratio = volume / previous
            values += (
                open_w,
                high,
                low,
                (x - open_w) / open_w * 100 if open_w else None,
                volume / _SCALE,
                ratio,
                (trades_end - trades[first]) & _MASK,
                taker / volume if volume else None,
            )
        macd, signal = self._macd, self._signal
        values += (self._rsi, macd, signal, None if signal is None else macd - signal)
        values += self._group(_BANDS)
        values += self._group(_VCP)
        values += self._derivatives()
        cache = self._cache = dict(zip(METRIC_NAMES, values))  # noqa: B905
        return cache

    def payload(self) -> dict[str, Any]:
        """The §5 `metrics.calculated` / `metrics.live` payload."""
        return metrics_payload(
            self.symbol, self.open_time, self.price, self.metrics_dict(), self.final, self.late
        )

    def __repr__(self) -> str:
        return f"Bar({self.symbol!r}, {self.open_time}, final={self.final}, late={self.late})"

    def _derivatives(self) -> tuple:
        """Every §7b metric in `METRIC_NAMES` order."""
        d = self._d
        if d is None:
            return _NULL_DERIVATIVES
        track = self._track
        j = self.open_time // MINUTE_MS - track.base
        values = list(_bar_derivatives(d))
        run = self._columns.offset + self._index + 1
        oi = d.open_interest
        for n in WINDOW_SIZES:
            change = _oi_change(track, j, n, oi)
            if run < n:
                values += (change, None, None)
            else:
                values += (change, *track.liquidations(j - n + 1, j))
        return tuple(values)

    def _group(self, group: int) -> tuple:
        columns, i = self._columns, self._index
        run = columns.offset + i + 1
        if group >= _DERIVATIVES:
            track, d = self._track, self._d
            j = self.open_time // MINUTE_MS - track.base
            if group == _DERIVATIVES:
                return (None,) * len(DERIVATIVES_BAR_NAMES) if d is None else _bar_derivatives(d)
            n = WINDOW_SIZES[group - _DERIVATIVES - 1]
            if d is None:
                return None, None, None
            change = _oi_change(track, j, n, d.open_interest)
            return (change, None, None) if run < n else (change, *track.liquidations(j - n + 1, j))
        if group < _RANGES:
            n = WINDOW_SIZES[group]
            return (None,) * len(_STEMS_CORE) if run < n else _sums(columns, i, run, n)
        if group < _RECURSIVE:
            n = WINDOW_SIZES[group - _RANGES]
            return (None, None) if run < n else columns.extremes(i - n + 1, i)
        if group == _RECURSIVE:
            macd, signal = self._macd, self._signal
            return self.price, self._rsi, macd, signal, None if signal is None else macd - signal
        closes = columns.closes
        if group == _BANDS:
            if run < 20:
                return None, None, None
            last = closes[i - 19 : i + 1]
            middle = sum(last) / 20
            deviation = math.sqrt(sum([(value - middle) ** 2 for value in last]) / 20)
            return middle + 2 * deviation, middle, middle - 2 * deviation
        o, h, lo, x = columns.opens[i], columns.highs[i], columns.lows[i], closes[i]
        if h != lo and o + x:
            return ((x / ((o + x) / 2)) * ((x - lo) - (h - x)) / (h - lo),)
        return (None,)


def _sums(columns: _Columns, i: int, run: int, n: int) -> tuple:
    """open, change, volume, volume_ratio, trades, taker_buy_ratio of the n minutes ending at i."""
    first = i - n + 1
    q, tb = columns.q, columns.tb
    open_w = columns.opens[first]
    volume = (q[i + 1] - q[first]) & _MASK
    taker = (tb[i + 1] - tb[first]) & _MASK
    fq = columns.fq
    if fq is not None:
        ftb = columns.ftb
        volume = _unwrap(volume, fq[i + 1] - fq[first])
        taker = _unwrap(taker, ftb[i + 1] - ftb[first])  # type: ignore[index]
    ratio = None
    if run >= 2 * n:
        previous = (q[first] - q[first - n]) & _MASK
        if fq is not None:
            previous = _unwrap(previous, fq[first] - fq[first - n])
        if previous:
            ratio = volume / previous
    return (
        open_w,
        (columns.closes[i] - open_w) / open_w * 100 if open_w else None,
        volume / _SCALE,
        ratio,
        (columns.n[i + 1] - columns.n[first]) & _MASK,
        taker / volume if volume else None,
    )


_SCALARS = (
    "_ag",
    "_al",
    "_columns",
    "_e12",
    "_e26",
    "_gains",
    "_losses",
    "_minute",
    "_prev_close",
    "_run",
    "_s12",
    "_s26",
    "_sig",
    "_ssig",
    "_track",
    "_track_end",
)


class SymbolState:
    """One symbol's last 2880 minutes and running indicators. Feed final candles in open-time order."""

    __slots__ = (*_SCALARS, "symbol")  # `_minute` is among _SCALARS: a preview puts it back too

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self._minute = -1  # absolute minute number (open_time // 60 000) of the newest final candle
        self._track = _Track(0)
        self._track_end = _TRACK_TRIM_AT
        self._reset_run()

    def _reset_run(self) -> None:
        self._columns = _Columns()
        self._run = 0
        self._prev_close = 0.0
        self._gains = self._losses = 0.0
        self._ag = self._al = 0.0
        self._s12 = self._s26 = self._ssig = 0.0
        self._e12 = self._e26 = self._sig = 0.0

    @property
    def last_open_time(self) -> int | None:
        """Open time of the newest final candle added, or None."""
        return None if self._minute < 0 else self._minute * MINUTE_MS

    @property
    def run_length(self) -> int:
        """Consecutive present minutes ending at the newest final candle."""
        return self._run

    def absorb(self, candle: Candle) -> None:
        """Like `add_final` without making the bar: the warm-up from stored history."""
        self._advance(candle, False)

    def preview(self, candle: Candle) -> Bar:
        """The bar the open minute `candle` would give now (`final=False`); this state is not changed.

        The candle is added as if final, the bar's metrics are all computed, and the state is put back
        (the appended minute is cut off the columns), so a preview equals the final bar of the same
        candle by construction. After a missing minute the preview starts a new run, as the final bar would.
        """
        minute = candle.open_time // MINUTE_MS
        if minute <= self._minute:
            raise ValueError(
                f"{self.symbol}: candle {candle.open_time} is not after the newest bar {self.last_open_time}"
            )
        # After a missing minute the candle starts a new run (fresh columns, put back below as well), but
        # the derivatives track goes on: oi_change reads minutes before the gap.
        saved = [getattr(self, name) for name in _SCALARS]
        columns, track = self._columns, self._track
        length, shadowed = len(columns.closes), columns.fq is not None
        track_length = self._minute - track.base + 1
        try:
            bar = self.add_final(candle)
            bar.metrics_dict()  # every value now: the columns lose this minute below
        finally:
            columns.truncate(length, shadowed)
            track.truncate(track_length)
            for name, value in zip(_SCALARS, saved, strict=True):
                setattr(self, name, value)
        bar.final = False
        return bar

    def add_final(self, candle: Candle) -> Bar:
        """Add the next final candle (a missing minute before it starts a new run) and return its bar."""
        return self._advance(candle, True)

    @overload
    def _advance(self, c: Candle, emit: Literal[True]) -> Bar: ...

    @overload
    def _advance(self, c: Candle, emit: Literal[False]) -> None: ...

    def _advance(self, c: Candle, emit: bool) -> Bar | None:
        """Add the next final candle; its bar when `emit` (the warm-up makes none: it is never read)."""
        m = c.open_time // MINUTE_MS
        if m != self._minute + 1:
            if m <= self._minute:
                raise ValueError(
                    f"{self.symbol}: candle {c.open_time} is not after the newest bar {self.last_open_time}"
                )
            self._reset_run()
            if self._minute < 0 or m - self._minute > _DAY:  # nothing before the gap is ever read again
                self._track = _Track(m)
                self._track_end = m + _TRACK_TRIM_AT
        self._minute = m
        if m >= self._track_end:
            track = self._track
            while m - track.base >= _TRACK_TRIM_AT:
                track = track.trimmed()
            self._track = track
            self._track_end = track.base + _TRACK_TRIM_AT
        d = c.derivatives
        if d is not None:  # the track's inputs, appended here rather than by a call: this runs per candle
            track = self._track
            oi = track.oi
            if len(oi) != m - track.base:
                track.pad(m)
            value = d.open_interest
            oi.append(_NAN if value is None else value)
            value = d.liq_long_quote_e8
            track.lq.append(_NULL_LIQ if value is None else value)
            value = d.liq_short_quote_e8
            track.sq.append(_NULL_LIQ if value is None else value)
        r = self._run = self._run + 1
        columns = self._columns
        closes = columns.closes
        i = len(closes)
        if i == _TRIM_AT:
            columns = self._columns = columns.trimmed()
            closes = columns.closes
            i -= _TRIM_BY
        x = c.close
        highs, lows = columns.highs, columns.lows
        columns.opens.append(c.open)
        highs.append(c.high)
        lows.append(c.low)
        closes.append(x)
        qv, tbq = c.quote_volume_e8, c.taker_buy_quote_volume_e8
        q, tb, n = columns.q, columns.tb, columns.n
        q.append((q[i] + qv) & _MASK)
        tb.append((tb[i] + tbq) & _MASK)
        n.append((n[i] + c.trades) & _MASK)
        fq = columns.fq
        if fq is not None:
            fq.append(fq[i] + qv)
            columns.ftb.append(columns.ftb[i] + tbq)  # type: ignore[union-attr]
        elif qv >= _BIG_MINUTE or tbq >= _BIG_MINUTE:
            columns.shadow()
        if i % _BLOCK == _BLOCK - 1:
            columns.bhigh.append(max(highs[i - _BLOCK + 1 :]))
            columns.blow.append(min(lows[i - _BLOCK + 1 :]))
            columns.shigh.append(None)
            columns.slow.append(None)

        # RSI (Wilder): the k-th change arrives with the (k+1)-th close of the run.
        rsi = None
        if r > 15:
            change = x - self._prev_close
            if change > 0:
                ag = self._ag = (self._ag * 13 + change) / 14
                al = self._al = (self._al * 13) / 14
            else:
                ag = self._ag = (self._ag * 13) / 14
                al = self._al = (self._al * 13 - change) / 14
            rsi = (100.0 if ag > 0 else 50.0) if al == 0 else 100 - 100 / (1 + ag / al)
        elif r > 1:
            change = x - self._prev_close
            if change > 0:
                self._gains += change
            elif change < 0:
                self._losses -= change
            if r == 15:
                ag = self._ag = self._gains / 14
                al = self._al = self._losses / 14
                rsi = (100.0 if ag > 0 else 50.0) if al == 0 else 100 - 100 / (1 + ag / al)
        self._prev_close = x

        # MACD: EMAs seeded by the mean of their first n inputs.
        macd = signal = None
        if r > 26:
            e12 = self._e12 = self._e12 + (x - self._e12) * 2 / 13
            e26 = self._e26 = self._e26 + (x - self._e26) * 2 / 27
            macd = e12 - e26
            if r > 34:
                signal = self._sig = self._sig + (macd - self._sig) * 2 / 10
            else:
                self._ssig += macd
                if r == 34:
                    signal = self._sig = self._ssig / 9
        else:
            if r <= 12:
                self._s12 += x
                if r == 12:
                    self._e12 = self._s12 / 12
            else:
                self._e12 = self._e12 + (x - self._e12) * 2 / 13
            self._s26 += x
            if r == 26:
                self._e26 = self._s26 / 26
                macd = self._ssig = self._e12 - self._e26
        return (
            Bar(self.symbol, c.open_time, x, columns, i, rsi, macd, signal, self._track, d) if emit else None
        )


def _unwrap(modular: int, approximate: float) -> int:
    """The exact sum from its value modulo 2⁶⁴ and a float approximation (error far below 2⁶³)."""
    return modular + round((approximate - modular) / _WRAP) * _WRAP
