"""Candles into NATS (docs/contract.md §5): pipelined JetStream publishes, throttled live updates, a bounded buffer.

Final candles go out in the order the sequencer hands them over, many symbols' in flight at once but
each symbol's one after another (`messaging.OrderedPublisher`), each with `Nats-Msg-Id: <SYMBOL>:<open_time>` so a retry after a lost acknowledgement is a no-op. While NATS
is away the buffer fills up to its limit; past it the sequencer is told "no room", counts the candle as
dropped and backfills it from REST once there is room again, so nothing is silently lost and order holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from collector.binance import Kline
from collector.derivatives import DerivativesBook
from cryptomon import messaging
from cryptomon.contract import subjects
from cryptomon.workers import Stats

logger = logging.getLogger(__name__)

FLUSH_EVERY = 50  # publishes queued in the client before the loop yields to its flusher


class Publisher:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        stats: Stats,
        *,
        buffer_limit: int = 500_000,
        batch_size: int = 1000,
        ack_timeout: float = 5.0,
        live_interval: float = 1.0,
        retry_delay: float = 0.5,
        derivatives: DerivativesBook | None = None,
    ):
        self.nc, self.js, self.stats = nc, js, stats
        self.buffer_limit = buffer_limit
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self.live_interval = live_interval
        self.retry_delay = retry_delay
        self.derivatives = derivatives
        self.queue: deque[Kline] = deque()
        self.in_flight = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.on_room: Callable[[], None] | None = None
        self._starved = False
        self._live_sent: dict[str, float] = {}
        self._live_waiting: dict[str, Kline] = {}
        self.live_frames = messaging.LiveFrames(nc, "collector")
        self.newest_published: dict[str, int] = {}
        self.last_event_time = 0
        self.last_open_time = 0
        stats.gauge("collector_buffered_candles", lambda: len(self.queue) + self.in_flight)

    # --- final candles -------------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return len(self.queue) + self.in_flight

    def has_room(self) -> bool:
        return self.buffered < self.buffer_limit

    def offer(self, candle: Kline) -> bool:
        """Queue a final candle unless the buffer is full (then the caller counts it and backfills later)."""
        if not self.has_room():
            if not self._starved:
                logger.warning(
                    "publish buffer full (%d candles, NATS unavailable?): dropping new candles; "
                    "they are backfilled from REST once NATS accepts again",
                    self.buffered,
                )
            self._starved = True
            self._room.clear()
            self.stats.inc("collector_candles_dropped_total")
            return False
        if self.derivatives is not None:
            self.derivatives.attach(candle)
        self.queue.append(candle)
        self._wakeup.set()
        return True

    async def put(self, candle: Kline) -> None:
        """Queue a final candle, waiting for room (backfill uses this: it can always wait)."""
        while not self.has_room():
            self._room.clear()
            await self._room.wait()
        if self.derivatives is not None:
            self.derivatives.attach(candle)
        self.queue.append(candle)
        self._wakeup.set()

    def _check_room(self) -> None:
        if self.buffered <= self.buffer_limit // 2 or self.buffered == 0:
            self._room.set()
            if self._starved:
                self._starved = False
                logger.info("publish buffer has room again: backfilling what was dropped")
                if self.on_room is not None:
                    self.on_room()

    async def run(self) -> None:
        while True:
            if not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
            self.in_flight = len(batch)
            try:
                with self.stats.timed("collector_publish_seconds"):
                    failed_at = await self._publish_batch(batch)
            except asyncio.CancelledError:
                # Stopped with a batch in hand (a shutdown): it goes back to the front, so the drain that
                # follows sends it before the later candles. Dropped, it left a hole in the middle of a
                # symbol's minutes, behind later ones the drain did send.
                self.queue.extendleft(reversed(batch))
                raise
            finally:
                self.in_flight = 0
            if failed_at is not None:
                # Put the failed candle and everything after it back, in order, and try again shortly.
                self.queue.extendleft(reversed(batch[failed_at:]))
                await asyncio.sleep(self.retry_delay)
            self._check_room()

    async def _publish_batch(self, batch: list[Kline]) -> int | None:
        """Send the whole batch (a symbol's candles one after another, different symbols' together), then
        collect acks; the index of the first failure, or None.

        Per symbol in order (`messaging.OrderedPublisher`): pipelined, a clustered stream's leader dying
        lost the candles in flight while later ones were stored, and the metrics worker's restart then
        rebuilt its state with minutes missing (docs/operations.md "Scale")."""
        publisher = messaging.OrderedPublisher(self.js, self.ack_timeout)
        futures: list[asyncio.Future] = []
        failed_at: int | None = None
        try:
            for start in range(0, len(batch), FLUSH_EVERY):
                for candle in batch[start : start + FLUSH_EVERY]:
                    futures.append(
                        await publisher.publish(
                            subjects.candle_subject(candle.symbol),
                            messaging.encode(candle.payload()),
                            f"{candle.symbol}:{candle.open_time}",
                        )
                    )
                await asyncio.sleep(0)  # the client's flusher writes these out while the rest are queued
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as error:  # e.g. the connection closed: from this candle on, it all goes again
            self._failed(error)
            failed_at = len(futures)
        for index, error in enumerate(await messaging.ack_errors(futures, None)):
            if error is not None:
                self._failed(error)
                failed_at = index  # this one and everything after goes again (duplicates dropped by id)
                break
        done = len(futures) if failed_at is None else failed_at
        for candle in batch[:done]:
            self._published(candle)
        return failed_at

    def _failed(self, error: BaseException) -> None:
        self.stats.inc("collector_publish_failures_total")
        logger.warning("JetStream publish failed (%s: %s); retrying in order", type(error).__name__, error)

    def _published(self, candle: Kline) -> None:
        self.stats.inc("collector_candles_published_total", source=candle.source)
        newest = self.newest_published.get(candle.symbol, -1)
        if candle.open_time > newest:
            self.newest_published[candle.symbol] = candle.open_time
        if candle.open_time >= self.last_open_time:
            self.last_open_time = candle.open_time
            self.last_event_time = candle.event_time

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is acknowledged (used on shutdown and by tests)."""
        deadline = time.monotonic() + timeout
        while self.buffered and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.buffered

    # --- live (open minute) --------------------------------------------------------------------------------
    def live(self, candle: Kline) -> None:
        """`candles.live.<SYMBOL>` at most once a second per symbol; the newest update wins."""
        now = time.monotonic()
        if now - self._live_sent.get(candle.symbol, 0.0) >= self.live_interval:
            self._send_live(candle, now)
        else:
            self._live_waiting[candle.symbol] = candle

    def _send_live(self, candle: Kline, now: float) -> None:
        self._live_sent[candle.symbol] = now
        if self.derivatives is not None:
            self.derivatives.attach_live(candle)
        asyncio.get_running_loop().create_task(self._publish_live(candle))

    async def _publish_live(self, candle: Kline) -> None:
        """Core NATS, no round trip; a live update may be lost (counted), never a final candle."""
        subject = subjects.candle_live_subject(candle.symbol)
        if await self.live_frames.publish(subject, messaging.encode(candle.payload(live=True))):
            self.stats.inc("collector_live_published_total")
        else:
            self.stats.inc("collector_live_dropped_total")

    async def run_live(self) -> None:
        tick = min(0.2, self.live_interval / 4)
        while True:
            await asyncio.sleep(tick)
            if not self._live_waiting:
                continue
            now = time.monotonic()
            for symbol in list(self._live_waiting):
                if now - self._live_sent.get(symbol, 0.0) >= self.live_interval:
                    self._send_live(self._live_waiting.pop(symbol), now)

    def forget(self, symbol: str) -> None:
        self._live_waiting.pop(symbol, None)
        self._live_sent.pop(symbol, None)
