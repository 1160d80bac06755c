"""The collector process: universe → pool → parser → sequencer → publisher, wired on one asyncio loop.

`Collector(CollectorConfig.from_settings()).run()` is what `run_collector` runs (until `stop()`); tests build a config
directly (short timings, an emulator URL, a private NATS) instead of patching settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from collector import selectors, services
from collector.binance import DERIVATIVE_STREAMS, MARK_PRICE_STREAM, parse_frame, stream_name
from collector.derivatives import DerivativesBook, FundingInfoPoller, OpenInterestPoller
from collector.pool import Pool, PoolConfig, backoff_delay
from collector.publisher import Publisher
from collector.rest import RestClient, RestError
from collector.sequencer import Sequencer
from collector.universe import CONTRACT_STREAM, Universe
from cryptomon import heap, messaging
from cryptomon.contract import subjects
from cryptomon.contract.messages import Heartbeat
from cryptomon.contract.times import MINUTE_MS
from cryptomon.workers import Worker, in_thread, until_one_ends

logger = logging.getLogger(__name__)


@dataclass
class CollectorConfig:
    rest_url: str
    ws_url: str
    nats_url: str | None = None
    include_tradifi: bool = False
    symbols: list[str] | None = None  # limit the universe (--symbols)
    shard: messaging.Shard = field(default_factory=messaging.Shard)
    streams_per_connection: int = 200
    watchdog_seconds: float = 90.0
    max_connection_age_seconds: float = 23 * 3600
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    stagger_seconds: float = 0.5
    hole_scan_seconds: float = 600.0
    universe_refresh_seconds: float = 300.0
    buffer_limit: int = 500_000
    rest_weight_budget: int = 2400
    clock_rate: float | None = None  # None: measured from /fapi/v1/time (1 against Binance)
    time_sync_seconds: float = 60.0
    region_block_pause_seconds: float = 600.0
    warmup_minutes: int = 2880
    retry_max_seconds: float = 10.0
    hole_grace_minutes: int = 10
    storage_behind_minutes: int = 60
    ack_timeout_seconds: float = 5.0
    live_interval_seconds: float = 1.0
    status_interval_seconds: float = 5.0
    nats_reconnect_wait_seconds: float = 2.0
    derivatives: bool = True  # markPrice + forceOrder streams, open interest and fundingInfo polls
    oi_weight_ceiling: int = 1200  # open interest polls use REST weight only while a minute's use is ≤ this
    funding_info_seconds: float = 3600.0
    kline_silence_seconds: float = 75.0  # one symbol's kline stream quiet this long on a live connection
    mark_silence_seconds: float = 10.0  # the markPrice stream quiet this long on a live connection
    silence_report_seconds: float = 600.0  # the heartbeat reports silences this recent

    @classmethod
    def from_settings(cls, **overrides) -> CollectorConfig:
        from django.conf import settings

        values = {
            "rest_url": settings.BINANCE_REST_URL,
            "ws_url": settings.BINANCE_WS_URL,
            "nats_url": settings.NATS_URL,
            "include_tradifi": settings.BINANCE_INCLUDE_TRADIFI,
            "streams_per_connection": settings.BINANCE_STREAMS_PER_CONNECTION,
            "watchdog_seconds": settings.BINANCE_WATCHDOG_SECONDS,
            "max_connection_age_seconds": settings.BINANCE_MAX_CONNECTION_AGE_SECONDS,
            "backoff_base_seconds": settings.BINANCE_BACKOFF_BASE_SECONDS,
            "backoff_cap_seconds": settings.BINANCE_BACKOFF_CAP_SECONDS,
            "hole_scan_seconds": settings.COLLECTOR_HOLE_SCAN_SECONDS,
            "universe_refresh_seconds": settings.COLLECTOR_UNIVERSE_REFRESH_SECONDS,
            "buffer_limit": settings.COLLECTOR_BUFFER_LIMIT,
            "nats_reconnect_wait_seconds": settings.NATS_RECONNECT_WAIT_SECONDS,
            "derivatives": settings.COLLECTOR_DERIVATIVES,
            "oi_weight_ceiling": settings.COLLECTOR_OI_WEIGHT_CEILING,
            "funding_info_seconds": settings.COLLECTOR_FUNDING_INFO_SECONDS,
            "kline_silence_seconds": settings.COLLECTOR_KLINE_SILENCE_SECONDS,
            "mark_silence_seconds": settings.COLLECTOR_MARK_SILENCE_SECONDS,
        }
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> CollectorConfig:
        return dataclasses.replace(self, **changes)


class Collector(Worker):
    """One collector shard: `run()` until `stop()`; `started` is set once the feed is being collected."""

    def __init__(self, config: CollectorConfig):
        super().__init__()
        self.config = config
        self.symbol_set: frozenset[str] = frozenset()
        self.rest: RestClient | None = None
        self.publisher: Publisher | None = None
        self.sequencer: Sequencer | None = None
        self.universe: Universe | None = None
        self.pool: Pool | None = None
        self.nc = None
        self.js = None
        self._invalid_logged: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        self.derivatives: DerivativesBook | None = None
        self._kline_seen: dict[str, float] = {}  # symbol -> time.monotonic() of its last kline frame
        self._mark_seen = 0.0
        self._silences: deque[float] = deque(maxlen=10_000)

    # --- wiring -------------------------------------------------------------------------------------------
    async def _start_rest(self) -> RestClient:
        cfg = self.config
        attempt = 0
        while True:
            rest = RestClient(
                cfg.rest_url,
                clock_rate=cfg.clock_rate,
                budget=cfg.rest_weight_budget,
                region_block_pause_seconds=cfg.region_block_pause_seconds,
                time_sync_seconds=cfg.time_sync_seconds,
            )
            try:
                await rest.start()
                return rest
            except (RestError, OSError, ValueError, KeyError) as error:
                await rest.close()
                wait = backoff_delay(attempt, cfg.backoff_base_seconds, cfg.backoff_cap_seconds)
                attempt += 1
                logger.warning("venue REST unavailable (%s); retry in %.1f s", error, wait)
                await asyncio.sleep(wait)

    async def serve(self) -> None:
        cfg = self.config
        self.rest = await self._start_rest()
        nats_options = {"reconnect_time_wait": cfg.nats_reconnect_wait_seconds}
        self.nc, self.js = await messaging.connect_jetstream("collector", cfg.nats_url, **nats_options)
        self._build_parts()
        self._register_gauges()
        await self._first_universe()
        loops = {
            "publisher": self.publisher.run(),
            "live publisher": self.publisher.run_live(),
            "connection pool": self.pool.run(),
            "universe refresh": self.universe.run(),
            "hole scan": self.sequencer.run_hole_scan(cfg.hole_scan_seconds),
            "venue time sync": self.rest.run_time_sync(),
            "status report": self._report_status(),
            "heap upkeep": heap.keep_collections_short("run_collector"),
            "stream silence": self._watch_streams(),
        }
        if self.derivatives is not None:
            loops["open interest"] = OpenInterestPoller(
                self.rest,
                self.derivatives,
                lambda: self.symbol_set,
                self.stats,
                ceiling=cfg.oi_weight_ceiling,
            ).run()
            loops["funding info"] = FundingInfoPoller(
                self.rest,
                self.derivatives,
                interval_seconds=cfg.funding_info_seconds,
                retry_seconds=max(1.0, cfg.retry_max_seconds),
            ).run()
        self._tasks = [asyncio.create_task(loop, name=name) for name, loop in loops.items()]
        self.started.set()
        logger.info(
            "collector started: %d symbols, shard %s/%s, venue %s",
            len(self.symbol_set),
            cfg.shard.index,
            cfg.shard.count,
            cfg.ws_url,
        )
        try:
            await until_one_ends(self._tasks, "collector")
        finally:
            await self._shutdown()

    def _build_parts(self) -> None:
        """The publisher, the sequencer, the WebSocket pool and the universe, wired to each other."""
        cfg = self.config
        if cfg.derivatives:
            self.derivatives = DerivativesBook(self.stats, self.rest.venue_now_ms)
        self.publisher = Publisher(
            self.nc,
            self.js,
            self.stats,
            buffer_limit=cfg.buffer_limit,
            ack_timeout=cfg.ack_timeout_seconds,
            live_interval=cfg.live_interval_seconds,
            derivatives=self.derivatives,
        )
        self.sequencer = Sequencer(
            self.rest,
            self.publisher,
            self.stats,
            self._resume_points,
            holes=self._holes,
            warmup_minutes=cfg.warmup_minutes,
            retry_max_seconds=cfg.retry_max_seconds,
            hole_grace_minutes=cfg.hole_grace_minutes,
            storage_behind_minutes=cfg.storage_behind_minutes,
        )
        self.pool = Pool(
            PoolConfig(
                ws_url=cfg.ws_url,
                streams_per_connection=cfg.streams_per_connection,
                watchdog_seconds=cfg.watchdog_seconds,
                max_age_seconds=cfg.max_connection_age_seconds,
                backoff_base=cfg.backoff_base_seconds,
                backoff_cap=cfg.backoff_cap_seconds,
                stagger_seconds=cfg.stagger_seconds,
            ),
            self.on_message,
            self.stats,
            on_connected=self._on_connected,
            fixed_streams=[CONTRACT_STREAM],
            watched_streams=list(DERIVATIVE_STREAMS) if cfg.derivatives else None,
            on_streams=self._on_streams,
        )
        self.universe = Universe(
            self.rest,
            self._apply_universe,
            include_tradifi=cfg.include_tradifi,
            only=cfg.symbols,
            owns=cfg.shard.owns,
            refresh_seconds=cfg.universe_refresh_seconds,
        )

    async def _first_universe(self) -> None:
        """exchangeInfo once before anything streams, retried with backoff until the venue answers."""
        cfg = self.config
        attempt = 0
        while True:
            try:
                await self.universe.refresh()
                return
            except (RestError, ValueError, KeyError) as error:
                wait = backoff_delay(attempt, cfg.backoff_base_seconds, cfg.backoff_cap_seconds)
                attempt += 1
                logger.warning("exchangeInfo unavailable (%s); retry in %.1f s", error, wait)
                await asyncio.sleep(wait)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for state in list(self.sequencer.states.values()) if self.sequencer else []:
            if state.task is not None:
                state.task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.publisher is not None and self.nc is not None and self.nc.is_connected:
            # Candles already sequenced go out before we leave (bounded wait).
            drain = asyncio.create_task(self.publisher.run())
            await self.publisher.drain(timeout=5.0)
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.rest is not None:
            await self.rest.close()

    async def _apply_universe(self, selected: dict[str, dict], starts: dict[str, int]) -> None:
        now = self.rest.venue_now_ms()
        history = await in_thread(services.record_universe, selected, now, starts, self.config.shard.owns)
        for symbol in self.symbol_set - selected.keys():
            self.sequencer.remove(symbol)
            logger.info("stopped following %s", symbol)
        self.symbol_set = frozenset(selected)
        for symbol in sorted(selected):
            self.sequencer.add(symbol, history[symbol])
        self.pool.set_symbols(set(selected))

    async def _resume_points(self, symbols: list[str]) -> dict[str, tuple[int, str]]:
        """Newest published candle per symbol: CANDLES last-by-subject, `candles_1m` if newer or alone."""
        found: dict[str, tuple[int, str]] = {}
        for symbol in symbols:
            payload = None
            for attempt in range(30):
                try:
                    payload = await messaging.last_payload(
                        self.js, subjects.CANDLES_STREAM, subjects.candle_subject(symbol)
                    )
                    break
                except Exception as error:  # NATS away: wait for it, never guess
                    logger.warning("resume point of %s: %s", symbol, error)
                    await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            if payload is not None:
                found[symbol] = (int(payload["open_time"]), _decimal_text(payload["close"]))
        stored = await in_thread(selectors.newest_stored, symbols)
        for symbol, point in stored.items():
            if symbol not in found or point[0] > found[symbol][0]:
                found[symbol] = point
        return found

    async def _holes(self, bounds, tolerance_ms):
        return await in_thread(selectors.holes, bounds, tolerance_ms)

    # --- hot path -----------------------------------------------------------------------------------------
    def on_message(self, data: bytes) -> None:
        self.stats.inc("collector_frames_total")
        frame = parse_frame(data, self.symbol_set)
        kind = frame.kind
        if kind == "kline":
            candle = frame.candle
            self._kline_seen[candle.symbol] = time.monotonic()
            now = self.rest.venue_now_ms()
            if frame.final:
                self.stats.inc("collector_finals_total")
                self.sequencer.last_ws_lag_ms = now - candle.event_time
                candle.event_time = now
                self.sequencer.on_final(candle)
            else:
                candle.event_time = now
                self.publisher.live(candle)
        elif kind == "mark":
            self._mark_seen = time.monotonic()
            if frame.refused:
                self._invalid("bad_mark_price", data)
            if self.derivatives is not None:
                self.derivatives.on_marks(frame.marks, self.symbol_set)
        elif kind == "liquidation":
            if self.derivatives is not None:
                self.derivatives.on_liquidation(frame.liquidation, self.symbol_set)
        elif kind == "contract":
            self.universe.on_contract_info(frame.contract)
        elif kind == "invalid":
            self._invalid(frame.reason, data)

    def _invalid(self, reason: str, data: bytes) -> None:
        self.stats.inc("collector_invalid_frames_total", reason=reason)
        seen = self._invalid_logged.get(reason, 0) + 1
        self._invalid_logged[reason] = seen
        if seen <= 10 or seen % 1000 == 0:
            logger.warning("invalid frame dropped (%s, #%d): %r", reason, seen, bytes(data[:200]))

    # --- silence per stream -------------------------------------------------------------------------------
    def _on_connected(self, symbols: set[str]) -> None:
        """Symbols (re)subscribed: their silence counts from now; catch them up from REST."""
        now = time.monotonic()
        for symbol in symbols:
            self._kline_seen[symbol] = max(self._kline_seen.get(symbol, 0.0), now)
        self.sequencer.catch_up(symbols)

    def _on_streams(self, streams: frozenset[str], up: bool) -> None:
        if self.derivatives is not None and DERIVATIVE_STREAMS[1] in streams:
            self.derivatives.liquidation_stream(up)

    async def _watch_streams(self) -> None:
        """An acknowledged subscription proves nothing: a stream can go quiet on a live connection. One symbol's
        kline stream or the markPrice stream silent past its cadence gets its connection replaced (the
        reconnect backfills), counted and reported in the heartbeat (operator alert)."""
        cfg = self.config
        period = min(cfg.kline_silence_seconds, cfg.mark_silence_seconds) / 4
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            replaced: set[str] = set()
            for symbol in sorted(self.symbol_set):
                stream = stream_name(symbol)
                since = None if stream in replaced else self.pool.connected_since(stream)
                if since is None:
                    continue
                quiet = now - max(since, self._kline_seen.get(symbol, 0.0))
                if quiet > cfg.kline_silence_seconds:
                    replaced |= self._silent(stream, "kline", quiet)
            if self.derivatives is not None:
                since = self.pool.connected_since(MARK_PRICE_STREAM)
                quiet = 0.0 if since is None else now - max(since, self._mark_seen)
                if quiet > cfg.mark_silence_seconds:
                    self._silent(MARK_PRICE_STREAM, "mark_price", quiet)
                if now - last_prune > 60:
                    last_prune = now
                    self.derivatives.prune(self.symbol_set)
            for symbol in [s for s in self._kline_seen if s not in self.symbol_set]:
                del self._kline_seen[symbol]

    def _silent(self, stream: str, kind: str, quiet: float) -> set[str]:
        logger.warning(
            "stream %s silent for %.1f s on a live connection: replacing the connection", stream, quiet
        )
        self.stats.inc("collector_stream_silences_total", stream=kind)
        self._silences.append(time.monotonic())
        return self.pool.replace(stream)

    def recent_silences(self) -> int:
        horizon = time.monotonic() - self.config.silence_report_seconds
        return sum(1 for at in self._silences if at >= horizon)

    # --- health -------------------------------------------------------------------------------------------
    def _register_gauges(self) -> None:
        stats, rest = self.stats, self.rest
        stats.gauge("collector_symbols", lambda: len(self.symbol_set))
        stats.gauge("collector_lag_seconds", lambda: self.sequencer.last_ws_lag_ms / 1000)
        stats.gauge("collector_live_symbols", self.live_symbols)
        stats.gauge("collector_rest_weight_used", lambda: rest.limiter.used)
        stats.gauge("collector_rest_requests_total", lambda: rest.stats.requests)
        stats.gauge("collector_rest_rate_limited_total", lambda: rest.stats.rate_limited)
        stats.gauge("collector_rest_banned_total", lambda: rest.stats.banned)
        stats.gauge("collector_rest_region_blocked_total", lambda: rest.stats.region_blocked)
        stats.gauge("collector_backfills_running", lambda: self.sequencer.backfilling())

    def live_symbols(self) -> int:
        """Symbols with a final candle among the last three venue minutes."""
        fresh_after = self.rest.venue_now_ms() // MINUTE_MS * MINUTE_MS - 3 * MINUTE_MS
        return sum(
            1
            for state in self.sequencer.states.values()
            if state.next_open is not None and state.next_open > fresh_after
        )

    def status(self) -> Heartbeat:
        """The feed heartbeat (`collector.status`, core NATS) the dashboard and the operator watchdog read."""
        now = self.rest.venue_now_ms()
        fresh_after = now // MINUTE_MS * MINUTE_MS - 3 * MINUTE_MS
        live = self.live_symbols()
        last_open = self.publisher.last_open_time or None
        rest_state = self.rest.state()
        return Heartbeat(
            shard=f"{self.config.shard.index}/{self.config.shard.count}",
            symbols=len(self.symbol_set),
            symbols_live=live,
            connections=self.pool.connections(),
            streams=self.pool.streams(),
            last_open_time=last_open,
            lag_ms=self.sequencer.last_ws_lag_ms,
            stale=last_open is None or last_open < fresh_after,
            buffered=self.publisher.buffered,
            backfilling=self.sequencer.backfilling(),
            venue_time=now,
            clock_rate=self.rest.clock.rate,
            rest=rest_state,  # ok | banned | region_blocked (operator alerts)
            banned_until=self.rest.banned_until_ms if rest_state == "banned" else None,
            silent_streams=self.recent_silences(),
        )

    async def _report_status(self) -> None:
        last_log = 0.0
        while True:
            await asyncio.sleep(self.config.status_interval_seconds)
            status = self.status()
            if self.nc.is_connected:
                with contextlib.suppress(Exception):
                    await self.nc.publish(subjects.COLLECTOR_STATUS, messaging.encode(status))
            if time.monotonic() - last_log >= 60:
                last_log = time.monotonic()
                logger.info(
                    "feed: %d/%d symbols live, %d connections, lag %s ms, %d buffered, %d backfilling, "
                    "%d frames, %d invalid, %d live dropped, REST weight %d",
                    status.symbols_live,
                    status.symbols,
                    status.connections,
                    status.lag_ms,
                    status.buffered,
                    status.backfilling,
                    self.stats.total("collector_frames_total"),
                    self.stats.total("collector_invalid_frames_total"),
                    self.stats.total("collector_live_dropped_total"),
                    self.rest.limiter.used,
                )


def _decimal_text(value) -> str:
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
