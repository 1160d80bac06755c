"""Operator watchdog: detects the conditions listed in docs/notifications.md ("What raises them") and raises or resolves their operator alerts.

Celery beat runs `check_operator_conditions` (notifications/tasks.py) every OPERATOR_CHECK_SECONDS; it calls
`check()`.
Each condition has a function returning its current state as a `Condition` (tests call them directly):

- `feed_stale`: a collector heartbeat (`collector.status`, core NATS, every 5 s) shows its next candle
  overdue, or its lag, by more than OPERATOR_FEED_STALE_SECONDS, no heartbeat was heard for that long (per
  shard, memory in Redis, since a task cannot hold a subscription), or the newest `candles_1m` row closed
  more than that long ago while symbols are TRADING and no candle is on its way to storage (the storage
  side of the feed; a backlog is `consumer_lag`'s). Venue durations are turned into wall seconds with the heartbeat's `clock_rate` first: the
  limit is an operator's patience, and an accelerated emulator's minutes are not minutes of it.
- `consumer_lag:<STREAM>/<consumer>`: the oldest message a durable consumer has not acknowledged is older
  than OPERATOR_CONSUMER_LAG_SECONDS.
- `rest_banned` / `rest_region_blocked`: the heartbeat's `rest` field (HTTP 418 / 451 from Binance).
- `gaps_forced`: a minute missing in `candles_1m` between two stored candles of a symbol, within the last
  OPERATOR_GAP_LOOKBACK_MINUTES, old enough that the metrics engine gave up waiting for it
  (METRICS_GAP_TIMEOUT_SECONDS after the next candle arrived).

Raising and resolving go through `operator` (de-duplicated in Redis), so checking often sends nothing new.
A condition that cannot be observed (NATS unreachable, no heartbeat to read the REST state from) keeps the
state its alert had. Messages name what is wrong (shard, consumer, symbol, time), never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connections, router
from django.db.models import Max
from nats.js.errors import NotFoundError

from cryptomon import messaging
from cryptomon.contract import subjects
from cryptomon.contract.messages import decode_heartbeat
from cryptomon.contract.times import MINUTE_MS
from notifications import operator
from notifications.services import redis_client

logger = logging.getLogger(__name__)

FEED_STALE = "feed_stale"
REST_BANNED = "rest_banned"
REST_REGION_BLOCKED = "rest_region_blocked"
GAPS_FORCED = "gaps_forced"
CONSUMER_LAG_PREFIX = "consumer_lag:"
HEARD_KEY = "cryptomon:watchdog:heartbeats"  # hash: collector shard "k/N" -> wall ms last heard
SILENT_KEY = "cryptomon:watchdog:silent_since"  # wall ms since which no shard was ever heard
NO_CANDLE_KEY = "cryptomon:watchdog:no_candle_since"  # hash: shard -> wall ms since it publishes nothing
MAX_NAMED = 10  # symbols or shards named in one message


@dataclass(frozen=True)
class Condition:
    """One operator alert's current state: `problem` is the message when wrong, None when fine."""

    key: str
    problem: str | None = None
    known: bool = True  # False: not observable now, the alert keeps its state


@dataclass(frozen=True)
class ConsumerLag:
    """The oldest unacknowledged message of one durable consumer (age 0 when nothing is pending)."""

    stream: str
    consumer: str
    age_seconds: float
    pending: int = 0
    subject: str | None = None
    seq: int | None = None
    stored_at: datetime | None = None


@dataclass
class Observation:
    """What the bus showed during one check."""

    heartbeats: dict[str, dict] = field(default_factory=dict)  # shard -> latest heartbeat
    lags: list[ConsumerLag] | None = None  # None: NATS unreachable
    nats_error: str | None = None


# --- observing the bus ----------------------------------------------------------------------------------


async def read_heartbeats(nc, wait_seconds: float) -> dict[str, dict]:
    """The collector shards' heartbeats heard within `wait_seconds` (returns early once every shard spoke)."""
    beats: dict[str, dict] = {}
    everyone = asyncio.Event()

    async def on_message(msg) -> None:
        try:
            beat = decode_heartbeat(msg.data)
        except ValueError:
            return
        shard = beat.shard
        beats[shard] = beat.as_dict()
        count = shard.partition("/")[2]
        if count.isdigit() and all(f"{k}/{count}" in beats for k in range(int(count))):
            everyone.set()

    subscription = await nc.subscribe(subjects.COLLECTOR_STATUS, cb=on_message)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), wait_seconds)
    finally:
        await subscription.unsubscribe()
    return beats


async def consumer_lags(js, threshold_seconds: float | None = None) -> list[ConsumerLag]:
    """Every durable consumer of the three streams with the age of its oldest unacknowledged message."""
    if threshold_seconds is None:
        threshold_seconds = settings.OPERATOR_CONSUMER_LAG_SECONDS
    lags: list[ConsumerLag] = []
    for stream, root in subjects.STREAMS.items():
        try:
            infos = await js.consumers_info(stream)
            while infos and len(infos) % 256 == 0:  # the API pages at 256
                page = await js.consumers_info(stream, offset=len(infos))
                if not page:
                    break
                infos.extend(page)
        except NotFoundError:
            continue
        for info in infos:
            if info.config.durable_name:
                lags.append(await _oldest_unacked(js, stream, root, info, threshold_seconds))
    return lags


async def _oldest_unacked(js, stream: str, root: str, info, threshold_seconds: float) -> ConsumerLag:
    name = info.config.durable_name
    pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
    if not pending:
        return ConsumerLag(stream, name, 0.0)
    start = info.ack_floor.stream_seq + 1
    message = await _next_message(js, stream, start, root)
    filters = info.config.filter_subjects or [info.config.filter_subject or root]
    foreign = message is not None and not any(subject_matches(p, message.subject) for p in filters)
    if foreign and _age(message) > threshold_seconds:
        # The stream's next message belongs to another shard (and looks late): find this consumer's own.
        found = [await _next_message(js, stream, start, pattern) for pattern in filters]
        message = min((m for m in found if m is not None), key=lambda m: m.seq, default=None)
    if message is None:
        return ConsumerLag(stream, name, 0.0, pending)
    return ConsumerLag(stream, name, _age(message), pending, message.subject, message.seq, message.time)


async def _next_message(js, stream: str, seq: int, subject: str):
    try:
        return await js.get_msg(stream, seq=seq, subject=subject, next=True)
    except NotFoundError:
        return None


def _age(message) -> float:
    return max(0.0, time.time() - message.time.timestamp()) if message.time else 0.0


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


async def observe(wait_seconds: float | None = None) -> Observation:
    """Heartbeats and consumer lags from NATS; an unreachable NATS is recorded, not raised."""
    if wait_seconds is None:
        wait_seconds = settings.OPERATOR_HEARTBEAT_WAIT_SECONDS
    observation = Observation()
    try:
        nc = await asyncio.wait_for(
            messaging.connect("watchdog", allow_reconnect=False, max_reconnect_attempts=0), 10
        )
    except Exception as error:  # NATS down is what the feed check reports (no heartbeat)
        observation.nats_error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        logger.warning("operator watchdog: NATS unreachable (%s)", observation.nats_error)
        return observation
    try:
        observation.heartbeats = await read_heartbeats(nc, wait_seconds)
        observation.lags = await consumer_lags(nc.jetstream(timeout=5))
    except Exception as error:
        observation.nats_error = f"{type(error).__name__}: {error}"
        logger.warning("operator watchdog: reading NATS failed (%s)", observation.nats_error)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return observation


# --- the conditions -------------------------------------------------------------------------------------


def feed_stale(
    heartbeats: dict[str, dict], nats_error: str | None = None, lags: list[ConsumerLag] | None = None
) -> Condition:
    """The feed is stale: a shard's next candle or its lag is overdue, a shard (or every shard) went silent,
    or storage is behind with no candle on its way to it. Judged on the clock the feed runs on (see
    `_wall_seconds`)."""
    limit_ms = settings.OPERATOR_FEED_STALE_SECONDS * 1000
    wall = int(time.time() * 1000)
    problems = _published_problems(heartbeats, wall)
    heard = _remember_heartbeats(heartbeats, wall)
    silent = [
        f"{shard} for {(wall - at) / 1000:.0f} s"
        for shard, at in sorted(heard.items())
        if shard not in heartbeats and wall - at > limit_ms
    ]
    reason = f" (NATS unreachable: {nats_error})" if nats_error else ""
    if silent:
        problems.append(
            "no heartbeat on collector.status from shard " + ", ".join(silent[:MAX_NAMED]) + reason
        )
    client = redis_client()
    if heard:
        client.delete(SILENT_KEY)
    else:
        client.set(SILENT_KEY, wall, nx=True)
        since = int(client.get(SILENT_KEY) or wall)
        if wall - since > limit_ms:
            problems.append(
                f"no collector heartbeat on collector.status for {(wall - since) / 1000:.0f} s{reason}"
            )
    if not _candles_in_flight(heartbeats, lags):
        stored = stored_feed_problem(_reference_ms(heartbeats, wall), _feed_rate(heartbeats))
        if stored:
            problems.append(stored)
    return Condition(FEED_STALE, "; ".join(problems) or None)


def _candles_in_flight(heartbeats: dict[str, dict], lags: list[ConsumerLag] | None) -> bool:
    """Candles are on their way to storage: a collector buffers or backfills them, or they wait in CANDLES.

    Storage behind then is a backlog being worked through (after a start, an outage, a slow worker), which
    `consumer_lag` reports if it does not drain; the feed itself is not stale. A stuck collector shows
    in its heartbeat (next candle overdue) or its silence."""
    if any(beat.get("buffered") or beat.get("backfilling") for beat in heartbeats.values()):
        return True
    return any(lag.stream == "CANDLES" and lag.pending for lag in lags or ())


def _clock_rate(beat: dict) -> float:
    rate = beat.get("clock_rate")
    return float(rate) if isinstance(rate, int | float) and rate > 0 else 1.0


def _feed_rate(heartbeats: dict[str, dict]) -> float:
    """The venue clock's rate the collectors report (1 against Binance; the emulator's speed in a demo)."""
    return max((_clock_rate(beat) for beat in heartbeats.values()), default=1.0)


def _wall_seconds(venue_ms: float, rate: float) -> float:
    """A venue duration as wall seconds, the unit of OPERATOR_FEED_STALE_SECONDS.

    At emulator speed 10 a venue minute passes in 6 s: compared as they are, venue durations would make a
    12 s hiccup during warm-up look like two minutes of silence."""
    return venue_ms / rate / 1000


def _published_problems(heartbeats: dict[str, dict], wall: int) -> list[str]:
    """Each shard's newest published candle and lag against the limit, in wall seconds.

    The collector's own `stale` flag counts three venue minutes, 18 s at speed 10, so it is not used when the
    heartbeat carries the times to judge by. During a backfill (warm-up, a repair) the newest candle is an
    old one on purpose: a backfill that does not move shows as REST trouble, lag, or storage not catching
    up. A shard that has published nothing since it started is stale only once that has lasted the limit
    (`NO_CANDLE_KEY` remembers since when)."""
    limit = settings.OPERATOR_FEED_STALE_SECONDS
    client = redis_client()
    problems = []
    for shard, beat in sorted(heartbeats.items()):
        rate = _clock_rate(beat)
        last_open, venue = beat.get("last_open_time"), beat.get("venue_time")
        live = f"{beat.get('symbols_live')} of {beat.get('symbols')} symbols live"
        if isinstance(last_open, int) and isinstance(venue, int):
            client.hdel(NO_CANDLE_KEY, shard)
            # The minute after the newest one closes two minutes after that one opened: due then.
            overdue = _wall_seconds(venue - last_open - 2 * MINUTE_MS, rate)
            # While backfilling, the newest candle published is a historical one: not a measure of the feed.
            if overdue > limit and not beat.get("backfilling"):
                problems.append(
                    f"collector shard {shard}'s next candle is {overdue:.0f} s overdue (newest candle "
                    f"{_utc(last_open)}, {live})"
                )
        elif last_open is None and beat.get("stale") is True:
            client.hsetnx(NO_CANDLE_KEY, shard, wall)
            waited = (wall - int(client.hget(NO_CANDLE_KEY, shard) or wall)) / 1000
            if waited > limit:
                problems.append(f"collector shard {shard} published no candle in {waited:.0f} s ({live})")
        elif beat.get("stale") is True:  # a heartbeat without venue_time: its own verdict is all there is
            problems.append(
                f"collector shard {shard} reports the feed stale (newest candle {_utc(last_open)}, {live})"
            )
        lag = beat.get("lag_ms")
        if isinstance(lag, int | float) and _wall_seconds(lag, rate) > limit:
            problems.append(
                f"collector shard {shard} receives candles {_wall_seconds(lag, rate):.0f} s behind the venue"
            )
    return problems


def _remember_heartbeats(heartbeats: dict[str, dict], wall: int) -> dict[str, int]:
    """Record when each shard was heard; forget shards of an older layout (the collector was re-sharded)."""
    client = redis_client()
    if heartbeats:
        client.hset(HEARD_KEY, mapping=dict.fromkeys(heartbeats, wall))
    heard = {key.decode(): int(value) for key, value in client.hgetall(HEARD_KEY).items()}
    layouts = {shard.partition("/")[2] for shard in heartbeats}
    old = [shard for shard in heard if layouts and shard.partition("/")[2] not in layouts]
    if old:
        client.hdel(HEARD_KEY, *old)
        for shard in old:
            del heard[shard]
    return heard


def _reference_ms(heartbeats: dict[str, dict], wall: int) -> int:
    """Venue time when a collector told it (an accelerated emulator runs ahead), else the wall clock."""
    times = [beat["venue_time"] for beat in heartbeats.values() if isinstance(beat.get("venue_time"), int)]
    return max(times) if times else wall


def stored_feed_problem(now_ms: int, rate: float = 1.0) -> str | None:
    """The newest `candles_1m` row closed too long ago while symbols are TRADING (None when fine or nothing
    stored). `now_ms` is venue time, `rate` its clock's rate (the limit is in wall seconds)."""
    from collector.models import Symbol
    from metrics.models import StoredCandle

    trading = Symbol.objects.filter(trading=True).count()
    if not trading:
        return None
    newest = StoredCandle.objects.aggregate(newest=Max("time"))["newest"]
    if newest is None:
        return None
    newest_ms = int(newest.timestamp() * 1000)
    behind = now_ms - newest_ms - MINUTE_MS  # how long ago that minute closed, in venue time
    seconds = _wall_seconds(behind, rate)
    if seconds <= settings.OPERATOR_FEED_STALE_SECONDS:
        return None
    venue = f" ({behind / 1000:.0f} s of venue time at speed {rate:g})" if rate != 1 else ""
    return (
        f"newest candle in candles_1m opened at {_utc(newest_ms)}, closed {seconds:.0f} s ago{venue}, "
        f"while {trading} symbols are TRADING"
    )


def consumer_lag(lags: list[ConsumerLag] | None) -> list[Condition]:
    """One condition per durable consumer; alerts of consumers that no longer exist are resolved."""
    if lags is None:
        return []
    limit = settings.OPERATOR_CONSUMER_LAG_SECONDS
    conditions = []
    for lag in lags:
        problem = None
        if lag.age_seconds > limit:
            problem = (
                f"consumer {lag.consumer} on {lag.stream} is {lag.age_seconds:.0f} s behind: oldest "
                f"unacknowledged message {lag.subject} (stream seq {lag.seq}) stored "
                f"{_utc(lag.stored_at)}, {lag.pending} pending"
            )
        conditions.append(Condition(f"{CONSUMER_LAG_PREFIX}{lag.stream}/{lag.consumer}", problem))
    present = {condition.key for condition in conditions}
    for key in operator.active_operator_alerts():
        if key.startswith(CONSUMER_LAG_PREFIX) and key not in present:
            conditions.append(Condition(key))
    return conditions


def rest_banned(heartbeats: dict[str, dict]) -> Condition:
    """Binance answered 418: the collector's IP is banned from REST until a time."""
    if not heartbeats:
        return Condition(REST_BANNED, known=False)
    banned = [
        f"shard {shard} until {_utc(beat.get('banned_until'))}"
        for shard, beat in sorted(heartbeats.items())
        if beat.get("rest") == "banned"
    ]
    if not banned:
        return Condition(REST_BANNED)
    return Condition(
        REST_BANNED,
        "Binance banned the collector's IP from REST (HTTP 418): "
        + ", ".join(banned[:MAX_NAMED])
        + "; backfill and hole repair wait until then",
    )


def rest_region_blocked(heartbeats: dict[str, dict]) -> Condition:
    """Binance answered 451: REST refuses the collector's region; nothing helps but moving it."""
    if not heartbeats:
        return Condition(REST_REGION_BLOCKED, known=False)
    blocked = [shard for shard, beat in sorted(heartbeats.items()) if beat.get("rest") == "region_blocked"]
    if not blocked:
        return Condition(REST_REGION_BLOCKED)
    return Condition(
        REST_REGION_BLOCKED,
        f"Binance refuses this region (HTTP 451) for collector shard {', '.join(blocked[:MAX_NAMED])}: no "
        "backfill or hole repair is possible; run the collector from an allowed region",
    )


_HOLES_SQL = """
WITH ordered AS (
    SELECT c.symbol, c.time, lag(c.time) OVER (PARTITION BY c.symbol ORDER BY c.time) AS previous
    FROM candles_1m c LEFT JOIN symbols s ON s.symbol = c.symbol
    WHERE c.time >= %(start)s AND (s.history_start IS NULL OR c.time >= s.history_start)
)
SELECT symbol, previous + interval '1 minute', LEAST(time - interval '1 minute', %(cutoff)s)
FROM ordered
WHERE previous IS NOT NULL AND time - previous > interval '1 minute'
  AND previous + interval '1 minute' <= %(cutoff)s
ORDER BY symbol, previous
"""


def forced_gaps(now_ms: int | None = None) -> Condition:
    """Minutes missing between stored candles that the metrics engine has given up waiting for."""
    from metrics.models import StoredCandle

    now = datetime.fromtimestamp((now_ms or time.time() * 1000) / 1000, UTC)
    start = now - timedelta(minutes=settings.OPERATOR_GAP_LOOKBACK_MINUTES)
    # The bar after a hole waits METRICS_GAP_TIMEOUT_SECONDS from the next candle's arrival (~2 min later).
    cutoff = now - timedelta(seconds=settings.METRICS_GAP_TIMEOUT_SECONDS) - timedelta(minutes=2)
    with connections[router.db_for_read(StoredCandle)].cursor() as cursor:
        cursor.execute(_HOLES_SQL, {"start": start, "cutoff": cutoff})
        holes = cursor.fetchall()
    if not holes:
        return Condition(GAPS_FORCED)
    by_symbol: dict[str, tuple[int, datetime]] = {}
    for symbol, first, last in holes:
        minutes = int((last - first).total_seconds() // 60) + 1
        count, earliest = by_symbol.get(symbol, (0, first))
        by_symbol[symbol] = (count + minutes, min(earliest, first))
    total = sum(count for count, _ in by_symbol.values())
    named = [
        f"{symbol} {count} min from {_utc(earliest)}"
        for symbol, (count, earliest) in sorted(by_symbol.items())[:MAX_NAMED]
    ]
    more = f" and {len(by_symbol) - MAX_NAMED} more" if len(by_symbol) > MAX_NAMED else ""
    return Condition(
        GAPS_FORCED,
        f"{total} minutes missing in candles_1m for {len(by_symbol)} symbols (permanent gaps in the metrics): "
        + ", ".join(named)
        + more,
    )


def _utc(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, datetime):
        moment = value.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(value / 1000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- the check ------------------------------------------------------------------------------------------


def conditions(observation: Observation) -> list[Condition]:
    """Every condition's current state from one observation of the bus (and the database)."""
    beats = observation.heartbeats
    return [
        feed_stale(beats, observation.nats_error, observation.lags),
        *consumer_lag(observation.lags),
        rest_banned(beats),
        rest_region_blocked(beats),
        forced_gaps(_reference_ms(beats, int(time.time() * 1000))),
    ]


def apply(condition: Condition) -> None:
    if not condition.known:
        return
    if condition.problem:
        operator.raise_operator_alert(condition.key, condition.problem)
    else:
        operator.resolve_operator_alert(condition.key)


def check() -> list[Condition]:
    """Observe everything once and raise or resolve each operator alert (the beat task's body)."""
    observation = asyncio.run(observe())
    found = conditions(observation)
    for condition in found:
        apply(condition)
    return found
