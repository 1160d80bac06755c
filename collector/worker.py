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
from dataclasses import dataclass, field

from collector import metrics_export, selectors, services
from collector.binance import parse_frame
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
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no /metrics endpoint
    nats_reconnect_wait_seconds: float = 2.0

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
            "metrics_port": getattr(settings, "COLLECTOR_METRICS_PORT", 0),
            "nats_reconnect_wait_seconds": settings.NATS_RECONNECT_WAIT_SECONDS,
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
        runner = None
        if cfg.metrics_port:
            runner = await metrics_export.serve(
                self.stats, cfg.metrics_host, cfg.metrics_port + cfg.shard.index
            )
        loops = {
            "publisher": self.publisher.run(),
            "live publisher": self.publisher.run_live(),
            "connection pool": self.pool.run(),
            "universe refresh": self.universe.run(),
            "hole scan": self.sequencer.run_hole_scan(cfg.hole_scan_seconds),
            "venue time sync": self.rest.run_time_sync(),
            "status report": self._report_status(),
            "heap upkeep": heap.keep_collections_short("run_collector"),
        }
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
            await self._shutdown(runner)

    def _build_parts(self) -> None:
        """The publisher, the sequencer, the WebSocket pool and the universe, wired to each other."""
        cfg = self.config
        self.publisher = Publisher(
            self.nc,
            self.js,
            self.stats,
            buffer_limit=cfg.buffer_limit,
            ack_timeout=cfg.ack_timeout_seconds,
            live_interval=cfg.live_interval_seconds,
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
            on_connected=self.sequencer.catch_up,
            fixed_streams=[CONTRACT_STREAM],
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

    async def _shutdown(self, runner) -> None:
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
        if runner is not None:
            await runner.cleanup()

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
            now = self.rest.venue_now_ms()
            if frame.final:
                self.stats.inc("collector_finals_total")
                self.sequencer.last_ws_lag_ms = now - candle.event_time
                candle.event_time = now
                self.sequencer.on_final(candle)
            else:
                candle.event_time = now
                self.publisher.live(candle)
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

    # --- health -------------------------------------------------------------------------------------------
    def _register_gauges(self) -> None:
        stats, rest = self.stats, self.rest
        stats.gauge("collector_symbols", lambda: len(self.symbol_set))
        stats.gauge("collector_lag_ms", lambda: self.sequencer.last_ws_lag_ms)
        stats.gauge("collector_rest_weight_used", lambda: rest.limiter.used)
        stats.gauge("collector_rest_requests_total", lambda: rest.stats.requests)
        stats.gauge("collector_rest_rate_limited_total", lambda: rest.stats.rate_limited)
        stats.gauge("collector_rest_banned_total", lambda: rest.stats.banned)
        stats.gauge("collector_rest_region_blocked_total", lambda: rest.stats.region_blocked)
        stats.gauge("collector_backfills_running", lambda: self.sequencer.backfilling())

    def status(self) -> Heartbeat:
        """The feed heartbeat (`collector.status`, core NATS) the dashboard and the operator watchdog read."""
        now = self.rest.venue_now_ms()
        current = now // MINUTE_MS * MINUTE_MS
        fresh_after = current - 3 * MINUTE_MS
        live = sum(
            1
            for state in self.sequencer.states.values()
            if state.next_open is not None and state.next_open > fresh_after
        )
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
