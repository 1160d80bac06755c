"""Which final bars to emit, and when (docs/contract.md §7): per-symbol watermark, missing-minute wait, gap timeout.

Framework-free so the rules are tested without servers. Each symbol's final bars are emitted once, in
open-time order. Whether a candle makes a bar depends only on the watermark (the newest bar emitted),
never on whether the candle was seen before: a candle at or before the watermark changes nothing. A
candle after a missing minute waits; after `gap_timeout` seconds of wall-clock waiting the missing minutes
are declared a permanent gap (counted in `gaps_forced_total`) and the waiting candles start a new run.
"""

from __future__ import annotations

from cryptomon.contract.candles import Candle
from cryptomon.contract.times import MINUTE_MS
from metrics.windows import Bar, SymbolState


class BarSequencer:
    """Per-symbol states, watermarks and waiting candles of one worker."""

    def __init__(self, gap_timeout: float, late_after_ms: int) -> None:
        self.gap_timeout = gap_timeout
        self.late_after_ms = late_after_ms
        self.states: dict[str, SymbolState] = {}
        self.watermarks: dict[str, int] = {}
        self.gaps_forced_total = 0
        self.late_total = 0
        self._waiting: dict[str, dict[int, Candle]] = {}
        self._waiting_since: dict[str, float] = {}

    def state(self, symbol: str) -> SymbolState:
        state = self.states.get(symbol)
        if state is None:
            state = self.states[symbol] = SymbolState(symbol)
        return state

    def set_watermark(self, symbol: str, open_time: int) -> None:
        """The newest bar already emitted for `symbol` (from METRICS or `metrics_calculated`)."""
        if open_time > self.watermarks.get(symbol, -1):
            self.watermarks[symbol] = open_time

    def warm(self, candle: Candle) -> bool:
        """Feed a stored candle at or before the watermark into the state; False if it must be offered."""
        watermark = self.watermarks.get(candle.symbol)
        if watermark is None or candle.open_time > watermark:
            return False
        state = self.state(candle.symbol)
        if state.last_open_time is None or candle.open_time > state.last_open_time:
            state.absorb(candle)
        return True

    def heal(self, candle: Candle) -> Bar | None:
        """A live candle at or before the watermark that the state still lacks, or None.

        Bars are published before their batch is committed; after a crash in between, the watermark
        (METRICS) is ahead of the stored candles and the unacknowledged candles come again, first and in
        order. They extend the state like the warm-up does, and their bars (equal to those published) are
        returned to be stored, not published again."""
        watermark = self.watermarks.get(candle.symbol)
        if watermark is None or candle.open_time > watermark:
            return None
        state = self.state(candle.symbol)
        last = state.last_open_time
        if last is not None and candle.open_time <= last:
            return None
        return self._bar(state, candle)

    def offer(self, candle: Candle, now: float) -> list[Bar]:
        """A final candle arrived (stored or live); the bars it releases, in order."""
        symbol = candle.symbol
        watermark = self.watermarks.get(symbol)
        if watermark is not None and candle.open_time <= watermark:
            return []
        waiting = self._waiting.setdefault(symbol, {})
        waiting.setdefault(candle.open_time, candle)
        bars = self._release(symbol)
        if waiting:
            self._waiting_since.setdefault(symbol, now)
        else:
            self._waiting_since.pop(symbol, None)
        return bars

    def expire(self, now: float) -> list[Bar]:
        """Declare gaps whose wait has exceeded the timeout; the bars that this releases."""
        bars: list[Bar] = []
        for symbol, since in list(self._waiting_since.items()):
            if now - since < self.gap_timeout:
                continue
            waiting = self._waiting[symbol]
            self.gaps_forced_total += 1
            self.watermarks[symbol] = min(waiting) - MINUTE_MS  # the missing minutes are given up on
            bars += self._release(symbol)
            if waiting:  # a later hole among the waiting candles starts a fresh wait
                self._waiting_since[symbol] = now
            else:
                del self._waiting_since[symbol]
        return bars

    def waiting(self, symbol: str) -> int:
        """How many candles of `symbol` wait for a missing minute."""
        return len(self._waiting.get(symbol, ()))

    def preview(self, candle: Candle) -> Bar | None:
        """`metrics.live` for an open-minute candle, or None if it is not after the symbol's newest bar."""
        state = self.state(candle.symbol)
        last = state.last_open_time
        if last is not None and candle.open_time <= last:
            return None
        bar = state.preview(candle)
        bar.late = False
        return bar

    def _release(self, symbol: str) -> list[Bar]:
        waiting = self._waiting[symbol]
        watermark = self.watermarks.get(symbol)
        bars: list[Bar] = []
        if watermark is None:  # a symbol's first bar ever: nothing to wait for
            watermark = min(waiting) - MINUTE_MS
        state = self.state(symbol)
        while (candle := waiting.pop(watermark + MINUTE_MS, None)) is not None:
            watermark = candle.open_time
            bars.append(self._bar(state, candle))
        if bars:
            self.watermarks[symbol] = watermark
        return bars

    def _bar(self, state: SymbolState, candle: Candle) -> Bar:
        bar = state.add_final(candle)
        if candle.event_time is not None and candle.event_time - candle.close_time > self.late_after_ms:
            bar.late = True
            self.late_total += 1
        return bar
