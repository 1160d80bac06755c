"""Funding, mark/index, open interest and liquidations attached to candles (docs/collector.md "Derivatives").

`DerivativesBook` is plain Python: it keeps what arrived per symbol and minute and, when the publisher takes
a final candle, fills in the docs/contract.md §7b fields exactly:

- `mark_close`, `index_close`, `funding_rate`, `next_funding_time`: the newest markPrice update with
  t ≤ E < t + 60 s;
- `funding_interval_hours`: from fundingInfo (a symbol it does not list has 8 h; unknown until it answered);
- `open_interest`: the newest sample taken (the answer's `time`) in minute t;
- `liq_long_quote` / `liq_short_quote` / `liq_count`: Σ z × ap of SELL / BUY liquidations with o.T in the
  minute and their number. A liquidation arriving after its minute was handed to the publisher counts in the
  oldest minute not yet handed over. The sums are known (not null) only when the forceOrder connection was up
  for the whole minute and markPrice (same connection, steady cadence) delivered in it: a dead stream leaves
  nulls, never zeros. Each z × ap is rounded half-even to 10⁻⁸ USDT
  and the sums are integers of 10⁻⁸, so they are exact.

`rest` candles carry nulls; `filled` candles carry liquidations 0 and nulls for the rest. Nothing here ever
waits: a candle takes what is there when it is published.

`OpenInterestPoller` and `FundingInfoPoller` feed the book from REST, through the one weight limiter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container
from decimal import ROUND_HALF_EVEN, Decimal

from collector.binance import ForceOrder, Kline, MarkPriceUpdate
from collector.rest import RestClient, RestError
from cryptomon.contract.times import MINUTE_MS
from cryptomon.workers import Stats

logger = logging.getLogger(__name__)

DEFAULT_FUNDING_HOURS = 8
KEEP_MINUTES = 30  # data of minutes never published (a symbol whose candles stopped) is dropped after this
_UNIT = Decimal("0.00000001")
_NONE: dict = {}


def quote_units(quantity: str, price: str) -> int:
    """z × ap in integers of 10⁻⁸ USDT, rounded half-even once per liquidation."""
    return int((Decimal(quantity) * Decimal(price)).quantize(_UNIT, rounding=ROUND_HALF_EVEN) / _UNIT)


def units_text(units: int) -> str:
    """Integers of 10⁻⁸ as exact decimal text (JSON number on the wire)."""
    if units == 0:
        return "0"
    text = f"{Decimal(units).scaleb(-8):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class DerivativesBook:
    def __init__(self, stats: Stats, clock: Callable[[], int]):
        self.stats = stats
        self.clock = clock  # venue time (ms)
        self.marks: dict[str, dict[int, MarkPriceUpdate]] = {}
        self.open_interest: dict[str, dict[int, tuple[int, str]]] = {}
        self.liquidations: dict[str, dict[int, list[int]]] = {}  # minute -> [long units, short units, n]
        self.published: dict[str, int] = {}  # the oldest minute not yet handed to the publisher
        self.intervals: dict[str, int] | None = None  # fundingInfo; None until it answered once
        self._liq_up: list[list] = []  # [up since, down at | None] (venue ms) of the forceOrder stream
        self.last_mark_ms = 0

    # --- input (hot path) ---------------------------------------------------------------------------------
    def on_marks(self, updates: list[MarkPriceUpdate], symbols: Container[str]) -> None:
        marks = self.marks
        for update in updates:
            symbol = update.s
            if symbol not in symbols:
                continue
            minute = update.E - update.E % MINUTE_MS
            per_symbol = marks.get(symbol)
            if per_symbol is None:
                per_symbol = marks[symbol] = {}
            current = per_symbol.get(minute)
            if current is None or update.E >= current.E:
                per_symbol[minute] = update
        if updates:
            self.last_mark_ms = max(self.last_mark_ms, updates[-1].E)

    def on_liquidation(self, order: ForceOrder, symbols: Container[str]) -> None:
        symbol = order.s
        if symbol not in symbols:
            return
        minute = order.T - order.T % MINUTE_MS
        boundary = self.published.get(symbol)
        if boundary is not None and minute < boundary:
            minute = boundary  # its minute is already out: the oldest one not yet published takes it
            self.stats.inc("collector_late_liquidations_total")
        sums = self.liquidations.setdefault(symbol, {}).setdefault(minute, [0, 0, 0])
        sums[0 if order.S == "SELL" else 1] += quote_units(order.z, order.ap)
        sums[2] += 1
        self.stats.inc("collector_liquidations_total")

    def on_open_interest(self, symbol: str, sample_time: int, value: str) -> None:
        minute = sample_time - sample_time % MINUTE_MS
        per_symbol = self.open_interest.setdefault(symbol, {})
        current = per_symbol.get(minute)
        if current is None or sample_time >= current[0]:
            per_symbol[minute] = (sample_time, value)

    def liquidation_stream(self, up: bool) -> None:
        """The forceOrder connection opened (`up`) or closed, now (venue time)."""
        now = self.clock()
        if up:
            if not self._liq_up or self._liq_up[-1][1] is not None:
                self._liq_up.append([now, None])
        elif self._liq_up and self._liq_up[-1][1] is None:
            self._liq_up[-1][1] = now
        self._liq_up = [span for span in self._liq_up if span[1] is None or span[1] > now - 2 * 3_600_000]

    def _liquidations_known(self, start: int, end: int) -> bool:
        """Was the forceOrder stream up for all of [start, end)?"""
        return any(since <= start and (down is None or down >= end) for since, down in self._liq_up)

    # --- output -------------------------------------------------------------------------------------------
    def _interval(self, symbol: str) -> int | None:
        return None if self.intervals is None else self.intervals.get(symbol, DEFAULT_FUNDING_HOURS)

    def attach(self, candle: Kline) -> None:
        """Fill a final candle's §7b fields as it is handed to the publisher (and mark its minute published)."""
        symbol, minute = candle.symbol, candle.open_time
        if minute >= self.published.get(symbol, minute):
            self.published[symbol] = minute + MINUTE_MS
        mark = self.marks.get(symbol, _NONE).pop(minute, None)
        sample = self.open_interest.get(symbol, _NONE).pop(minute, None)
        sums = self.liquidations.get(symbol, _NONE).pop(minute, None)
        self._forget_before(symbol, minute)
        if candle.source == "filled":
            candle.liq_long_quote = candle.liq_short_quote = "0"
            candle.liq_count = 0
            return
        if candle.source != "ws":
            return
        self._fill(candle, mark, sample, sums, minute + MINUTE_MS)

    def attach_live(self, candle: Kline) -> None:
        """The open minute's fields so far, for `candles.live` (nothing is consumed; hot: 600 a second)."""
        symbol, minute = candle.symbol, candle.open_time
        spans = self._liq_up
        self._fill(
            candle,
            self.marks.get(symbol, _NONE).get(minute),
            self.open_interest.get(symbol, _NONE).get(minute),
            self.liquidations.get(symbol, _NONE).get(minute),
            known=bool(spans) and spans[-1][1] is None and spans[-1][0] <= minute,  # up since before it
        )

    def _fill(
        self, candle: Kline, mark, sample, sums, covered_until: int = 0, known: bool | None = None
    ) -> None:
        if mark is not None:
            candle.mark_close, candle.index_close, candle.funding_rate = mark.p, mark.i, mark.r
            candle.next_funding_time = mark.T
        candle.funding_interval_hours = self._interval(candle.symbol)
        if sample is not None:
            candle.open_interest = sample[1]
        # The forceOrder stream is sporadic: it counts as alive for a minute only if its connection was up
        # all minute and the markPrice stream beside it delivered in that minute.
        if known is None:
            known = self._liquidations_known(candle.open_time, covered_until)
        if mark is not None and known:
            long_units, short_units, count = sums or (0, 0, 0)
            candle.liq_long_quote, candle.liq_short_quote = units_text(long_units), units_text(short_units)
            candle.liq_count = count

    def _forget_before(self, symbol: str, minute: int) -> None:
        for book in (self.marks, self.open_interest, self.liquidations):
            per_symbol = book.get(symbol)
            if per_symbol:
                for old in [m for m in per_symbol if m < minute]:
                    del per_symbol[old]

    def prune(self, keep: Container[str]) -> None:
        """Drop symbols no longer followed and minutes too old to be published."""
        floor = self.clock() - KEEP_MINUTES * MINUTE_MS
        for book in (self.marks, self.open_interest, self.liquidations):
            for symbol in list(book):
                if symbol not in keep:
                    del book[symbol]
                    continue
                per_symbol = book[symbol]
                for old in [m for m in per_symbol if m < floor]:
                    del per_symbol[old]
        for symbol in [s for s in self.published if s not in keep]:
            del self.published[symbol]


class OpenInterestPoller:
    """About one openInterest request per symbol per venue minute, spread over the minute, taking REST weight
    only while the minute's use is at most `ceiling` and no backfill is waiting (docs/collector.md)."""

    def __init__(
        self,
        rest: RestClient,
        book: DerivativesBook,
        symbols: Callable[[], Container[str]],
        stats: Stats,
        *,
        ceiling: int,
        concurrency: int = 8,
    ):
        self.rest, self.book, self.symbols, self.stats = rest, book, symbols, stats
        self.ceiling = ceiling
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        clock = self.rest.clock
        try:
            while True:
                minute = clock.now_ms() // MINUTE_MS * MINUTE_MS
                symbols = sorted(self.symbols())
                spacing = 50_000 // max(1, len(symbols))
                for index, symbol in enumerate(symbols):
                    await asyncio.sleep(clock.until_ms(minute + 2_000 + index * spacing))
                    if clock.now_ms() >= minute + 55_000 or symbol in self._in_flight:
                        # too late in the minute (a sample must land in the minute it is for) or still busy
                        self.stats.inc("collector_open_interest_skipped_total")
                        continue
                    self._in_flight.add(symbol)
                    task = asyncio.create_task(self._poll(symbol), name=f"open interest {symbol}")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(clock.until_ms(minute + MINUTE_MS))
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _poll(self, symbol: str) -> None:
        try:
            async with self._slots:
                answer = await self.rest.open_interest(symbol, self.ceiling)
            self.book.on_open_interest(symbol, answer.time, answer.openInterest)
            self.stats.inc("collector_open_interest_samples_total")
        except (RestError, ValueError) as error:
            self.stats.inc("collector_open_interest_failures_total")
            logger.debug("open interest of %s: %s", symbol, error)
        finally:
            self._in_flight.discard(symbol)


class FundingInfoPoller:
    """fundingInfo now and every `interval_seconds` (its own budget of 500 requests / 5 min is far away)."""

    def __init__(
        self, rest: RestClient, book: DerivativesBook, *, interval_seconds: float, retry_seconds: float
    ):
        self.rest, self.book = rest, book
        self.interval_seconds = interval_seconds
        self.retry_seconds = retry_seconds

    async def run(self) -> None:
        while True:
            try:
                self.book.intervals = await self.rest.funding_info()
                wait = self.interval_seconds
            except (RestError, ValueError) as error:
                logger.warning("fundingInfo unavailable (%s); retry in %.0f s", error, self.retry_seconds)
                wait = self.retry_seconds
            await asyncio.sleep(wait)
