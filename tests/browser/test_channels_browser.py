"""Settings → Notifications in a real browser (Debian's Chromium, Playwright): a new trader signs up,
connects Telegram against the fake Bot API (tests/fake_telegram.py) and gets the test message with no
admin involved; adds and tests a signed webhook; confirms an email address; sets quiet hours (held, then
one digest) and a daily cap. Every page is checked for console errors.

The web server is Django's live server in this process (pytest-django's `live_server`), so the fake Bot
API, the webhook receiver, Django's test mailbox (locmem) and the Celery worker all share its settings.
"""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail

from notifications import routing, services, telegram_bot, webhook
from notifications.models import Delivery, NotificationChannel
from tests import test_notifications_delivery as delivery_tests
from tests.browser import test_dashboard_browser as dashboard
from tests.fake_telegram import FakeBotAPI

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

browser = dashboard.browser
celery_worker = delivery_tests.celery_worker
receiver = delivery_tests.receiver
fast = delivery_tests.fast
store_alert, wait_for = delivery_tests.store_alert, delivery_tests.wait_for

BOT_TOKEN = "777000:FAKE-browser-bot-token"
CHAT = 5550001
PASSWORD = "pw-new-trader-2026!"


@pytest.fixture(autouse=True)
def roomy_limits(settings):
    """Every test signs up from 127.0.0.1; the sign-up limit per address is tested elsewhere."""
    settings.SIGNUP_RATE_LIMIT_PER_HOUR = 10_000


@pytest.fixture
def bot(fast):
    fake = FakeBotAPI(BOT_TOKEN)
    fast.TELEGRAM_API_URL = fake.url
    fast.TELEGRAM_BOT_TOKEN = BOT_TOKEN
    fast.TELEGRAM_BOT_USERNAME = fake.username
    fast.TELEGRAM_POLL_TIMEOUT_SECONDS = 1
    fast.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [*fast.NOTIFICATIONS_ALLOWED_EXTRA_PORTS, fake.port]
    worker = telegram_bot.TelegramPoller()  # run_telegram_bot's worker, polling the fake
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.run(),), daemon=True)
    thread.start()
    yield fake
    loop.call_soon_threadsafe(worker.stop)
    thread.join(timeout=30)
    fake.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    context.set_default_timeout(20_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    context.close()
    assert problems == [], f"console errors: {problems}"


def sign_up(page, base: str, name: str = "newtrader") -> None:
    page.goto(f"{base}/login/")
    page.click("#signup-link")
    page.fill("input[name=username]", name)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("#signup-form button[type=submit]")
    page.wait_for_url(f"{base}/settings/notifications/")


def open_channel(page, name: str) -> None:
    page.click(f"#channels a:text-is('{name}')")
    page.wait_for_selector("#channel-card")


def test_a_new_trader_signs_up_connects_telegram_and_gets_the_test_message(
    live_server, page, celery_worker, bot
):
    sign_up(page, live_server.url)
    assert "No channels yet" in page.inner_text("#channels")
    page.click("#connect-telegram")
    dashboard.screenshot(page, "telegram-connect")
    link = page.get_attribute("#telegram-link", "href")
    match = re.fullmatch(rf"https://t\.me/{bot.username}\?start=([A-Za-z0-9_-]{{16,64}})", link)
    assert match, link
    bot.user_sends(CHAT, f"/start {match.group(1)}")  # the trader presses Start in Telegram
    assert bot.wait_for_message(CHAT, "connected") == telegram_bot.CONNECTED
    page.click("#telegram-refresh")
    page.wait_for_selector("#channels tr[data-kind=telegram]")
    assert "chat …0001" in page.inner_text("#channels")
    assert str(CHAT) not in page.content()  # the chat id is never shown whole
    dashboard.screenshot(page, "notifications")
    open_channel(page, "Telegram Trader")
    page.click("#send-test")
    page.wait_for_selector("#test-result")
    assert page.inner_text("#test-result") == "delivered: test message sent to chat …0001"
    assert "cryptomon test message for Telegram Trader" in bot.wait_for_message(CHAT, "test message")
    dashboard.screenshot(page, "channel")


def test_a_blocked_bot_shows_why_the_channel_is_off(live_server, page, celery_worker, bot):
    sign_up(page, live_server.url)
    page.click("#connect-telegram")
    token = page.get_attribute("#telegram-link", "href").split("start=")[1]
    bot.user_sends(CHAT, f"/start {token}")
    bot.wait_for_message(CHAT, "connected")
    bot.block(CHAT)
    store_alert()
    wait_for(lambda: Delivery.objects.filter(status="failed").exists(), what="the blocked delivery")
    page.reload()
    assert "off: Telegram answered 403: Forbidden: bot was blocked by the user" in page.inner_text(
        "#channels"
    )


def test_a_webhook_is_added_tested_and_its_signature_verifies(
    live_server, page, celery_worker, receiver, fast
):
    sign_up(page, live_server.url)
    page.select_option("select[name=kind]", "webhook")
    page.fill("#add-channel-form input[name=name]", "my desk")
    page.fill("#add-channel-form input[name=url]", receiver.url + "/hook")
    page.click("#add-channel-form button[type=submit]")
    secret = page.inner_text("#secret-value")
    assert len(secret) >= 32
    page.click("#send-test")
    page.wait_for_selector("#test-result")
    assert page.inner_text("#test-result").startswith("delivered: test message sent to webhook")
    assert secret not in page.content()  # shown once only
    hook = receiver.requests[-1]
    signature, timestamp = hook["headers"]["X-Cryptomon-Signature"], hook["headers"]["X-Cryptomon-Timestamp"]
    assert webhook.verify(secret, hook["body"], signature, timestamp)


def test_an_email_address_is_confirmed_through_the_mailed_link(live_server, page, celery_worker, fast):
    sign_up(page, live_server.url)
    page.select_option("select[name=kind]", "email")
    page.fill("#add-channel-form input[name=address]", "trader@example.com")
    page.click("#add-channel-form button[type=submit]")
    page.wait_for_selector("#channel-card")
    assert "waiting for email confirmation" in page.inner_text("#channel-state")
    page.click("#send-test")
    assert "failed: confirm the address first" in page.inner_text("#test-result")
    [message] = mail.outbox
    link = re.search(r"http://\S+", message.body).group(0)
    page.goto(link)
    assert page.inner_text("#verify-result") == "Address confirmed"
    page.goto(f"{live_server.url}/settings/notifications/")
    open_channel(page, "email")
    page.click("#send-test")
    assert page.inner_text("#test-result").startswith("delivered")
    assert mail.outbox[-1].subject == "cryptomon test message"


def _add_webhook(page, receiver) -> NotificationChannel:
    page.select_option("select[name=kind]", "webhook")
    page.fill("#add-channel-form input[name=name]", "desk")
    page.fill("#add-channel-form input[name=url]", receiver.url + "/hook")
    page.click("#add-channel-form button[type=submit]")
    page.wait_for_selector("#secret-value")
    return NotificationChannel.objects.get(name="desk")


def test_quiet_hours_hold_alerts_and_release_them_as_one_digest(
    live_server, page, celery_worker, receiver, fast
):
    sign_up(page, live_server.url)
    channel = _add_webhook(page, receiver)
    now = datetime.now(UTC)
    page.fill("input[name=quiet_start]", (now - timedelta(hours=1)).strftime("%H:%M"))
    page.fill("input[name=quiet_end]", (now + timedelta(hours=1)).strftime("%H:%M"))
    page.check("input[name=quiet_action][value=hold]")
    page.click("#channel-form button[type=submit]")
    page.wait_for_selector(".messages li")
    for minute, symbol in enumerate(("BTCUSDT", "ETHUSDT", "SOLUSDT")):
        store_alert(symbol, minute=minute)
    wait_for(lambda: Delivery.objects.filter(status="held").count() == 3, what="three held alerts")
    page.reload()
    assert page.locator("#deliveries tr[data-status=held]").count() == 3
    assert receiver.requests == []
    channel.refresh_from_db()
    end = routing.quiet_hours_end(
        channel.quiet_start, channel.quiet_end, routing.zone("UTC"), datetime.now(UTC)
    )
    assert Delivery.objects.filter(status="held", next_attempt_at=end).count() == 3
    Delivery.objects.filter(status="held").update(next_attempt_at=datetime.now(UTC))  # quiet hours end
    services.requeue_stuck()  # the beat's sweep
    wait_for(lambda: Delivery.objects.filter(status="sent").count() == 3, what="the digest")
    page.reload()
    assert page.locator("#deliveries tr[data-status=sent]").count() == 3
    assert len(receiver.requests) == 1 and len(receiver.json_bodies()[0]["alerts"]) == 3


def test_the_daily_cap_is_set_on_the_page_and_counted_there(live_server, page, celery_worker, receiver, fast):
    sign_up(page, live_server.url)
    _add_webhook(page, receiver)
    page.fill("input[name=daily_cap_per_symbol]", "2")
    page.click("#channel-form button[type=submit]")
    page.wait_for_selector("#cap-counters")
    for minute in range(3):
        store_alert("BTCUSDT", minute=minute)
    wait_for(lambda: Delivery.objects.filter(status="skipped").count() == 1, what="the capped alert")
    wait_for(lambda: Delivery.objects.filter(status="sent").count() == 2, what="the two under the cap")
    page.reload()
    assert page.inner_text("#cap-counters tr[data-symbol=BTCUSDT] .count") == "2 of 2"
    assert "daily cap of 2 for BTCUSDT" in page.inner_text("#deliveries")
    dashboard.screenshot(page, "channel-routing")
