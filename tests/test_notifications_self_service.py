"""Self-service channels (docs/notifications.md "Self-service"): Telegram connected through a one-time deep
link against a local fake Bot API (tests/fake_telegram.py, a real HTTP server), pasted webhooks with a
signing secret, email confirmed by a link, routing per channel, quiet hours held as a digest, the daily
cap. A real Celery worker, real PostgreSQL and Redis, as in test_notifications_delivery."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from alerts.models import OutboxEntry
from gateway import selectors as gateway_selectors
from notifications import routing, selectors, services, telegram_bot, webhook
from notifications.models import Delivery, NotificationChannel, TelegramLinkToken
from tests import test_notifications_delivery as delivery_tests
from tests.browser.test_dashboard_browser import ROOT, _test_database_url
from tests.fake_telegram import FakeBotAPI

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

celery_worker = delivery_tests.celery_worker  # the same fixtures: a real worker, a scripted receiver
receiver = delivery_tests.receiver
fast = delivery_tests.fast
make_user, store_alert, wait_for = (
    delivery_tests.make_user,
    delivery_tests.store_alert,
    delivery_tests.wait_for,
)
deliveries = delivery_tests.deliveries

BOT_TOKEN = "123456:FAKE-bot-token-for-tests-only"
CHAT = 424242


@pytest.fixture
def bot(fast):
    """The fake Bot API, with cryptomon's bot settings pointed at it."""
    fake = FakeBotAPI(BOT_TOKEN)
    fast.TELEGRAM_API_URL = fake.url
    fast.TELEGRAM_BOT_TOKEN = BOT_TOKEN
    fast.TELEGRAM_BOT_USERNAME = fake.username
    fast.TELEGRAM_POLL_TIMEOUT_SECONDS = 1
    fast.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [*fast.NOTIFICATIONS_ALLOWED_EXTRA_PORTS, fake.port]
    yield fake
    fake.close()


@pytest.fixture
def poller(bot):
    """run_telegram_bot's worker, long-polling the fake in a thread of its own."""
    worker = telegram_bot.TelegramPoller()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.run(),), daemon=True)
    thread.start()
    yield worker
    loop.call_soon_threadsafe(worker.stop)
    thread.join(timeout=30)


def connect(bot: FakeBotAPI, user, chat: int = CHAT) -> NotificationChannel:
    """What the user does: Connect Telegram, open the deep link, press Start."""
    token = services.start_telegram_link(user)
    link = services.telegram_deep_link(token)
    assert link == f"https://t.me/{bot.username}?start={token}"
    before = len(bot.messages(chat))
    bot.user_sends(chat, f"/start {token}")
    bot.wait_for_message(chat, "connected", since=before)
    return NotificationChannel.objects.get(user=user, kind="telegram")


# --- Telegram -------------------------------------------------------------------------------------


def test_pressing_start_on_the_deep_link_binds_the_chat_and_the_bot_says_connected(
    celery_worker, bot, poller
):
    trader = make_user("trader")
    channel = connect(bot, trader)
    assert channel.config == {"chat_id": str(CHAT)} and channel.enabled
    assert channel.masked == "chat …4242"  # pages show the chat id masked
    result = services.send_test(channel)
    assert result.ok, result.detail
    assert "cryptomon test message" in bot.wait_for_message(CHAT, "cryptomon test message")


def test_a_link_works_once_and_not_after_ten_minutes(celery_worker, bot, poller):
    trader = make_user("trader")
    token = services.start_telegram_link(trader)
    bot.user_sends(CHAT, f"/start {token}")
    bot.wait_for_message(CHAT, "connected")
    bot.user_sends(CHAT + 1, f"/start {token}")  # the same link, used again from another chat
    assert "expired or was already used" in bot.wait_for_message(CHAT + 1, "expired")
    late = services.start_telegram_link(trader)
    TelegramLinkToken.objects.filter(digest=services.digest_of(late)).update(
        expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    bot.user_sends(CHAT + 2, f"/start {late}")
    bot.wait_for_message(CHAT + 2, "expired")
    assert NotificationChannel.objects.filter(user=trader).count() == 1
    assert TelegramLinkToken.objects.get(digest=services.digest_of(token)).used_at is not None
    assert not TelegramLinkToken.objects.filter(digest=token).exists()  # only the digest is stored


def test_stop_in_the_chat_disconnects_it_and_a_new_link_reconnects(celery_worker, bot, poller):
    trader = make_user("trader")
    channel = connect(bot, trader)
    bot.user_sends(CHAT, "/stop")
    bot.wait_for_message(CHAT, "Disconnected")
    channel.refresh_from_db()
    assert not channel.enabled and channel.disabled_reason == "disconnected with /stop in Telegram"
    store_alert()
    wait_for(lambda: not OutboxEntry.objects.filter(dispatched_at__isnull=True).exists(), what="fan-out")
    assert deliveries() == []  # a stopped chat gets nothing
    again = connect(bot, trader)
    assert again.pk == channel.pk and again.enabled


def test_a_blocked_bot_switches_the_channel_off_with_the_reason(celery_worker, bot, poller):
    trader = make_user("trader")
    channel = connect(bot, trader)
    bot.block(CHAT)
    store_alert()
    wait_for(lambda: deliveries(status="failed"), what="the delivery to fail")
    channel.refresh_from_db()
    assert not channel.enabled
    assert channel.disabled_reason == "Telegram answered 403: Forbidden: bot was blocked by the user"
    client = Client()
    client.force_login(trader)
    page = client.get("/settings/notifications/").content.decode()
    assert "off: Telegram answered 403: Forbidden: bot was blocked by the user" in page


def test_a_429_from_telegram_is_retried_after_its_retry_after(celery_worker, bot, poller):
    trader = make_user("trader")
    connect(bot, trader)
    bot.rate_limit(2, retry_after=1)
    store_alert("ETHUSDT")
    text = bot.wait_for_message(CHAT, "ETHUSDT")
    assert "Futures Pioneer Bull" in text
    [delivery] = wait_for(lambda: deliveries(status="sent"), what="the delivery to be marked sent")
    assert delivery.attempts == 3  # two 429s, each waited out, then delivered


def test_the_poller_waits_out_a_429_on_getupdates(bot):
    bot.rate_limit(2, retry_after=1, method="getUpdates")
    trader = make_user("trader")
    worker = telegram_bot.TelegramPoller()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.run(),), daemon=True)
    thread.start()
    try:
        connect(bot, trader)
        assert bot.rate_limited["getUpdates"] == 0 and worker.stats.get("telegram_errors_total") == 2
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(timeout=30)


def test_the_poller_removes_a_webhook_before_polling(celery_worker, bot):
    trader = make_user("trader")
    worker = telegram_bot.TelegramPoller()
    # The webhook is set, so getUpdates answers 409 until the poller removes it (which it does first).
    bot.webhook_url = "https://example.invalid/hook"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.run(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while bot.webhook_url != "" and time.monotonic() < deadline:  # removed before the first poll
            time.sleep(0.05)
        assert bot.webhook_url == "" and "setWebhook" in bot.calls
        connect(bot, trader)  # and the poller then binds the chat from getUpdates
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(timeout=30)


def test_the_webhook_endpoint_needs_the_secret_token(celery_worker, bot, settings):
    settings.TELEGRAM_WEBHOOK_SECRET = "hook-secret-0123456789"
    trader = make_user("trader")
    token = services.start_telegram_link(trader)
    update = {
        "update_id": 7,
        "message": {"message_id": 1, "chat": {"id": CHAT, "type": "private"}, "text": f"/start {token}"},
    }
    bot.chats[CHAT] = {"id": CHAT}
    client = Client()
    refused = client.post("/telegram/webhook", update, content_type="application/json")
    wrong = client.post(
        "/telegram/webhook",
        update,
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": "hook-secret-0123456780"},
    )
    assert (refused.status_code, wrong.status_code) == (403, 403)
    assert not NotificationChannel.objects.exists()
    accepted = client.post(
        "/telegram/webhook",
        update,
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": "hook-secret-0123456789"},
    )
    assert accepted.status_code == 200
    assert NotificationChannel.objects.get(user=trader).config["chat_id"] == str(CHAT)
    assert bot.messages(CHAT) == [telegram_bot.CONNECTED]


def test_in_webhook_mode_telegram_posts_updates_to_the_site(bot, settings, live_server):
    """setWebhook registers the site's /telegram/webhook with the secret; the fake then POSTs each update
    there with the secret token header, as Telegram does."""
    settings.TELEGRAM_WEBHOOK_SECRET = "hook-secret-0123456789"
    trader = make_user("trader")
    telegram_bot.set_webhook(f"{live_server.url}/telegram/webhook")
    assert bot.webhook_secret == "hook-secret-0123456789"
    token = services.start_telegram_link(trader)
    assert bot.user_sends(CHAT, f"/start {token}") == 200
    assert bot.messages(CHAT) == [telegram_bot.CONNECTED]
    assert NotificationChannel.objects.get(user=trader).enabled
    bot.webhook_secret = "not-the-secret-000000"
    assert bot.user_sends(CHAT, "/stop") == 403  # a forged update is refused
    assert NotificationChannel.objects.get(user=trader).enabled


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
updates = st.fixed_dictionaries(
    {"update_id": st.integers(0, 10**9)},
    optional={
        "message": st.fixed_dictionaries(
            {},
            optional={
                "chat": st.fixed_dictionaries(
                    {},
                    optional={
                        "id": st.integers(-(10**13), 10**13) | json_values,
                        "first_name": st.text(max_size=90),
                    },
                )
                | json_values,
                "text": st.sampled_from(["/start", "/stop", "/start \x00", "hello"])
                | st.text(max_size=80)
                | json_values,
            },
        )
        | json_values
    },
)


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(update=updates)
def test_any_update_shape_gets_an_answer_never_a_crash(bot, settings, update):
    settings.TELEGRAM_WEBHOOK_SECRET = "hook-secret-0123456789"
    response = Client().post(
        "/telegram/webhook",
        update,
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": "hook-secret-0123456789"},
    )
    assert response.status_code == 200


def test_a_connected_chats_odd_name_is_kept_printable(bot, poller):
    trader = make_user("trader")
    token = services.start_telegram_link(trader)
    bot.user_sends(CHAT, f"/start {token}", first_name="Bob\x00\u202e" + "x" * 200)
    bot.wait_for_message(CHAT, "connected")
    name = NotificationChannel.objects.get(user=trader).name
    assert name.startswith("Telegram Bobx") and len(name) == 80


# --- pasted URLs, secrets, limits -----------------------------------------------------------------


def test_a_webhook_gets_a_secret_shown_once_and_signed_requests(celery_worker, fast, receiver):
    trader = make_user("trader", watchlist=[])
    client = Client()
    client.force_login(trader)
    url = receiver.url + "/hook"
    created = client.post("/settings/notifications/add", {"kind": "webhook", "name": "desk", "url": url})
    shown = re.search(r'<code id="secret-value">([^<]+)</code>', created.content.decode()).group(1)
    channel = NotificationChannel.objects.get(user=trader)
    assert channel.config["secret"] == shown
    page = client.get(f"/settings/notifications/{channel.pk}/").content.decode()
    listing = client.get("/settings/notifications/").content.decode()
    for later in (page, listing):
        assert shown not in later and url not in later and shown[-4:] in later  # masked from now on
    tested = client.post(f"/settings/notifications/{channel.pk}/test").content.decode()
    assert "delivered: test message sent to webhook" in tested
    hook = receiver.requests[-1]
    headers = hook["headers"]
    assert webhook.verify(
        shown, hook["body"], headers["X-Cryptomon-Signature"], headers["X-Cryptomon-Timestamp"]
    )


def test_a_private_or_odd_port_url_is_refused_on_save(settings):
    trader = make_user("trader")
    client = Client()
    client.force_login(trader)
    for url, reason in [
        ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("https://hooks.example.com:8080/x", "port 8080 is not allowed"),
        ("ftp://hooks.example.com/x", "http"),
    ]:
        response = client.post("/settings/notifications/add", {"kind": "discord", "url": url})
        assert response.status_code == 400 and reason in response.content.decode(), url
    assert not NotificationChannel.objects.exists()


def test_a_failed_test_shows_the_remotes_error_in_one_line(celery_worker, fast, receiver):
    trader = make_user("trader")
    channel = services.add_channel(trader, "slack", "team", {"url": receiver.url + "/slack"})
    receiver.answer((400, b"invalid_payload"))
    client = Client()
    client.force_login(trader)
    page = client.post(f"/settings/notifications/{channel.pk}/test").content.decode()
    assert "failed: Slack answered 400: invalid_payload" in page


def test_a_user_has_at_most_the_configured_number_of_channels(settings):
    settings.NOTIFICATIONS_MAX_CHANNELS_PER_USER = 2
    trader = make_user("trader")
    for n in range(2):
        services.add_channel(
            trader, "discord", f"d{n}", {"url": f"https://discord.example.com/api/webhooks/{n}"}
        )
    client = Client()
    client.force_login(trader)
    response = client.post(
        "/settings/notifications/add",
        {"kind": "discord", "url": "https://discord.example.com/api/webhooks/9"},
    )
    assert response.status_code == 400
    assert "the most allowed (NOTIFICATIONS_MAX_CHANNELS_PER_USER)" in response.content.decode()
    with pytest.raises(services.ChannelError):
        services.start_telegram_link(trader)


def test_nobody_sees_or_changes_another_users_channel():
    owner, other = make_user("owner"), make_user("other")
    channel = services.add_channel(
        owner, "discord", "mine", {"url": "https://discord.example.com/api/webhooks/1"}
    )
    client = Client()
    client.force_login(other)
    for response in (
        client.get(f"/settings/notifications/{channel.pk}/"),
        client.post(f"/settings/notifications/{channel.pk}/test"),
        client.post(f"/settings/notifications/{channel.pk}/delete"),
    ):
        assert response.status_code == 404
    assert NotificationChannel.objects.filter(pk=channel.pk).exists()


def test_tests_links_and_new_channels_are_rate_limited_per_user(settings):
    settings.NOTIFICATIONS_ACTIONS_PER_MINUTE = 2
    trader = make_user("trader")
    channel = services.add_channel(
        trader, "discord", "d", {"url": "https://discord.example.com/api/webhooks/1"}
    )
    client = Client()
    client.force_login(trader)
    statuses = [client.post(f"/settings/notifications/{channel.pk}/test").status_code for _ in range(3)]
    assert statuses[2] == 429 and 429 not in statuses[:2]
    refused = client.post("/settings/notifications/telegram")
    assert refused.status_code == 429
    assert "NOTIFICATIONS_ACTIONS_PER_MINUTE" in refused.content.decode()


def test_sign_ups_are_limited_per_address(settings):
    settings.SIGNUP_RATE_LIMIT_PER_HOUR = 1
    address = f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"  # not counted by an earlier run
    form = {"username": "first", "password1": "pw-first-trader-1", "password2": "pw-first-trader-1"}
    assert Client(REMOTE_ADDR=address).post("/signup/", form).status_code == 302
    second = Client(REMOTE_ADDR=address).post("/signup/", {**form, "username": "second"})
    assert second.status_code == 429 and "at most 1 sign-ups an hour" in second.content.decode()


# --- email ----------------------------------------------------------------------------------------


def test_an_email_address_gets_nothing_until_its_link_is_opened(celery_worker, fast):
    trader = make_user("trader")
    client = Client()
    client.force_login(trader)
    client.post("/settings/notifications/add", {"kind": "email", "name": "inbox", "address": "t@example.com"})
    channel = NotificationChannel.objects.get(user=trader)
    assert not channel.verified
    [verification] = mail.outbox
    assert verification.to == ["t@example.com"]
    store_alert()
    wait_for(lambda: not OutboxEntry.objects.filter(dispatched_at__isnull=True).exists(), what="fan-out")
    assert deliveries() == [] and len(mail.outbox) == 1  # nothing but the confirmation
    assert "confirm the address first" in services.send_test(channel).detail
    link = re.search(r"http://\S+", verification.body).group(0)
    path = link.split("testserver", 1)[1]
    assert "Address confirmed" in Client().get(path).content.decode()  # works signed out
    channel.refresh_from_db()
    assert channel.verified
    store_alert("ETHUSDT")
    wait_for(lambda: len(mail.outbox) == 2, what="the alert mail")
    assert "ETHUSDT" in mail.outbox[1].subject


def test_an_old_or_forged_confirmation_link_is_refused(settings):
    trader = make_user("trader")
    channel = services.add_channel(trader, "email", "inbox", {"address": "t@example.com"})
    token = services.email_verification_token(channel)
    settings.NOTIFICATIONS_EMAIL_VERIFY_MAX_AGE_SECONDS = -1  # every link is too old now
    assert Client().get(f"/notifications/verify/{token}").status_code == 400
    settings.NOTIFICATIONS_EMAIL_VERIFY_MAX_AGE_SECONDS = 3600
    assert Client().get(f"/notifications/verify/{token[:-2]}xx").status_code == 400
    channel.refresh_from_db()
    assert not channel.verified


# --- routing, quiet hours, cap --------------------------------------------------------------------


def _fan_out_all() -> None:
    wait_for(lambda: not OutboxEntry.objects.filter(dispatched_at__isnull=True).exists(), what="fan-out")


def test_each_routing_choice_takes_only_its_alerts_and_visibility_still_rules(celery_worker, fast, receiver):
    trader = make_user("trader", watchlist=["ETHUSDT", "SOLUSDT"])
    other = make_user("other")
    url = receiver.url + "/hook"
    own = services.add_channel(trader, "webhook", "own", {"url": url})
    listed = services.add_channel(trader, "webhook", "listed", {"url": url})
    severe = services.add_channel(trader, "webhook", "severe", {"url": url})
    watch = services.add_channel(trader, "webhook", "watch", {"url": url})
    services.update_channel(own, scope="own")
    services.update_channel(listed, scope="rules", rules=["futures_top_hunter"])
    services.update_channel(severe, min_severity="warning")
    services.update_channel(watch, watchlist_only=True)
    everything = services.add_channel(trader, "webhook", "all", {"url": url})

    mine, _ = store_alert("BTCUSDT", "my_rule", owner=trader.pk)
    hunter, _ = store_alert("ETHUSDT", "futures_top_hunter")
    critical, _ = store_alert("SOLUSDT", "futures_big_bear_60", severity="critical", direction="bear")
    hidden, _ = store_alert("BTCUSDT", "futures_top_hunter", severity="critical")  # not on the watchlist
    theirs, _ = store_alert("ETHUSDT", "their_rule", owner=other.pk, severity="critical")
    _fan_out_all()
    routed = {(d.alert_id, d.channel_id) for d in deliveries()}
    assert routed == {
        (mine.pk, own.pk),
        (hunter.pk, listed.pk),
        (critical.pk, severe.pk),
        (hunter.pk, watch.pk),
        (critical.pk, watch.pk),
        (mine.pk, everything.pk),
        (hunter.pk, everything.pk),
        (critical.pk, everything.pk),
    }
    assert not {hidden.pk, theirs.pk} & {alert for alert, _ in routed}


def _quiet_now(channel: NotificationChannel, tz_name: str, action: str) -> None:
    """Quiet hours around the current time in the user's zone."""
    local = datetime.now(UTC).astimezone(routing.zone(tz_name))
    start = (local - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (local + timedelta(hours=1)).time().replace(second=0, microsecond=0)
    services.update_channel(channel, quiet_start=start, quiet_end=end, quiet_action=action)


def test_alerts_in_quiet_hours_are_held_then_sent_as_one_digest(celery_worker, fast, receiver):
    trader = make_user("trader", timezone="Asia/Tokyo")
    channel = services.add_channel(trader, "webhook", "desk", {"url": receiver.url + "/hook"})
    _quiet_now(channel, "Asia/Tokyo", "hold")
    for minute, symbol in enumerate(("BTCUSDT", "ETHUSDT", "SOLUSDT")):
        store_alert(symbol, minute=minute)
    _fan_out_all()
    held = deliveries(status="held")
    assert len(held) == 3 and receiver.requests == []
    quiet_end = routing.quiet_hours_end(
        channel.quiet_start, channel.quiet_end, routing.zone("Asia/Tokyo"), datetime.now(UTC)
    )
    assert {d.next_attempt_at for d in held} == {quiet_end}
    services.requeue_stuck()  # the sweep before the end releases nothing
    assert len(deliveries(status="held")) == 3
    Delivery.objects.filter(status="held").update(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
    assert services.requeue_stuck().digests == 3  # quiet hours over: the beat's sweep
    wait_for(lambda: len(deliveries(status="sent")) == 3, what="the digest")
    assert len(receiver.requests) == 1
    assert len(receiver.json_bodies()[0]["alerts"]) == 3


def test_alerts_in_quiet_hours_can_be_dropped_instead(celery_worker, fast, receiver):
    trader = make_user("trader")
    channel = services.add_channel(trader, "webhook", "desk", {"url": receiver.url + "/hook"})
    _quiet_now(channel, "UTC", "drop")
    store_alert()
    _fan_out_all()
    [skipped] = deliveries()
    assert (skipped.status, skipped.last_error) == ("skipped", "quiet hours")
    Delivery.objects.update(next_attempt_at=datetime.now(UTC) - timedelta(days=1))
    assert services.requeue_stuck().digests == 0


def test_the_daily_cap_stops_a_symbols_alerts_and_the_page_counts_them(celery_worker, fast, receiver):
    trader = make_user("trader")
    channel = services.add_channel(trader, "webhook", "desk", {"url": receiver.url + "/hook"})
    services.update_channel(channel, daily_cap_per_symbol=2)
    for minute in range(4):
        store_alert("BTCUSDT", minute=minute)
    store_alert("ETHUSDT", minute=9)
    _fan_out_all()
    btc = deliveries(symbol="BTCUSDT")
    assert sorted(d.status for d in btc).count("skipped") == 2
    assert {d.last_error for d in btc if d.status == "skipped"} == {"daily cap of 2 for BTCUSDT"}
    assert selectors.cap_counters(channel) == [("BTCUSDT", 2), ("ETHUSDT", 1)]
    client = Client()
    client.force_login(trader)
    page = client.get(f"/settings/notifications/{channel.pk}/").content.decode()
    assert re.search(r'data-symbol="BTCUSDT"><td>BTCUSDT</td><td class="count">2 of 2<', page)


def test_quiet_hours_and_caps_leave_history_untouched(celery_worker, fast, receiver):
    trader = make_user("trader")
    channel = services.add_channel(trader, "webhook", "desk", {"url": receiver.url + "/hook"})
    services.update_channel(channel, daily_cap_per_symbol=1)
    _quiet_now(channel, "UTC", "drop")
    for minute in range(3):
        store_alert("BTCUSDT", minute=minute)
    _fan_out_all()
    assert {d.status for d in deliveries()} == {"skipped"}
    shown = gateway_selectors.filtered_alerts(trader, gateway_selectors.AlertFilters(symbol="BTCUSDT"))
    assert shown.count() == 3  # the history page and the API read this


def test_run_telegram_bot_binds_a_chat_until_sigterm(bot):
    """The management command as run_monitor and docker-compose run it, polling the fake Bot API."""
    trader = make_user("trader")
    token = services.start_telegram_link(trader)
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url("DATABASE_URL", "default"),
        "TIMESERIES_DATABASE_URL": _test_database_url("TIMESERIES_DATABASE_URL", "timeseries"),
        "TELEGRAM_API_URL": bot.url,
        "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "TELEGRAM_POLL_TIMEOUT_SECONDS": "1",
        "NOTIFICATIONS_ALLOW_PRIVATE_TARGETS": "true",
        "NOTIFICATIONS_ALLOWED_EXTRA_PORTS": str(bot.port),
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_telegram_bot"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        bot.user_sends(CHAT, f"/start {token}")
        bot.wait_for_message(CHAT, "connected", timeout=120)  # a loaded machine boots Django slowly
        assert NotificationChannel.objects.get(user=trader).config == {"chat_id": str(CHAT)}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "run_telegram_bot: stopped (telegram_updates_total=1)" in output
    finally:
        if process.poll() is None:
            process.kill()
