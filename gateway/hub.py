"""One reader of the broadcast groups per web process (docs/gateway.md, "One reader per process").

With a channel per socket, the pub/sub layer decodes every group message once per socket and Channels
dispatches it to each consumer as its own task turn: a 600-row market frame to a thousand sockets was a
thousand msgpack decodes of it every second. Here one channel per process (per event loop) joins the
``alerts``, ``market``, ``feed`` and ``resync`` groups; each message is decoded once and handed to every
local socket synchronously, in arrival order, with its frames already encoded (:class:`AlertBatch`), so a
socket's work per alert is its filter and an append to its send buffer. The per-user group (sign-out,
changed settings) stays on each socket's own channel.

The full market table that a ``market: true`` subscribe starts with is read from Redis once per change, not
once per socket (:meth:`Hub.full_market`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Protocol

from cryptomon import messaging
from gateway import feed
from gateway.bridge import ALERTS_GROUP, FEED_GROUP, MARKET_GROUP, RESYNC_GROUP

logger = logging.getLogger(__name__)

GROUPS = (ALERTS_GROUP, MARKET_GROUP, FEED_GROUP, RESYNC_GROUP)
REJOIN_SECONDS = 3600.0  # the list-based layer forgets group members after a day (group_expiry)


class Listener(Protocol):
    """What a socket offers the hub (``gateway.consumers.AlertsConsumer``)."""

    def take_alerts(self, batch: AlertBatch) -> None: ...
    def take_market(self, event: dict) -> None: ...
    def take_status(self, event: dict) -> None: ...
    def take_resync(self) -> None: ...


class AlertBatch:
    """The alerts of one ``alert.batch`` group message with their JSON encoded once (``texts``); the frames
    built from them are shared by every socket that takes the same selection."""

    __slots__ = ("_frame", "alerts", "texts")

    def __init__(self, alerts: list[dict], texts: list[str]):
        self.alerts = alerts
        self.texts = texts
        self._frame: str | None = None

    def frame(self) -> str:
        """The frame of the whole batch: an ``alert`` frame for one alert, ``alerts`` for several."""
        if self._frame is None:
            self._frame = alerts_frame(self.texts)
        return self._frame


def alerts_frame(texts: list[str]) -> str:
    """§10 frame for encoded alert payloads, oldest first: ``alert`` for one, ``alerts`` for several."""
    if len(texts) == 1:
        return '{"type":"alert","alert":' + texts[0] + "}"
    return '{"type":"alerts","alerts":[' + ",".join(texts) + "]}"


class Hub:
    def __init__(self, layer):
        self.layer = layer
        self.listeners: dict[Listener, None] = {}  # insertion-ordered set
        self.market: dict[Listener, None] = {}
        self.channel: str | None = None
        self.reader: asyncio.Task | None = None
        self.starting = asyncio.Lock()
        self.market_lock = asyncio.Lock()
        self.market_version = 0  # bumped by every market message: the cached full table is then stale
        self.market_cache: tuple[int, str] | None = None

    async def join(self, listener: Listener) -> None:
        """Start receiving broadcasts for `listener` (joining the groups first if this process has not)."""
        async with self.starting:
            if self.reader is None or self.reader.done():
                channel = await self.layer.new_channel("hub.")
                for group in GROUPS:
                    await self.layer.group_add(group, channel)
                self.channel = channel
                self.reader = asyncio.get_running_loop().create_task(self._read(channel))
        self.listeners[listener] = None

    def leave(self, listener: Listener) -> None:
        self.listeners.pop(listener, None)
        self.market.pop(listener, None)

    def watch_market(self, listener: Listener, on: bool) -> None:
        if on:
            self.market[listener] = None
        else:
            self.market.pop(listener, None)

    async def full_market(self) -> str:
        """The `market` frame with every symbol's row: one Redis read and encode per change, shared."""
        async with self.market_lock:
            version = self.market_version
            if self.market_cache is not None and self.market_cache[0] == version:
                return self.market_cache[1]
            rows = await feed.read_market()
            frame = messaging.encode({"type": "market", "rows": rows}).decode()
            if version == self.market_version:  # no newer rows arrived while reading
                self.market_cache = (version, frame)
            return frame

    async def _read(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        rejoin_at = loop.time() + REJOIN_SECONDS
        delay = 0.5
        while True:
            try:
                message = await self.layer.receive(channel)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the layer lost Redis: the bridge resyncs every socket afterwards
                logger.warning("ws: channel layer receive failed (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                self.dispatch(message)
            except Exception:
                logger.exception("ws: cannot hand a %r message to the sockets", message.get("type"))
            # The layer's queue returns queued messages without suspending: let the sockets' writers send
            # (and the server read) between two messages, or a burst would fill every send buffer at once.
            await asyncio.sleep(0)
            if loop.time() >= rejoin_at:
                rejoin_at = loop.time() + REJOIN_SECONDS
                for group in GROUPS:
                    with contextlib.suppress(Exception):
                        await self.layer.group_add(group, channel)

    def dispatch(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "alert.batch":
            batch = AlertBatch(message["alerts"], message["texts"])
            for listener in list(self.listeners):
                listener.take_alerts(batch)
        elif kind == "market.rows":
            self.market_version += 1
            for listener in list(self.market):
                listener.take_market(message)
        elif kind == "feed.status":
            for listener in list(self.listeners):
                listener.take_status(message)
        elif kind == "resync.event":
            for listener in list(self.listeners):
                listener.take_resync()
        else:
            logger.warning("ws: ignoring a broadcast of unknown type %r", kind)


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hub(layer) -> Hub:
    """This event loop's hub (one per web process; tests run several loops)."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None or found.layer is not layer:
        found = _hubs[loop] = Hub(layer)
    return found
