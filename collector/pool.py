"""WebSocket connection pool on BINANCE_WS_URL (docs/contract.md §4).

Symbols are spread over slots of at most `streams_per_connection` combined `<sym>@kline_1m` streams. Each
slot keeps one connection alive forever: full-jitter exponential backoff between attempts, a wall-clock
watchdog that replaces a silent connection, and make-before-break replacement before the venue's 24 h
close (the new connection delivers a frame before the old one is closed). Slots are independent tasks, so
one bad connection never stalls the others. Our own messages (SUBSCRIBE/UNSUBSCRIBE) are spaced so a
connection never sends more than 5 a second (the venue closes at 10, pongs included).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from collector.binance import encode_request, stream_name
from cryptomon.workers import Stats

logger = logging.getLogger(__name__)

SEND_INTERVAL = 0.2  # ≤ 5 own messages per second per connection
STABLE_SECONDS = 30.0  # a connection that lived this long resets the backoff
YIELD_EVERY_FRAMES = 50  # frames handled before the reader lets other tasks run


@dataclass
class PoolConfig:
    ws_url: str
    streams_per_connection: int = 200
    watchdog_seconds: float = 90.0
    max_age_seconds: float = 23 * 3600
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    stagger_seconds: float = 0.5
    open_timeout: float = 10.0


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base × 2^attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


@dataclass(eq=False)
class Slot:
    id: int
    streams: list[str]
    watchdog: bool = True
    fixed: bool = False  # a slot of fixed streams (contract info, derivatives): never given kline streams
    symbols: set[str] = field(default_factory=set)
    ws: ClientConnection | None = None
    ws_streams: set[str] = field(default_factory=set)
    handover: ClientConnection | None = None
    handover_streams: set[str] = field(default_factory=set)
    opened_at: float = 0.0
    last_frame: float = 0.0
    replacing: bool = False
    active: bool = True
    task: asyncio.Task | None = None
    last_send: float = 0.0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        on_message: Callable[[bytes], None],
        stats: Stats,
        on_connected: Callable[[set[str]], None] | None = None,
        fixed_streams: list[str] | None = None,
        watched_streams: list[str] | None = None,
        on_streams: Callable[[frozenset[str], bool], None] | None = None,
    ):
        self.config = config
        self.on_message = on_message
        self.on_connected = on_connected or (lambda symbols: None)
        self.stats = stats
        self.slots: list[Slot] = []
        self._ids = itertools.count()
        self._request_ids = itertools.count(1)
        self._fixed = fixed_streams or []  # own connection, sporadic: no watchdog
        self._watched = watched_streams or []  # own connection with a steady cadence: under the watchdog
        self.on_streams = on_streams or (lambda streams, up: None)
        self._running = False
        self._opened = 0
        stats.gauge("collector_connections", self.connections)
        stats.gauge("collector_streams", self.streams)

    def connections(self) -> int:
        return sum(1 for slot in self.slots if slot.ws is not None)

    def streams(self) -> int:
        return sum(len(slot.symbols) for slot in self.slots)

    def symbols(self) -> set[str]:
        return set().union(*(slot.symbols for slot in self.slots)) if self.slots else set()

    # --- membership ---------------------------------------------------------------------------------------
    def set_symbols(self, wanted: set[str]) -> None:
        """Subscribe new symbols and drop gone ones, live, without touching unaffected connections."""
        current = self.symbols()
        for slot in list(self.slots):
            gone = slot.symbols - wanted
            if gone:
                slot.symbols -= gone
                slot.streams = [s for s in slot.streams if s not in {stream_name(g) for g in gone}]
                if not slot.streams:
                    self._close_slot(slot)
                else:
                    self._reconcile_later(slot)
        added = sorted(wanted - current)
        for slot in self.slots:
            if not added:
                break
            if slot.fixed:
                continue
            room = self.config.streams_per_connection - len(slot.streams)
            if room > 0:
                take, added = added[:room], added[room:]
                slot.symbols |= set(take)
                slot.streams += [stream_name(s) for s in take]
                self._reconcile_later(slot)
        size = self.config.streams_per_connection
        for index in range(0, len(added), size):
            chunk = added[index : index + size]
            slot = Slot(next(self._ids), [stream_name(s) for s in chunk], symbols=set(chunk))
            self.slots.append(slot)
            if self._running:
                self._launch(slot)

    def _close_slot(self, slot: Slot) -> None:
        slot.active = False
        self.slots.remove(slot)
        if slot.task is not None:
            slot.task.cancel()

    def _launch(self, slot: Slot) -> None:
        delay = self._opened * self.config.stagger_seconds if self._opened else 0.0
        self._opened += 1
        slot.task = asyncio.get_running_loop().create_task(
            self._run_slot(slot, delay), name=f"ws slot {slot.id}"
        )

    async def run(self) -> None:
        self._running = True
        if self._fixed:
            self.slots.append(Slot(next(self._ids), list(self._fixed), watchdog=False, fixed=True))
        if self._watched:
            self.slots.append(Slot(next(self._ids), list(self._watched), fixed=True))
        for slot in self.slots:
            self._launch(slot)
        try:
            while True:
                await asyncio.sleep(min(1.0, self.config.watchdog_seconds / 4))
                self._opened = max(0, self._opened - 1)
                self._check()
        finally:
            for slot in list(self.slots):
                self._close_slot(slot)
                if slot.ws is not None:
                    slot.ws.transport.abort()

    def connected_since(self, stream: str) -> float | None:
        """time.monotonic() at which the connection carrying `stream` opened, or None while it is down."""
        for slot in self.slots:
            if slot.ws is not None and stream in slot.ws_streams:
                return slot.opened_at
        return None

    def replace(self, stream: str) -> set[str]:
        """Replace the connection carrying `stream` (it went silent on a live connection); the reconnect
        catches its symbols up from REST like any other. Returns the streams of that connection."""
        for slot in self.slots:
            ws = slot.ws
            if ws is not None and stream in slot.streams:
                slot.last_frame = time.monotonic()
                ws.transport.abort()
                return set(slot.streams)
        return set()

    def _check(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            ws = slot.ws
            if ws is None:
                continue
            if slot.watchdog and now - slot.last_frame > self.config.watchdog_seconds:
                logger.warning(
                    "connection %s silent for %.1f s: replacing it", slot.id, now - slot.last_frame
                )
                self.stats.inc("collector_watchdog_replacements_total")
                slot.last_frame = now
                ws.transport.abort()
            elif now - slot.opened_at > self.config.max_age_seconds and not slot.replacing:
                slot.replacing = True
                asyncio.get_running_loop().create_task(self._replace(slot))

    # --- one slot -----------------------------------------------------------------------------------------
    def _url(self, streams: list[str]) -> str:
        return f"{self.config.ws_url.rstrip('/')}/stream?streams={quote('/'.join(streams), safe='/@!_')}"

    async def _open(self, streams: list[str]) -> ClientConnection:
        return await connect(
            self._url(streams),
            open_timeout=self.config.open_timeout,
            ping_interval=None,  # the venue pings us; our pings would count against its message limit
            close_timeout=2,
            max_size=2**22,
            max_queue=4096,
            compression=None,
        )

    async def _run_slot(self, slot: Slot, delay: float) -> None:
        await asyncio.sleep(delay)
        attempt = 0
        first = True
        while slot.active:
            ws = slot.handover
            streams = slot.handover_streams
            slot.handover = None
            if ws is None:
                streams = set(slot.streams)
                try:
                    ws = await self._open(slot.streams)
                except Exception as error:
                    wait = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap)
                    attempt += 1
                    logger.warning("connection %s: open failed (%s); retry in %.2f s", slot.id, error, wait)
                    await asyncio.sleep(wait)
                    continue
                if not first:
                    self.stats.inc("collector_reconnects_total")
                first = False
                slot.opened_at = time.monotonic()
                slot.ws, slot.ws_streams = ws, streams
                slot.last_frame = time.monotonic()
                self.on_connected(set(slot.symbols))
                self.on_streams(frozenset(streams), True)
            else:
                slot.ws, slot.ws_streams = ws, streams
                slot.opened_at = time.monotonic()
            started = time.monotonic()
            await self._reconcile(slot)
            try:
                unyielded = 0
                while True:
                    data = await ws.recv(decode=False)
                    slot.last_frame = time.monotonic()
                    self.on_message(data)
                    unyielded += 1
                    if unyielded == YIELD_EVERY_FRAMES:
                        # recv() does not suspend while frames are buffered: let the publisher send the
                        # finals already handed over instead of after the whole burst is parsed
                        unyielded = 0
                        await asyncio.sleep(0)
            except ConnectionClosed as closed:
                if slot.handover is None and slot.active:
                    logger.warning("connection %s closed (%s)", slot.id, closed.rcvd or "no close frame")
            except asyncio.CancelledError:
                ws.transport.abort()
                raise
            except Exception:
                logger.exception("connection %s: reader failed", slot.id)
                ws.transport.abort()
            slot.ws = None
            if slot.handover is not None:
                continue
            self.on_streams(frozenset(streams), False)
            if time.monotonic() - started > STABLE_SECONDS:
                attempt = 0
            wait = backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap)
            attempt += 1
            await asyncio.sleep(wait)

    async def _replace(self, slot: Slot) -> None:
        """Make before break: the new connection must deliver a frame before the old one is closed."""
        try:
            streams = list(slot.streams)
            new = await self._open(streams)
            first = await asyncio.wait_for(new.recv(decode=False), self.config.watchdog_seconds)
            self.on_message(first)
            old = slot.ws
            if not slot.active:
                await new.close()
                return
            slot.handover, slot.handover_streams = new, set(streams)
            self.stats.inc("collector_age_replacements_total")
            logger.info("connection %s replaced before its age limit", slot.id)
            if old is not None:
                await old.close()
        except Exception as error:
            logger.warning("connection %s: replacement failed (%s); retried later", slot.id, error)
        finally:
            slot.replacing = False

    def _reconcile_later(self, slot: Slot) -> None:
        if slot.ws is not None and self._running:
            asyncio.get_running_loop().create_task(self._reconcile(slot))

    async def _reconcile(self, slot: Slot) -> None:
        """Bring the open connection's subscriptions in line with the slot (SUBSCRIBE/UNSUBSCRIBE)."""
        async with slot.send_lock:
            ws = slot.ws
            if ws is None:
                return
            wanted = set(slot.streams)
            for method, streams in (
                ("UNSUBSCRIBE", sorted(slot.ws_streams - wanted)),
                ("SUBSCRIBE", sorted(wanted - slot.ws_streams)),
            ):
                if not streams:
                    continue
                wait = slot.last_send + SEND_INTERVAL - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if slot.ws is not ws:
                    return
                try:
                    await ws.send(encode_request(method, streams, next(self._request_ids)).decode())
                except ConnectionClosed:
                    return
                slot.last_send = time.monotonic()
                if method == "SUBSCRIBE":
                    slot.ws_streams |= set(streams)
                    added = {s for s in slot.symbols if stream_name(s) in set(streams)}
                    self.on_connected(added)
                else:
                    slot.ws_streams -= set(streams)
