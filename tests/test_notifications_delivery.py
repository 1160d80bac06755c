"""Notifications end to end: a real Celery worker (threads, Redis broker), real PostgreSQL, and local HTTP
servers standing in for Telegram, Discord, Slack and webhook receivers (the remote services)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import transaction

from alerts.models import AlertHistory, OutboxEntry, UserSettings
from notifications import services, webhook
from notifications.models import Delivery, NotificationChannel

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

BOT_TOKEN = "987654:TEST-bot-token-SECRET-zz91"


class Receiver:
    """A local HTTP server playing a remote API: answers from a script, records every request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict | bytes, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                            "at": time.monotonic(),
                        }
                    )
                    status, answer, headers = (
                        receiver.script.pop(0) if receiver.script else (200, {"ok": True}, {})
                    )
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, *responses: tuple) -> None:
        with self.lock:
            self.script.extend((r[0], r[1], r[2] if len(r) > 2 else {}) for r in responses)

    def json_bodies(self) -> list[dict]:
        return [json.loads(request["body"]) for request in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    """Poll until `condition()` is truthy (an upper bound for slow machines, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def celery_worker():
    """A real Celery worker (thread pool) consuming from the session's Redis."""
    from celery.contrib.testing.worker import start_worker

    from cryptomon.celery import app

    app.conf.worker_hijack_root_logger = False
    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"
    ) as worker:
        yield worker


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def fast(settings, receiver):
    """Delays shortened, local receivers allowed, Telegram pointed at the receiver."""
    settings.NOTIFICATIONS_GROUP_SECONDS = 0.3
    settings.NOTIFICATIONS_RETRY_BASE_SECONDS = 0.05
    settings.NOTIFICATIONS_RETRY_CAP_SECONDS = 0.3
    settings.NOTIFICATIONS_RETRY_AFTER_SCALE = 0.2
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 5
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = True
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [receiver.server.server_address[1]]
    settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS = 2.0
    settings.TELEGRAM_API_URL = receiver.url
    settings.TELEGRAM_BOT_TOKEN = BOT_TOKEN
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.ALERTS_NOTIFY_LATE = False
    return settings


def make_user(name: str, **user_settings):
    user = get_user_model().objects.create_user(name, password="pw-not-used-1234")
    if user_settings:
        UserSettings.objects.create(user=user, **user_settings)
    return user


_BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def store_alert(
    symbol: str = "BTCUSDT",
    rule: str = "futures_pioneer_bull",
    minute: int = 0,
    *,
    owner: int | None = None,
    direction: str = "bull",
    severity: str = "info",
    volume_1d: float = 50_000_000.0,
    late: bool = False,
    enqueue: bool = True,
) -> tuple[AlertHistory, OutboxEntry]:
    """What run_alerts does: alert + outbox row in one transaction, fan-out queued after commit."""
    with transaction.atomic(using="timeseries"):
        alert = AlertHistory.objects.create(
            rule=rule,
            rule_name=rule.replace("_", " ").title(),
            severity=severity,
            direction=direction,
            symbol=symbol,
            time=_BASE + timedelta(minutes=minute),
            triggered_at=datetime.now(UTC),
            price=123.45,
            description="a test rule",
            metrics={"change_1h": 2.5, "volume_1d": volume_1d},
            owner_id=owner,
            late=late,
        )
        entry = OutboxEntry.objects.create(alert_id=alert.pk)
        if enqueue:
            services.enqueue_after_commit([entry])
    return alert, entry


def webhook_channel(user, receiver, **fields) -> NotificationChannel:
    return services.create_channel(
        user, "webhook", {"url": receiver.url + "/hook", "secret": "s" * 24 + "WXYZ"}, **fields
    )


def deliveries(**filters) -> list[Delivery]:
    return list(Delivery.objects.filter(**filters).order_by("id"))


# --- fan-out and routing --------------------------------------------------------------------------


def test_running_the_fan_out_twice_creates_no_duplicate_delivery(celery_worker, fast, receiver):
    user = make_user("alice")
    channel = webhook_channel(user, receiver)
    alert, entry = store_alert(enqueue=False)

    services.fan_out(entry.pk)
    services.fan_out(entry.pk)

    assert [(d.alert_id, d.channel_id) for d in deliveries()] == [(alert.pk, channel.pk)]
    wait_for(lambda: deliveries(status="sent"), what="the delivery to be sent")
    services.fan_out(entry.pk)  # a redelivered task after success
    services.flush_channel(channel.pk)
    time.sleep(fast.NOTIFICATIONS_GROUP_SECONDS * 3)
    assert len(receiver.requests) == 1
    entry.refresh_from_db()
    assert entry.dispatched_at is not None


def test_alerts_follow_each_channels_routing_and_each_users_visibility(celery_worker, fast, receiver):
    everyone = make_user("everyone")
    bears = make_user("bears")
    watcher = make_user("watcher", watchlist=["ETHUSDT"])
    muted = make_user("muted", muted_symbols={"BTCUSDT": None})
    big_only = make_user("bigonly", min_volume_1d=100_000_000.0)
    c_all = webhook_channel(everyone, receiver)
    c_bear = webhook_channel(bears, receiver, directions=["bear"], severities=["warning", "critical"])
    c_sym = webhook_channel(everyone, receiver, symbols=["SOLUSDT"], rules=["futures_top_hunter"])
    c_watch = webhook_channel(watcher, receiver)
    c_muted = webhook_channel(muted, receiver)
    c_big = webhook_channel(big_only, receiver)
    c_off = webhook_channel(everyone, receiver, enabled=False)

    btc_bull, _ = store_alert("BTCUSDT", direction="bull")
    eth_bear, _ = store_alert("ETHUSDT", "futures_big_bear_60", direction="bear", severity="warning")
    sol_top, _ = store_alert("SOLUSDT", "futures_top_hunter", direction="bear", severity="info")
    wait_for(lambda: OutboxEntry.objects.filter(dispatched_at__isnull=True).count() == 0, what="fan-out")

    routed = {(d.alert_id, d.channel_id) for d in deliveries()}
    assert routed == {
        (btc_bull.pk, c_all.pk),
        (eth_bear.pk, c_all.pk),
        (sol_top.pk, c_all.pk),
        (eth_bear.pk, c_bear.pk),
        (sol_top.pk, c_sym.pk),
        (eth_bear.pk, c_watch.pk),
        (eth_bear.pk, c_muted.pk),
        (sol_top.pk, c_muted.pk),
    }
    assert not {c_big.pk, c_off.pk} & {channel for _, channel in routed}


def test_bad_stored_settings_hide_the_alert_the_way_the_pages_do(celery_worker, fast, receiver):
    """The visibility rule of alerts.visibility: an unparsable mute expiry mutes until lifted (the fan-out
    used to raise on it) and a boolean volume is not a number."""
    garbled = make_user("garbled", muted_rules={"futures_pioneer_bull": "next tuesday"})
    floor = make_user("floor", min_volume_1d=1e6)
    webhook_channel(garbled, receiver)
    webhook_channel(floor, receiver)

    _, muted_entry = store_alert(enqueue=False)
    _, bool_entry = store_alert("ETHUSDT", "futures_top_hunter", volume_1d=True, enqueue=False)
    assert services.fan_out(muted_entry.pk).created == 1  # floor's channel only
    assert services.fan_out(bool_entry.pk).created == 1  # garbled's channel only

    assert {(d.alert_id, d.user_id) for d in deliveries()} == {
        (muted_entry.alert_id, floor.pk),
        (bool_entry.alert_id, garbled.pk),
    }


def test_a_personal_rules_alert_goes_to_its_owner_only(celery_worker, fast, receiver):
    owner = make_user("owner")
    other = make_user("other")
    mine = webhook_channel(owner, receiver)
    webhook_channel(other, receiver)

    alert, _ = store_alert(rule=f"u{owner.pk}-my-rule", owner=owner.pk)
    wait_for(lambda: deliveries(status="sent"), what="the owner's delivery")

    assert [(d.alert_id, d.channel_id) for d in deliveries()] == [(alert.pk, mine.pk)]


def test_late_alerts_are_not_notified_unless_the_setting_says_so(celery_worker, fast, receiver):
    channel = webhook_channel(make_user("bob"), receiver)
    _, entry = store_alert(late=True, enqueue=False)
    services.fan_out(entry.pk)
    assert deliveries() == []

    fast.ALERTS_NOTIFY_LATE = True
    _, entry = store_alert(minute=1, late=True, enqueue=False)
    services.fan_out(entry.pk)
    assert [d.channel_id for d in deliveries()] == [channel.pk]


def test_quiet_hours_follow_the_users_time_zone(celery_worker, fast, receiver):
    tokyo = ZoneInfo("Asia/Tokyo")
    local_now = datetime.now(tokyo)
    start = (local_now - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (local_now + timedelta(hours=1)).time().replace(second=0, microsecond=0)
    in_tokyo = webhook_channel(
        make_user("tokyo", timezone="Asia/Tokyo"), receiver, quiet_start=start, quiet_end=end
    )
    # Same clock times, but in UTC it is nine hours earlier: outside the window.
    in_utc = webhook_channel(make_user("london", timezone="UTC"), receiver, quiet_start=start, quiet_end=end)

    store_alert()
    wait_for(lambda: deliveries(status="sent"), what="the UTC user's delivery")

    by_channel = {d.channel_id: d for d in deliveries()}
    assert by_channel[in_tokyo.pk].status == "skipped"
    assert by_channel[in_tokyo.pk].last_error == "quiet hours"
    assert by_channel[in_utc.pk].status == "sent"
    assert len(receiver.requests) == 1


def test_the_daily_cap_limits_alerts_per_symbol(celery_worker, fast, receiver):
    channel = webhook_channel(make_user("capped"), receiver, daily_cap_per_symbol=2)
    for minute in range(3):
        store_alert("BTCUSDT", minute=minute)
    store_alert("ETHUSDT", minute=0)
    wait_for(lambda: OutboxEntry.objects.filter(dispatched_at__isnull=True).count() == 0, what="fan-out")

    statuses = [(d.symbol, d.status != "skipped") for d in deliveries(channel_id=channel.pk)]
    assert sorted(statuses) == [("BTCUSDT", False), ("BTCUSDT", True), ("BTCUSDT", True), ("ETHUSDT", True)]
    skipped = deliveries(channel_id=channel.pk, status="skipped")
    assert [d.symbol for d in skipped] == ["BTCUSDT"]
    assert "daily cap of 2" in skipped[0].last_error


# --- grouping ---------------------------------------------------------------------------------------


def test_eighty_alerts_in_the_window_go_out_as_one_message_per_channel(celery_worker, fast, receiver):
    # A window longer than the burst takes to fan out on any machine; the test then ends the window
    # itself (the flush the first delivery scheduled), so no timing decides the outcome.
    fast.NOTIFICATIONS_GROUP_SECONDS = 120.0
    user = make_user("dump")
    hook = webhook_channel(user, receiver)
    telegram = services.create_channel(user, "telegram", {"chat_id": "-1001234567890"})
    with transaction.atomic(using="timeseries"):
        for index in range(80):
            store_alert(f"COIN{index:02d}USDT", direction="bear")

    wait_for(lambda: len(deliveries(status="pending")) == 160, what="160 deliveries waiting for the window")
    assert receiver.requests == []
    for channel in (hook, telegram):
        services.flush_channel(channel.pk)
    wait_for(lambda: len(deliveries(status="sent")) == 160, what="160 deliveries sent")
    time.sleep(0.5)  # nothing more may arrive
    hook_requests = [r for r in receiver.requests if r["path"] == "/hook"]
    telegram_requests = [r for r in receiver.requests if r["path"].endswith("/sendMessage")]
    assert len(hook_requests) == 1 and len(telegram_requests) == 1
    body = json.loads(hook_requests[0]["body"])
    assert body["v"] == 1 and len(body["alerts"]) == 80
    assert {a["symbol"] for a in body["alerts"]} == {f"COIN{i:02d}USDT" for i in range(80)}
    text = json.loads(telegram_requests[0]["body"])["text"]
    assert text.startswith("cryptomon: 80 alerts (80 bear)")
    assert len(text) <= 4096
    assert len({d.group_key for d in deliveries(channel_id=hook.pk)}) == 1


# --- retries and permanent failures -----------------------------------------------------------------


def test_a_500_is_retried_until_the_receiver_accepts(celery_worker, fast, receiver):
    channel = webhook_channel(make_user("retry"), receiver)
    receiver.answer((500, b"down"), (503, b"still down"))
    alert, _ = store_alert()

    wait_for(lambda: deliveries(status="sent"), what="delivery after retries")
    assert len(receiver.requests) == 3
    keys = {request["headers"]["Idempotency-Key"] for request in receiver.requests}
    assert len(keys) == 1  # the same group key on every attempt
    (delivery,) = deliveries()
    assert delivery.attempts == 3 and delivery.sent_at is not None
    assert (
        json.loads(receiver.requests[-1]["body"])["id"] == f"futures_pioneer_bull:BTCUSDT:{alert.open_time}"
    )
    channel.refresh_from_db()
    assert channel.enabled and channel.last_success_at is not None


def test_transient_failures_give_up_after_the_attempt_limit(celery_worker, fast, receiver):
    fast.NOTIFICATIONS_MAX_ATTEMPTS = 3
    channel = webhook_channel(make_user("giveup"), receiver)
    receiver.answer(*[(502, b"bad gateway")] * 5)
    store_alert()

    wait_for(lambda: deliveries(status="failed"), what="the delivery to give up")
    assert len(receiver.requests) == 3
    (delivery,) = deliveries()
    assert delivery.last_error.startswith("gave up after 3 attempts: the webhook answered 502")
    channel.refresh_from_db()
    assert channel.enabled  # transient trouble never disables a channel


def test_telegram_429_waits_the_retry_after_it_asks_for(celery_worker, fast, receiver):
    fast.NOTIFICATIONS_RETRY_BASE_SECONDS = 60.0  # a backoff retry would not come back within the test
    fast.NOTIFICATIONS_RETRY_CAP_SECONDS = 60.0
    fast.NOTIFICATIONS_RETRY_AFTER_SCALE = 0.25
    services.create_channel(make_user("tg"), "telegram", {"chat_id": "42424242"})
    receiver.answer(
        (
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 3",
                "parameters": {"retry_after": 3},
            },
        )
    )
    store_alert()

    wait_for(lambda: deliveries(status="sent"), what="the Telegram delivery")
    first, second = receiver.requests
    assert second["at"] - first["at"] >= 3 * 0.25
    assert first["path"] == f"/bot{BOT_TOKEN}/sendMessage"
    assert json.loads(second["body"])["chat_id"] == "42424242"


def test_a_webhook_answering_404_disables_the_channel_with_the_reason(celery_worker, fast, receiver):
    channel = webhook_channel(make_user("gone"), receiver)
    receiver.answer((404, b"no such hook"))
    store_alert()

    wait_for(lambda: deliveries(status="failed"), what="the failed delivery")
    channel.refresh_from_db()
    assert not channel.enabled
    assert channel.disabled_reason == "the webhook answered 404: no such hook"
    assert len(receiver.requests) == 1

    store_alert(minute=5)  # later alerts skip the disabled channel
    wait_for(lambda: OutboxEntry.objects.filter(dispatched_at__isnull=True).count() == 0, what="fan-out")
    assert len(deliveries()) == 1


def test_a_blocked_telegram_bot_disables_the_channel(celery_worker, fast, receiver):
    channel = services.create_channel(make_user("blocked"), "telegram", {"chat_id": "777"})
    receiver.answer(
        (403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})
    )
    store_alert()

    wait_for(lambda: deliveries(status="failed"), what="the failed delivery")
    channel.refresh_from_db()
    assert not channel.enabled
    assert channel.disabled_reason == "Telegram answered 403: Forbidden: bot was blocked by the user"


def test_a_webhook_pointing_at_a_private_address_is_refused_and_disabled(celery_worker, fast, receiver):
    channel = webhook_channel(make_user("ssrf"), receiver)
    fast.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False
    store_alert()

    wait_for(lambda: deliveries(status="failed"), what="the refused delivery")
    channel.refresh_from_db()
    assert not channel.enabled
    assert channel.disabled_reason == "refused: 127.0.0.1 is a loopback address"
    assert receiver.requests == []


# --- each transport's request -----------------------------------------------------------------------


def test_each_transport_sends_what_its_api_expects(celery_worker, fast, receiver):
    user = make_user("all")
    secret = "signing-secret-ABCDEFGH-1234"
    services.create_channel(user, "webhook", {"url": receiver.url + "/hook", "secret": secret})
    services.create_channel(user, "discord", {"url": receiver.url + "/api/webhooks/1/discordtoken"})
    services.create_channel(user, "slack", {"url": receiver.url + "/services/T0/B0/slacktoken"})
    services.create_channel(user, "telegram", {"chat_id": "-100500"})
    services.create_channel(user, "email", {"address": "trader@example.com"})
    alert, _ = store_alert("ETHUSDT", "futures_big_bull_60", severity="warning")

    wait_for(lambda: len(deliveries(status="sent")) == 5, what="five deliveries")
    by_path = {request["path"]: request for request in receiver.requests}
    hook = by_path["/hook"]
    assert json.loads(hook["body"]) == alert.to_payload()
    signature, timestamp = hook["headers"]["X-Cryptomon-Signature"], hook["headers"]["X-Cryptomon-Timestamp"]
    assert webhook.verify(secret, hook["body"], signature, timestamp)
    assert not webhook.verify(secret, hook["body"] + b" ", signature, timestamp)
    assert not webhook.verify(secret, hook["body"], signature, timestamp, now=int(timestamp) + 3600)
    assert hook["headers"]["Idempotency-Key"] == str(deliveries()[0].pk)
    assert "ETHUSDT" in json.loads(by_path["/api/webhooks/1/discordtoken"]["body"])["content"]
    assert json.loads(by_path["/api/webhooks/1/discordtoken"]["body"])["allowed_mentions"] == {"parse": []}
    assert "Futures Big Bull 60" in json.loads(by_path["/services/T0/B0/slacktoken"]["body"])["text"]
    telegram = json.loads(by_path[f"/bot{BOT_TOKEN}/sendMessage"]["body"])
    assert telegram["chat_id"] == "-100500" and "ETHUSDT" in telegram["text"]
    (email,) = mail.outbox
    assert email.to == ["trader@example.com"] and email.subject == "Futures Big Bull 60: ETHUSDT"


def test_discord_rate_limits_are_retried_and_a_removed_slack_hook_disables(celery_worker, fast, receiver):
    user = make_user("chat")
    discord = services.create_channel(user, "discord", {"url": receiver.url + "/discord"})
    slack = services.create_channel(user, "slack", {"url": receiver.url + "/slack"})
    receiver.answer(
        (429, {"message": "You are being rate limited.", "retry_after": 0.5}),
        (410, b"channel_is_archived"),
        (200, b""),
    )
    store_alert()

    wait_for(lambda: len(deliveries(status__in=["sent", "failed"])) == 2, what="both outcomes")
    discord.refresh_from_db()
    slack.refresh_from_db()
    outcomes = {d.channel_id: d.status for d in deliveries()}
    # Which channel got which scripted answer depends on which flush ran first; both outcomes hold.
    assert sorted(outcomes.values()) == ["failed", "sent"]
    dead = discord if outcomes[discord.pk] == "failed" else slack
    assert not dead.enabled and "410" in dead.disabled_reason


# --- nothing lost -----------------------------------------------------------------------------------


def test_an_outbox_row_nobody_dispatched_is_requeued_by_the_sweep(celery_worker, fast, receiver):
    fast.NOTIFICATIONS_STUCK_SECONDS = 30
    webhook_channel(make_user("stuck"), receiver)
    _, entry = store_alert(enqueue=False)  # the process died between commit and enqueue
    OutboxEntry.objects.filter(pk=entry.pk).update(created_at=datetime.now(UTC) - timedelta(minutes=5))

    result = services.requeue_stuck()

    assert result.outbox == 1
    wait_for(lambda: deliveries(status="sent"), what="the re-queued alert")
    assert len(receiver.requests) == 1
    assert services.requeue_stuck().outbox == 0


def test_a_delivery_left_claimed_by_a_dead_worker_is_sent_once(celery_worker, fast, receiver):
    fast.NOTIFICATIONS_STUCK_SECONDS = 30
    channel = webhook_channel(make_user("crash"), receiver)
    _, entry = store_alert(enqueue=False)
    services.fan_out(entry.pk)
    # A worker claimed it and died before sending.
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    Delivery.objects.filter(channel_id=channel.pk).update(status="sending", claimed_at=long_ago, attempts=1)
    time.sleep(fast.NOTIFICATIONS_GROUP_SECONDS * 3)  # the scheduled flush finds nothing to claim
    assert receiver.requests == []

    assert services.requeue_stuck().reclaimed == 1
    wait_for(lambda: deliveries(status="sent"), what="the reclaimed delivery")
    for _ in range(3):  # redelivered tasks and repeated sweeps send nothing more
        services.flush_channel(channel.pk)
        services.requeue_stuck()
    time.sleep(fast.NOTIFICATIONS_GROUP_SECONDS * 2)
    assert len(receiver.requests) == 1


# --- send test ----------------------------------------------------------------------------------------


def test_send_test_reports_success_or_the_exact_failure(celery_worker, fast, receiver):
    channel = webhook_channel(make_user("tester"), receiver)

    ok = services.send_test(channel)
    assert ok.ok and ok.detail.startswith("test message sent to webhook …hook")
    assert json.loads(receiver.requests[0]["body"])["type"] == "test"

    receiver.answer((401, b"bad signature"))
    failed = services.send_test(channel)
    assert not failed.ok and failed.detail == "the webhook answered 401: bad signature"
    channel.refresh_from_db()
    assert channel.last_error == "test: the webhook answered 401: bad signature"

    fast.TELEGRAM_BOT_TOKEN = ""
    telegram = services.create_channel(channel.user, "telegram", {"chat_id": "123"})
    assert services.send_test(telegram).detail == "TELEGRAM_BOT_TOKEN is not set on the server"
