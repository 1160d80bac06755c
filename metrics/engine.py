"""The `run_metrics` worker: candles in from JetStream, final bars out to NATS and the database (docs/contract.md §1, §7).

Three inputs, one asyncio loop:
- `metrics-store-p<k>of<N>` (durable, CANDLES): every candle into `candles_1m` (batched, DO NOTHING), acked
  once stored; storage never waits for the metrics.
- `metrics-p<k>of<N>` (durable, CANDLES): final candles through the `BarSequencer` (watermark, missing-minute
  wait, gap timeout); the bars are published on `metrics.calculated.<SYM>` (`Nats-Msg-Id: <SYM>:<open_time>`)
  at once, then, in a pipeline that never holds up the next batch, the bars and their candles are committed
  to `metrics_calculated`/`candles_1m` (one transaction per batch) and only then are the messages acked.
  A crash after publishing and before the commit loses nothing: the candles were not acked, so on restart
  the consumer redelivers them first and in order (`messaging.resume_consumer`); they are at or before the
  watermark (METRICS), so they only complete the state and their bars are stored again, not republished.
- `candles.live.>` (core NATS): the newest open-minute candle per symbol, previewed at most once a second
  per symbol into `metrics.live.<SYM>`.

On start (and after any failure to store or publish) the worker rebuilds everything: watermarks from METRICS
last-by-subject else `metrics_calculated`, state from the newest 2880 stored minutes in one pass, stored
candles newer than the watermark evaluated before live input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cryptomon import heap, messaging
from cryptomon.contract import subjects
from cryptomon.contract.candles import Candle, decode_payload
from cryptomon.contract.times import MINUTE_MS
from cryptomon.workers import Worker, in_thread, until_one_ends
from metrics import selectors, services
from metrics.ordering import BarSequencer
from metrics.windows import HISTORY_MINUTES, Bar

logger = logging.getLogger(__name__)

BARS_KIND = "metrics"
STORE_KIND = "metrics-store"
LIVE_GRACE_MS = 10_000
BARS_FIRST_SECONDS = 0.2  # how long storage work defers to a batch of bars being made
BARS_QUIET_SECONDS = 0.025  # ...and to the next batch of the same burst
PUBLISH_ACK_SECONDS = 10.0  # a bar JetStream has not confirmed by then is sent again by a rebuild
PUBLISH_CHUNK = 50  # candles made into bars (or previews) and sent before the loop yields


@dataclass
class WorkerConfig:
    shard: messaging.Shard = field(default_factory=messaging.Shard)
    nats_url: str | None = None
    gap_timeout_seconds: float = 900.0
    late_after_seconds: float = 180.0
    live_interval_seconds: float = 1.0
    batch_size: int = 1000
    fetch_timeout_seconds: float = 0.5  # the wait for a batch's first message (a long poll)
    commit_queue: int = 8  # published batches whose commit may be pending at once
    ack_wait_seconds: float = 60.0
    universe_refresh_seconds: float = 30.0
    restart_delay_seconds: float = 2.0
    status_log_seconds: float = 60.0
    warmup_page: int = 20_000

    @classmethod
    def from_settings(cls, **changes) -> WorkerConfig:
        from django.conf import settings

        values = {
            "gap_timeout_seconds": settings.METRICS_GAP_TIMEOUT_SECONDS,
            "late_after_seconds": settings.METRICS_LATE_AFTER_SECONDS,
        }
        values.update(changes)
        return cls(**values)


async def _ack(messages: list) -> None:
    """Acknowledge in order; each ack is a plain publish (no task per message, as `gather` would make)."""
    for message in messages:
        await message.ack()


class MetricsWorker(Worker):
    """One shard of the metrics engine. `run()` until `stop()`; `started` is set once live."""

    def __init__(self, config: WorkerConfig) -> None:
        super().__init__()
        self.config = config
        self.sequencer = self._new_sequencer()
        self.gaps_forced_total = 0  # across internal restarts
        self.stats.gauge("metrics_gaps_forced_total", lambda: self.gaps_forced)
        self._lock = asyncio.Lock()
        self._live: dict[str, Candle] = {}
        self._live_sent: dict[str, float] = {}
        self._symbols: set[str] = set()
        self._stopping = False
        self._commits: asyncio.Queue | None = None
        # Set while the bar consumer has no batch in hand: storage work waits for it, so bars go out first.
        self._bars_idle = asyncio.Event()
        self._bars_idle.set()
        self._bars_done_at = 0.0  # loop time when the bar consumer last finished a batch
        self._bars_backlogged = False  # its last fetch filled a batch: catching up, not live
        self._stored: dict[str, int] = {}  # per symbol the newest bar in metrics_calculated, at start
        self.nc = self.js = None
        self.live_frames: messaging.LiveFrames | None = None
        self._unconfirmed: set[asyncio.Future] = set()  # published bars not yet confirmed by JetStream
        self._publisher: messaging.OrderedPublisher | None = None  # one per run (see `_publish`)

    def _new_sequencer(self) -> BarSequencer:
        return BarSequencer(self.config.gap_timeout_seconds, int(self.config.late_after_seconds * 1000))

    @property
    def shard(self) -> messaging.Shard:
        return self.config.shard

    def consumers(self) -> list[tuple[str, str, str]]:
        return [
            (subjects.CANDLES_STREAM, self.shard.consumer_name(kind), kind)
            for kind in (BARS_KIND, STORE_KIND)
        ]

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        options = {"reconnect_time_wait": 0.2} if self.config.nats_url else {}
        self.nc, self.js = await messaging.connect_jetstream(
            self.shard.consumer_name(BARS_KIND), self.config.nats_url, **options
        )
        self.live_frames = messaging.LiveFrames(self.nc, self.shard.consumer_name(BARS_KIND))
        try:
            while True:
                try:
                    await self._run_once()
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:
                    self.stats.inc("metrics_restarts_total")
                    logger.exception("metrics worker failed; rebuilding from storage and JetStream")
                    await asyncio.sleep(self.config.restart_delay_seconds)
        finally:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _run_once(self) -> None:
        self.gaps_forced_total += self.sequencer.gaps_forced_total
        self.sequencer = self._new_sequencer()
        self._commits = asyncio.Queue(self.config.commit_queue)
        self._bars_idle.set()
        self._publisher = messaging.OrderedPublisher(self.js, PUBLISH_ACK_SECONDS)
        await self._start()
        self.started.set()
        tasks = [
            asyncio.create_task(self._bar_loop(), name="final bars"),
            asyncio.create_task(self._commit_loop(), name="commits"),
            asyncio.create_task(self._store_loop(), name="candle storage"),
            asyncio.create_task(self._tick_loop(), name="live previews and gap timeouts"),
            asyncio.create_task(
                heap.keep_collections_short("run_metrics"), name="heap upkeep"
            ),  # after warm-up
        ]
        live = await self.nc.subscribe(subjects.CANDLES_LIVE, cb=self._on_live)
        try:
            await until_one_ends(tasks, self.shard.consumer_name(BARS_KIND))
        finally:
            # Cancelling twice if needed: a cancellation that lands as a fetch completes can be swallowed.
            self._stopping = True
            pending = set(tasks)
            while pending:
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=1.0)
            self._stopping = False
            # Bars this run published but never saw confirmed (their batches die with it) are given up,
            # with the rest of their symbols' chains (`_publish`): an ack lost with a NATS restart never
            # comes. The rebuild publishes them again, in order, from JetStream's newest stored bar.
            for future in list(self._unconfirmed):
                future.cancel()
            with contextlib.suppress(Exception):
                await live.unsubscribe()

    @property
    def gaps_forced(self) -> int:
        """`gaps_forced_total`: missing minutes given up on after the safety timeout."""
        return self.gaps_forced_total + self.sequencer.gaps_forced_total

    # --- start: universe, watermarks, warm-up ---------------------------------------------------------------

    async def _start(self) -> None:
        js = self.js
        metric_subjects = await self._stream_subjects(subjects.METRICS_STREAM, subjects.METRICS)
        stored = await in_thread(selectors.newest_metrics)
        universe = set(stored) | {subjects.symbol_of(s) for s in metric_subjects}
        if self.shard.count > 1:
            universe |= set(await in_thread(selectors.known_symbols))
        self._symbols = {symbol for symbol in universe if self.shard.owns(symbol)}
        from_stream: dict[str, int] = {}
        for subject in metric_subjects:
            symbol = subjects.symbol_of(subject)
            if self.shard.owns(symbol):
                payload = await messaging.last_payload(js, subjects.METRICS_STREAM, subject)
                if payload is not None:
                    from_stream[symbol] = int(payload["open_time"])
        self._stored = stored
        for symbol in self._symbols:
            watermark = from_stream.get(symbol, stored.get(symbol))
            if watermark is not None:
                self.sequencer.set_watermark(symbol, watermark)
        await self._ensure_consumers(resume=True)
        await self._warm_up()
        logger.info(
            "metrics %s ready: %d symbols, %d with a watermark",
            self.shard.consumer_name(BARS_KIND),
            len(self.sequencer.states),
            len(self.sequencer.watermarks),
        )

    async def _stream_subjects(self, stream: str, wildcard: str) -> list[str]:
        info = await self.js.stream_info(stream, subjects_filter=wildcard)
        return list((info.state.subjects or {}).keys())

    def _filters(self) -> list[str] | None:
        if self.shard.count == 1:
            return [subjects.CANDLES]
        owned = self.shard.filter_subjects(subjects.CANDLES_ROOT, self._symbols)
        return owned or None

    async def _ensure_consumers(self, resume: bool = False) -> None:
        """Create or update the two durable consumers; on start (`resume`) a consumer with unacknowledged
        candles is recreated from its ack floor, so they come first and in order, not after AckWait."""
        filters = self._filters()
        if filters is None:
            return
        apply = messaging.resume_consumer if resume else messaging.ensure_consumer
        for kind in (BARS_KIND, STORE_KIND):
            await apply(
                self.js,
                subjects.CANDLES_STREAM,
                self.shard.consumer_name(kind),
                filters,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.config.ack_wait_seconds,
                max_ack_pending=50_000,
                max_deliver=-1,
            )

    async def _warm_up(self) -> None:
        """The newest 2880 stored minutes into the states; stored candles after a watermark are emitted."""
        newest = await in_thread(selectors.newest_candle_time)
        if newest is None:
            return
        owned = self.sequencer.watermarks
        oldest = min([newest, *(owned[s] for s in self._symbols if s in owned)])
        since = oldest - (HISTORY_MINUTES - 1) * MINUTE_MS
        symbols = None if self.shard.count == 1 else sorted(self._symbols)
        after: tuple[str, int] | None = None
        while True:
            page = await in_thread(selectors.candles_page, since, after, self.config.warmup_page, symbols)
            if not page:
                return
            after = (page[-1].symbol, page[-1].open_time)
            now = time.monotonic()
            bars: list[Bar] = []
            healed: list[Bar] = []  # published, not yet in metrics_calculated (a crash before the commit)
            for candle in page:
                if self.shard.count > 1 and not self.shard.owns(candle.symbol):
                    continue
                self._symbols.add(candle.symbol)
                if candle.open_time > self._stored.get(candle.symbol, -1) and (
                    bar := self.sequencer.heal(candle)
                ):
                    bar.metrics_dict()  # read here, not in the storing thread
                    healed.append(bar)
                elif not self.sequencer.warm(candle):
                    bars += self.sequencer.offer(candle, now)
            await self._confirm(await self._publish(bars))
            refused = await in_thread(services.store, [], bars + healed)
            self.stats.inc("metrics_refused_rows_total", len(refused))
            if len(page) < self.config.warmup_page:
                return

    # --- the final-bar consumer -----------------------------------------------------------------------------

    async def _pull(self, kind: str):
        while self._filters() is None:  # a shard without symbols yet waits for the universe
            await asyncio.sleep(self.config.fetch_timeout_seconds)
        return await self.js.pull_subscribe_bind(self.shard.consumer_name(kind), subjects.CANDLES_STREAM)

    async def _fetch(self, subscription) -> list:
        return await messaging.fetch_available(
            subscription, self.config.batch_size, self.config.fetch_timeout_seconds
        )

    def _parse(self, messages: list, acked: bool = True) -> tuple[list, list[Candle]]:
        """(messages to ack, candles); a bad message is logged and terminated, never redelivered forever."""
        good, candles = [], []
        for message in messages:
            symbol = subjects.symbol_of(message.subject)
            try:
                candle = decode_payload(message.data)
                if candle.symbol != symbol:
                    raise ValueError(f"symbol {candle.symbol!r} does not match the subject")
            except ValueError as error:
                self.stats.inc("metrics_bad_messages_total")
                logger.error("bad candle on %s: %s", message.subject, error)
                if acked:
                    asyncio.get_running_loop().create_task(message.term())
                continue
            good.append(message)
            candles.append(candle)
        return good, candles

    async def _bar_loop(self) -> None:
        subscription = await self._pull(BARS_KIND)
        while not self._stopping:
            messages = await self._fetch(subscription)
            if not messages:
                continue
            self._bars_backlogged = len(messages) >= self.config.batch_size
            self._bars_idle.clear()
            self.stats.inc("metrics_candles_received_total", len(messages))
            try:
                with self.stats.timed("metrics_batch_seconds"):
                    published, candles, bars, acks = await self._make_bars(messages)
            finally:
                self._bars_idle.set()
                self._bars_done_at = asyncio.get_running_loop().time()
            # The commit (and then the ack) follows in order in `_commit_loop`; the next batch goes on.
            await self._commits.put((published, candles, bars, acks))

    async def _make_bars(self, messages: list) -> tuple[list, list[Candle], list[Bar], list]:
        """Bars of a fetched batch, published in chunks with a yield in between, so the first are on the
        wire while later ones are made: (publications, owned candles, bars to store, messages to ack)."""
        published: list[asyncio.Future] = []
        candles: list[Candle] = []
        bars: list[Bar] = []
        acks: list = []
        for start in range(0, len(messages), PUBLISH_CHUNK):
            good, parsed = self._parse(messages[start : start + PUBLISH_CHUNK])
            acks += good
            async with self._lock:
                now = time.monotonic()
                released: list[Bar] = []
                for candle in parsed:
                    if not self.shard.owns(candle.symbol):
                        continue
                    candles.append(candle)
                    self._symbols.add(candle.symbol)
                    if ready := self.sequencer.offer(candle, now):
                        released += ready
                    elif (bar := self.sequencer.heal(candle)) is not None:
                        bar.metrics_dict()  # read here, not in the storing thread while columns grow
                        bars.append(bar)  # stored again, not republished
                published += await self._publish(released)
            bars += released
            await asyncio.sleep(0)
        return published, candles, bars, acks

    async def _commit_loop(self) -> None:
        """Batches in order: their publications confirmed, then one commit, then the acks."""
        while True:
            published, candles, bars, messages = await self._commits.get()
            await self._confirm(published)
            await self._after_bars()
            with self.stats.timed("metrics_db_write_seconds", table="bars"):
                refused = await in_thread(services.store, candles, bars)
            self.stats.inc("metrics_refused_rows_total", len(refused))
            await _ack(messages)

    async def _after_bars(self) -> None:
        """Storage waits while bars are being made and, when live, until the bar consumer has been quiet
        for BARS_QUIET_SECONDS: a minute's burst arrives in several batches, and a storing thread between
        them takes the GIL from them. Bounded by BARS_FIRST_SECONDS; in a catch-up (full batches) only the
        batch in hand is waited for, so storage keeps pace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BARS_FIRST_SECONDS
        while (left := deadline - loop.time()) > 0:
            if not self._bars_idle.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._bars_idle.wait(), left)
                if self._bars_backlogged:
                    return
                continue
            quiet = self._bars_done_at + BARS_QUIET_SECONDS - loop.time()
            if self._bars_backlogged or quiet <= 0:
                return
            await asyncio.sleep(min(quiet, left))

    async def _publish(self, bars: list[Bar]) -> list[asyncio.Future]:
        """Send the bars to METRICS; their confirmations are awaited by `_confirm`. Each stays in
        `_unconfirmed` until it is, so a rebuild can give up on them (see `_run_once`).

        A symbol's bars go out one after another (different symbols' together): pipelined, a stream
        leader's death in a cluster lost the bars in flight while later ones were stored, the rebuild took
        the newest stored bar for its watermark, and the lost ones never reached the alert engine
        (docs/operations.md "Scale"). In order, the newest stored bar has every earlier one stored."""
        futures = []
        try:
            for bar in bars:
                futures.append(
                    await self._publisher.publish(
                        subjects.metrics_subject(bar.symbol),
                        messaging.encode(bar.payload()),
                        f"{bar.symbol}:{bar.open_time}",
                    )
                )
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        self._unconfirmed.update(futures)
        for future in futures:
            future.add_done_callback(self._unconfirmed.discard)
        return futures

    async def _confirm(self, published: list[asyncio.Future]) -> None:
        """Wait for JetStream to have stored the published bars; raises (→ rebuild) if one failed. Each
        bar's publish times out by itself (PUBLISH_ACK_SECONDS), so a long chain of one symbol's bars in
        a catch-up takes as long as it needs while every step is answered."""
        for error in await messaging.ack_errors(published, None):
            if error is not None:
                raise error
        self.stats.inc("metrics_bars_published_total", len(published))

    async def _emit(self, bars: list[Bar], candles: list[Candle]) -> None:
        """Publish the bars now; their commit joins the pipeline (commits stay in publishing order, so the
        newest stored bar of a symbol always has every earlier published bar stored too)."""
        if bars or candles:
            await self._commits.put((await self._publish(bars), candles, bars, []))

    # --- the storage consumer -------------------------------------------------------------------------------

    async def _store_loop(self) -> None:
        subscription = await self._pull(STORE_KIND)
        while not self._stopping:
            messages = await self._fetch(subscription)
            if not messages:
                continue
            await self._after_bars()
            good, candles = [], []
            for start in range(0, len(messages), PUBLISH_CHUNK):  # let the bar consumer go in between
                parsed = self._parse(messages[start : start + PUBLISH_CHUNK])
                good += parsed[0]
                candles += parsed[1]
                await asyncio.sleep(0)
            try:
                with self.stats.timed("metrics_db_write_seconds", table="candles"):
                    refused = await in_thread(services.store, candles, [])
            except Exception as error:
                self.stats.inc("metrics_store_failures_total")
                logger.warning(
                    "storing %d candles failed (%s); they will be redelivered", len(candles), error
                )
                await asyncio.gather(*(message.nak(delay=1.0) for message in good), return_exceptions=True)
                await asyncio.sleep(1.0)
                continue
            self.stats.inc("metrics_refused_rows_total", len(refused))
            self.stats.inc("metrics_candles_stored_total", len(candles) - len(refused))
            await _ack(good)

    # --- live previews, gap timeouts, universe --------------------------------------------------------------

    async def _on_live(self, message) -> None:
        try:
            candle = decode_payload(message.data)
        except ValueError as error:
            logger.debug("bad live candle on %s: %s", message.subject, error)
            return
        if self.shard.owns(candle.symbol):
            self._live[candle.symbol] = candle

    async def _tick_loop(self) -> None:
        tick = min(0.2, self.config.live_interval_seconds / 4)
        next_refresh = time.monotonic() + self.config.universe_refresh_seconds
        next_log = time.monotonic() + self.config.status_log_seconds
        while not self._stopping:
            await asyncio.sleep(tick)
            now = time.monotonic()
            async with self._lock:
                bars = self.sequencer.expire(now)
                if bars:
                    await self._emit(bars, [])
            await self._publish_live(now)
            if self.shard.count > 1 and now >= next_refresh:
                next_refresh = now + self.config.universe_refresh_seconds
                await self._refresh_universe()
            if now >= next_log:
                next_log = now + self.config.status_log_seconds
                logger.info(
                    "metrics %s: %s",
                    self.shard.consumer_name(BARS_KIND),
                    self.stats.summary(),
                )

    async def _publish_live(self, now: float) -> None:
        """Previews of the open minute, at most once a second per symbol. Final bars come first: while a
        batch of them is being made the previews wait (up to BARS_FIRST_SECONDS), and they yield every
        PUBLISH_CHUNK symbols so a minute's burst of finals is never queued behind 600 previews."""
        interval = self.config.live_interval_seconds
        for count, symbol in enumerate(list(self._live), start=1):
            if count % PUBLISH_CHUNK == 0:
                await asyncio.sleep(0)
            if not self._bars_idle.is_set():
                await self._after_bars()
            candle = self._live.get(symbol)  # the newest, should it have changed while we yielded
            if candle is None:
                continue
            if now - self._live_sent.get(symbol, -interval) < interval:
                continue
            state = self.sequencer.states.get(symbol)
            last = state.last_open_time if state is not None else None
            event_time = candle.event_time if candle.event_time is not None else int(time.time() * 1000)
            if (
                last is not None
                and candle.open_time - last > MINUTE_MS
                and event_time < candle.open_time + LIVE_GRACE_MS
            ):
                continue  # the previous minute's final bar is due any moment: wait for it
            del self._live[symbol]
            bar = self.sequencer.preview(candle)
            if bar is None:
                continue
            self._live_sent[symbol] = now
            # A live update may be lost (counted), never a final bar.
            if await self.live_frames.publish(
                subjects.metrics_live_subject(symbol), messaging.encode(bar.payload())
            ):
                self.stats.inc("metrics_live_published_total")
            else:
                self.stats.inc("metrics_live_dropped_total")

    async def _refresh_universe(self) -> None:
        """A shard's consumers follow the universe; a new symbol's earlier candles are caught up first."""
        known = await in_thread(selectors.known_symbols)
        added = {symbol for symbol in known if self.shard.owns(symbol)} - self._symbols
        if not added:
            return
        async with self._lock:
            self._symbols |= added
            await self._ensure_consumers()
            await self._catch_up(sorted(added))

    async def _catch_up(self, symbols: list[str]) -> None:
        """Candles of newly owned symbols already in the stream (the durable consumer skips them)."""
        name = f"{self.shard.consumer_name('metrics-catchup')}-{uuid.uuid4().hex[:8]}"
        await self.js.add_consumer(
            subjects.CANDLES_STREAM,
            ConsumerConfig(
                name=name,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                filter_subjects=[subjects.candle_subject(symbol) for symbol in symbols],
                inactive_threshold=60.0,
            ),
        )
        subscription = await self.js.pull_subscribe_bind(name, subjects.CANDLES_STREAM)
        try:
            while True:
                messages = await self._fetch(subscription)
                if not messages:
                    break
                _, candles = self._parse(messages, acked=False)
                now = time.monotonic()
                bars = [bar for candle in candles for bar in self.sequencer.offer(candle, now)]
                await self._emit(bars, candles)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(subjects.CANDLES_STREAM, name)
