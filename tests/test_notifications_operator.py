"""Operator alerts: sent once when raised and once when resolved, through the real worker and transports."""

from __future__ import annotations

import json
import time

import pytest

from notifications import operator, webhook
from tests.test_notifications_delivery import Receiver, celery_worker, wait_for  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.django_db(databases=["default", "timeseries"], transaction=True),
    pytest.mark.usefixtures("celery_worker"),
]


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def operator_channels(settings, receiver):
    from notifications.services import redis_client

    redis_client().delete(operator.ACTIVE_KEY)
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False  # the operator's own URLs are trusted anyway
    settings.NOTIFICATIONS_RETRY_BASE_SECONDS = 0.05
    settings.NOTIFICATIONS_RETRY_CAP_SECONDS = 0.2
    settings.OPERATOR_WEBHOOK_URL = receiver.url + "/ops"
    settings.OPERATOR_WEBHOOK_SECRET = "operator-secret-0123456789"
    settings.OPERATOR_TELEGRAM_CHAT_ID = "-100999"
    settings.TELEGRAM_API_URL = receiver.url
    settings.TELEGRAM_BOT_TOKEN = "111:operator-bot-token"
    yield settings
    redis_client().delete(operator.ACTIVE_KEY)


def test_an_operator_alert_is_sent_once_when_raised_and_once_when_resolved(operator_channels, receiver):
    raised = [operator.raise_operator_alert("feed_stale", "feed stale for 135 s") for _ in range(3)]
    assert raised == [True, False, False]
    wait_for(lambda: len(receiver.requests) == 2, what="the raised alert on both channels")
    assert set(operator.active_operator_alerts()) == {"feed_stale"}

    resolved = [operator.resolve_operator_alert("feed_stale") for _ in range(2)]
    assert resolved == [True, False]
    wait_for(lambda: len(receiver.requests) == 4, what="the resolution on both channels")
    time.sleep(0.5)
    assert len(receiver.requests) == 4

    hooks = [r for r in receiver.requests if r["path"] == "/ops"]
    bodies = [json.loads(r["body"]) for r in hooks]
    assert [(b["type"], b["key"], b["state"]) for b in bodies] == [
        ("operator", "feed_stale", "raised"),
        ("operator", "feed_stale", "resolved"),
    ]
    assert bodies[0]["message"] == "feed stale for 135 s"
    assert bodies[1]["message"].startswith("resolved after ")
    for hook in hooks:
        assert webhook.verify(
            "operator-secret-0123456789",
            hook["body"],
            hook["headers"]["X-Cryptomon-Signature"],
            hook["headers"]["X-Cryptomon-Timestamp"],
        )
    texts = [json.loads(r["body"])["text"] for r in receiver.requests if r["path"].endswith("/sendMessage")]
    assert texts[0] == "🚨 PROBLEM [feed_stale] feed stale for 135 s"
    assert texts[1].startswith("✅ RESOLVED [feed_stale] resolved after ")
    assert operator.active_operator_alerts() == {}


def test_resolving_an_alert_that_was_never_raised_sends_nothing(operator_channels, receiver):
    assert operator.resolve_operator_alert("rest_banned") is False
    assert operator.raise_operator_alert("rest_banned", "REST 418: banned until 12:00") is True
    assert operator.raise_operator_alert("consumer_lag", "consumer lag 75 s") is True
    wait_for(lambda: len(receiver.requests) == 4, what="two alerts on two channels")
    keys = sorted(json.loads(r["body"])["key"] for r in receiver.requests if r["path"] == "/ops")
    assert keys == ["consumer_lag", "rest_banned"]


def test_an_operator_send_is_retried_after_a_server_error(operator_channels, receiver):
    operator_channels.OPERATOR_TELEGRAM_CHAT_ID = ""
    receiver.answer((502, b"bad gateway"))
    operator.raise_operator_alert("gaps_forced", "3 gaps forced on BTCUSDT")
    wait_for(lambda: len(receiver.requests) == 2, what="the retried send")
    first, second = (json.loads(r["body"]) for r in receiver.requests)
    assert first == second and second["key"] == "gaps_forced"
