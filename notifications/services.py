"""Notification writes: channels, fan-out, delivery with retries, the stuck-work sweep, send test.

Flow (docs/notifications.md): run_alerts stores an alert and its outbox row in one transaction and,
after commit, sends `alerts.signals.outbox_committed`; `dispatch_committed_outbox` queues one
`dispatch_outbox_entries` for them. `fan_out` turns each
outbox row into unique (alert, channel) deliveries — any number of runs create each delivery once — and
schedules one `flush_channel` per channel after the group window. `flush_channel` claims the due
deliveries, sends them as one message, and records success, a retry (exponential backoff, full
jitter, or the remote's retry-after) or a failure (a permanent one disables the channel with the
reason). `requeue_stuck` re-queues what a lost task or a dead worker left behind, so nothing is lost.

A channel has at most one send in flight: its deliveries in SENDING whose claim is younger than
`claim_lease_seconds()` (the HTTP deadline plus a margin) make every other claim for the channel
empty, and the sweep leaves them alone. The holder re-stamps its claim before each send and, when done,
queues a flush if more became due meanwhile. So a slow endpoint holds one worker thread for at most
the deadline and is never handed to a second thread while the first still waits on it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.db.models import F

from alerts.models import AlertHistory, OutboxEntry, UserSettings
from alerts.visibility import AlertAudience
from notifications import grouping, queue, routing
from notifications.base import (
    DeliveryError,
    Message,
    PermanentError,
    RejectedError,
    TransientError,
    clamp_retry_after,
)
from notifications.crypto import SecretUnreadable
from notifications.models import Delivery, NotificationChannel
from notifications.safety import UnsafeTarget
from notifications.transports import transport

logger = logging.getLogger(__name__)

TS = "timeseries"
FLUSH_KEY = "cryptomon:notify:flush:{}"
CLAIM_LOCK = 7_346_002  # advisory lock namespace: claims of one channel, one at a time


@cache
def _redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def redis_client() -> redis.Redis:
    return _redis_for(settings.REDIS_URL)


def _now() -> datetime:
    return datetime.now(UTC)


# --- channels -------------------------------------------------------------------------------------


def clean_channel_config(kind: str, data: dict) -> dict:
    """Validated transport config (raises ValueError with a message for the form)."""
    return transport(kind).clean_config(data)


def create_channel(user, kind: str, config: dict, **fields) -> NotificationChannel:
    channel = NotificationChannel(user=user, kind=kind, **fields)
    channel.set_config(clean_channel_config(kind, config))
    channel.full_clean(exclude=["secret_config"])
    channel.save()
    return channel


def enable_channel(channel: NotificationChannel) -> None:
    channel.enabled = True
    channel.disabled_reason = ""
    channel.save(update_fields=["enabled", "disabled_reason", "updated_at"])


def _disable_channel(channel_id: int, reason: str) -> None:
    NotificationChannel.objects.filter(pk=channel_id).update(
        enabled=False, disabled_reason=reason, last_error=reason, last_error_at=_now(), updated_at=_now()
    )
    Delivery.objects.filter(channel_id=channel_id, status=Delivery.Status.PENDING).update(
        status=Delivery.Status.FAILED, last_error=f"channel disabled: {reason}"
    )


# --- fan-out --------------------------------------------------------------------------------------


def enqueue_after_commit(entries: list[OutboxEntry]) -> None:
    """Queue the fan-out of a transaction's outbox rows once it commits (call inside it).
    One task for the batch: a minute's burst is one broker round trip on the alert path, not one each."""
    outbox_ids = [entry.pk for entry in entries]
    transaction.on_commit(lambda: queue.dispatch_outbox_entries(outbox_ids), using=TS)


def dispatch_committed_outbox(sender, *, outbox_ids: list[int], **kwargs) -> None:
    """Receiver of `alerts.signals.outbox_committed` (run_alerts, after its commit): queue the fan-out."""
    queue.dispatch_outbox_entries(outbox_ids)


@dataclass
class FanOut:
    created: int = 0
    skipped: int = 0


def _candidate_channels(
    alert: AlertHistory, now: datetime
) -> list[tuple[NotificationChannel, UserSettings | None]]:
    """Enabled channels whose routing takes the alert and whose owner may see it."""
    channels = NotificationChannel.objects.filter(enabled=True)
    if alert.owner_id is not None:
        channels = channels.filter(user_id=alert.owner_id)
    channels = [channel for channel in channels if routing.routes(channel, alert)]
    user_settings = {
        row.user_id: row for row in UserSettings.objects.filter(user_id__in={c.user_id for c in channels})
    }
    payload = alert.to_payload()
    return [
        (channel, user_settings.get(channel.user_id))
        for channel in channels
        if AlertAudience.of(channel.user_id, user_settings.get(channel.user_id)).is_visible(payload, now)
    ]


def fan_out(outbox_id: int) -> FanOut:
    """Create the alert's deliveries (idempotent) and schedule each channel's flush."""
    result = FanOut()
    entry = OutboxEntry.objects.filter(pk=outbox_id).first()
    if entry is None:
        return result
    alert = AlertHistory.objects.filter(pk=entry.alert_id).first()
    now = _now()
    if alert is None or (alert.late and not settings.ALERTS_NOTIFY_LATE):
        OutboxEntry.objects.filter(pk=outbox_id, dispatched_at__isnull=True).update(
            dispatched_at=now, attempts=F("attempts") + 1
        )
        return result
    targets = _candidate_channels(alert, now)
    with transaction.atomic(using=TS):
        done = set(
            Delivery.objects.filter(alert_id=alert.pk, channel_id__in=[c.pk for c, _ in targets]).values_list(
                "channel_id", flat=True
            )
        )
        targets = sorted(((c, s) for c, s in targets if c.pk not in done), key=lambda pair: pair[0].pk)
        rows = []
        for channel, user_settings in targets:
            status, reason = _decide(channel, user_settings, alert, now)
            rows.append(
                Delivery(
                    alert_id=alert.pk,
                    channel_id=channel.pk,
                    user_id=channel.user_id,
                    symbol=alert.symbol,
                    status=status,
                    last_error=reason,
                    next_attempt_at=now,
                )
            )
        Delivery.objects.bulk_create(rows, ignore_conflicts=True)
        OutboxEntry.objects.filter(pk=outbox_id).update(
            dispatched_at=F("dispatched_at") if entry.dispatched_at else now, attempts=F("attempts") + 1
        )
    result.created = sum(row.status == Delivery.Status.PENDING for row in rows)
    result.skipped = len(rows) - result.created
    pending_channels = set(
        Delivery.objects.filter(alert_id=alert.pk, status=Delivery.Status.PENDING).values_list(
            "channel_id", flat=True
        )
    )
    for channel_id in sorted(pending_channels):
        schedule_flush(channel_id)
    return result


def _decide(
    channel: NotificationChannel, user_settings: UserSettings | None, alert: AlertHistory, now: datetime
) -> tuple[str, str]:
    """PENDING, or SKIPPED with the reason (quiet hours, daily cap). Runs inside the fan-out transaction."""
    tz = routing.zone(user_settings.timezone if user_settings else "UTC")
    if routing.in_quiet_hours(channel.quiet_start, channel.quiet_end, tz, now):
        return Delivery.Status.SKIPPED, "quiet hours"
    if channel.daily_cap_per_symbol is not None:
        with connections[TS].cursor() as cursor:  # serialises concurrent fan-outs for this channel
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [7_346_001, channel.pk])
        sent_today = (
            Delivery.objects.filter(
                channel_id=channel.pk, symbol=alert.symbol, created_at__gte=routing.local_day_start(tz, now)
            )
            .exclude(status=Delivery.Status.SKIPPED)
            .count()
        )
        if sent_today >= channel.daily_cap_per_symbol:
            return Delivery.Status.SKIPPED, f"daily cap of {channel.daily_cap_per_symbol} for {alert.symbol}"
    return Delivery.Status.PENDING, ""


def schedule_flush(channel_id: int, delay: float | None = None) -> bool:
    """Queue one flush per channel per group window (a burst of alerts schedules it once)."""
    delay = settings.NOTIFICATIONS_GROUP_SECONDS if delay is None else delay
    ttl = max(1, int(delay * 2) + 60)
    if not redis_client().set(FLUSH_KEY.format(channel_id), "1", nx=True, ex=ttl):
        return False
    queue.flush_channel(channel_id, countdown=delay)
    return True


# --- delivery -------------------------------------------------------------------------------------


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base × 2^(attempt−1))]."""
    ceiling = min(
        settings.NOTIFICATIONS_RETRY_CAP_SECONDS,
        settings.NOTIFICATIONS_RETRY_BASE_SECONDS * 2 ** max(0, attempt - 1),
    )
    return random.uniform(0, ceiling)


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds until the next attempt: the remote's wish (capped, never an overflow) or our backoff."""
    wish = clamp_retry_after(retry_after)
    if wish is not None:
        delay = wish * settings.NOTIFICATIONS_RETRY_AFTER_SCALE
        if math.isfinite(delay):
            return min(delay, settings.NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS)
    return backoff_seconds(attempt)


def claim_lease_seconds() -> float:
    """How long a claim stays the channel's send in flight after its holder's last re-stamp: the one
    HTTP deadline plus a margin (and never less than the stuck threshold)."""
    return max(
        settings.NOTIFICATIONS_STUCK_SECONDS,
        settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS + settings.NOTIFICATIONS_CLAIM_MARGIN_SECONDS,
    )


def _claim(channel_id: int, now: datetime) -> list[Delivery]:
    """Claim the channel's due deliveries, or nothing while another send to the channel is in flight."""
    with transaction.atomic(using=TS):
        with connections[TS].cursor() as cursor:  # claims of one channel are serialised
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [CLAIM_LOCK, channel_id])
        in_flight = Delivery.objects.filter(
            channel_id=channel_id,
            status=Delivery.Status.SENDING,
            claimed_at__gte=now - timedelta(seconds=claim_lease_seconds()),
        )
        if in_flight.exists():
            return []
        rows = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(channel_id=channel_id, status=Delivery.Status.PENDING, next_attempt_at__lte=now)
            .order_by("id")[: grouping.MAX_GROUP]
        )
        if not rows:
            return []
        grouped = grouping.groups(rows)
        for key, members in grouped.items():
            Delivery.objects.filter(pk__in=[row.pk for row in members]).update(
                status=Delivery.Status.SENDING, claimed_at=now, attempts=F("attempts") + 1, group_key=key
            )
        for row in rows:
            row.attempts += 1
    return rows


def flush_channel(channel_id: int) -> int:
    """Send the channel's due deliveries as one message per group; returns alerts delivered."""
    redis_client().delete(FLUSH_KEY.format(channel_id))
    channel = NotificationChannel.objects.filter(pk=channel_id).first()
    if channel is None or not channel.enabled:
        reason = "channel deleted" if channel is None else f"channel disabled: {channel.disabled_reason}"
        Delivery.objects.filter(channel_id=channel_id, status=Delivery.Status.PENDING).update(
            status=Delivery.Status.FAILED, last_error=reason
        )
        return 0
    started = time.monotonic()
    rows = _claim(channel_id, _now())
    if not rows:
        return 0
    delivered = 0
    groups = list(grouping.groups(rows).items())
    for index, (key, members) in enumerate(groups):
        if _out_of_time(started):
            _release([row.pk for _, rest in groups[index:] for row in rest])
            break
        # A sign of life: the rest of this claim stays ours for another lease.
        Delivery.objects.filter(
            pk__in=[row.pk for _, rest in groups[index:] for row in rest], status=Delivery.Status.SENDING
        ).update(claimed_at=_now())
        delivered += _send_group(channel, key, members)
    if Delivery.objects.filter(
        channel_id=channel_id, status=Delivery.Status.PENDING, next_attempt_at__lte=_now()
    ).exists():  # due while we were sending (their flush found the channel busy), or beyond MAX_GROUP
        schedule_flush(channel_id, delay=0)
    return delivered


def _out_of_time(started: float) -> bool:
    """Whether another send could outlive the task's soft time limit (enforced here for every pool)."""
    elapsed = time.monotonic() - started
    return (
        elapsed + settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS
        > settings.NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS
    )


def _release(ids: list[int]) -> None:
    """Give claimed deliveries back unsent (their attempt did not happen)."""
    Delivery.objects.filter(pk__in=ids, status=Delivery.Status.SENDING).update(
        status=Delivery.Status.PENDING, claimed_at=None, attempts=F("attempts") - 1
    )


def _send_group(channel: NotificationChannel, key: str, members: list[Delivery]) -> int:
    ids = [row.pk for row in members]
    alerts = {
        alert.pk: alert for alert in AlertHistory.objects.filter(pk__in=[row.alert_id for row in members])
    }
    gone = [row.pk for row in members if row.alert_id not in alerts]
    if gone:
        Delivery.objects.filter(pk__in=gone).update(
            status=Delivery.Status.FAILED, last_error="alert no longer in history"
        )
        ids = [pk for pk in ids if pk not in gone]
        if not ids:
            return 0
    message = grouping.alerts_message([alert.to_payload() for alert in alerts.values()], idempotency_key=key)
    attempts = max(row.attempts for row in members)
    try:
        deliver(channel.kind, _config_of(channel), message)
    except TransientError as error:
        if attempts >= settings.NOTIFICATIONS_MAX_ATTEMPTS:
            _fail(channel, ids, f"gave up after {attempts} attempts: {error}")
            return 0
        delay = retry_delay(attempts, error.retry_after)
        Delivery.objects.filter(pk__in=ids).update(
            status=Delivery.Status.PENDING,
            next_attempt_at=_now() + timedelta(seconds=delay),
            last_error=str(error),
            claimed_at=None,
        )
        _note_error(channel, str(error))
        logger.info("%s: attempt %d failed (%s), retry in %.2fs", channel.log_name(), attempts, error, delay)
        queue.flush_channel(channel.pk, countdown=delay)
        return 0
    except PermanentError as error:
        logger.warning("%s disabled: %s", channel.log_name(), error)
        Delivery.objects.filter(pk__in=ids).update(status=Delivery.Status.FAILED, last_error=str(error))
        _disable_channel(channel.pk, str(error))
        return 0
    except DeliveryError as error:
        _fail(channel, ids, str(error))
        return 0
    now = _now()
    Delivery.objects.filter(pk__in=ids).update(status=Delivery.Status.SENT, sent_at=now, last_error="")
    NotificationChannel.objects.filter(pk=channel.pk).update(last_success_at=now)
    return len(ids)


def _fail(channel: NotificationChannel, ids: list[int], reason: str) -> None:
    logger.warning("%s: delivery failed: %s", channel.log_name(), reason)
    Delivery.objects.filter(pk__in=ids).update(status=Delivery.Status.FAILED, last_error=reason)
    _note_error(channel, reason)


def _note_error(channel: NotificationChannel, reason: str) -> None:
    NotificationChannel.objects.filter(pk=channel.pk).update(last_error=reason, last_error_at=_now())


def _config_of(channel: NotificationChannel) -> dict:
    """The channel's secrets; a key problem is retried (the operator can fix the key), never a crash."""
    try:
        return channel.config
    except (SecretUnreadable, ImproperlyConfigured) as error:
        raise TransientError(str(error)) from None


def deliver(kind: str, config: dict, message: Message) -> None:
    """One send through the kind's transport; every failure becomes a DeliveryError with a safe text."""
    try:
        transport(kind).send(config, message)
    except DeliveryError:
        raise
    except UnsafeTarget as error:
        raise PermanentError(str(error)) from None
    except SecretUnreadable as error:
        raise TransientError(str(error)) from None
    except (KeyError, ValueError) as error:
        raise RejectedError(f"channel misconfigured ({error.__class__.__name__})") from None
    except Exception as error:  # a bug must not lose the alert: retry, and log without secrets
        logger.error("unexpected %s sending through %s", error.__class__.__name__, kind)
        raise TransientError(f"unexpected error: {error.__class__.__name__}") from None


# --- send test ------------------------------------------------------------------------------------


@dataclass
class TestResult:
    ok: bool
    detail: str

    __test__ = False  # not a pytest class


def send_test(channel: NotificationChannel) -> TestResult:
    """Send a test message now and report success or the exact failure (the admin's action).

    A test is a send like any other, so it takes the channel's claim: refused while a flush's send to the
    channel is in flight (or being claimed), and while the test is out, the channel's claims wait for it
    (at most the one HTTP deadline), so an endpoint never has two sends from us at once."""
    with connections[TS].cursor() as cursor:  # the lock `_claim` takes, held for the whole send
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [CLAIM_LOCK, channel.pk])
        if not cursor.fetchone()[0]:
            return TestResult(False, "a send to this channel is being claimed right now; try again")
    try:
        in_flight = Delivery.objects.filter(
            channel_id=channel.pk,
            status=Delivery.Status.SENDING,
            claimed_at__gte=_now() - timedelta(seconds=claim_lease_seconds()),
        )
        if in_flight.exists():
            return TestResult(False, "a send to this channel is in flight; try again once it is done")
        try:
            deliver(channel.kind, _config_of(channel), grouping.test_message(str(channel)))
        except DeliveryError as error:
            _note_error(channel, f"test: {error}")
            return TestResult(False, str(error))
    finally:
        with connections[TS].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [CLAIM_LOCK, channel.pk])
    NotificationChannel.objects.filter(pk=channel.pk).update(last_success_at=_now())
    return TestResult(True, f"test message sent to {channel.masked}")


# --- the sweep ------------------------------------------------------------------------------------


@dataclass
class Requeued:
    outbox: int = 0
    reclaimed: int = 0
    channels: int = 0


def requeue_stuck(now: datetime | None = None) -> Requeued:
    """Re-queue outbox rows never fanned out and pending deliveries whose flush task was lost (older than
    NOTIFICATIONS_STUCK_SECONDS), and deliveries claimed by a worker that died: only once their claim's
    lease (`claim_lease_seconds()`) has run out, so a send still in flight is never handed to another."""
    now = now or _now()
    cutoff = now - timedelta(seconds=settings.NOTIFICATIONS_STUCK_SECONDS)
    result = Requeued()
    stuck_outbox = list(
        OutboxEntry.objects.filter(dispatched_at__isnull=True, created_at__lt=cutoff).values_list(
            "pk", flat=True
        )[:1000]
    )
    if stuck_outbox:
        queue.dispatch_outbox_entries(stuck_outbox)
        result.outbox = len(stuck_outbox)
    lease_cutoff = now - timedelta(seconds=claim_lease_seconds())
    stuck = Delivery.objects.filter(status=Delivery.Status.SENDING, claimed_at__lt=lease_cutoff)
    channels = set(stuck.values_list("channel_id", flat=True).distinct())
    result.reclaimed = stuck.update(status=Delivery.Status.PENDING, claimed_at=None, next_attempt_at=now)
    channels |= set(
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lt=cutoff)
        .values_list("channel_id", flat=True)
        .distinct()
    )
    for channel_id in sorted(channels):
        queue.flush_channel(channel_id)
    result.channels = len(channels)
    if result.outbox or result.reclaimed or result.channels:
        logger.warning("re-queued stuck notifications: %s", result)
    return result
