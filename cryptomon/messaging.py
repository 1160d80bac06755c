"""The NATS mechanics every worker shares: connect, streams, consumers, shards, publishing (docs/contract.md §1, §5).

The names it uses (subjects, streams) and the messages themselves are the contract: `cryptomon.contract`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError

from cryptomon.contract.messages import decode_object
from cryptomon.contract.subjects import DUPLICATE_WINDOW_SECONDS, STREAM_MAX_AGE_SECONDS, STREAMS

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
decode = decode_object  # a JSON object payload; ValueError names the problem


def encode(payload: dict | msgspec.Struct) -> bytes:
    return _encoder.encode(payload)


@dataclass(frozen=True)
class Shard:
    """Worker k of N owns the symbols with crc32(UTF-8 symbol) mod N = k (docs/contract.md §1)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like k/N, e.g. 0/2 (got {text!r})") from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard {text}: k must be in 0..N-1 and N at least 1")
        return cls(index, count)

    def owns(self, symbol: str) -> bool:
        return self.count == 1 or zlib.crc32(symbol.encode()) % self.count == self.index

    def consumer_name(self, kind: str) -> str:
        return f"{kind}-p{self.index}of{self.count}"

    def filter_subjects(self, root: str, symbols: Iterable[str]) -> list[str]:
        """Subjects this shard consumes under `root` (e.g. `candles.1m`); everything when unsharded."""
        if self.count == 1:
            return [f"{root}.>"]
        return sorted(f"{root}.{symbol}" for symbol in symbols if self.owns(symbol))


def stream_configs(max_bytes: int | None = None, replicas: int | None = None) -> list[StreamConfig]:
    """The streams as docs/contract.md §5 fixes them; size and replicas are the deployment's settings."""
    if max_bytes is None or replicas is None:
        from django.conf import settings

        max_bytes = settings.NATS_STREAM_MAX_BYTES if max_bytes is None else max_bytes
        replicas = settings.NATS_STREAM_REPLICAS if replicas is None else replicas
    return [
        StreamConfig(
            name=name,
            subjects=[subject],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_bytes=max_bytes,
            max_age=STREAM_MAX_AGE_SECONDS,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            num_replicas=replicas,
        )
        for name, subject in STREAMS.items()
    ]


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    return (
        current.subjects != wanted.subjects
        or current.storage != wanted.storage
        or current.discard != wanted.discard
        or current.max_bytes != wanted.max_bytes
        or round(current.max_age or 0) != round(wanted.max_age or 0)
        or round(current.duplicate_window or 0) != round(wanted.duplicate_window or 0)
        or (current.num_replicas or 1) != (wanted.num_replicas or 1)
    )


async def ensure_streams(
    js: JetStreamContext, max_bytes: int | None = None, replicas: int | None = None
) -> list[str]:
    """Create the three streams, or update them back to docs/contract.md §5; returns what was created or corrected.

    A changed replica count is applied in place: JetStream copies the stream to the new peers (or drops
    them) while it keeps serving, so growing a single server into a cluster keeps the hour it holds."""
    changed: list[str] = []
    for wanted in stream_configs(max_bytes, replicas):
        try:
            info = await js.stream_info(wanted.name)
        except NotFoundError:
            await js.add_stream(wanted)
            changed.append(f"created {wanted.name}")
            continue
        if _differs(info.config, wanted):
            if info.config.storage != wanted.storage:
                # Storage cannot be changed in place: the stream is recreated (it holds at most an hour).
                await js.delete_stream(wanted.name)
                await js.add_stream(wanted)
            else:
                await js.update_stream(wanted)
            changed.append(f"corrected {wanted.name}")
    for change in changed:
        logger.info("JetStream stream %s", change)
    return changed


def server_urls(url: str) -> list[str]:
    """The servers of a NATS_URL: one URL, or a cluster's as a comma-separated list."""
    return [part.strip() for part in url.split(",") if part.strip()]


def _pool(url: str) -> tuple[list[str], dict]:
    """The server list for nats-py, and the credentials as connect options when every URL has the same.

    nats-py also reconnects to servers it learns from the cluster (`connect_urls` in the server's INFO),
    which come without credentials: given as options, the user and password (or token) apply to those
    too, where credentials left in the URLs would apply only to the servers listed."""
    parts = [urlsplit(server) for server in server_urls(url)]
    auth = {(unquote(p.username or ""), None if p.password is None else unquote(p.password)) for p in parts}
    if len(auth) != 1 or auth == {("", None)}:
        return [p.geturl() for p in parts], {}
    ((user, password),) = auth
    bare = [p._replace(netloc=p.netloc.rsplit("@", 1)[-1]).geturl() for p in parts]
    if password is None:
        return bare, {"token": user}
    return bare, {"user": user, "password": password}


async def connect(name: str, url: str | None = None, **options) -> NATS:
    """Connect to NATS, reconnecting forever: a worker never gives up on the bus.

    `url` may list a cluster's servers, comma-separated: the client connects to any of them and, when its
    server goes away, reconnects to another (docs/operations.md "Scale")."""
    if url is None:
        from django.conf import settings

        url = settings.NATS_URL
        options.setdefault("reconnect_time_wait", settings.NATS_RECONNECT_WAIT_SECONDS)

    async def error_cb(error: Exception) -> None:
        logger.warning("NATS (%s): %s", name, error)

    async def disconnected_cb() -> None:
        logger.warning("NATS (%s): disconnected", name)

    async def reconnected_cb() -> None:
        logger.info("NATS (%s): reconnected", name)

    options.setdefault("error_cb", error_cb)
    options.setdefault("disconnected_cb", disconnected_cb)
    options.setdefault("reconnected_cb", reconnected_cb)
    options.setdefault("max_reconnect_attempts", -1)
    options.setdefault("allow_reconnect", True)
    options.setdefault("connect_timeout", 5)
    servers, auth = _pool(url)
    for key, value in auth.items():
        options.setdefault(key, value)
    return await nats.connect(servers=servers, name=f"cryptomon-{name}", **options)


async def connect_jetstream(name: str, url: str | None = None, **options) -> tuple[NATS, JetStreamContext]:
    """Connect and make sure the streams exist, as every JetStream user must first (docs/contract.md §5)."""
    nc = await connect(name, url, **options)
    js = nc.jetstream()
    await ensure_streams(js)
    return nc, js


class LiveFrames:
    """Core-NATS publishes of live frames (`candles.live`, `metrics.live`): best effort by design.

    While the client is not connected a frame is dropped, not buffered: nats-py's pending buffer is shared
    with the JetStream publishes of final candles and bars (a long outage would fill it with previews and
    then refuse those), and previews replayed after a reconnect are stale anyway. Every drop is counted
    (`dropped_total`, in the worker's status line) and each outage is logged once when the first frame is
    dropped and once when frames flow again, with how many were lost."""

    def __init__(self, nc: NATS, name: str):
        self.nc = nc
        self.name = name
        self.published_total = 0
        self.dropped_total = 0
        self._outage_dropped: int | None = None  # frames dropped in the current outage, None = none

    async def publish(self, subject: str, payload: bytes) -> bool:
        if self.nc.is_connected:
            try:
                await self.nc.publish(subject, payload)
            except Exception as error:  # e.g. the connection dropped between the check and the write
                self._drop(error)
                return False
            self.published_total += 1
            if self._outage_dropped is not None:
                logger.info(
                    "%s: live frames flow again; %d dropped while NATS was away",
                    self.name,
                    self._outage_dropped,
                )
                self._outage_dropped = None
            return True
        self._drop("not connected")
        return False

    def _drop(self, why: object) -> None:
        self.dropped_total += 1
        if self._outage_dropped is None:
            logger.warning("%s: dropping live frames until NATS is back (%s)", self.name, why)
            self._outage_dropped = 0
        self._outage_dropped += 1


AVAILABLE_WAIT_SECONDS = 0.002
UNAVAILABLE_PAUSE_SECONDS = 0.5


async def fetch_available(subscription, batch: int, poll_seconds: float) -> list:
    """What a pull consumer has, as soon as it has something: a long poll for the first message, then up
    to `batch - 1` more that are already there.

    One fetch of a whole batch would hold the first message until the batch is full or the poll expires.
    The second fetch expires after AVAILABLE_WAIT_SECONDS: nats-py asks for no_wait together with the
    expiry, which the server takes as a lingering pull, so its timeout is how long every batch waits once
    the stored messages have come (it was 20 ms per batch, several batches per minute close).

    A server that shuts down (or whose JetStream is not up yet) answers a waiting pull with status 503,
    which nats-py raises as ServiceUnavailableError: that is an outage like any other, so it means "nothing
    now" (after a short pause, not to spin) and the caller polls again once the client has reconnected.
    Raised, it used to end run_alerts and restart run_metrics at every NATS restart."""
    try:
        messages = await subscription.fetch(1, timeout=poll_seconds)
    except (TimeoutError, NatsTimeoutError):
        return []
    except ServiceUnavailableError:
        logger.info("JetStream unavailable (503) while waiting for messages; polling again")
        await asyncio.sleep(min(poll_seconds, UNAVAILABLE_PAUSE_SECONDS))
        return []
    if batch > 1:
        with contextlib.suppress(TimeoutError, NatsTimeoutError, ServiceUnavailableError):
            messages += await subscription.fetch(batch - 1, timeout=AVAILABLE_WAIT_SECONDS)
    return messages


async def publish_pipelined(js: JetStreamContext, messages: Iterable[tuple[str, bytes, str]]) -> list:
    """Send `(subject, payload, Nats-Msg-Id)` messages to JetStream without waiting: their ack futures.

    No `wait_stall`: with one, nats-py acquires its pending-ack semaphore through a new task, i.e. a loop
    turn and a socket write per message (~0.1 ms each). Callers send at most a batch and wait for its acks
    (`ack_errors`) before the next, far below the 4,000 pending acks nats-py allows. Cancelled half-way, it
    gives up on what it sent (see `ack_errors`)."""
    futures: list = []
    try:
        for subject, payload, msg_id in messages:
            futures.append(await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}))
    except asyncio.CancelledError:
        for future in futures:
            future.cancel()
        raise
    return futures


class NotSentAfterFailure(RuntimeError):
    """A message was not sent because an earlier one on its subject was not stored."""


class OrderedPublisher:
    """JetStream publishes that keep each subject's order through a failure.

    Pipelined publishes (`publish_pipelined`) can leave a hole in a subject: when a clustered stream's
    leader dies, the messages in flight to it are lost, and the ones sent once a new leader is elected are
    stored. A consumer then receives the subject's later messages before the lost ones are sent again;
    the alert engine, which decides a symbol's bars in order, would skip them (docs/operations.md "Scale").
    Here a message goes out only once the one before it on its subject is stored, and when one is not
    stored, none after it on that subject is sent: the caller's retry sends them again in order, and
    nothing later is in the stream before them.

    Different subjects still go out together: a message whose subject has nothing in flight is sent at
    once (`publish_async`, no task: a minute's burst of one bar per symbol costs what pipelining did);
    only one that must wait for its subject's previous message gets a task. Each message's ack is given
    up on after `timeout` (its future is cancelled, freeing nats-py's pending-ack slot). Give up on a
    publisher after a failure and start a new one."""

    def __init__(self, js: JetStreamContext, timeout: float):
        self.js = js
        self.timeout = timeout
        self._tails: dict[str, asyncio.Future] = {}

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> asyncio.Future:
        """The future of the message's PubAck (or of why it was not stored)."""
        previous = self._tails.get(subject)
        if previous is None or (
            previous.done() and not previous.cancelled() and previous.exception() is None
        ):
            future = await self._send(subject, payload, msg_id)
            timer = asyncio.get_running_loop().call_later(self.timeout, future.cancel)
            future.add_done_callback(lambda _: timer.cancel())
        else:
            future = asyncio.ensure_future(self._send_after(previous, subject, payload, msg_id))
        self._tails[subject] = future
        future.add_done_callback(lambda done: self._forget(subject, done))
        return future

    async def _send(self, subject: str, payload: bytes, msg_id: str) -> asyncio.Future:
        return await self.js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})

    async def _send_after(self, previous: asyncio.Future, subject: str, payload: bytes, msg_id: str):
        await asyncio.wait([previous])
        if previous.cancelled() or previous.exception() is not None:
            raise NotSentAfterFailure(f"not sent: an earlier message on {subject} was not stored")
        future = await self._send(subject, payload, msg_id)
        return await asyncio.wait_for(future, self.timeout)  # cancels the future when it expires

    def _forget(self, subject: str, future: asyncio.Future) -> None:
        """A subject's last message, once stored, holds nothing up any more; one that was not stays, so
        that nothing later on its subject is sent by this publisher."""
        failed = future.cancelled() or future.exception() is not None  # (retrieves the exception)
        if not failed and self._tails.get(subject) is future:
            del self._tails[subject]


async def ack_errors(futures: list, timeout: float | None) -> list[BaseException | None]:
    """Wait once for a batch's acks; per message None (stored) or why not. One wait for the batch (not a
    wait_for per future, i.e. a task per message); late ones are cancelled, freeing nats-py's count.
    No `timeout` for an `OrderedPublisher`'s tasks, which time out message by message."""
    if not futures:
        return []
    try:
        _, late = await asyncio.wait(futures, timeout=timeout)
    except asyncio.CancelledError:
        # Nobody waits for them any more: nats-py never fails a publish whose ack is lost (e.g. with a
        # server restart), so each would hold one of its pending-ack slots for good and, once they are
        # all taken, block every later publish.
        for future in futures:
            future.cancel()
        raise
    for future in late:
        future.cancel()
    return [
        TimeoutError(f"no JetStream ack within {timeout} s")
        if future in late or future.cancelled()
        else future.exception()
        for future in futures
    ]


async def ensure_consumer(
    js: JetStreamContext, stream: str, durable: str, filter_subjects: list[str], **config
) -> None:
    """Create or update a durable pull consumer, e.g. when a shard's universe changes.

    An existing consumer keeps where it delivers from (JetStream refuses to change that on update)."""
    if "deliver_policy" not in config:
        try:
            current = (await js.consumer_info(stream, durable)).config
        except NotFoundError:
            current = None
        if current is not None:
            config.update(deliver_policy=current.deliver_policy, opt_start_seq=current.opt_start_seq)
    consumer = ConsumerConfig(durable_name=durable, **config)
    if len(filter_subjects) == 1:
        consumer.filter_subject = filter_subjects[0]
    else:
        consumer.filter_subjects = filter_subjects
    await js.add_consumer(stream, consumer)


async def resume_consumer(
    js: JetStreamContext, stream: str, durable: str, filter_subjects: list[str], **config
) -> int:
    """Create or update a worker's durable consumer so that it delivers, first and in stream order,
    what its previous run received but never acknowledged.

    JetStream redelivers an unacknowledged message only after its AckWait; a worker restarted after a
    crash would meanwhile get newer messages first and process a symbol's bars out of order. So when
    the consumer holds unacknowledged deliveries, it is recreated from its ack floor. Messages already
    acknowledged above the floor come again: every worker's effects are idempotent. Returns the stream
    sequence delivery resumes from (0 when the consumer was merely created or updated)."""
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    if info is None or not info.num_ack_pending:
        await ensure_consumer(js, stream, durable, filter_subjects, **config)
        return 0
    start = info.ack_floor.stream_seq + 1
    await js.delete_consumer(stream, durable)
    config.update(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    await ensure_consumer(js, stream, durable, filter_subjects, **config)
    logger.info(
        "%s: %d unacknowledged messages redelivered from stream sequence %d",
        durable,
        info.num_ack_pending,
        start,
    )
    return start


async def last_payload(js: JetStreamContext, stream: str, subject: str) -> dict | None:
    """The newest message on a subject (docs/contract.md §5 "last-by-subject"), or None."""
    try:
        message = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    return decode(message.data)
