"""The outgoing address guard, secrets at rest and in pages/logs, and the pure parts (quiet hours, text)."""

from __future__ import annotations

import json
import logging
import socket
from datetime import UTC, datetime, time

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from notifications import grouping, routing, safety, services
from notifications.base import Message
from notifications.models import NotificationChannel
from notifications.safety import UnsafeTarget


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "refused: 127.0.0.1 is a loopback address"),
        ("https://10.1.2.3/hook", "refused: 10.1.2.3 is a private address"),
        ("http://192.168.0.7:8080/hook", "refused: 192.168.0.7 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254 is a cloud metadata address"),
        ("http://169.254.10.10/", "refused: 169.254.10.10 is a link-local address"),
        ("http://[::1]/hook", "refused: ::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "refused: ::ffff:127.0.0.1 is a loopback address"),
        ("http://[fe80::1]/hook", "refused: fe80::1 is a link-local address"),
        ("http://100.64.1.1/hook", "refused: 100.64.1.1 is not a public address"),
        ("http://224.0.0.1/hook", "refused: 224.0.0.1 is a multicast address"),
        ("http://0.0.0.0/hook", "refused: 0.0.0.0 is an unspecified address"),
        ("http://240.0.0.1/hook", "refused: 240.0.0.1 is a private address"),
        ("http://[2002:7f00:1::]/hook", "refused: 2002:7f00:1:: is a loopback address"),
        ("http://[2002:a9fe:a9fe::]/", "refused: 2002:a9fe:a9fe:: is a cloud metadata address"),
        ("http://[2002:a00:1::5]/hook", "refused: 2002:a00:1::5 is a private address"),
        ("http://[64:ff9b::7f00:1]/hook", "refused: 64:ff9b::7f00:1 is a loopback address"),
        (
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            "refused: 2001:0:4136:e378:8000:63bf:80ff:fffe is a loopback address",
        ),
    ],
)
def test_it_refuses_non_public_addresses(settings, url, reason):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False
    with pytest.raises(UnsafeTarget) as refused:
        safety.resolve(url)
    assert str(refused.value) == reason
    with pytest.raises(UnsafeTarget):
        safety.check_syntax(url)  # IP literals are refused already when a channel is saved


def test_it_refuses_a_host_name_that_resolves_to_loopback(settings):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False
    with pytest.raises(UnsafeTarget) as refused:
        safety.resolve("http://localhost:8080/hook")
    assert str(refused.value).startswith("refused: localhost (")
    assert "loopback address" in str(refused.value)


def test_it_pins_the_connection_to_the_address_it_checked(settings):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = True
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [9]
    target = safety.resolve("http://localhost:9/a/b?x=1")
    assert target.address in {str(info[4][0]) for info in socket.getaddrinfo("localhost", 9)}
    assert (target.host, target.port, target.path) == ("localhost", 9, "/a/b?x=1")


def test_it_accepts_public_addresses_and_refuses_other_schemes_and_credentials(settings):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False
    assert safety.resolve("https://93.184.216.34/hook").address == "93.184.216.34"
    for url, reason in [
        ("ftp://93.184.216.34/x", "only http:// and https:// URLs are allowed"),
        ("file:///etc/passwd", "only http:// and https:// URLs are allowed"),
        ("https://user:pw@93.184.216.34/", "credentials in the URL are not allowed"),
        ("https:///nohost", "the URL has no host"),
    ]:
        with pytest.raises(UnsafeTarget, match=reason):
            safety.resolve(url)


def test_only_ports_80_and_443_are_allowed_unless_configured(settings):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = []
    assert safety.resolve("http://93.184.216.34/hook").port == 80
    assert safety.resolve("https://93.184.216.34:443/hook").port == 443
    for url in ("http://93.184.216.34:8080/hook", "https://93.184.216.34:22/", "http://93.184.216.34:6379/"):
        port = url.split(":")[2].split("/")[0]
        with pytest.raises(UnsafeTarget, match=f"^refused: port {port} is not allowed"):
            safety.resolve(url)
        with pytest.raises(UnsafeTarget, match=f"^refused: port {port} is not allowed"):
            safety.check_syntax(url)  # already when the channel is saved
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [8080]
    assert safety.resolve("http://93.184.216.34:8080/hook").port == 8080
    with pytest.raises(UnsafeTarget, match="port 8443"):
        safety.resolve("https://93.184.216.34:8443/")
    with safety.trusted_targets():  # URLs the operator configured may use any port
        assert safety.resolve("https://93.184.216.34:8443/").port == 8443


def test_metadata_addresses_stay_refused_when_private_targets_are_allowed(settings):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = True
    assert safety.resolve("http://127.0.0.1/").address == "127.0.0.1"
    with pytest.raises(UnsafeTarget, match="cloud metadata"):
        safety.resolve("http://169.254.169.254/")
    with safety.trusted_targets(), pytest.raises(UnsafeTarget, match="cloud metadata"):
        safety.resolve("http://169.254.169.254/")


# --- secrets ---------------------------------------------------------------------------------------


@pytest.fixture
def admin_urls(settings):
    """The admin with the channel admin registered (alerts/admin.py imports it in the product)."""
    settings.ROOT_URLCONF = __name__


def _admin_patterns():
    from django.contrib import admin
    from django.urls import path

    import notifications.admin  # noqa: F401 - registers NotificationChannel and Delivery

    return [path("admin/", admin.site.urls)]


urlpatterns = _admin_patterns()

SECRET_URL = "https://hooks.example.com/services/T000/B000/PLAINTEXT-SECRET-9z8y"


@pytest.mark.django_db
def test_channel_secrets_are_encrypted_in_the_database_row():
    user = get_user_model().objects.create_user("sec", password="x-unused-pass-1")
    channel = services.create_channel(user, "slack", {"url": SECRET_URL}, name="desk")

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT row_to_json(c)::text FROM notification_channels c WHERE id = %s", [channel.pk])
        (row,) = cursor.fetchone()
    assert "PLAINTEXT-SECRET" not in row and "hooks.example.com" not in row
    assert NotificationChannel.objects.get(pk=channel.pk).config == {"url": SECRET_URL}
    assert channel.masked == "webhook …9z8y"


@pytest.mark.django_db
def test_the_admin_shows_channels_with_masked_secrets_only(admin_client, admin_urls):

    user = get_user_model().objects.create_user("trader", password="x-unused-pass-1")
    channel = services.create_channel(user, "slack", {"url": SECRET_URL})

    listing = admin_client.get("/admin/notifications/notificationchannel/").content.decode()
    page = admin_client.get(f"/admin/notifications/notificationchannel/{channel.pk}/change/").content.decode()
    for html in (listing, page):
        assert "PLAINTEXT-SECRET" not in html and "hooks.example.com" not in html
        assert "…9z8y" in html


@pytest.mark.django_db
def test_the_admin_form_keeps_a_secret_left_blank_and_validates_a_new_one(admin_client, admin_urls):

    user = get_user_model().objects.create_user("editor", password="x-unused-pass-1")
    channel = services.create_channel(user, "slack", {"url": SECRET_URL})
    form = {"user": user.pk, "kind": "slack", "name": "renamed", "enabled": "on", "rules": "[]"}
    form |= {"directions": "[]", "severities": "[]", "symbols": "[]"}

    admin_client.post(f"/admin/notifications/notificationchannel/{channel.pk}/change/", form)
    channel.refresh_from_db()
    assert channel.name == "renamed" and channel.config == {"url": SECRET_URL}

    refused = admin_client.post(
        f"/admin/notifications/notificationchannel/{channel.pk}/change/",
        form | {"url": "ftp://example.com/x"},
    )
    assert "only http:// and https:// URLs are allowed" in refused.content.decode()


@pytest.mark.django_db(databases=["default", "timeseries"])  # a send test takes the channel's claim there
def test_a_wrong_key_makes_secrets_unreadable_not_leaked(settings):
    from cryptography.fernet import Fernet

    user = get_user_model().objects.create_user("rot", password="x-unused-pass-1")
    first = Fernet.generate_key().decode()
    second = Fernet.generate_key().decode()
    settings.NOTIFICATIONS_KEY = first
    channel = services.create_channel(user, "email", {"address": "me@example.com"})
    settings.NOTIFICATIONS_KEY = f"{second},{first}"  # rotation: the old key still decrypts
    assert NotificationChannel.objects.get(pk=channel.pk).config == {"address": "me@example.com"}
    settings.NOTIFICATIONS_KEY = second
    reloaded = NotificationChannel.objects.get(pk=channel.pk)
    assert reloaded.masked == "unreadable (wrong NOTIFICATIONS_KEY)"
    assert not services.send_test(reloaded).ok


@pytest.mark.django_db(databases=["default", "timeseries"])
def test_secrets_never_appear_in_logs(settings, caplog):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = False
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [9]
    settings.TELEGRAM_API_URL = "http://127.0.0.1:9"
    settings.TELEGRAM_BOT_TOKEN = "555:VERY-SECRET-BOT-TOKEN"
    user = get_user_model().objects.create_user("logs", password="x-unused-pass-1")
    hook = services.create_channel(user, "webhook", {"url": "http://localhost:9/PLAINTEXT-SECRET-path"})
    telegram = services.create_channel(user, "telegram", {"chat_id": "31337"})
    caplog.set_level(logging.DEBUG)

    results = [services.send_test(hook), services.send_test(telegram)]
    logging.getLogger("test").warning("%s / %s", hook.log_name(), telegram.log_name())

    shown = caplog.text + " ".join(result.detail for result in results)
    assert "refused: localhost (" in shown and "is a loopback address" in shown
    assert "TELEGRAM_API_URL refused: 127.0.0.1 is a loopback address" in shown
    for secret in ("PLAINTEXT-SECRET", "VERY-SECRET-BOT-TOKEN", "31337"):
        assert secret not in shown


# --- pure parts ------------------------------------------------------------------------------------


def test_quiet_hours_wrap_midnight_in_the_users_zone():
    paris = routing.zone("Europe/Paris")
    start, end = time(22, 0), time(7, 0)
    assert routing.in_quiet_hours(start, end, paris, datetime(2026, 1, 10, 21, 30, tzinfo=UTC))  # 22:30 Paris
    assert routing.in_quiet_hours(start, end, paris, datetime(2026, 1, 10, 5, 59, tzinfo=UTC))  # 06:59
    assert not routing.in_quiet_hours(start, end, paris, datetime(2026, 1, 10, 6, 0, tzinfo=UTC))  # 07:00
    assert not routing.in_quiet_hours(start, end, paris, datetime(2026, 1, 10, 20, 59, tzinfo=UTC))  # 21:59
    assert routing.in_quiet_hours(
        time(9), time(17), routing.zone("America/New_York"), datetime(2026, 7, 1, 13, tzinfo=UTC)
    )
    assert not routing.in_quiet_hours(
        time(9), time(17), routing.zone("UTC"), datetime(2026, 7, 1, 8, tzinfo=UTC)
    )


def test_the_daily_cap_day_starts_at_local_midnight():
    tokyo = routing.zone("Asia/Tokyo")
    assert routing.local_day_start(tokyo, datetime(2026, 1, 10, 16, 0, tzinfo=UTC)) == datetime(
        2026, 1, 10, 15, 0, tzinfo=UTC
    )
    assert routing.local_day_start(tokyo, datetime(2026, 1, 10, 14, 0, tzinfo=UTC)) == datetime(
        2026, 1, 9, 15, 0, tzinfo=UTC
    )


def _payload(index: int) -> dict:
    return {
        "v": 1,
        "id": f"r:SYM{index}USDT:0",
        "rule": "r",
        "rule_name": "Top Hunter",
        "severity": "info",
        "direction": "bear",
        "symbol": f"SYM{index}USDT",
        "open_time": 1_767_225_600_000 + index,
        "triggered_at": 0,
        "price": 0.000123 * index,
        "description": "",
        "metrics": {},
        "owner": None,
        "late": False,
    }


def test_a_long_group_is_cut_to_the_limit_with_a_count_of_the_rest():
    message = grouping.alerts_message([_payload(i) for i in range(300)], "7")
    text = message.text(2000)
    assert len(text) <= 2000
    assert text.startswith("cryptomon: 300 alerts (300 bear)")
    shown = text.count("\n🔴 ")
    assert text.endswith(f"… and {300 - shown} more")
    assert message.webhook_body() == {"v": 1, "alerts": message.alerts}
    assert json.dumps(message.webhook_body())


def test_a_single_alert_message_carries_the_payload_itself():
    message = grouping.alerts_message([_payload(1)], "9")
    assert message.webhook_body() == _payload(1)
    assert Message(kind="test", title="t", header="hello").text(3) == "hel"
