"""Celery tasks for notifications: thin wrappers over the services, operator alerts and the watchdog.

Registered under their `notifications.queue` names (still `alerts.tasks.*`: see that module).
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

import cryptomon.celery  # noqa: F401 - the configured app, so .delay() from web/run_alerts uses its broker
from notifications import operator, queue, services, watchdog
from notifications.base import DeliveryError, TransientError

logger = logging.getLogger(__name__)


@shared_task(name=queue.DISPATCH_OUTBOX_ENTRIES, acks_late=True, ignore_result=True)
def dispatch_outbox_entries(outbox_ids: list[int]) -> int:
    """Fan outbox rows out into deliveries (idempotent); returns deliveries created. A row that fails
    is logged and left undispatched, so the stuck-outbox sweep queues it again; the others go on."""
    created = 0
    for outbox_id in outbox_ids:
        try:
            created += services.fan_out(outbox_id).created
        except Exception:
            logger.exception("fan-out of outbox row %s failed; the stuck-outbox sweep retries it", outbox_id)
    return created


# The delivery tasks' Celery time limits (enforced by the prefork pool; flush_channel also keeps the soft
# one itself, so a thread pool gets it too). A send has its own deadline well within them.
DELIVERY_LIMITS = {
    "soft_time_limit": settings.NOTIFICATIONS_TASK_SOFT_TIME_LIMIT_SECONDS,
    "time_limit": settings.NOTIFICATIONS_TASK_TIME_LIMIT_SECONDS,
}


@shared_task(name=queue.FLUSH_CHANNEL, acks_late=True, ignore_result=True, **DELIVERY_LIMITS)
def flush_channel(channel_id: int) -> int:
    """Send a channel's due deliveries as one message; returns alerts delivered."""
    return services.flush_channel(channel_id)


@shared_task(name=queue.REQUEUE_STUCK_NOTIFICATIONS, ignore_result=True)
def requeue_stuck_notifications() -> None:
    services.requeue_stuck()


@shared_task(
    name=queue.SEND_OPERATOR_MESSAGE,
    bind=True,
    acks_late=True,
    ignore_result=True,
    max_retries=None,
    **DELIVERY_LIMITS,
)
def send_operator_message(self, index: int, key: str, state: str, text: str, since: int) -> None:
    try:
        operator.send_to_target(index, key, state, text, since)
    except TransientError as error:
        attempt = self.request.retries + 1
        if attempt >= settings.NOTIFICATIONS_MAX_ATTEMPTS:
            logger.error(
                "operator alert [%s] %s not delivered after %d attempts: %s", key, state, attempt, error
            )
            return
        raise self.retry(countdown=services.retry_delay(attempt, error.retry_after)) from None
    except DeliveryError as error:
        logger.error("operator alert [%s] %s not delivered: %s", key, state, error)


@shared_task(name=queue.CHECK_OPERATOR_CONDITIONS, ignore_result=True)
def check_operator_conditions() -> list[str]:
    """Raise or resolve the operator alerts (feed stale, consumer lag, REST 418/451, forced gaps)."""
    return [condition.key for condition in watchdog.check() if condition.problem]
