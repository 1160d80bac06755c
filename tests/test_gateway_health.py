"""`/healthz` and `/readyz` on the web app (cryptomon.health): probes an orchestrator can act on, safe on a
public address (docs/security.md): anonymous callers get a status only; staff (or the `READYZ_TOKEN`
bearer) get each check with every URL masked; the checks are read-only, cached and rate limited."""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import urlsplit

import nats
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from cryptomon.health import mask_url

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

DEAD_NATS = "nats://natsuser:natspass@127.0.0.1:1"
DEAD_REDIS = "redis://admin:s3cret@127.0.0.1:1/0"
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture
def anonymous() -> Client:
    """A client from its own address, so no other test's requests count towards its rate limit."""
    return Client(REMOTE_ADDR=next(_addresses))


@pytest.fixture
def staff() -> Client:
    user = get_user_model().objects.create_user("ops", password="pw-ops-123456", is_staff=True)
    client = Client(REMOTE_ADDR=next(_addresses))
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def fresh_results(settings):
    settings.READYZ_CACHE_SECONDS = 0


def test_public_readyz_says_only_ok(anonymous):
    response = anonymous.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok"}


def test_public_readyz_leaks_no_url_host_user_or_error_text_while_dependencies_are_down(anonymous, settings):
    settings.NATS_URL, settings.REDIS_URL = DEAD_NATS, DEAD_REDIS
    response = anonymous.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
    text = response.content.decode()
    for secret in ("natsuser", "natspass", "admin", "s3cret", "127.0.0.1", "://", "refused"):
        assert secret not in text


def test_staff_see_every_check_with_every_url_masked(staff, settings):
    settings.NATS_URL, settings.REDIS_URL = DEAD_NATS, DEAD_REDIS
    response = staff.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert {"time-series database", "metadata database", "NATS", "Redis"} == set(checks)
    assert checks["metadata database"]["ok"] is True and checks["time-series database"]["ok"] is True
    assert checks["NATS"]["ok"] is False and "nats://natsuser:***@127.0.0.1:1" in checks["NATS"]["detail"]
    assert checks["Redis"]["ok"] is False and "redis://admin:***@127.0.0.1:1/0" in checks["Redis"]["detail"]
    assert "natspass" not in response.content.decode() and "s3cret" not in response.content.decode()


def test_a_bearer_token_from_the_settings_shows_the_details_and_a_wrong_one_does_not(anonymous, settings):
    settings.READYZ_TOKEN = "a-long-random-probe-token"
    wrong = anonymous.get("/readyz", HTTP_AUTHORIZATION="Bearer a-long-random-probe-tokeN")
    assert wrong.json() == {"status": "ok"}
    right = anonymous.get("/readyz", HTTP_AUTHORIZATION="Bearer a-long-random-probe-token")
    assert right.status_code == 200 and right.json()["checks"]["NATS"]["ok"] is True
    settings.READYZ_TOKEN = ""
    empty = anonymous.get("/readyz", HTTP_AUTHORIZATION="Bearer ")
    assert "checks" not in empty.json()  # no token configured: nobody gets details by token


def test_signed_in_users_who_are_not_staff_get_the_status_only(anonymous):
    user = get_user_model().objects.create_user("someone", password="pw-someone-123456")
    anonymous.force_login(user)
    assert anonymous.get("/readyz").json() == {"status": "ok"}


def test_readyz_is_503_and_names_nats_while_nats_is_down(staff, settings, private_nats):
    settings.NATS_URL = private_nats.url
    assert staff.get("/readyz").status_code == 200
    private_nats.stop()
    response = staff.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    detail = body["checks"]["NATS"]["detail"]
    assert body["checks"]["NATS"]["ok"] is False and mask_url(private_nats.url) in detail
    assert urlsplit(private_nats.url).password not in detail  # the embedded NATS password stays hidden
    assert body["checks"]["Redis"]["ok"] is True and body["checks"]["metadata database"]["ok"] is True
    assert staff.get("/healthz").status_code == 200  # the process itself is fine: no restart


def test_readyz_never_creates_or_changes_a_stream(staff, settings, private_nats):
    settings.NATS_URL = private_nats.url
    assert staff.get("/readyz").status_code == 200

    async def stream_names() -> list[str]:
        nc = await nats.connect(private_nats.url)
        try:
            return [info.config.name for info in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    assert asyncio.run(stream_names()) == []


def test_readyz_results_are_reused_for_a_few_seconds(staff, settings, private_nats):
    settings.NATS_URL = private_nats.url
    settings.READYZ_CACHE_SECONDS = 60
    assert staff.get("/readyz").status_code == 200
    private_nats.stop()
    assert staff.get("/readyz").status_code == 200  # within the cache: NATS was not asked again
    settings.READYZ_CACHE_SECONDS = 0
    assert staff.get("/readyz").status_code == 503


def test_readyz_is_rate_limited_per_client_address(settings):
    settings.READYZ_RATE_LIMIT_PER_MINUTE = 3
    client = Client(REMOTE_ADDR=next(_addresses))
    assert [client.get("/readyz").status_code for _ in range(3)] == [200, 200, 200]
    limited = client.get("/readyz")
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1
    assert limited.json() == {"status": "rate_limited"}
    assert Client(REMOTE_ADDR=next(_addresses)).get("/readyz").status_code == 200  # another address


def test_healthz_touches_nothing_and_is_not_rate_limited(settings):
    settings.READYZ_RATE_LIMIT_PER_MINUTE = 1
    settings.NATS_URL, settings.REDIS_URL = DEAD_NATS, DEAD_REDIS
    client = Client(REMOTE_ADDR=next(_addresses))
    assert [client.get("/healthz").status_code for _ in range(3)] == [200, 200, 200]
