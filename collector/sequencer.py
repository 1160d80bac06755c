"""Per-symbol ordering and gap filling (docs/contract.md §5): every minute once, in strictly increasing open time.

Each symbol has a cursor, `next_open`, the next minute to publish. A live final for exactly that minute goes
straight to the publisher. Anything else (a later minute, or any final while the symbol's backfill runs)
waits in `pending` while one backfill task per symbol walks the cursor forward from REST: a REST row if
there is one, the waiting live final if it came first, or a flat `filled` candle once REST shows a later
kline and none for that minute. REST rows count only once closed by venue time. The hole scan is the one
exception to the order: it repairs minutes of `candles_1m` older than the cursor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from collector.binance import REST_CLOSED_MARGIN_MS, Kline
from collector.publisher import Publisher
from collector.rest import RegionBlocked, RestClient, RestError
from cryptomon.contract.times import MINUTE_MS
from cryptomon.workers import Stats

logger = logging.getLogger(__name__)

WARMUP_MINUTES = 2880
PAGE_ROWS = 500  # weight 2 per 500 rows is the cheapest weight per row (docs/contract.md §4)

ResumeLookup = Callable[[list[str]], Awaitable[dict[str, tuple[int, str]]]]
HoleLookup = Callable[[dict[str, tuple[int, int]], int], Awaitable[tuple[list, list[str]]]]


@dataclass
class SymbolState:
    symbol: str
    history_start: int
    next_open: int | None = None  # None until the resume point (or the first REST row) is known
    start_from: int = 0  # a fresh symbol's first allowed minute
    last_close: str | None = None
    pending: dict[int, Kline] = field(default_factory=dict)
    wanted_until: int = 0  # the backfill walks at least up to this open time
    task: asyncio.Task | None = None
    stalled: bool = False  # a final was refused by a full buffer: catch up from REST when there is room
    active: bool = True
    first_row: int | None = None  # the venue's earliest kline seen (no holes before it)


def last_closed_minute(venue_now_ms: int) -> int:
    """The newest minute whose REST row counts as closed (close time > 5 s before venue time)."""
    return (venue_now_ms - REST_CLOSED_MARGIN_MS - MINUTE_MS) // MINUTE_MS * MINUTE_MS


class Sequencer:
    def __init__(
        self,
        rest: RestClient,
        publisher: Publisher,
        stats: Stats,
        resume: ResumeLookup,
        *,
        holes: HoleLookup | None = None,
        warmup_minutes: int = WARMUP_MINUTES,
        retry_max_seconds: float = 10.0,
        pending_limit: int = 10_000,
        hole_grace_minutes: int = 10,
        storage_behind_minutes: int = 60,
    ):
        self.rest, self.publisher, self.stats = rest, publisher, stats
        self.resume = resume
        self.holes = holes
        self.warmup_minutes = warmup_minutes
        self.retry_max_seconds = retry_max_seconds
        self.pending_limit = pending_limit
        self.hole_grace_minutes = hole_grace_minutes
        self.storage_behind_minutes = storage_behind_minutes
        self.states: dict[str, SymbolState] = {}
        self.last_ws_lag_ms = 0
        self._init_lock = asyncio.Lock()
        publisher.on_room = self.resume_stalled

    # --- universe -----------------------------------------------------------------------------------------
    def add(self, symbol: str, history_start_ms: int) -> None:
        """Start following a symbol: resume after its newest published candle and catch up from REST."""
        state = self.states.get(symbol)
        if state is not None and state.history_start == history_start_ms:
            return
        if state is not None:  # back in TRADING: a new history
            self.remove(symbol)
        state = SymbolState(symbol, history_start_ms)
        state.wanted_until = last_closed_minute(self.rest.venue_now_ms())
        self.states[symbol] = state
        self._start(state)

    def remove(self, symbol: str) -> None:
        state = self.states.pop(symbol, None)
        if state is None:
            return
        state.active = False
        state.pending.clear()
        if state.task is not None:
            state.task.cancel()
        self.publisher.forget(symbol)

    def catch_up(self, symbols) -> None:
        """After a reconnect nothing is replayed: walk each symbol up to the last closed minute from REST."""
        target = last_closed_minute(self.rest.venue_now_ms())
        for symbol in symbols:
            state = self.states.get(symbol)
            if state is None:
                continue
            state.wanted_until = max(state.wanted_until, target)
            self._start(state)

    def resume_stalled(self) -> None:
        stalled = [symbol for symbol, state in self.states.items() if state.stalled]
        for symbol in stalled:
            self.states[symbol].stalled = False
        self.catch_up(stalled)

    # --- live finals (hot path) ---------------------------------------------------------------------------
    def on_final(self, candle: Kline) -> None:
        state = self.states.get(candle.symbol)
        if state is None:
            return
        if state.next_open is not None and candle.open_time < state.next_open:
            self.stats.inc("collector_duplicate_finals_total")
            return
        if state.stalled:
            self.stats.inc("collector_candles_dropped_total")
            return
        if state.task is None and state.next_open == candle.open_time:
            if self.publisher.offer(candle):
                self._advance(state, candle)
            else:
                state.stalled = True
            return
        if len(state.pending) >= self.pending_limit:
            state.pending.clear()
            state.stalled = True
            self.stats.inc("collector_candles_dropped_total")
            return
        state.pending[candle.open_time] = candle
        self._start(state)

    def _advance(self, state: SymbolState, candle: Kline) -> None:
        state.next_open = candle.open_time + MINUTE_MS
        state.last_close = candle.close

    # --- backfill -----------------------------------------------------------------------------------------
    def _start(self, state: SymbolState) -> None:
        if state.task is None and state.active:
            state.task = asyncio.get_running_loop().create_task(
                self._backfill(state), name=f"backfill {state.symbol}"
            )

    def backfilling(self) -> int:
        return sum(1 for state in self.states.values() if state.task is not None)

    async def _initialise(self, state: SymbolState) -> None:
        async with self._init_lock:
            found = (await self.resume([state.symbol])).get(state.symbol)
        now = self.rest.venue_now_ms()
        window_start = (now // MINUTE_MS - self.warmup_minutes) * MINUTE_MS
        history = -(-state.history_start // MINUTE_MS) * MINUTE_MS
        if found is not None and found[0] >= max(window_start, history) - MINUTE_MS:
            state.next_open = found[0] + MINUTE_MS
            state.last_close = found[1]
            logger.debug("%s resumes after %s", state.symbol, found[0])
        else:
            state.start_from = max(window_start, history)

    async def _backfill(self, state: SymbolState) -> None:
        delay = 0.1
        try:
            if state.next_open is None and not state.start_from:
                await self._initialise(state)
            while state.active:
                if state.next_open is not None:
                    while state.next_open in state.pending and state.active:
                        await self._emit(state, state.pending.pop(state.next_open))
                target = max(state.wanted_until, max(state.pending, default=0) - MINUTE_MS)
                if (state.next_open is not None and state.next_open > target) or not state.active:
                    return
                start = state.next_open if state.next_open is not None else state.start_from
                limit = min(PAGE_ROWS, (target - start) // MINUTE_MS + 2)
                try:
                    rows = await self.rest.klines(state.symbol, start, limit)
                except RegionBlocked:
                    await asyncio.sleep(self.retry_max_seconds)
                    continue
                except RestError as error:
                    logger.warning("backfill %s: %s", state.symbol, error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_seconds)
                    continue
                if await self._apply(state, rows, target):
                    delay = 0.1
                    continue
                # Nothing could move: the next minute is not closed yet, or REST has nothing after it yet.
                wait = self.rest.clock.until_ms(target + MINUTE_MS + REST_CLOSED_MARGIN_MS + 100)
                await asyncio.sleep(min(max(wait, delay), self.retry_max_seconds))
                delay = min(delay * 2, self.retry_max_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("backfill of %s failed; it restarts with the next final", state.symbol)
        finally:
            state.task = None

    async def _apply(self, state: SymbolState, rows: list[Kline], target: int) -> bool:
        """Walk the cursor over REST rows; True if it moved."""
        by_time = {row.open_time: row for row in rows}
        newest_row = rows[-1].open_time if rows else None
        if rows and (state.first_row is None or rows[0].open_time < state.first_row):
            state.first_row = rows[0].open_time
        if state.next_open is None:
            first = next((t for t in sorted(by_time) if t >= state.start_from), None)
            if first is None:
                return False
            state.next_open = first
        moved = False
        while state.active and (state.next_open <= target or state.next_open in state.pending):
            minute = state.next_open
            candle = state.pending.pop(minute, None) or by_time.get(minute)
            if candle is None:
                if newest_row is None or newest_row <= minute or state.last_close is None:
                    break
                candle = Kline.filled(state.symbol, minute, state.last_close, self.rest.venue_now_ms())
            await self._emit(state, candle)
            moved = True
        return moved

    async def _emit(self, state: SymbolState, candle: Kline) -> None:
        await self.publisher.put(candle)
        if candle.source != "ws":
            self.stats.inc("collector_gaps_filled_total", source=candle.source)
        self._advance(state, candle)

    # --- hole scan ----------------------------------------------------------------------------------------
    async def hole_scan(self) -> int:
        """Repair holes of `candles_1m` in the last 2880 minutes (from the symbol's history start); returns
        how many minutes were republished."""
        if self.holes is None:
            return 0
        now = self.rest.venue_now_ms()
        floor = now // MINUTE_MS * MINUTE_MS
        window_start = floor - self.warmup_minutes * MINUTE_MS
        bounds: dict[str, tuple[int, int]] = {}
        for symbol, state in self.states.items():
            if state.next_open is None:
                continue
            start = max(window_start, -(-state.history_start // MINUTE_MS) * MINUTE_MS, state.first_row or 0)
            end = min(state.next_open - MINUTE_MS, floor - self.hole_grace_minutes * MINUTE_MS)
            if end >= start:
                bounds[symbol] = (start, end)
        found, behind = await self.holes(bounds, self.storage_behind_minutes * MINUTE_MS)
        if behind:
            logger.info(
                "hole scan: storage of %d symbols is behind; they wait for the metrics writer", len(behind)
            )
        repaired = 0
        for hole in found:
            state = self.states.get(hole.symbol)
            if state is not None and state.active:
                repaired += await self._repair(state, hole.first, hole.last, hole.previous_close)
        if found:
            logger.info("hole scan: %d holes, %d minutes republished", len(found), repaired)
        return repaired

    async def _repair(self, state: SymbolState, first: int, last: int, previous_close: str | None) -> int:
        minute, published = first, 0
        while minute <= last and state.active:
            limit = min(PAGE_ROWS, (last - minute) // MINUTE_MS + 2)
            try:
                rows = await self.rest.klines(state.symbol, minute, limit)
            except RestError as error:
                logger.warning("hole repair %s: %s", state.symbol, error)
                return published
            if not rows:
                return published
            if previous_close is None and rows[0].open_time > minute:
                # The venue has nothing before its first row: not a hole, never scan it again.
                state.first_row = max(state.first_row or 0, rows[0].open_time)
            by_time = {row.open_time: row for row in rows}
            newest_row = rows[-1].open_time
            while minute <= last and minute <= newest_row:
                candle = by_time.get(minute)
                if candle is None and previous_close is not None and minute < newest_row:
                    candle = Kline.filled(state.symbol, minute, previous_close, self.rest.venue_now_ms())
                if candle is not None:
                    await self.publisher.put(candle)
                    previous_close = candle.close
                    published += 1
                    self.stats.inc("collector_repairs_published_total", source=candle.source)
                minute += MINUTE_MS
            if len(rows) < limit and minute <= last:
                return published  # the venue has nothing closed beyond its last row yet
        return published

    async def run_hole_scan(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.hole_scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hole scan failed; next one in %.0f s", interval_seconds)
