"""The live engine offline: candles in, final bars out (docs/contract.md §7, §9). The backtest builds on this.

Framework-free. Missing minutes in the input are permanent gaps (a new run starts after each), exactly as
the live worker treats a gap after its safety timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cryptomon.contract.candles import Candle
from metrics.windows import Bar, SymbolState


def replay(
    candles: Iterable[Candle],
    *,
    late_after_ms: int | None = None,
    states: dict[str, SymbolState] | None = None,
) -> Iterator[Bar]:
    """Yield the final bar of every candle, in input order.

    Candles must be merged and ordered by `open_time` per symbol (symbols may interleave); a candle not
    after its symbol's previous one raises ValueError. With `late_after_ms`, a bar is `late` when its
    candle's `event_time` is more than that after its close time. `states` (symbol → state) lets a caller
    warm up first or keep the states afterwards.
    """
    states = {} if states is None else states
    get = states.get
    for candle in candles:
        state = get(candle.symbol)
        if state is None:
            state = states[candle.symbol] = SymbolState(candle.symbol)
        bar = state.add_final(candle)
        if (
            late_after_ms is not None
            and candle.event_time is not None
            and candle.event_time - candle.close_time > late_after_ms
        ):
            bar.late = True
        yield bar
