"""Password guessing (docs/security.md): failed sign-ins on `/login/`, `/admin/login/` and the API's HTTP
Basic auth are counted per client address and per user name (django-axes, in the `default` database);
after `LOGIN_FAILURE_LIMIT` failures even the right password is refused with a 429 until the cool-off
passes or an operator runs `manage.py axes_reset`. No sleeps: the cool-off is passed by ageing the
recorded attempts, as the clock would."""

from __future__ import annotations

import base64
import itertools
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

PASSWORD = "pw-me-123456"
_addresses = (f"203.0.113.{n}" for n in itertools.count(1))


@pytest.fixture
def user(redis_client):
    return get_user_model().objects.create_user("me", password=PASSWORD, is_staff=True)


@pytest.fixture
def limit(settings) -> int:
    settings.AXES_FAILURE_LIMIT = 3
    return 3


def browser(address: str | None = None) -> Client:
    return Client(REMOTE_ADDR=address or next(_addresses))


def sign_in(client: Client, username: str, password: str, path: str = "/login/"):
    return client.post(path, {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def test_the_defaults_are_safe():
    assert django_settings.AXES_FAILURE_LIMIT == 5
    assert django_settings.AXES_COOLOFF_TIME.total_seconds() == 15 * 60
    assert django_settings.AXES_LOCKOUT_PARAMETERS == ["ip_address", "username"]
    assert django_settings.AUTHENTICATION_BACKENDS[0] == "axes.backends.AxesStandaloneBackend"


def test_the_limits_come_from_the_environment():
    code = "from django.conf import settings as s; print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds())"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env={**os.environ, "LOGIN_FAILURE_LIMIT": "8", "LOGIN_COOLOFF_MINUTES": "2.5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["8", "150.0"], result.stderr


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_after_the_limit_even_the_right_password_is_refused_until_reset(user, limit, path):
    client = browser()
    statuses = [sign_in(client, "me", "wrong", path).status_code for _ in range(limit)]
    assert statuses == [200] * (limit - 1) + [429]  # the form again, then the lockout
    locked = sign_in(client, "me", PASSWORD, path)
    assert locked.status_code == 429 and int(locked["Retry-After"]) == 15 * 60
    assert not signed_in(client)
    call_command("axes_reset", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert sign_in(client, "me", PASSWORD, path).status_code == 302 and signed_in(client)


def test_a_user_name_is_locked_whichever_address_the_guesses_come_from(user, limit):
    for _ in range(limit):
        sign_in(browser(), "me", "wrong")
    someone = browser()
    assert sign_in(someone, "me", PASSWORD).status_code == 429 and not signed_in(someone)


def test_an_address_is_locked_whichever_user_names_it_tries(user, limit):
    address = next(_addresses)
    for n in range(limit):
        sign_in(browser(address), f"nobody{n}", "wrong")
    assert sign_in(browser(address), "me", PASSWORD).status_code == 429
    elsewhere = browser()
    assert sign_in(elsewhere, "me", PASSWORD).status_code == 302 and signed_in(elsewhere)


def test_the_lock_lifts_after_the_cool_off(user, limit, settings):
    from axes.models import AccessAttempt

    client = browser()
    for _ in range(limit):
        sign_in(client, "me", "wrong")
    assert sign_in(client, "me", PASSWORD).status_code == 429
    AccessAttempt.objects.update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    )
    assert sign_in(client, "me", PASSWORD).status_code == 302 and signed_in(client)


def test_a_success_below_the_limit_clears_the_count(user, limit):
    client = browser()
    for _ in range(limit - 1):
        sign_in(client, "me", "wrong")
    assert sign_in(client, "me", PASSWORD).status_code == 302
    client.logout()
    for _ in range(limit - 1):
        assert sign_in(client, "me", "wrong").status_code == 200  # counting starts again


def test_api_basic_auth_failures_count_and_lock_out_with_the_api_error_shape(user, limit):
    client = browser()
    statuses = [client.get("/api/symbols", **basic("me", "wrong")).status_code for _ in range(limit)]
    assert statuses == [401] * (limit - 1) + [429]
    locked = client.get("/api/symbols", **basic("me", PASSWORD))
    assert locked.status_code == 429 and int(locked["Retry-After"]) >= 1
    assert locked.json()["error"]["code"] == "locked_out"
    call_command("axes_reset", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert client.get("/api/symbols", **basic("me", PASSWORD)).status_code == 200


def test_api_guesses_lock_the_sign_in_page_too(user, limit):
    address = next(_addresses)
    for _ in range(limit):
        browser(address).get("/api/symbols", **basic("me", "wrong"))
    assert sign_in(browser(), "me", PASSWORD).status_code == 429  # the same user name, any address


def test_the_lockout_never_says_whether_the_user_exists(user, limit):
    for name in ("me", "ghost"):
        client = browser()
        for _ in range(limit):
            response = sign_in(client, name, "wrong")
        assert response.status_code == 429
        assert name not in response.content.decode()
