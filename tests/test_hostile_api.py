"""The JSON API under hostile query strings, symbols and credentials: never a 500, never a traceback, and a
400 names the parameter (docs/security.md "Limits"; the error shape is gateway/api.py's)."""

from __future__ import annotations

import base64
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from tests import dashboard_data as data
from tests.hostile import fuzzing, hostile_text, no_traceback

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

# Every endpoint and its parameters (gateway/api.py `api_endpoint(...)`), plus names it does not know.
ENDPOINTS = {
    "/api/symbols": ["trading"],
    "/api/alerts": ["rule", "symbol", "direction", "since", "until", "page", "page_size"],
    "/api/candles/BTCUSDT": ["start", "end", "limit"],
    "/api/metrics/BTCUSDT": ["at"],
    "/api/chart/BTCUSDT": ["interval", "bars", "end"],
}
UNKNOWN = ["sort", "format", "", " ", "page[]", "é", "\x00"]


@pytest.fixture
def world(redis_client, settings):
    settings.ALLOW_ANONYMOUS_DASHBOARD = True
    settings.API_RATE_LIMIT_PER_MINUTE = 10**9  # the rate limit has its own test (tests/test_api.py)
    me = get_user_model().objects.create_user("me", password="pw-me-123456")
    data.symbol("BTCUSDT")
    data.candles("BTCUSDT", 5)
    data.metrics("BTCUSDT", data.NOW - timedelta(minutes=1))
    data.alert("futures_pioneer_bull", "BTCUSDT", 1)
    data.alert(f"u{me.pk}-mine", "BTCUSDT", 2, owner=me.pk)
    signed_in = Client()
    signed_in.force_login(me)
    return {"signed in": signed_in, "anonymous": Client()}


def check(response, sent: dict[str, str]) -> dict:
    """What every API answer must be; returns the JSON body."""
    assert response.status_code < 500, (sent, response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    no_traceback(response.content.decode())
    body = response.json()
    if response.status_code >= 400:
        error = body["error"]
        assert error["status"] == response.status_code and error["message"], body
        if response.status_code == 400:
            assert error["parameter"] in sent, (sent, body)
            assert error["message"].startswith(f"{error['parameter']}: "), body
    return body


def parameters(names: list[str]):
    return st.dictionaries(st.sampled_from(names + UNKNOWN), hostile_text, max_size=4)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("who", ["signed in", "anonymous"])
def test_hostile_query_parameters_never_cause_a_500_and_a_400_names_the_parameter(world, path, who):
    @fuzzing
    @given(parameters(ENDPOINTS[path]))
    def attempt(params):
        check(world[who].get(path, params), params)

    attempt()


@pytest.mark.parametrize("who", ["signed in", "anonymous"])
def test_every_parameter_of_the_api_may_be_hostile_at_once(world, who):
    @fuzzing
    @given(st.sampled_from(sorted(ENDPOINTS)), st.data())
    def attempt(path, draw):
        params = {name: draw.draw(hostile_text, label=name) for name in ENDPOINTS[path]}
        check(world[who].get(path, params), params)

    attempt()


@fuzzing
@given(
    symbol=hostile_text.filter(lambda text: text.strip("/") != ""),
    endpoint=st.sampled_from(["candles", "metrics", "chart"]),
)
def test_a_hostile_symbol_in_the_path_is_a_404_or_an_answer(world, symbol, endpoint):
    response = world["signed in"].get(f"/api/{endpoint}/{quote(symbol, safe='')}")
    body = check(response, {})
    assert response.status_code in (200, 404), body


@fuzzing
@given(
    st.one_of(
        st.text(max_size=60),
        st.binary(max_size=40).map(lambda raw: "Basic " + base64.b64encode(raw).decode()),
        st.tuples(hostile_text, hostile_text).map(
            lambda pair: "Basic " + base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
        ),
    )
)
def test_a_hostile_authorization_header_is_a_401_or_a_429_never_a_500(world, header):
    response = Client().get("/api/symbols", HTTP_AUTHORIZATION=header)
    body = check(response, {})
    assert response.status_code in (200, 401, 429), body


@pytest.mark.parametrize("credentials", ["\x00:x", "me:\x00", "me\x00:pw-me-123456"])
def test_a_nul_character_in_basic_credentials_is_a_401_not_a_500(world, credentials):
    header = "Basic " + base64.b64encode(credentials.encode()).decode()
    response = Client().get("/api/symbols", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "wrong user name or password"


@pytest.mark.parametrize(("path", "parameter"), [("/api/alerts", "rule"), ("/api/alerts", "symbol")])
def test_a_nul_character_in_a_text_filter_is_a_400_naming_it(world, path, parameter):
    response = world["signed in"].get(path, {parameter: "BTC\x00USDT"})
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == parameter


@pytest.mark.parametrize("endpoint", ["candles", "metrics", "chart"])
def test_a_symbol_with_a_nul_character_is_unknown(world, endpoint):
    response = world["signed in"].get(f"/api/{endpoint}/BTC%00USDT")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("username", "password"), [("u" * 300, "x"), ("someone", "p" * 5000)])
def test_an_overlong_basic_auth_user_name_or_password_is_a_401_naming_the_limit(username, password):
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
    response = Client().get("/api/symbols", HTTP_AUTHORIZATION=f"Basic {credentials}")
    assert response.status_code == 401
    assert "at most 150 characters" in response.json()["error"]["message"]
