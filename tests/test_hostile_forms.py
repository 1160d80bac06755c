"""Every dashboard form under hostile input (gateway/forms.py and the settings endpoints of gateway/views.py):
never a 500, never a traceback, and a refusal names the field it refuses."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile import fuzzing, hostile_text, no_traceback

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

RULE_FIELDS = [
    "name",
    "expression",
    "description",
    "severity",
    "direction",
    "mode",
    "cooldown_seconds",
    "enabled",
]
FORMS = {
    "/settings/preferences": ["watchlist", "min_volume_1d", "timezone"],
    "/settings/mutes": ["kind", "name", "hours"],
    "/settings/rules/new": RULE_FIELDS,
}
GOOD = {
    "severity": ["info", "warning", "critical"],
    "direction": ["bull", "bear", "neutral"],
    "mode": ["bar_close", "intrabar"],
    "kind": ["rule", "symbol"],
    "hours": ["1", "24", ""],
    "timezone": ["UTC", "Europe/Paris"],
    "expression": ["change_5m > 1", "price > 0 and vcp < 2"],
    "cooldown_seconds": ["60", "600"],
    "enabled": ["on"],
}


def value(name: str):
    """A hostile value, or (so that the other fields get checked too) a good one."""
    return st.one_of(hostile_text, st.sampled_from(GOOD.get(name, ["ok", "BTCUSDT"])))


def form_data(names: list[str]):
    return st.fixed_dictionaries({}, optional={name: value(name) for name in [*names, "unknown"]})


@pytest.fixture
def client(redis_client, settings):
    settings.PREVIEW_RATE_LIMIT_PER_MINUTE = 10**9  # the rate limit has its own test
    me = get_user_model().objects.create_user("me", password="pw-me-123456")
    client = Client()
    client.force_login(me)
    return client


def sane(response) -> None:
    assert response.status_code < 500, response.content[:500]
    no_traceback(response.content.decode(errors="replace"))


def names_the_field(response, sent: dict) -> None:
    """A refused form comes back with its errors on fields it has (or on the form as a whole)."""
    form = response.context.get("form")
    for candidate in ("preferences", "mute_form"):
        if candidate in response.context and response.context[candidate].is_bound:
            form = response.context[candidate]
    assert form is not None and form.errors, (sent, response.content[:300])
    for field, messages in form.errors.items():
        assert field == "__all__" or field in form.fields, field
        assert all(messages), (field, messages)


@pytest.mark.parametrize("path", FORMS)
def test_hostile_form_posts_never_cause_a_500_and_refusals_name_the_field(client, path):
    @fuzzing
    @given(form_data(FORMS[path]))
    def attempt(data):
        response = client.post(path, data)
        sane(response)
        assert response.status_code in (200, 302, 400), response.status_code
        if response.status_code == 400:
            names_the_field(response, data)

    attempt()


@fuzzing
@given(form_data(["kind", "name"]))
def test_removing_a_hostile_mute_never_causes_a_500(client, data):
    response = client.post("/settings/mutes/remove", data)
    sane(response)
    assert response.status_code in (302, 400)
    if response.status_code == 400:
        assert b"kind" in response.content


@fuzzing
@given(form_data(["symbol"]))
def test_a_hostile_watchlist_star_is_refused_naming_the_symbol(client, data):
    response = client.post("/watchlist/toggle", data)
    sane(response)
    assert response.status_code in (200, 400), response.content[:300]
    if response.status_code == 400:
        assert "symbol" in response.json()["error"]


@fuzzing
@given(form_data(["expression"]))
def test_the_live_rule_check_answers_every_expression(client, data):
    response = client.post("/settings/rules/check", data)
    sane(response)
    body = response.json()
    assert response.status_code == 200 and (body["ok"] or isinstance(body["column"], int)), body


@fuzzing
@given(form_data(["expression", "cooldown_seconds"]))
def test_the_rule_preview_answers_every_expression_and_cooldown(client, data):
    response = client.post("/settings/rules/preview", data)
    sane(response)
    body = response.json()
    if response.status_code == 400:
        assert body["parameter"] == "cooldown_seconds" and body["message"].startswith("cooldown_seconds: ")
    else:
        assert response.status_code == 200 and ("column" in body or "truncated" in body), body


@fuzzing
@given(form_data(["rule", "symbol", "direction", "since", "until", "page", "format"]))
def test_hostile_history_filters_never_cause_a_500(client, data):
    response = client.get("/history/", data)
    sane(response)
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert response.content.startswith(b"page: ")


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/watchlist/toggle", {"symbol": "BTC\x00USDT"}),
        ("/settings/preferences", {"watchlist": "BTC\x00USDT", "timezone": "UTC"}),
        ("/settings/mutes", {"kind": "symbol", "name": "BTC\x00USDT"}),
        ("/settings/mutes/remove", {"kind": "rule", "name": "a\x00b"}),
        ("/settings/rules/new", {"name": "a\x00b", "expression": "price > 0"}),
    ],
)
def test_a_nul_character_in_a_form_never_causes_a_500(client, path, data):
    sane(client.post(path, data))
