"""`/ws/alerts/`: the realtime protocol of docs/contract.md §10.

One :class:`AlertsConsumer` per browser socket. It joins the ASCII groups the bridge (`run_gateway`) feeds
— ``alerts``, ``feed``, ``resync`` and, while subscribed to the market, ``market`` — and filters every alert
for its own subscription and audience (:class:`alerts.visibility.AlertAudience`).

Close codes (the server closes after accepting, so browsers see the code):

- ``4401`` anonymous socket while ``ALLOW_ANONYMOUS_DASHBOARD`` is off;
- ``4429`` the user already has ``WS_MAX_SOCKETS_PER_USER`` sockets open, or (anonymous) the client's
  address already has ``WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS`` (an IPv6 address counts as its /64). Counted
  in Redis; each entry expires ``WS_SOCKET_TTL_SECONDS`` after its socket's last heartbeat, so a crashed web
  process leaks nothing for long;
- ``4403`` the session ended: the user signed out (that session's sockets only) or was deactivated or
  deleted (every socket of theirs). The dashboard stops reconnecting;
- ``4008`` the socket's send buffer (``WS_SEND_BUFFER`` frames) overflowed: the client could not keep up.
  It gets a fresh snapshot when it reconnects;
- ``1009`` a frame over 1 MiB (frames over 64 KiB get an ``error`` and the socket stays open);
- ``1011`` Redis was unreachable while opening the socket.

Subscribes cost database reads, so each socket has a token bucket (``WS_SUBSCRIBE_BURST`` at once,
refilled at ``WS_SUBSCRIBES_PER_MINUTE``): a subscribe over it gets an ``error`` frame naming the limit and
is not applied; the socket stays open. Lists are bounded (``MAX_SYMBOLS``, ``MAX_RULES`` and the lengths).

The foreign-Origin check is ``AllowedHostsOriginValidator`` in ``cryptomon.asgi`` (handshake refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from alerts.selectors import visible_alerts
from alerts.visibility import AlertAudience
from cryptomon import exporter, messaging
from cryptomon.workers import in_thread
from gateway import feed, flow, hub

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_MANY_SOCKETS = 4429
CLOSE_SESSION_ENDED = 4403
CLOSE_SLOW_CLIENT = 4008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
MAX_FRAME_BYTES = 64 * 1024
MAX_CLOSE_FRAME_BYTES = 1024 * 1024
# Subscription bounds: a watchlist holds at most 1000 symbols (alerts.services.MAX_WATCHLIST); a user sees
# the global rules plus at most ALERTS_MAX_PERSONAL_RULES of their own.
MAX_SYMBOLS = 1000
MAX_RULES = 500
MAX_SYMBOL_LENGTH = 64
MAX_RULE_LENGTH = 120
SNAPSHOT_SIZE = 100
SNAPSHOT_HOURS = 24
MAX_ALERTS_PER_FRAME = 500  # alerts merged into one `alerts` frame at most…
MAX_MERGED_CHARACTERS = 256 * 1024  # …and no more than this much of them


def user_group(user_id: int) -> str:
    """Per-user group (ASCII: only the numeric id), for "your settings changed"."""
    return f"user.{int(user_id)}"


def settings_changed(user_id: int) -> None:
    """Call after a user's settings or personal rules change (on commit): their sockets re-read them and
    send a fresh snapshot. Safe to call from sync code; a no-op when no socket is open."""
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(user_group(user_id), {"type": "settings.changed"})


def on_user_settings_changed(sender, *, user_id: int, **kwargs) -> None:
    """Receiver of `alerts.signals.user_settings_changed` (connected in `GatewayConfig.ready`)."""
    settings_changed(user_id)


def session_tag(session_key: str | None) -> str | None:
    """What identifies a session in channel-layer messages: a hash, never the key itself (a credential)."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32] if session_key else None


def end_sessions(user_id: int, session_key: str | None = None) -> None:
    """Close the user's open sockets of one session (sign-out), or of every session (None: deactivated or
    deleted), with 4403. Safe to call from sync code; a failure is logged, never raised: signing out or
    deactivating must work with Redis away (the sockets then end at their next reconnect)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            user_group(user_id), {"type": "session.ended", "session": session_tag(session_key)}
        )
    except Exception as error:
        logger.warning("ws: cannot close the sockets of user %s: %s", user_id, error)


def on_user_logged_out(sender, *, request, user, **kwargs) -> None:
    """Receiver of `user_logged_out`: that session's sockets close (other devices stay signed in)."""
    if user is not None and user.pk is not None:
        end_sessions(user.pk, getattr(getattr(request, "session", None), "session_key", None))


def on_user_saved(sender, *, instance, created: bool, **kwargs) -> None:
    """Receiver of the user model's `post_save`: a deactivated user's sockets close after the commit."""
    if not created and not instance.is_active:
        user_id = instance.pk
        transaction.on_commit(lambda: end_sessions(user_id), using=kwargs.get("using") or "default")


def on_user_deleted(sender, *, instance, **kwargs) -> None:
    """Receiver of the user model's `post_delete`: a deleted user's sockets close after the commit."""
    user_id = instance.pk
    transaction.on_commit(lambda: end_sessions(user_id), using=kwargs.get("using") or "default")


# --- per-user socket slots (Redis) ---------------------------------------------------------------------

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""


def _slots_key(user_id: int) -> str:
    return f"cryptomon:ws:sockets:{int(user_id)}"


def client_network(address: str | None) -> str:
    """What anonymous sockets are counted by: the IPv4 address, or the /64 of an IPv6 one (a client gets a
    whole /64, so counting single addresses would not bound it). Unknown or unparsable: one shared bucket."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _anonymous_slots_key(address: str | None) -> str:
    return f"cryptomon:ws:anonymous:{client_network(address)}"


async def _acquire(key: str, socket_id: str, limit: int) -> bool:
    taken = await feed.redis_client().eval(_ACQUIRE, 1, key, socket_id, limit, settings.WS_SOCKET_TTL_SECONDS)
    return bool(taken)


async def _count(key: str) -> int:
    client = feed.redis_client()
    await client.zremrangebyscore(key, "-inf", time.time())
    return await client.zcard(key)


async def acquire_slot(user_id: int, socket_id: str) -> bool:
    """Take (or refresh) one of the user's socket slots; False when all are taken by live sockets."""
    return await _acquire(_slots_key(user_id), socket_id, settings.WS_MAX_SOCKETS_PER_USER)


async def release_slot(user_id: int, socket_id: str) -> None:
    await feed.redis_client().zrem(_slots_key(user_id), socket_id)


async def open_sockets(user_id: int) -> int:
    """How many live sockets the user has (for the admin and tests)."""
    return await _count(_slots_key(user_id))


async def open_anonymous_sockets(address: str) -> int:
    """How many live anonymous sockets the address (its /64 for IPv6) has."""
    return await _count(_anonymous_slots_key(address))


class TokenBucket:
    """`burst` actions at once, refilled at `per_minute`: bounds what one socket can make the server do."""

    def __init__(self, burst: int, per_minute: float):
        self.burst = burst
        self.per_second = per_minute / 60
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there is."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.per_second


# --- subscription ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    """`symbols`/`rules`: None = all, empty = none (docs/contract.md §10). The initial one: all, all, no market."""

    symbols: frozenset[str] | None = None
    rules: frozenset[str] | None = None
    market: bool = False

    def matches(self, alert: dict) -> bool:
        return (self.symbols is None or alert.get("symbol") in self.symbols) and (
            self.rules is None or alert.get("rule") in self.rules
        )

    @classmethod
    def parse(cls, message: dict) -> Subscription:
        """Validate a subscribe message; raises ValueError with the text the client gets.

        Missing keys take the initial values (all symbols, all rules, no market); unknown keys are ignored.
        """
        return cls(
            symbols=cls._names(message, "symbols", MAX_SYMBOLS, MAX_SYMBOL_LENGTH),
            rules=cls._names(message, "rules", MAX_RULES, MAX_RULE_LENGTH),
            market=cls._flag(message, "market"),
        )

    @staticmethod
    def _names(message: dict, key: str, max_items: int, max_length: int) -> frozenset[str] | None:
        value = message.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise ValueError(f"'{key}' must be a list of strings or null")
        if len(value) > max_items:
            raise ValueError(f"'{key}' has {len(value)} items; at most {max_items}")
        for item in value:
            if not isinstance(item, str) or not item or len(item) > max_length:
                raise ValueError(f"'{key}' must hold non-empty strings of at most {max_length} characters")
            if "\x00" in item:  # no name has one, and PostgreSQL text cannot hold NUL (the snapshot query)
                raise ValueError(f"'{key}' must not contain NUL characters")
        return frozenset(value)

    @staticmethod
    def _flag(message: dict, key: str) -> bool:
        value = message.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"'{key}' must be true or false")
        return value


def _text(frame: dict) -> str:
    return messaging.encode(frame).decode()


MAX_HELD_ALERTS = 10_000  # alerts held behind a snapshot being read; more: the client reconnects (4008)


class Alerts:
    """Alerts waiting in a socket's buffer as encoded payloads (``frame`` when shared with other sockets)."""

    __slots__ = ("frame", "texts")

    def __init__(self, texts: list[str], frame: str | None = None):
        self.texts = texts
        self.frame = frame


class Outbox:
    """A socket's bounded send buffer (``WS_SEND_BUFFER`` entries), oldest first, plus one market slot.

    Alerts that wait next to each other leave as ONE frame (docs/contract.md §10 `alerts`, oldest first):
    a socket that is behind catches up in fewer, larger frames instead of falling further behind. Market
    rows are state, not events: the newest rows replace (or merge into) those not sent yet, and they leave
    only when nothing else waits, so a client that is behind gets fewer market frames, never a backlog of
    them, and its alerts never wait behind a 600-row table.
    """

    def __init__(self, size: int):
        self.size = size
        self.entries: deque[str | Alerts] = deque()
        self.filled = asyncio.Event()
        self.market: list[dict] = []  # market messages not sent yet, consecutive, oldest first

    def put(self, entry: str | Alerts) -> bool:
        """False when the buffer is full (the client is not keeping up)."""
        if len(self.entries) >= self.size:
            return False
        self.entries.append(entry)
        self.filled.set()
        return True

    def put_market(self, events: list[dict]) -> None:
        """Market messages (the hub's, in order): sent as one frame of their rows, the newest per symbol."""
        self.market.extend(events)
        self.filled.set()

    async def wait(self) -> None:
        while not self.entries and not self.market:
            self.filled.clear()
            await self.filled.wait()

    def take(self) -> str:
        """The next frame: the oldest entry (merged with the alerts right behind it), else the market rows."""
        if not self.entries:
            events, self.market = self.market, []
            return hub.market_frame(events)
        entry = self.entries.popleft()
        if isinstance(entry, str):
            return entry
        if not self.entries or not isinstance(self.entries[0], Alerts):
            return entry.frame or hub.alerts_frame(entry.texts)
        texts = list(entry.texts)
        size = sum(map(len, texts))
        while self.entries and isinstance(self.entries[0], Alerts):
            more = self.entries[0].texts
            grown = size + sum(map(len, more))
            if len(texts) + len(more) > MAX_ALERTS_PER_FRAME or grown > MAX_MERGED_CHARACTERS:
                break
            texts.extend(self.entries.popleft().texts)
            size = grown
        return hub.alerts_frame(texts)

    def drop_market(self) -> None:
        self.market = []

    def __len__(self) -> int:
        return len(self.entries)


class AlertsConsumer(AsyncWebsocketConsumer):
    """The §10 protocol for one socket. Every outgoing frame goes through a bounded buffer (``outbox``)
    drained by one writer task; when the connection applies back-pressure (``gateway.flow`` under daphne,
    the server's own ``send`` elsewhere) and the buffer fills, the socket is closed with 4008 instead of
    buffering without bound. Broadcasts (alerts, market rows, feed status, resync) come from the process's
    :class:`gateway.hub.Hub` through the ``take_*`` methods; the per-user group comes on the socket's own
    channel."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # also when the server cancels the instance without a disconnect
            for task in getattr(self, "tasks", ()):
                task.cancel()

    async def dispatch(self, message: dict) -> None:
        # Channels' default runs close_old_connections in a thread before EVERY message; our events never
        # touch the database outside `in_thread` (a pool thread, its connection closed after), so skip the hop.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def websocket_connect(self, message: dict) -> None:
        self.closed = False
        self.closing_slow = False
        self.closer: asyncio.Task | None = None  # not in `tasks`: the cleanup it runs cancels those
        self.user_id: int | None = None
        self.slot_key: str | None = None  # the Redis set this socket holds a slot in, once taken
        self.session_tag: str | None = None
        self.subscribes = TokenBucket(settings.WS_SUBSCRIBE_BURST, settings.WS_SUBSCRIBES_PER_MINUTE)
        self.flow: flow.TransportFlow | None = None
        self.joined: set[str] = set()
        self.hub: hub.Hub | None = None
        self.tasks: list[asyncio.Task] = []
        self.outbox = Outbox(settings.WS_SEND_BUFFER)
        self.subscription = Subscription()
        self.snapshot_ids: set[str] = set()
        # While a snapshot is being read, live alerts wait here and follow it: sent before it, they would be
        # wiped off the screen by it (the client replaces its feed with a snapshot) if the query missed them.
        self.snapshots_reading = 0
        self.held: list[tuple[dict, str]] = []
        self.last_status: dict | None = None
        self.market_interval = settings.GATEWAY_TICK_SECONDS
        self.market_sent_at = 0.0
        self.market_pending: list[dict] = []  # market messages held back by the interval
        self.market_loading = False
        self.market_flush: asyncio.TimerHandle | None = None
        self.audience = AlertAudience()
        self.audience_loaded_at = 0.0
        self.audience_refresh: asyncio.Task | None = None
        self.joined_at = 0.0  # when this socket started receiving broadcasts

        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            if not settings.ALLOW_ANONYMOUS_DASHBOARD:
                await self._close(CLOSE_UNAUTHENTICATED)
                return
            client = self.scope.get("client") or (None, None)
            key, limit = _anonymous_slots_key(client[0]), settings.WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS
        else:
            self.user_id = user.pk
            self.session_tag = session_tag(getattr(self.scope.get("session"), "session_key", None))
            key, limit = _slots_key(self.user_id), settings.WS_MAX_SOCKETS_PER_USER
        try:
            taken = await _acquire(key, self.channel_name, limit)
        except Exception as error:
            logger.warning("ws: cannot count sockets in Redis (%s); closing", error)
            await self._close(CLOSE_SERVER_ERROR)
            return
        if not taken:
            await self._close(CLOSE_TOO_MANY_SOCKETS)
            return
        self.slot_key = key
        exporter.WEB_WEBSOCKET_CLIENTS.inc()  # while the socket holds its slot
        self.tasks.append(asyncio.create_task(self._heartbeat(limit)))
        take_flow = self.scope.get(flow.SCOPE_KEY)
        self.flow = take_flow() if take_flow is not None else None
        self.tasks.append(asyncio.create_task(self._write()))
        if self.user_id is not None:
            await self._join(user_group(self.user_id))
        self.hub = hub.hub(self.channel_layer)
        await self.hub.join(self)
        self.joined_at = time.monotonic()
        await self._load_audience()
        await self._send_status(await self._read_status())
        await self._send_snapshot()

    async def disconnect(self, code: int) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        if not hasattr(self, "tasks"):
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        if self.market_flush is not None:
            self.market_flush.cancel()
        if self.audience_refresh is not None:
            self.audience_refresh.cancel()
        if self.hub is not None:
            self.hub.leave(self)
        for group in list(self.joined):
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)
        self.joined.clear()
        if self.slot_key is not None:
            key, self.slot_key = self.slot_key, None
            exporter.WEB_WEBSOCKET_CLIENTS.dec()
            with contextlib.suppress(Exception):
                await feed.redis_client().zrem(key, self.channel_name)

    async def _close(self, code: int) -> None:
        if self.closed:
            return
        await self._cleanup()
        await self.close(code)

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.add(group)

    async def _heartbeat(self, limit: int) -> None:
        """Keep this socket's slot alive; the entry expires if this process dies."""
        while True:
            await asyncio.sleep(settings.WS_SOCKET_TTL_SECONDS / 3)
            try:
                if self.slot_key is not None:
                    await _acquire(self.slot_key, self.channel_name, limit)
            except Exception as error:
                logger.warning("ws: socket heartbeat failed: %s", error)

    # --- the bounded send buffer ------------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            await self.outbox.wait()
            if self.flow is not None:  # daphne: wait while the connection's write buffer is full
                await self.flow.wait_writable()
            await self.send(text_data=self.outbox.take())
            exporter.WEB_WEBSOCKET_MESSAGES.inc()

    def _put(self, entry: str | Alerts) -> None:
        if self.closed or self.closing_slow:
            return
        if not self.outbox.put(entry):
            self._close_slow()

    def _close_slow(self) -> None:
        logger.info("ws: closing a slow client (%d frames waiting)", len(self.outbox))
        exporter.WEB_WEBSOCKET_SEND_BUFFER_CLOSES.inc()
        self.closing_slow = True  # queue nothing more; the close runs as a task (hub calls are sync)
        self.closer = asyncio.get_running_loop().create_task(self._close(CLOSE_SLOW_CLIENT))

    async def _enqueue(self, text: str) -> None:
        self._put(text)

    # --- client → server ---------------------------------------------------------------------------------

    async def websocket_receive(self, message: dict) -> None:
        if self.closed:
            return
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            if len(data) > MAX_CLOSE_FRAME_BYTES:
                await self._close(CLOSE_TOO_BIG)
            else:
                await self._error("binary frames are not supported; send JSON text")
            return
        size = len(text) if len(text) * 4 <= MAX_FRAME_BYTES else len(text.encode())
        if size > MAX_CLOSE_FRAME_BYTES:
            await self._close(CLOSE_TOO_BIG)
            return
        if size > MAX_FRAME_BYTES:
            await self._error(f"frame too large ({size} bytes; at most {MAX_FRAME_BYTES})")
            return
        try:
            request = messaging.decode(text.encode())
        except ValueError:
            await self._error("malformed JSON: a message must be a JSON object")
            return
        kind = request.get("type")
        if kind == "ping":
            await self._enqueue('{"type":"pong"}')
        elif kind == "subscribe":
            try:
                subscription = Subscription.parse(request)
            except ValueError as error:
                await self._error(str(error))
                return
            wait = self.subscribes.take()
            if wait > 0:
                await self._error(
                    f"too many subscribes: at most {settings.WS_SUBSCRIBE_BURST} at once "
                    f"(WS_SUBSCRIBE_BURST) and {settings.WS_SUBSCRIBES_PER_MINUTE:g} a minute "
                    f"(WS_SUBSCRIBES_PER_MINUTE); this one was not applied, retry in {math.ceil(wait)} s"
                )
                return
            await self._subscribe(subscription)
        else:
            shown = kind if isinstance(kind, str) and len(kind) <= 40 else "…"
            await self._error(f"unknown message type {shown!r}; expected subscribe or ping")

    async def _error(self, text: str) -> None:
        await self._enqueue(_text({"type": "error", "error": text}))

    async def _subscribe(self, subscription: Subscription) -> None:
        self.subscription = subscription
        await self._load_audience()
        await self._send_snapshot()
        if self.hub is not None:
            self.hub.watch_market(self, subscription.market)
        if subscription.market:
            await self._send_full_market()
        else:
            self._cancel_market_flush()
            self.market_pending.clear()
            self.outbox.drop_market()

    # --- snapshot, status, market -------------------------------------------------------------------------

    async def _load_audience(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            self.audience = AlertAudience()  # nothing to read
        else:
            self.audience = await in_thread(AlertAudience.for_user, user)
        self.audience_loaded_at = time.monotonic()

    def _refresh_audience_if_due(self) -> None:
        """Re-read the settings in the background every WS_AUDIENCE_REFRESH_SECONDS while alerts arrive
        (changes made through the app arrive at once anyway: `settings_changed`)."""
        if time.monotonic() - self.audience_loaded_at <= settings.WS_AUDIENCE_REFRESH_SECONDS:
            return
        if self.audience_refresh is None or self.audience_refresh.done():
            self.audience_refresh = asyncio.get_running_loop().create_task(self._load_audience())

    async def _send_snapshot(self, not_before: float | None = None) -> None:
        """The newest visible alerts. Anonymous viewers all see the same ones: their sockets share a query
        started after `not_before` (by default, when this socket joined the broadcasts: anything committed
        earlier and published before that is in it), so a thousand connecting at once cost a few queries."""
        if self.closed:
            return
        sub = self.subscription

        def query() -> tuple[list[dict], str]:
            since = round(time.time() * 1000) - SNAPSHOT_HOURS * 3600 * 1000
            alerts = visible_alerts(self.audience, sub.symbols, sub.rules, since, SNAPSHOT_SIZE)
            return alerts, _text({"type": "snapshot", "alerts": alerts})

        self.snapshots_reading += 1
        try:
            if self.audience.anonymous and self.hub is not None:
                key = (sub.symbols, sub.rules)
                alerts, frame = await self.hub.shared(
                    key, not_before or self.joined_at, lambda: in_thread(query)
                )
            else:
                alerts, frame = await in_thread(query)
        finally:
            self.snapshots_reading -= 1
        self.snapshot_ids = {alert["id"] for alert in alerts}
        await self._enqueue(frame)
        if not self.snapshots_reading and self.held:
            held, self.held = self.held, []
            texts = [text for alert, text in held if alert.get("id") not in self.snapshot_ids]
            if texts:
                self._put(Alerts(texts))

    async def _read_status(self) -> dict:
        try:
            return await feed.read_status()
        except Exception as error:
            logger.warning("ws: cannot read the feed status: %s", error)
            return dict(feed.UNKNOWN_STATUS)

    async def _send_status(self, status: dict, frame: str | None = None) -> None:
        self._put_status(status, frame)

    def _put_status(self, status: dict, frame: str | None = None) -> None:
        if status == self.last_status:
            return
        self.last_status = status
        self._put(frame or _text({"type": "status", "feed": status}))

    async def _send_full_market(self, not_before: float = 0.0) -> None:
        """Every row, then (no sooner than a tick later) the rows that changed meanwhile."""
        self._cancel_market_flush()
        self.market_pending.clear()
        self.outbox.drop_market()  # older than the table about to be read
        self.market_loading = True  # rows arriving while the table is read wait behind it
        try:
            frame = await self.hub.full_market(not_before) if self.hub is not None else None
        except Exception as error:
            logger.warning("ws: cannot read the market table: %s", error)
            frame = None
        finally:
            self.market_loading = False
        self.market_sent_at = time.monotonic()
        self._put(frame or '{"type":"market","rows":[]}')
        if self.market_pending and self.market_flush is None:
            self.market_flush = self._later(self.market_interval, self._flush_market)

    def _cancel_market_flush(self) -> None:
        if self.market_flush is not None:
            self.market_flush.cancel()
            self.market_flush = None

    async def _flush_market(self) -> None:
        self.market_flush = None
        if not self.market_pending or self.closed or not self.subscription.market:
            return
        events, self.market_pending = self.market_pending, []
        self.market_sent_at = time.monotonic()
        self._put_market(events)

    def _put_market(self, events: list[dict]) -> None:
        if not self.closed and not self.closing_slow:
            self.outbox.put_market(events)

    def _later(self, delay: float, coroutine: Callable) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        self.tasks = [task for task in self.tasks if not task.done()]
        return loop.call_later(delay, lambda: self.tasks.append(loop.create_task(coroutine())))

    # --- broadcasts, from the process's hub (synchronous: one hub turn serves every socket) --------------

    def take_alerts(self, batch: hub.AlertBatch) -> None:
        """The alerts of a batch this socket subscribed to and may see, oldest first."""
        if self.closed:
            return
        self._refresh_audience_if_due()
        matches, visible = self.subscription.matches, self.audience.is_visible
        chosen = [
            n
            for n, alert in enumerate(batch.alerts)
            if matches(alert) and alert.get("id") not in self.snapshot_ids and visible(alert)
        ]
        if self.snapshots_reading:
            self.held.extend((batch.alerts[n], batch.texts[n]) for n in chosen)
            if len(self.held) > MAX_HELD_ALERTS:
                self._close_slow()
            return
        if len(chosen) == len(batch.alerts):
            self._put(Alerts(batch.texts, batch.frame()))
        elif chosen:
            self._put(Alerts([batch.texts[n] for n in chosen]))

    def take_market(self, event: dict) -> None:
        if self.closed or not self.subscription.market:
            return
        now = time.monotonic()
        if (
            not self.market_loading
            and not self.market_pending
            and now - self.market_sent_at >= self.market_interval
        ):
            self.market_sent_at = now
            self._put(event.get("frame") or _text({"type": "market", "rows": event["rows"]}))
            return
        # Too soon after the last frame (e.g. the full table just went out): merge, send when due.
        self.market_pending.append(event)
        if self.market_flush is None and not self.market_loading:
            delay = max(0.0, self.market_interval - (now - self.market_sent_at))
            self.market_flush = self._later(delay, self._flush_market)

    def take_status(self, event: dict) -> None:
        if not self.closed:
            self._put_status(event["feed"], event.get("frame"))

    def take_resync(self) -> None:
        if not self.closed:
            self.tasks = [task for task in self.tasks if not task.done()]
            self.tasks.append(asyncio.get_running_loop().create_task(self._resync(time.monotonic())))

    async def _resync(self, since: float) -> None:
        """The bridge lost NATS or Redis for a while: whatever is on screen may be stale."""
        jitter = settings.WS_RESYNC_JITTER_SECONDS
        if jitter > 0:  # spread the snapshot queries of a thousand sockets
            await asyncio.sleep(random.uniform(0, jitter))
        if self.closed:
            return
        await self._load_audience()
        self.last_status = None
        await self._send_status(await self._read_status())
        await self._send_snapshot(not_before=since)
        if self.subscription.market:
            await self._send_full_market(not_before=since)

    # --- the user's own group (this socket's channel) ------------------------------------------------------

    async def session_ended(self, event: dict) -> None:
        """The user signed out (this session, or all when `session` is None) or lost their account."""
        if event.get("session") is None or event["session"] == self.session_tag:
            await self._close(CLOSE_SESSION_ENDED)

    async def settings_changed(self, event: dict) -> None:
        if self.closed:
            return
        await self._load_audience()
        await self._send_snapshot()
