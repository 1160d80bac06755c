"""One reader of the broadcast groups per web process (docs/gateway.md, "One reader per process").

With a channel per socket, the pub/sub layer decodes every group message once per socket and Channels
dispatches it to each consumer as its own task turn: a 600-row market frame to a thousand sockets was a
thousand msgpack decodes of it every second. Here one channel per process (per event loop) joins the
``alerts``, ``market``, ``feed`` and ``resync`` groups; each message is decoded once and handed to every
local socket synchronously, in arrival order, with its frames already encoded (:class:`AlertBatch`), so a
socket's work per alert is its filter and an append to its send buffer. The per-user group (sign-out,
changed settings) stays on each socket's own channel.

Frames, not bytes, are what a web process pays for (a send, a write and an epoll change per frame): while
alerts keep coming, the hub hands them to the sockets at most every ``sockets / WS_ALERT_FRAMES_PER_SECOND``
seconds (at most 0.25 s), so a process's alert frames stay within that budget however many alerts arrive;
an alert after a quiet moment goes out at once, and with a few sockets the wait is well under a
millisecond. Each socket still gets every alert, once, oldest first.

The full market table that a ``market: true`` subscribe starts with is read from Redis once per change, not
once per socket (:meth:`Hub.full_market`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from django.conf import settings

from cryptomon import messaging
from gateway import feed
from gateway.bridge import ALERTS_GROUP, FEED_GROUP, MARKET_GROUP, RESYNC_GROUP

logger = logging.getLogger(__name__)

GROUPS = (ALERTS_GROUP, MARKET_GROUP, FEED_GROUP, RESYNC_GROUP)
REJOIN_SECONDS = 3600.0  # the list-based layer forgets group members after a day (group_expiry)
MAX_ALERT_HOLD_SECONDS = 0.25


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


MERGED_FRAMES_KEPT = 64
_merged: OrderedDict[tuple[int, int, int], str] = OrderedDict()


def market_frame(events: list[dict]) -> str:
    """One `market` frame for consecutive market messages: the bridge's own frame for one, else their rows
    merged (the newest per symbol, by symbol). Sockets that fell behind by the same messages share it."""
    if len(events) == 1 and events[0].get("frame"):
        return events[0]["frame"]
    key = (id(events[0]), events[0].get("seq", 0), events[-1].get("seq", 0))
    frame = _merged.get(key) if key[1] else None  # only the hub's numbered messages are shared
    if frame is None:
        rows = {row["symbol"]: row for event in events for row in event["rows"]}
        frame = messaging.encode(
            {"type": "market", "rows": [rows[symbol] for symbol in sorted(rows)]}
        ).decode()
        if key[1]:
            _merged[key] = frame
            if len(_merged) > MERGED_FRAMES_KEPT:
                _merged.popitem(last=False)
    return frame


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
        self.market_cache: tuple[int, float, str] | None = None  # (version, read started, frame)
        self.market_seq = 0  # numbers the market messages: sockets behind alike share merged frames
        self.queries: dict[object, tuple[float, asyncio.Future]] = {}  # shared reads in flight, by key
        self.held: list[AlertBatch] = []  # alerts waiting for the next hand-out (oldest first)
        self.hand_out: asyncio.TimerHandle | None = None
        self.next_alerts_at = 0.0

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

    async def full_market(self, not_before: float = 0.0) -> str:
        """The `market` frame with every symbol's row: one Redis read and encode per change, shared (a read
        started before `not_before`, time.monotonic(), is not reused: e.g. after an outage)."""
        async with self.market_lock:
            version = self.market_version
            cached = self.market_cache
            if cached is not None and cached[0] == version and cached[1] >= not_before:
                return cached[2]
            started = time.monotonic()
            rows = await feed.read_market()
            frame = messaging.encode({"type": "market", "rows": rows}).decode()
            if version == self.market_version:  # no newer rows arrived while reading
                self.market_cache = (version, started, frame)
            return frame

    async def shared(self, key, not_before: float, read: Callable[[], Awaitable]):
        """The result of `read()` for `key`, shared with every caller while it runs, if it started at or
        after `not_before` (time.monotonic()); otherwise a new one is started (and shared in turn)."""
        entry = self.queries.get(key)
        if entry is None or entry[0] < not_before:
            entry = (time.monotonic(), asyncio.ensure_future(read()))
            self.queries[key] = entry
            entry[1].add_done_callback(
                lambda _, e=entry: self.queries.get(key) is e and self.queries.pop(key)
            )
        return await asyncio.shield(entry[1])

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
            self.held.append(AlertBatch(message["alerts"], message["texts"]))
            if self.hand_out is None:
                loop = asyncio.get_running_loop()
                wait = self.next_alerts_at - loop.time()
                if wait <= 0:
                    self._hand_out_alerts()
                else:
                    self.hand_out = loop.call_later(wait, self._hand_out_alerts)
        elif kind == "market.rows":
            self.market_version += 1
            self.market_seq += 1
            message["seq"] = self.market_seq
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

    def _hand_out_alerts(self) -> None:
        self.hand_out = None
        held, self.held = self.held, []
        if not held:
            return
        batch = (
            held[0]
            if len(held) == 1
            else AlertBatch(
                [alert for b in held for alert in b.alerts], [text for b in held for text in b.texts]
            )
        )
        gap = min(MAX_ALERT_HOLD_SECONDS, len(self.listeners) / settings.WS_ALERT_FRAMES_PER_SECOND)
        self.next_alerts_at = asyncio.get_running_loop().time() + gap
        for listener in list(self.listeners):
            try:
                listener.take_alerts(batch)
            except Exception:
                logger.exception("ws: a socket failed to take alerts")


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hub(layer) -> Hub:
    """This event loop's hub (one per web process; tests run several loops)."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None or found.layer is not layer:
        found = _hubs[loop] = Hub(layer)
    return found
