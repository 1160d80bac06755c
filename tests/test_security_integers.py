"""Integer parameters (docs/security.md): a superscript digit or a 5,000-digit number is a 400 naming the
parameter, never a 500 (``"²".isdigit()`` is true but ``int("²")`` fails; Python refuses to convert
more than 4,300 digits)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

HOSTILE = ["²", "1²", "٣", "9" * 5000, "-1", "+1", " 1", "1.0", "0x10"]


@pytest.fixture
def client(redis_client) -> Client:
    user = get_user_model().objects.create_user("me", password="pw-me-123456")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.mark.parametrize("value", HOSTILE, ids=lambda value: ascii(value)[:14])
@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/alerts", "page"),
        ("/api/alerts", "page_size"),
        ("/api/candles/BTCUSDT", "limit"),
        ("/api/alerts", "since"),
        ("/api/metrics/BTCUSDT", "at"),
    ],
)
def test_a_hostile_integer_in_the_api_is_a_400_naming_the_parameter(client, settings, path, parameter, value):
    settings.API_RATE_LIMIT_PER_MINUTE = 10_000
    response = client.get(path, {parameter: value})
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["parameter"] == parameter and error["message"].startswith(f"{parameter}: ")
    assert len(error["message"]) < 200  # a 5,000-digit value is not echoed back whole


@pytest.mark.parametrize("value", ["²", "9" * 5000, "-1", "1.5"], ids=lambda value: ascii(value)[:14])
def test_a_hostile_cooldown_in_the_rule_preview_is_a_400_naming_it(client, value):
    response = client.post("/settings/rules/preview", {"expression": "price > 0", "cooldown_seconds": value})
    assert response.status_code == 400
    body = response.json()
    assert body["ok"] is False and body["parameter"] == "cooldown_seconds"
    assert body["message"].startswith("cooldown_seconds: ")


@pytest.mark.parametrize("value", ["²", "9" * 5000, "-1"], ids=lambda value: ascii(value)[:14])
def test_a_hostile_history_page_number_is_a_400_naming_it(client, value):
    response = client.get("/history/", {"page": value})
    assert response.status_code == 400
    assert b"page" in response.content


def test_ordinary_numbers_still_work(client):
    assert client.get("/api/alerts", {"page": "1", "page_size": "10"}).status_code == 200
    assert client.get("/api/alerts", {"since": "1767225600000"}).status_code == 200
    assert client.get("/history/", {"page": "3"}).status_code == 200  # past the end: the last page
