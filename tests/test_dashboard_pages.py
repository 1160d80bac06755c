"""Dashboard pages as a trader sees them: live, symbol, history (with CSV), sign-in, and who may see what."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from alerts.models import AlertRule, UserSettings
from tests import dashboard_data as data

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

NOW = data.NOW


def table(page: str) -> str:
    """The history table's rows (the filter form above lists every rule's name)."""
    return page.split('id="history-table"', 1)[1]


@pytest.fixture
def world():
    users = get_user_model().objects
    me = users.create_user("me", password="pw-me-123456")
    other = users.create_user("other", password="pw-other-123456")
    UserSettings.objects.create(user=me, timezone="Asia/Tokyo")
    for name in ("BTCUSDT", "ETHUSDT", "币安人生USDT"):
        data.symbol(name)
    data.candles("BTCUSDT", 5)
    data.metrics("BTCUSDT", NOW - timedelta(minutes=1))
    data.alert("futures_pioneer_bull", "BTCUSDT", 1)
    data.alert("futures_top_hunter", "BTCUSDT", 30, direction="bear", late=True)
    data.alert(f"u{other.pk}-secret_plan", "BTCUSDT", 2, owner=other.pk)
    data.alert("futures_pioneer_bear", "币安人生USDT", 3, direction="bear")
    client = Client()
    client.force_login(me)
    return me, other, client


@pytest.mark.parametrize("path", ["/", "/history/", "/symbols/BTCUSDT/", "/settings/"])
def test_pages_send_anonymous_visitors_to_sign_in(world, path):
    response = Client().get(path)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


def test_anonymous_viewing_works_only_with_the_setting(world, settings):
    settings.ALLOW_ANONYMOUS_DASHBOARD = True
    anonymous = Client()
    assert anonymous.get("/").status_code == 200
    history = table(anonymous.get("/history/").content.decode())
    assert "Pioneer Bull" in history and "Secret Plan" not in history
    assert anonymous.get("/settings/").status_code == 302  # settings always need an account


def test_sign_in_and_out_with_a_password(world):
    client = Client()
    page = client.get("/login/")
    assert page.status_code == 200 and b'name="password"' in page.content
    wrong = client.post("/login/", {"username": "me", "password": "nope"})
    assert wrong.status_code == 200 and b'role="alert"' in wrong.content
    response = client.post("/login/", {"username": "me", "password": "pw-me-123456", "next": "/history/"})
    assert response.status_code == 302 and response["Location"] == "/history/"
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_live_page_loads_the_module_and_styles_that_daphne_serves(world):
    _, _, client = world
    page = client.get("/").content.decode()
    assert 'id="alert-feed"' in page and 'id="market-table"' in page and 'id="status"' in page
    assert 'data-page="live"' in page and 'data-zone="Asia/Tokyo"' in page
    assert '<script type="module" src="/static/cryptomon.js">' in page
    for path in ("/static/cryptomon.js", "/static/cryptomon.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert len(body) > 1000


def test_symbol_page_shows_metrics_of_every_timeframe_and_its_alerts(world):
    _, _, client = world
    page = client.get("/symbols/BTCUSDT/").content.decode()
    for timeframe in ("5m", "15m", "1h", "4h", "8h", "1d"):
        assert f"<th>{timeframe}</th>" in page
    assert "+1.50%" in page  # change_1h
    assert "61.25" in page  # rsi_14
    assert "Pioneer Bull" in page and "Top Hunter" in page and ">late<" in page
    assert "Secret Plan" not in page
    assert 'data-chart-url="/api/chart/BTCUSDT"' in page
    assert "lightweight-charts.standalone.production.js" in page


def test_symbol_page_of_a_non_ascii_symbol_by_its_encoded_url(world):
    _, _, client = world
    response = client.get(f"/symbols/{quote('币安人生USDT')}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "币安人生USDT" in page and "No stored metrics yet." in page
    assert f"/api/chart/{quote('币安人生USDT')}" in page


def test_unknown_symbol_page_is_404(world):
    _, _, client = world
    assert client.get("/symbols/NOPEUSDT/").status_code == 404


def test_history_filters_by_rule_symbol_direction_and_time(world):
    _, _, client = world
    page = client.get("/history/").content.decode()
    assert page.count('class="dir-') == 3
    assert "Secret Plan" not in page
    bear = table(client.get("/history/", {"direction": "bear"}).content.decode())
    assert bear.count('class="dir-') == 2 and "Pioneer Bull" not in bear
    by_symbol = client.get("/history/", {"symbol": "币安人生usdt"}).content.decode()
    assert by_symbol.count('class="dir-') == 1
    by_rule = table(client.get("/history/", {"rule": "futures_top_hunter"}).content.decode())
    assert by_rule.count('class="dir-') == 1 and "Top Hunter" in by_rule
    # Times typed in the viewer's zone (Asia/Tokyo, UTC+9): the last 10 minutes.
    since = (NOW - timedelta(minutes=10)).astimezone(data.UTC).replace(tzinfo=None) + timedelta(hours=9)
    recent = table(client.get("/history/", {"since": since.strftime("%Y-%m-%dT%H:%M")}).content.decode())
    assert recent.count('class="dir-') == 2 and "Top Hunter" not in recent


def test_history_follows_the_users_watchlist(world):
    me, _, client = world
    UserSettings.objects.filter(user=me).update(watchlist=["币安人生USDT"])
    page = client.get("/history/").content.decode()
    assert page.count('class="dir-') == 1 and "币安人生USDT" in page


def test_history_hides_what_bad_stored_settings_mute_or_floor(world):
    """alerts.visibility: an unparsable mute expiry mutes until lifted; a boolean volume is not a number."""
    me, _, client = world
    UserSettings.objects.filter(user=me).update(muted_symbols={"币安人生USDT": "garbled"}, min_volume_1d=1e6)
    data.alert("boolean_volume", "BTCUSDT", 4, volume_1d=True)
    page = table(client.get("/history/").content.decode())
    assert page.count('class="dir-') == 2 and "币安人生USDT" not in page and "Boolean Volume" not in page


def test_history_rejects_a_backwards_time_range(world):
    _, _, client = world
    page = client.get(
        "/history/", {"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}
    ).content.decode()
    assert "&#x27;from&#x27; must be before &#x27;to&#x27;" in page


def test_history_pages_through_many_alerts(world):
    _, _, client = world
    for minute in range(100, 160):
        data.alert("futures_5_big_bull", "ETHUSDT", minute)
    first = client.get("/history/").content.decode()
    assert first.count('class="dir-') == 50 and "page 1 of 2" in first and 'rel="next"' in first
    second = client.get("/history/", {"page": 2}).content.decode()
    assert second.count('class="dir-') == 13 and "page 2 of 2" in second


def test_history_exports_the_filtered_alerts_as_csv(world):
    _, _, client = world
    response = client.get("/history/", {"direction": "bear", "format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["symbol"] for row in rows] == ["币安人生USDT", "BTCUSDT"]
    assert rows[1]["late"] == "true" and rows[1]["time"].endswith("+09:00")  # the viewer's time zone
    assert '"volume_1d": 5000000.0' in rows[0]["metrics"]


def test_the_csv_keeps_a_formula_like_rule_name_as_text(world):
    me, _, client = world
    AlertRule.objects.create(slug=f"u{me.pk}-sum", name="=SUM(A1:A9)", expression="change_1h > 1", owner=me)
    alert = data.alert(f"u{me.pk}-sum", "BTCUSDT", 5, owner=me.pk)
    alert.rule_name = "=SUM(A1:A9)"
    alert.save()
    body = b"".join(client.get("/history/", {"format": "csv", "rule": alert.rule}).streaming_content).decode()
    (row,) = csv.DictReader(io.StringIO(body))
    assert row["rule_name"] == "'=SUM(A1:A9)"


def test_a_user_never_sees_another_users_personal_alerts_on_any_page(world):
    me, other, _ = world
    data.alert(f"u{me.pk}-my_idea", "BTCUSDT", 4, owner=me.pk)
    them = Client()
    them.force_login(other)
    for path in ("/history/", "/symbols/BTCUSDT/", "/history/?format=csv"):
        response = them.get(path)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert b"My Idea" not in body, path
        assert b"Secret Plan" in body, path


def test_operators_see_the_symbols_in_the_admin_read_only(world):
    operator = get_user_model().objects.create_superuser("operator", password="pw-operator-123456")
    client = Client()
    client.force_login(operator)
    listing = client.get("/admin/collector/symbol/", {"trading__exact": "1"}).content.decode()
    assert "币安人生USDT" in listing and f"/symbols/{quote('币安人生USDT')}/" in listing
    change = client.get(f"/admin/collector/symbol/{quote('BTCUSDT')}/change/")
    assert change.status_code == 200 and b'name="status"' not in change.content  # nothing to edit
    assert client.get("/admin/collector/symbol/add/").status_code == 403


def _resources(page: str) -> set[str]:
    """What a browser fetches by itself on loading a page: stylesheets, icons, scripts, images."""
    tags = re.findall(r"<(?:link|script|img)\b[^>]*>", page)
    return {url for tag in tags for url in re.findall(r'\b(?:href|src)="(/[^"]*)"', tag)}


@pytest.mark.parametrize(
    "path", ["/", "/symbols/BTCUSDT/", "/history/", "/settings/", "/settings/rules/new", "/login/"]
)
def test_every_resource_a_page_loads_answers_200_including_its_icon(world, path):
    _, _, client = world
    if path == "/login/":
        client = Client()
    response = client.get(path)
    assert response.status_code == 200
    resources = _resources(response.content.decode())
    assert "/static/favicon.svg" in resources
    for url in sorted(resources):
        assert client.get(url).status_code == 200, url


def test_the_browsers_default_favicon_address_leads_to_the_icon(world):
    """Pages that link no icon (the admin's) make browsers ask for /favicon.ico."""
    response = Client().get("/favicon.ico", follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/static/favicon.svg"
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert body.startswith(b"<svg")
