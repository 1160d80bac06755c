"""Operator alerts: problems with the system itself, sent to the operator's channels from settings.

Workers call `raise_operator_alert(key, message)` when a condition starts (feed stale > 2 min,
consumer lag > 1 min, REST 418/451, forced gaps) and `resolve_operator_alert(key)` when it ends, as
often as they like: a Redis hash of active keys makes each condition send once when raised and once
when resolved, across processes and restarts. Sending goes through Celery (`send_operator_message`,
one task per configured target, retried on transient errors), so callers never wait on a remote API;
async callers use `araise_operator_alert` / `aresolve_operator_alert`. Every change is also logged.

Targets (all optional, every one configured gets the message): OPERATOR_WEBHOOK_URL (+
OPERATOR_WEBHOOK_SECRET for the signature), OPERATOR_DISCORD_URL, OPERATOR_SLACK_URL,
OPERATOR_TELEGRAM_CHAT_ID (with TELEGRAM_BOT_TOKEN), OPERATOR_EMAIL. These URLs are the operator's own,
so they may point at private addresses (an internal alert manager).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from django.conf import settings

from notifications import grouping, queue, safety
from notifications.services import deliver, redis_client

logger = logging.getLogger(__name__)

ACTIVE_KEY = "cryptomon:operator:alerts"


def operator_targets() -> list[tuple[str, dict]]:
    """(kind, transport config) for every operator channel configured in the environment."""
    targets: list[tuple[str, dict]] = []
    if settings.OPERATOR_WEBHOOK_URL:
        targets.append(
            ("webhook", {"url": settings.OPERATOR_WEBHOOK_URL, "secret": settings.OPERATOR_WEBHOOK_SECRET})
        )
    if settings.OPERATOR_DISCORD_URL:
        targets.append(("discord", {"url": settings.OPERATOR_DISCORD_URL}))
    if settings.OPERATOR_SLACK_URL:
        targets.append(("slack", {"url": settings.OPERATOR_SLACK_URL}))
    if settings.OPERATOR_TELEGRAM_CHAT_ID:
        targets.append(("telegram", {"chat_id": settings.OPERATOR_TELEGRAM_CHAT_ID}))
    if settings.OPERATOR_EMAIL:
        targets.append(("email", {"address": settings.OPERATOR_EMAIL}))
    return targets


def raise_operator_alert(key: str, message: str) -> bool:
    """Report a problem; True when this call raised it (and queued the sends), False if already active."""
    since = int(time.time() * 1000)
    if not redis_client().hsetnx(ACTIVE_KEY, key, json.dumps({"message": message, "since": since})):
        return False
    logger.warning("operator alert raised [%s]: %s", key, message)
    _enqueue(key, "raised", message, since)
    return True


def resolve_operator_alert(key: str, message: str | None = None) -> bool:
    """Report the problem gone; True when this call resolved an active alert (and queued the sends)."""
    client = redis_client()
    raw = client.hget(ACTIVE_KEY, key)
    if raw is None or not client.hdel(ACTIVE_KEY, key):
        return False
    state = json.loads(raw)
    minutes = (time.time() * 1000 - state["since"]) / 60000
    text = message or f"resolved after {minutes:.1f} min (was: {state['message']})"
    logger.warning("operator alert resolved [%s]: %s", key, text)
    _enqueue(key, "resolved", text, state["since"])
    return True


def on_dead_letter(sender, *, dead_letter_id: int, summary: str, **kwargs) -> None:
    """Receiver of `alerts.signals.dead_lettered`: one operator alert per dead letter (each is a lost
    alert or bar the operator must look at: admin › Alerts › Dead letters)."""
    raise_operator_alert(
        f"alerts_dead_letter_{dead_letter_id}", f"{summary} (admin: alert dead letters #{dead_letter_id})"
    )


def on_dead_letters_handled(sender, *, dead_letter_ids: list[int], **kwargs) -> None:
    """Receiver of `alerts.signals.dead_letters_handled`: an operator dealt with them, so their operator
    alerts are resolved."""
    for dead_letter_id in dead_letter_ids:
        resolve_operator_alert(
            f"alerts_dead_letter_{dead_letter_id}",
            f"dead letter #{dead_letter_id} marked handled in the admin",
        )


def active_operator_alerts() -> dict[str, dict]:
    """Active operator alerts by key: {message, since} (for health pages)."""
    return {key.decode(): json.loads(value) for key, value in redis_client().hgetall(ACTIVE_KEY).items()}


async def araise_operator_alert(key: str, message: str) -> bool:
    return await asyncio.to_thread(raise_operator_alert, key, message)


async def aresolve_operator_alert(key: str, message: str | None = None) -> bool:
    return await asyncio.to_thread(resolve_operator_alert, key, message)


def _enqueue(key: str, state: str, text: str, since: int) -> None:
    targets = operator_targets()
    if not targets:
        logger.warning(
            "no operator channel configured (OPERATOR_* settings); [%s] %s only logged", key, state
        )
    for index in range(len(targets)):
        queue.send_operator_message(index, key, state, text, since)


def send_to_target(index: int, key: str, state: str, text: str, since: int) -> None:
    """One send to one operator target; raises DeliveryError like every transport."""
    targets = operator_targets()
    if index >= len(targets):
        return
    kind, config = targets[index]
    with safety.trusted_targets():
        deliver(kind, config, grouping.operator_message(key, state, text, since))
