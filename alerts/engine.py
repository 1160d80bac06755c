"""The live alert engine behind `run_alerts` (docs/contract.md §1, §5, §8).

Final bars come from the durable JetStream consumer `alerts-p<k>of<N>` on `metrics.calculated.>` and are
handled one at a time in stream order, so each symbol's bars are evaluated in bar order. Intrabar rules
also see `metrics.live.>` (core NATS). Which rules fire is decided by `alerts.decisions` — the code the
backtest runs too — with a `CooldownTracker` rebuilt from `alert_history` on start; `alerts.services`
re-checks every alert against the table inside the transaction that stores it, so the table stays the
truth and the tracker only a cache. Per message, in two lanes (global rules first, then the users'
rules in a task and database thread of their own, so no user's rules delay anybody else's): evaluate →
store alerts + outbox rows (one transaction) → publish `alerts.triggered.<SYMBOL>` after the commit; the
message is acknowledged once both lanes are done with it (docs/alerts.md "Two lanes").

Failure handling: a malformed payload is logged and terminated with its reason (never redelivered, the
worker keeps going); a database or NATS outage keeps the message in progress and retries it, so no bar is
skipped and order is kept; a crash between commit and publish is repaired on start by republishing the
last minutes of alerts (JetStream drops the duplicates by Nats-Msg-Id). What no retry can fix — an alert
JetStream refuses for good (too large, bad data), a bar whose data the database refuses, a bar that fails
ALERTS_MAX_DELIVERIES times — is logged, counted, dead-lettered (`alert_dead_letters`, with an operator
alert) and acknowledged: one user's rule can never hold up everyone else's alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, connections
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js.errors import APIError

from alerts import selectors, services
from alerts.decisions import CooldownTracker, RuleSpec, evaluate_bar
from alerts.rule_language import RuleError
from alerts.vectorized import VectorRule, decide_symbols
from cryptomon import heap, messaging
from cryptomon.contract import subjects
from cryptomon.contract.messages import BadPayload, MetricsMessage, parse_metrics
from cryptomon.workers import OwnThread, Stats, Worker, in_thread

logger = logging.getLogger(__name__)

REPUBLISH_WINDOW = timedelta(seconds=subjects.DUPLICATE_WINDOW_SECONDS - 60)
PUBLISH_CHUNK = 1000  # alerts in flight at once (nats-py allows 4,000 unacknowledged)
# The personal lane publishes in smaller chunks: each chunk runs on the event loop without a break, and the
# global lane shares that loop (1,000 publishes hold it for tens of milliseconds); before each chunk (and
# each batch) it waits while the global lane has a batch in hand.
PERSONAL_PUBLISH_CHUNK = 100
PERSONAL_BATCH = 1000  # bars the personal lane stores in one transaction
HANDED_ON_KEEPALIVE_SECONDS = 10.0  # a third of the consumer's AckWait
PUBLISH_ACK_TIMEOUT = 5.0
STATS_LOG_SECONDS = 60.0
VECTOR_FROM = 16  # bars of distinct symbols from which one numpy pass beats a closure call per rule
INTEGRITY_ATTEMPTS = 3  # an integrity error that survives this many attempts is not a race: give up


def never_accepted(error: BaseException, attempt: int = 1) -> str | None:
    """Why an error is one that no retry can fix (then the caller dead-letters), or None for an outage or
    a timeout, which is waited out. An integrity error may be a race with another worker, so it gets
    INTEGRITY_ATTEMPTS tries first."""
    if isinstance(error, MaxPayloadError):
        return "larger than the NATS max payload"
    if isinstance(error, APIError) and error.code == 400:
        return f"refused by JetStream: {error.description} (err_code {error.err_code})"
    if isinstance(error, DataError):
        return f"data the database refuses: {error}"
    if isinstance(error, IntegrityError) and attempt >= INTEGRITY_ATTEMPTS:
        return f"integrity error on {attempt} attempts: {error}"
    return None


LANES = ("all", "global", "personal")


def in_lane(lane: str, owner_id: int | None) -> bool:
    """Whether a rule with this owner belongs to a lane: `global` rules have no owner, `personal` ones do."""
    return lane == "all" or (owner_id is None) == (lane == "global")


@dataclass(frozen=True)
class RuleBook:
    """The enabled rules (of one lane) compiled once: which to run on final bars and which on live updates."""

    version: tuple = ()
    final: tuple[RuleSpec, ...] = ()  # every enabled rule (intrabar rules are evaluated on the final bar too)
    intrabar: tuple[RuleSpec, ...] = ()
    vectors: tuple[VectorRule, ...] = ()  # `final` compiled for many symbols at once

    @classmethod
    def load(cls, lane: str = "all") -> RuleBook:
        version = selectors.rules_version()
        specs: list[RuleSpec] = []
        for rule in selectors.enabled_rules():
            if not in_lane(lane, rule.owner_id):
                continue
            try:
                specs.append(rule.spec())
            except RuleError as error:  # stored without validation (raw SQL, an old version): skip it, loudly
                logger.error("rule %s skipped: its expression does not compile: %s", rule.slug, error)
        return cls(
            version=version,
            final=tuple(specs),
            intrabar=tuple(spec for spec in specs if spec.mode == "intrabar"),
            vectors=tuple(VectorRule(spec) for spec in specs),
        )


def load_tracker(shard: messaging.Shard) -> CooldownTracker:
    """The cooldown state of the shard's symbols, from `alert_history`."""
    tracker = CooldownTracker()
    for rule, symbol, open_time in selectors.last_fired_marks():
        if shard.owns(symbol):
            tracker.seed(rule, symbol, open_time)
    return tracker


async def _serial(function: Callable, *args: Any) -> Any:
    return await in_thread(function, *args, serial=True)


@dataclass
class AlertEngine:
    """Decides and records alerts of one lane's rules (`all`, `global` or `personal`); knows nothing of
    consumers, so tests and the worker share it. Its database work runs in `thread` (by default the shared
    serial thread; run_alerts gives the personal lane an `OwnThread`)."""

    shard: messaging.Shard = field(default_factory=messaging.Shard)
    rules: RuleBook = field(default_factory=RuleBook)
    tracker: CooldownTracker | None = None  # None = rebuild from alert_history before the next bar
    stats: Stats = field(default_factory=Stats)  # the worker's, when it runs in one
    lane: str = "all"
    thread: Callable[..., Awaitable[Any]] = _serial

    async def reload_rules(self, force: bool = False) -> bool:
        """Reload the rules if any changed since the last load (cheap check: max(updated_at), count)."""
        if not force and await self.thread(selectors.rules_version) == self.rules.version:
            return False
        book = await self.thread(RuleBook.load, self.lane)
        changed = book.version != self.rules.version
        self.rules = book
        if changed:
            logger.info(
                "%s rules loaded: %d enabled (%d intrabar)", self.lane, len(book.final), len(book.intrabar)
            )
        return changed

    async def ensure_tracker(self) -> CooldownTracker:
        if self.tracker is None:
            self.tracker = await self.thread(load_tracker, self.shard)
            logger.info(
                "%s cooldown state rebuilt from alert_history: %d (rule, symbol) pairs",
                self.lane,
                len(self.tracker),
            )
        return self.tracker

    async def on_bar(self, bar: MetricsMessage) -> list[dict]:
        """Evaluate one bar (final: every enabled rule; live: intrabar rules) and store what fires.

        Returns the payloads to publish. On a storage error the tracker is dropped (it may hold marks
        that were never committed) and rebuilt before the retry."""
        rules = self.rules.final if bar.final else self.rules.intrabar
        if not rules:
            return []
        tracker = await self.ensure_tracker()
        return await self.record(bar, evaluate_bar(rules, bar.symbol, bar.open_time, bar.metrics, tracker))

    async def evaluate(self, bars: list[MetricsMessage]) -> list[list[RuleSpec]]:
        """The rules that fire on final bars of distinct symbols, bar by bar through the compiled closures
        (cheaper than `decide` for a few bars); nothing is stored yet."""
        tracker = await self.ensure_tracker()
        rules = self.rules.final
        return [evaluate_bar(rules, b.symbol, b.open_time, b.metrics, tracker) if rules else [] for b in bars]

    async def decide(self, bars: list[MetricsMessage]) -> list[list[RuleSpec]]:
        """The rules that fire on final bars of distinct symbols, decided in one numpy pass per rule
        (the same decisions as `on_bar` bar by bar; tests/test_alerts_vectorized.py)."""
        tracker = await self.ensure_tracker()
        if not self.rules.vectors:
            return [[] for _ in bars]
        return decide_symbols(
            self.rules.vectors,
            [bar.symbol for bar in bars],
            [bar.open_time for bar in bars],
            [bar.metrics for bar in bars],
            tracker,
        )

    async def record(self, bar: MetricsMessage, fired: list[RuleSpec]) -> list[dict]:
        """Store the alerts decided for a bar; the payloads to publish (new, or stored before for this bar)."""
        if not fired:
            return []
        try:
            recorded = await self.thread(
                services.record_alerts, fired, bar.symbol, bar.open_time, bar.price, bar.metrics, bar.late
            )
        except BaseException:
            self.tracker = None
            raise
        if recorded.blocked:
            # Another worker stored an alert this tracker had not seen: resynchronise from the table.
            logger.info("alerts of %s refused by alert_history (cooldown): %s", bar.symbol, recorded.blocked)
            self.tracker = None
        self.stats.inc("alerts_created_total", recorded.created)
        return recorded.payloads

    async def record_many(self, bars: list[MetricsMessage], decisions: list[list[RuleSpec]]) -> list[dict]:
        """`record` for a wave of bars in one transaction (a minute's burst costs one commit)."""
        firing = [(bar, fired) for bar, fired in zip(bars, decisions, strict=True) if fired]
        if not firing:
            return []
        rows = [(fired, b.symbol, b.open_time, b.price, b.metrics, b.late) for b, fired in firing]
        try:
            recorded = await self.thread(services.record_many, rows)
        except BaseException:
            self.tracker = None
            raise
        payloads: list[dict] = []
        for (bar, _), result in zip(firing, recorded, strict=True):
            if result.blocked:
                logger.info(
                    "alerts of %s refused by alert_history (cooldown): %s", bar.symbol, result.blocked
                )
                self.tracker = None
            self.stats.inc("alerts_created_total", result.created)
            payloads += result.payloads
        return payloads


def waves(items: list[tuple[Any, MetricsMessage]]) -> list[list[tuple[Any, MetricsMessage]]]:
    """Split a batch into waves of distinct symbols, each symbol's bars in order across the waves."""
    result: list[list[tuple[Any, MetricsMessage]]] = []
    next_wave: dict[str, int] = {}
    for item in items:
        index = next_wave.get(item[1].symbol, 0)
        if index == len(result):
            result.append([])
        result[index].append(item)
        next_wave[item[1].symbol] = index + 1
    return result


class _Stopping(Exception):
    """Raised out of a retry loop when the worker is asked to stop (the message stays unacknowledged)."""


class _Undeliverable(Exception):
    """Raised out of a retry loop for an error no retry can fix (`never_accepted`): dead-letter the message."""


class AlertWorker(Worker):
    """`run_alerts`: the consumer loop around two AlertEngines, one lane each (docs/contract.md §1 sharding,
    §5 wire contract, §8 "no user's rules may delay or stop anybody else's").

    The global lane (`engine`) takes each batch from the consumer, stores and publishes what the global
    rules fire and hands the bars on; the personal lane (`personal`) then does the same for the users'
    rules in a task and a database thread of its own, in larger batches, and acknowledges each message
    once both lanes have stored and published its alerts. So a global alert never waits for the personal
    alerts of its bar (nor their evaluation), and a redelivery redoes both lanes (idempotently).

    `run()` until `stop()`, which lets the batch in hand finish (and what the personal lane holds);
    `started` is set once consuming."""

    graceful = True

    def __init__(self, shard: messaging.Shard, nats_url: str | None = None, batch: int = 256):
        super().__init__()
        self.shard = shard
        self.nats_url = nats_url
        self.batch = batch
        self.engine = AlertEngine(shard=shard, stats=self.stats, lane="global")
        self.personal = AlertEngine(shard=shard, stats=self.stats, lane="personal")
        self.durable = shard.consumer_name("alerts")
        self.nc = None
        self.js = None
        self._filters: list[str] = []
        self._handed_on: deque[list] = deque()  # [handed at (loop time), message, bar] for the personal lane
        self._handed_event = asyncio.Event()
        self._in_hand: list[list] = []  # the personal lane's batch in hand, entries as in _handed_on
        self._global_done = False
        self._global_idle = asyncio.Event()  # clear while the global lane handles a batch
        self._global_idle.set()

    # --- lifecycle ------------------------------------------------------------------------------

    async def serve(self) -> None:
        stop = self.stopping
        self._global_done = False
        self._handed_on.clear()  # what a previous run left is redelivered
        self.nc, self.js = await messaging.connect_jetstream(
            f"alerts-p{self.shard.index}of{self.shard.count}", self.nats_url
        )
        try:
            try:
                await self._retrying("start", self._start, stop=stop)
            except _Stopping:
                return  # asked to stop while the database or NATS was still unreachable
            live = [
                await self.nc.subscribe(subjects.METRICS_LIVE, cb=functools.partial(self._on_live, engine))
                for engine in (self.engine, self.personal)
            ]
            await self.nc.flush()  # the server knows the subscription before we report being started
            subscription = await self.js.pull_subscribe_bind(
                durable=self.durable, stream=subjects.METRICS_STREAM
            )
            personal = asyncio.create_task(self._personal_lane(stop))
            tasks = [
                # one reload loop per lane: a personal lane held up never holds up the global rules' edits
                *(
                    asyncio.create_task(self._every(settings.ALERTS_RULE_RELOAD_SECONDS, engine.reload_rules))
                    for engine in (self.engine, self.personal)
                ),
                asyncio.create_task(self._every(HANDED_ON_KEEPALIVE_SECONDS, self._keep_handed_on_alive)),
                asyncio.create_task(
                    self._every(settings.ALERTS_UNIVERSE_REFRESH_SECONDS, self._update_consumer)
                ),
                asyncio.create_task(heap.keep_collections_short("run_alerts")),
                asyncio.create_task(self._every(STATS_LOG_SECONDS, self._log_stats)),
            ]
            self.started.set()
            try:
                while not stop.is_set() and not personal.done():
                    await self._fetch_and_handle(subscription, stop)
            finally:
                self._global_done = True  # the personal lane finishes what it was handed, then ends
                self._handed_event.set()
                if not stop.is_set():  # an error or a cancellation, not a stop: no waiting for the rest
                    personal.cancel()
                await asyncio.wait({personal})
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                for subscription in live:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
            if not personal.cancelled():
                personal.result()  # a lane that ended with an error is raised (the worker restarts)
        finally:
            with contextlib.suppress(Exception):
                await self.nc.close()  # every publish was already acknowledged; nothing to drain
            await in_thread(connections.close_all, serial=True)

    async def _start(self) -> None:
        for engine in (self.engine, self.personal):
            await engine.reload_rules(force=True)
            await engine.ensure_tracker()
        await self._update_consumer()
        await self._republish_recent()

    async def _update_consumer(self) -> None:
        """Create the durable consumer, or narrow/widen its filter when the universe changes."""
        if self.shard.count == 1:
            filters = [subjects.METRICS]
        else:
            symbols = await in_thread(selectors.trading_symbols, serial=True)
            # With no known universe, take every subject and skip the symbols of other shards.
            filters = self.shard.filter_subjects(subjects.METRICS_ROOT, symbols) or [subjects.METRICS]
        if filters == self._filters:
            return
        # On start, what a previous run left unacknowledged comes first and in order (not after AckWait,
        # when newer bars would already have moved the cooldown marks past it).
        apply = messaging.ensure_consumer if self._filters else messaging.resume_consumer
        await apply(
            self.js, subjects.METRICS_STREAM, self.durable, filters, ack_wait=30, max_ack_pending=10_000
        )
        self._filters = filters
        logger.info("consumer %s filters %d subject(s)", self.durable, len(filters))

    async def _republish_recent(self) -> None:
        payloads = await in_thread(
            selectors.alerts_triggered_since, datetime.now(UTC) - REPUBLISH_WINDOW, serial=True
        )
        owned = [p for p in payloads if self.shard.owns(p["symbol"])]
        await self._publish(owned)
        if owned:
            logger.info("republished %d recent alert(s) (duplicates are dropped by JetStream)", len(owned))

    async def _log_stats(self) -> None:
        logger.info("%s: %s", self.durable, self.stats.summary())

    async def _every(self, seconds: float, action: Callable[[], Awaitable]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await action()
            except Exception as error:  # periodic upkeep retries on its next tick
                logger.warning("%s failed (retrying in %.0f s): %s", action.__name__, seconds, error)

    async def _retrying(
        self, what: str, action: Callable[[], Awaitable], message=None, stop: asyncio.Event | None = None
    ) -> Any:
        """Run `action` until it succeeds: storage and NATS outages are waited out, never skipped; an error
        that can never succeed raises _Undeliverable instead of being retried forever."""
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                return await action()
            except (DatabaseError, InterfaceError, OSError, NatsError) as error:
                reason = never_accepted(error, attempt)
                if reason is not None:
                    raise _Undeliverable(reason) from error
                self.stats.inc("alerts_retries_total")
                if stop is not None and stop.is_set():
                    raise _Stopping from error
                logger.warning("%s failed, retrying in %.1f s: %s", what, delay, error)
                if message is not None:
                    with contextlib.suppress(Exception):
                        await message.in_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- messages -------------------------------------------------------------------------------

    async def _fetch_and_handle(self, subscription, stop: asyncio.Event) -> None:
        messages = await messaging.fetch_available(subscription, self.batch, poll_seconds=1.0)
        if not messages:
            return
        self._global_idle.clear()  # the personal lane's next step waits: global alerts go first
        try:
            await self._handle_fetched(messages, stop)
        finally:
            self._global_idle.set()

    async def _handle_fetched(self, messages: list, stop: asyncio.Event) -> None:
        ready: list[tuple[Any, MetricsMessage]] = []
        for message in messages:
            try:
                bar = parse_metrics(message.data, message.subject)
                if not bar.final:
                    raise BadPayload("a metrics.calculated payload must have final: true")
            except BadPayload as error:
                await self._terminate(message, str(error))
                continue
            if not self.shard.owns(bar.symbol):
                self.stats.inc("alerts_skipped_not_owned_total")
                await message.ack()
                continue
            ready.append((message, bar))
        try:
            await self._handle_lane(self.engine, ready, stop, self._hand_on)
        except _Stopping:
            return  # the rest is redelivered to the next run, in order

    # --- lanes ----------------------------------------------------------------------------------

    async def _hand_on(self, message, bar: MetricsMessage) -> None:
        """The global lane is done with a bar: the personal lane's turn (it acknowledges)."""
        self._handed_on.append([asyncio.get_running_loop().time(), message, bar])
        self._handed_event.set()

    async def _ack(self, message, bar: MetricsMessage) -> None:
        await message.ack()

    async def _personal_lane(self, stop: asyncio.Event) -> None:
        """The users' rules on the bars the global lane handed on, up to PERSONAL_BATCH at a time (one
        transaction, pipelined publishes), in their own database thread; then the acknowledgements. Ends
        once the global lane has ended and everything handed on is handled (or when asked to stop while
        an outage lasts: the rest is redelivered to the next run)."""
        self.personal.thread = thread = OwnThread("alerts-personal")
        try:
            while True:
                if not self._handed_on:
                    if self._global_done:
                        return
                    self._handed_event.clear()
                    await self._handed_event.wait()
                    continue
                take = min(len(self._handed_on), PERSONAL_BATCH)
                self._in_hand = [self._handed_on.popleft() for _ in range(take)]
                items = [(message, bar) for _, message, bar in self._in_hand]
                try:
                    await self._global_idle.wait()
                    await self._handle_lane(self.personal, items, stop, self._ack)
                except _Stopping:
                    return
                finally:
                    self._in_hand = []
        finally:
            self.personal.thread = _serial  # a live update after this uses the shared thread
            await thread.close()

    async def _keep_handed_on_alive(self) -> None:
        """Messages waiting for the personal lane (or in its hands) longer than HANDED_ON_KEEPALIVE_SECONDS
        are reported in progress, so JetStream does not redeliver them after AckWait (30 s) meanwhile."""
        now = asyncio.get_running_loop().time()
        for entry in [*self._in_hand, *self._handed_on]:
            if now - entry[0] >= HANDED_ON_KEEPALIVE_SECONDS:
                entry[0] = now
                with contextlib.suppress(Exception):
                    await entry[1].in_progress()

    async def _handle_lane(
        self,
        engine: AlertEngine,
        items: list[tuple[Any, MetricsMessage]],
        stop: asyncio.Event,
        finish: Callable[[Any, MetricsMessage], Awaitable],
    ) -> None:
        """One lane's work on a batch of bars: decide (each symbol's bars in order), store, publish, then
        `finish` each message (hand it on, or acknowledge it)."""
        if not items:
            return
        counter = "alerts_personal_bars_total" if engine.lane == "personal" else "alerts_bars_total"
        self.stats.inc(counter, len(items))
        decisions = await self._decide(engine, items, stop)
        if decisions is not None and await self._handle_together(engine, items, decisions, stop, finish):
            return
        # (When one transaction for the batch failed, bar by bar: only a bar that fails on its own is
        # redelivered or dead-lettered, never its innocent neighbours.)
        for (message, bar), fired in zip(items, decisions or [None] * len(items), strict=True):
            try:
                if fired is None:
                    action = lambda bar=bar: engine.on_bar(bar)  # noqa: E731
                else:
                    action = lambda bar=bar, fired=fired: engine.record(bar, fired)  # noqa: E731
                where = f"storing {engine.lane} alerts of {bar.symbol} {bar.open_time}"
                payloads = await self._retrying(where, action, message, stop)
                if payloads:
                    publish = lambda p=payloads: self._publish(p, engine.lane)  # noqa: E731
                    await self._retrying(f"publishing {len(payloads)} alert(s)", publish, message, stop)
                await finish(message, bar)
            except _Stopping:
                raise
            except _Undeliverable as error:
                engine.tracker = None
                await self._give_up(message, str(error))
            except Exception as error:  # a bug must not stop the worker: the message comes back later
                engine.tracker = None
                await self._redeliver_or_give_up(message, error)

    async def _decide(
        self, engine: AlertEngine, items: list[tuple[Any, MetricsMessage]], stop: asyncio.Event
    ) -> list[list[RuleSpec]] | None:
        """What fires on each bar, wave by wave (waves of distinct symbols keep each symbol's bars in
        order): a wave of VECTOR_FROM bars or more in one numpy pass per rule, a smaller one bar by bar.
        None when that failed (a bug in the fast path): the caller decides bar by bar from a fresh tracker."""
        decisions: list[list[RuleSpec]] = [[] for _ in items]
        try:
            for wave in waves([(index, bar) for index, (_, bar) in enumerate(items)]):
                bars = [bar for _, bar in wave]
                if len(wave) >= VECTOR_FROM:
                    self.stats.inc("alerts_numpy_waves_total")
                    decide = lambda bars=bars: engine.decide(bars)  # noqa: E731
                else:
                    decide = lambda bars=bars: engine.evaluate(bars)  # noqa: E731
                fired = await self._retrying("loading rules state", decide, stop=stop)
                for (index, _), rules in zip(wave, fired, strict=True):
                    decisions[index] = rules
        except _Stopping:
            raise
        except Exception:
            logger.exception(
                "deciding %d bars (%s lane) failed; deciding them one by one", len(items), engine.lane
            )
            engine.tracker = None
            return None
        return decisions

    async def _redeliver_or_give_up(self, message, error: Exception) -> None:
        """A message whose handling failed comes back after ALERTS_REDELIVERY_DELAY_SECONDS, until its
        ALERTS_MAX_DELIVERIES-th delivery: then it is dead-lettered (a requeue forever would hold it and
        every retry's work in the worker for good)."""
        deliveries = message.metadata.num_delivered
        if deliveries >= settings.ALERTS_MAX_DELIVERIES:
            logger.exception("handling %s failed on delivery %d; giving up", message.subject, deliveries)
            await self._give_up(
                message, f"failed on {deliveries} deliveries: {type(error).__name__}: {error}"
            )
            return
        delay = settings.ALERTS_REDELIVERY_DELAY_SECONDS
        logger.exception(
            "handling %s failed (delivery %d of at most %d); redelivered in %g s",
            message.subject,
            deliveries,
            settings.ALERTS_MAX_DELIVERIES,
            delay,
        )
        with contextlib.suppress(Exception):
            await message.nak(delay=delay)

    async def _give_up(self, message, reason: str) -> None:
        """Dead-letter a metrics message and acknowledge it; if even that cannot be stored (the database
        is away), it comes back later."""
        metadata = message.metadata
        key = f"{metadata.stream}:{metadata.sequence.stream}"
        try:
            await self._dead_letter(
                "message", key, message.subject, message.data, reason, metadata.num_delivered
            )
        except Exception as error:
            logger.warning("dead letter of %s not stored (%s); redelivered later", key, error)
            with contextlib.suppress(Exception):
                await message.nak(delay=settings.ALERTS_REDELIVERY_DELAY_SECONDS)
            return
        await message.ack()

    async def _dead_letter(
        self, kind: str, key: str, subject: str, data: bytes, reason: str, deliveries: int = 1
    ) -> None:
        letter = await in_thread(
            services.dead_letter, kind, key, subject, data, reason, deliveries, serial=True
        )
        if letter is None:
            return  # stored before (e.g. an alert republished on start)
        self.stats.inc("alerts_dead_letters_total")
        logger.error(
            "%s %s on %s dead-lettered (alert_dead_letters #%d), not retried: %s",
            kind,
            key,
            subject,
            letter.pk,
            reason,
        )

    async def _handle_together(
        self, engine: AlertEngine, items, decisions, stop: asyncio.Event, finish
    ) -> bool:
        """One transaction for the batch's alerts, their publishes in flight together, then `finish`:
        the same order of effects as bar by bar (stored → published → finished), one commit.
        False when the batch as a whole failed (nothing finished): the caller goes bar by bar."""
        if len(items) == 1:
            return False  # bar by bar is the same work, with its finer error handling
        messages = [message for message, _ in items]
        bars = [bar for _, bar in items]
        try:
            record = lambda: engine.record_many(bars, decisions)  # noqa: E731
            where = f"storing {engine.lane} alerts of {len(bars)} bars"
            payloads = await self._retrying(where, record, messages[0], stop)
            publish = lambda: self._publish(payloads, engine.lane)  # noqa: E731
            await self._retrying(f"publishing {len(payloads)} alerts", publish, messages[0], stop)
        except _Stopping:
            raise
        except Exception:  # _Undeliverable or a bug: find the bar that fails, one by one
            logger.exception(
                "handling %d bars (%s lane) failed; handling them one by one", len(items), engine.lane
            )
            engine.tracker = None
            return False
        for message, bar in items:
            await finish(message, bar)
        return True

    async def _terminate(self, message, reason: str) -> None:
        self.stats.inc("alerts_bad_payloads_total")
        metadata = message.metadata
        logger.error(
            "bad payload on %s (stream seq %s) terminated, not redelivered: %s",
            message.subject,
            metadata.sequence.stream,
            reason,
        )
        await self.nc.publish(message.reply, f"+TERM {reason}".encode()[:1024])

    async def _on_live(self, engine: AlertEngine, message) -> None:
        """A live update for one lane's intrabar rules (each lane has its own subscription: a personal
        lane held up by its database thread never holds up the global lane's live updates)."""
        if not engine.rules.intrabar:
            return
        try:
            bar = parse_metrics(message.data, message.subject)
        except BadPayload as error:
            self.stats.inc("alerts_bad_payloads_total")
            logger.error("bad payload on %s ignored: %s", message.subject, error)
            return
        if bar.final or not self.shard.owns(bar.symbol):
            return
        personal = engine.lane == "personal"
        self.stats.inc("alerts_personal_live_updates_total" if personal else "alerts_live_updates_total")
        try:
            await self._publish(await engine.on_bar(bar), engine.lane)
        except (DatabaseError, InterfaceError, OSError, NatsError) as error:
            # Live updates are at most once; the final bar evaluates intrabar rules again.
            logger.warning("intrabar %s alert of %s not stored: %s", engine.lane, bar.symbol, error)

    async def _publish_alone(self, payload: dict, data: bytes) -> str | None:
        """Publish one alert whose pipelined publish failed, waiting for its own answer: None once stored,
        why it never will be, or the outage/timeout raised. nats-py (2.x) turns a JetStream refusal of a
        pipelined publish into an error callback and leaves its ack to time out, so only a lone publish
        tells a refused message from an outage (a duplicate of a stored one is dropped by its Nats-Msg-Id)."""
        try:
            await self.js.publish(
                subjects.alert_subject(payload["symbol"]),
                data,
                timeout=PUBLISH_ACK_TIMEOUT,
                headers={"Nats-Msg-Id": payload["id"]},
            )
        except (OSError, NatsError) as error:
            reason = never_accepted(error)
            if reason is None:
                raise
            return reason
        return None

    async def _publish(self, payloads: list[dict], lane: str = "global") -> None:
        """`alerts.triggered.<SYMBOL>`, pipelined in chunks. An alert that can never be accepted (it does
        not encode, it is over the server's max payload, JetStream refuses it with a 400) is dead-lettered
        once the others are stored; any other failure (an outage, a timeout) is raised and the caller
        retries the lot (duplicates are dropped by their Nats-Msg-Id)."""
        personal = lane == "personal"
        chunk = PERSONAL_PUBLISH_CHUNK if personal else PUBLISH_CHUNK
        refused: list[tuple[dict, bytes, str]] = []
        for start in range(0, len(payloads), chunk):
            if personal:
                await self._global_idle.wait()  # a batch of global alerts in hand goes first
            ready: list[tuple[dict, bytes]] = []
            for payload in payloads[start : start + chunk]:
                try:
                    data = messaging.encode(payload)
                except (TypeError, ValueError, msgspec.MsgspecError) as error:
                    refused.append((payload, repr(payload).encode(), f"cannot be encoded: {error}"))
                    continue
                if len(data) > self.nc.max_payload:
                    reason = f"{len(data)} bytes, over the NATS max payload of {self.nc.max_payload}"
                    refused.append((payload, data, reason))
                    continue
                ready.append((payload, data))
            futures = await messaging.publish_pipelined(
                self.js, ((subjects.alert_subject(p["symbol"]), data, p["id"]) for p, data in ready)
            )
            acks = await messaging.ack_errors(futures, PUBLISH_ACK_TIMEOUT)
            for (payload, data), error in zip(ready, acks, strict=True):
                if error is not None:
                    reason = never_accepted(error) or await self._publish_alone(payload, data)
                    if reason is not None:
                        refused.append((payload, data, reason))
        for payload, data, reason in refused:
            subject = subjects.alert_subject(str(payload.get("symbol")))
            await self._dead_letter("alert", str(payload.get("id")), subject, data, reason)
