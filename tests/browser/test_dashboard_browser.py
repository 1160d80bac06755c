"""The dashboard in a real browser: Debian's Chromium driven by Playwright against daphne and run_gateway.

The web server and the bridge run as separate processes on this session's test databases, NATS and Redis,
exactly as an operator runs them. Market data and alerts are put on NATS the way run_metrics and
run_alerts publish them (docs/contract.md §5). Screenshots of the three main pages go to var/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from playwright import sync_api as playwright_api

from cryptomon import messaging
from cryptomon.contract.times import to_ms
from cryptomon.embedded import free_port
from tests import dashboard_data as data

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "var" / "screenshots"
PASSWORD = "pw-trader-123456"

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)


def _test_database_url(variable: str, alias: str) -> str:
    """The URL of pytest-django's test database for `alias` (the servers' URLs name the dev database)."""
    url = os.environ[variable]
    original = url.split("/")[3].split("?")[0]
    return url.replace(f"/{original}", f"/{connections[alias].settings_dict['NAME']}", 1)


def _wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port}: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def servers(django_db_setup, tmp_path_factory):
    """daphne (web + WebSocket) and run_gateway (NATS → Channels) on the test databases."""
    logs = tmp_path_factory.mktemp("browser-logs")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url("DATABASE_URL", "default"),
        "TIMESERIES_DATABASE_URL": _test_database_url("TIMESERIES_DATABASE_URL", "timeseries"),
        "ALLOW_ANONYMOUS_DASHBOARD": "false",
        "GATEWAY_TICK_SECONDS": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    daphne_log, gateway_log = logs / "daphne.log", logs / "gateway.log"
    with daphne_log.open("w") as out:
        web = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "cryptomon.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    with gateway_log.open("w") as out:
        gateway = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run_gateway"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(port, web, daphne_log)
        yield f"http://127.0.0.1:{port}"
    finally:
        for process in (web, gateway):
            process.terminate()
        for process in (web, gateway):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), "Debian's chromium is missing: run scripts/setup-browser.sh"
    # Playwright's sync API runs an event loop in the test thread; the ORM calls around it are still plain
    # synchronous code, which Django's guard cannot tell apart: let them through for these tests only.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield from _chromium()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _chromium():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, timezone_id="UTC")
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def trader(redis_client):
    for name in ("BTCUSDT", "ETHUSDT", "币安人生USDT"):
        data.symbol(name)
    return get_user_model().objects.create_user("trader", password=PASSWORD)


def sign_in(page, base: str, next_path: str = "/") -> None:
    page.goto(f"{base}/login/?next={quote(next_path)}")
    page.fill("input[name=username]", "trader")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{next_path}")


def publish(subject: str, payload: dict, jetstream: bool = False) -> None:
    async def send() -> None:
        nc = await messaging.connect("browser-test")
        try:
            if jetstream:
                await nc.jetstream().publish(
                    subject, messaging.encode(payload), headers={"Nats-Msg-Id": payload["id"]}
                )
            else:
                await nc.publish(subject, messaging.encode(payload))
                await nc.flush()
        finally:
            await nc.close()

    # Playwright's sync API keeps an event loop running in this thread: publish from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send()).result(timeout=30)


def wait_until_subscribed(page) -> None:
    """Until the snapshot answering the page's first subscribe is in: it replaces the feed, so an alert the
    test sends without storing it (as these tests do) must come after it to stay on screen."""
    page.wait_for_function("() => Number(document.body.dataset.snapshots || 0) >= 2")


def publish_until(page, publisher: Callable[[], None], condition: str, arg=None, timeout: float = 40) -> None:
    """Publish again until the page shows it: the bridge's core subscriptions see only what comes after
    they start, and the page's socket may still be connecting."""
    deadline = time.monotonic() + timeout
    while True:
        publisher()
        try:
            page.wait_for_function(condition, arg=arg, timeout=700)
            return
        except playwright_api.TimeoutError:
            if time.monotonic() > deadline:
                raise


def live_payload(symbol: str, price: float, open_time: int) -> dict:
    return {
        "v": 1,
        "symbol": symbol,
        "open_time": open_time,
        "final": False,
        "late": False,
        "price": price,
        "metrics": {
            "change_5m": 0.4,
            "change_1h": 1.25,
            "change_1d": -2.5,
            "volume_1h": 2.5e6,
            "volume_1d": 8e7,
            "rsi_14": 58.0,
        },
    }


def alert_payload(
    symbol: str, open_time: int, rule: str = "futures_pioneer_bull", direction: str = "bull"
) -> dict:
    return {
        "v": 1,
        "id": f"{rule}:{symbol}:{open_time}",
        "rule": rule,
        "rule_name": "Pioneer Bull" if rule == "futures_pioneer_bull" else "Top Hunter",
        "severity": "info",
        "direction": direction,
        "symbol": symbol,
        "open_time": open_time,
        "triggered_at": open_time + 61_000,
        "price": 101.5,
        "description": "early bullish trend",
        "metrics": {
            "change_5m": 1.2,
            "change_15m": 1.5,
            "volume_5m": 2e5,
            "volume_15m": 3e5,
            "volume_1d": 8e7,
        },
        "owner": None,
        "late": False,
    }


def screenshot(page, name: str) -> None:
    """Keep a picture of a main page (var/screenshots/; also docs/screenshots/ when asked to refresh them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
    if os.environ.get("CRYPTOMON_SCREENSHOTS_TO_DOCS") == "1":
        (ROOT / "docs" / "screenshots").mkdir(exist_ok=True)
        shutil.copy(SCREENSHOTS / f"{name}.png", ROOT / "docs" / "screenshots" / f"{name}.png")


ROW_PRICE = (
    "([s, p]) => document.querySelector(`tr[data-symbol='${s}'] td[data-key=price]`)?.textContent === p"
)


def test_signed_in_trader_watches_the_market_table_update_live(servers, page, trader):
    sign_in(page, servers)
    page.wait_for_selector("#conn[data-state=open]")
    assert page.is_visible("#stale-flag")  # no live data yet: the stale state is visible
    open_time = to_ms(data.NOW)
    publish_until(
        page,
        lambda: publish("metrics.live.BTCUSDT", live_payload("BTCUSDT", 100.5, open_time)),
        ROW_PRICE,
        ["BTCUSDT", "100.50"],  # no tick size known: 6 significant digits, at least 2 decimals
    )
    publish("metrics.live.币安人生USDT", live_payload("币安人生USDT", 0.0123, open_time))
    publish("metrics.live.BTCUSDT", live_payload("BTCUSDT", 101.75, open_time))
    page.wait_for_function(ROW_PRICE, arg=["BTCUSDT", "101.75"])
    page.wait_for_function(ROW_PRICE, arg=["币安人生USDT", "0.0123"])
    heartbeat = {
        "v": 1,
        "shard": "0/1",
        "symbols_live": 2,
        "last_open_time": open_time - 60_000,
        "lag_ms": 1200,
    }
    publish_until(  # the collector's feed heartbeat (collector.status) drives the status bar
        page,
        lambda: publish("collector.status", {**heartbeat, "stale": False}),
        "() => !document.getElementById('status').classList.contains('stale')",
    )
    assert not page.is_visible("#stale-flag")
    assert (page.inner_text("#symbols-live"), page.inner_text("#lag")) == ("2", "1.2 s")
    assert page.locator("#market-table tbody tr").count() == 2
    row = page.locator("tr[data-symbol='BTCUSDT']")
    assert row.locator("td[data-key=change_1h]").inner_text() == "+1.25%"
    assert row.locator("td[data-key=change_4h]").inner_text() == "–"  # unknown, never zero

    page.fill("#market-filter", "币安")
    page.wait_for_function("() => document.querySelectorAll('#market-table tbody tr').length === 1")
    page.fill("#market-filter", "")
    page.click("th[data-key=price]")  # sort by price, high first
    page.wait_for_function(
        "() => document.querySelector('#market-table tbody tr')?.dataset.symbol === 'BTCUSDT'"
    )
    page.click("th[data-key=price]")  # and low first
    page.wait_for_function(
        "() => document.querySelector('#market-table tbody tr')?.dataset.symbol === '币安人生USDT'"
    )
    publish_until(
        page,
        lambda: publish("collector.status", {**heartbeat, "stale": True}),
        "() => document.getElementById('status').classList.contains('stale')",
    )
    assert page.is_visible("#stale-flag")
    page.click("tr[data-symbol='BTCUSDT'] button.star")
    page.wait_for_function(
        "() => document.querySelector(\"tr[data-symbol='BTCUSDT'] button.star\").classList.contains('on')"
    )
    from alerts.models import UserSettings

    assert UserSettings.objects.get(user=trader).watchlist == ["BTCUSDT"]


def test_an_alert_appears_in_the_feed_and_on_the_symbol_chart(servers, page, trader):
    # Not yet the emulator → collector → metrics → alerts pipeline (run_metrics does not exist yet; the
    # lead's end-to-end test covers it): the alert is published on alerts.triggered as run_alerts does.
    stored_candles = [to_ms(c.time) for c in data.candles("BTCUSDT", 120)]
    data.metrics("BTCUSDT", data.NOW - timedelta(minutes=1))
    stored = data.alert("futures_top_hunter", "BTCUSDT", 30, direction="bear", late=True)
    sign_in(page, servers)
    page.wait_for_selector(f"#alert-feed li[data-id='{stored.alert_id}'] .late")  # the snapshot
    wait_until_subscribed(page)
    open_time = to_ms(data.NOW - timedelta(minutes=5))
    fresh = alert_payload("BTCUSDT", open_time)
    publish_until(
        page,
        lambda: publish("alerts.triggered.BTCUSDT", fresh, jetstream=True),
        "(id) => !!document.querySelector(`#alert-feed li[data-id='${id}']`)",
        fresh["id"],
    )
    first = page.locator("#alert-feed li").first
    assert first.get_attribute("data-id") == fresh["id"]  # newest first
    assert "dir-bull" in first.get_attribute("class")
    assert "dir-bear" in page.locator("#alert-feed li").nth(1).get_attribute("class")
    now = to_ms(data.NOW)
    for name, price in (("ETHUSDT", 3012.5), ("币安人生USDT", 0.0125)):  # BTCUSDT's comes on its page
        publish(f"metrics.live.{name}", live_payload(name, price, now))
    heartbeat = {"v": 1, "shard": "0/1", "symbols_live": 3, "last_open_time": now - 60_000, "lag_ms": 850}
    publish_until(
        page,
        lambda: publish("collector.status", {**heartbeat, "stale": False}),
        "() => !document.getElementById('status').classList.contains('stale')"
        " && document.querySelectorAll('#market-table tbody tr').length === 2",
    )
    screenshot(page, "live")

    page.click(f"#alert-feed li[data-id='{fresh['id']}'] a.symbol")
    page.wait_for_url(f"{servers}/symbols/BTCUSDT/")
    page.wait_for_selector("#chart[data-loaded=true]")
    assert page.get_attribute("#chart", "data-bars") == "120"
    assert page.get_attribute("#chart", "data-markers") == "1"  # the stored alert
    page.click("[data-interval='5m']")
    five_minute_bars = len({t // 300_000 for t in stored_candles})
    page.wait_for_function(f"() => document.getElementById('chart').dataset.bars === '{five_minute_bars}'")
    assert page.get_attribute("#chart", "data-markers") == "1"
    later = alert_payload("BTCUSDT", to_ms(data.NOW - timedelta(minutes=2)), "futures_top_hunter", "bear")
    publish_until(
        page,
        lambda: publish("alerts.triggered.BTCUSDT", later, jetstream=True),
        "() => document.getElementById('chart').dataset.markers === '2'",
    )
    assert page.locator("#symbol-alerts li").count() == 2
    assert page.inner_text("#metrics-table").count("+1.50%") == 1
    page.click("[data-interval='1m']")
    page.wait_for_function("() => document.getElementById('chart').dataset.interval === '1m'")
    publish_until(
        page,
        lambda: publish("metrics.live.BTCUSDT", live_payload("BTCUSDT", 150.0, to_ms(data.NOW))),
        "() => document.getElementById('chart').dataset.lastPrice === '150'",
    )
    assert page.get_attribute("#chart", "data-bars") == "121"  # the open minute joined the chart
    screenshot(page, "symbol")


def test_a_non_ascii_symbol_page_opens_from_its_encoded_link(servers, page, trader):
    data.candles("币安人生USDT", 10, start_price=0.01)
    sign_in(page, servers, f"/symbols/{quote('币安人生USDT')}/")
    page.wait_for_selector("#chart[data-loaded=true]")
    assert page.inner_text("#symbol-name") == "币安人生USDT"
    assert page.get_attribute("#chart", "data-bars") == "10"


def test_history_filters_and_exports(servers, page, trader):
    for minute in range(1, 8):
        data.alert(
            "futures_pioneer_bull" if minute % 2 else "futures_top_hunter",
            "ETHUSDT",
            minute,
            direction="bull" if minute % 2 else "bear",
        )
    sign_in(page, servers, "/history/")
    assert page.locator("#history-table tbody tr").count() == 7
    page.select_option("select[name=direction]", "bear")
    page.click("#history-filters button[type=submit]")
    page.wait_for_url("**direction=bear**")
    assert page.locator("#history-table tbody tr").count() == 3
    screenshot(page, "history")
    with page.expect_download() as download:
        page.click("#csv-export")
    lines = Path(download.value.path()).read_text().strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("time,open_time,symbol,rule")


def test_a_bad_personal_rule_shows_the_rule_languages_message(servers, page, trader):
    data.candles("ETHUSDT", 30)
    sign_in(page, servers, "/settings/")
    page.click("#new-rule")
    page.fill("input[name=name]", "Typo")
    page.fill("textarea[name=expression]", "chnage_1h > 2")
    page.wait_for_function(
        "() => document.getElementById('expression-check').textContent.includes(\"unknown metric 'chnage_1h' at column 1\")"
    )
    assert "did you mean change_1h" in page.inner_text("#expression-check")
    screenshot(page, "rule-editor")
    page.click("#rule-form button[type=submit]")
    assert "unknown metric 'chnage_1h' at column 1" in page.inner_text("#rule-form .error")
    page.fill("textarea[name=expression]", "change_1h > 2 and volume_1h > 1_000_000")
    page.wait_for_function("() => document.getElementById('expression-check').classList.contains('ok')")
    page.click("#preview-button")  # the backtest preview over stored candles
    page.wait_for_function("() => document.getElementById('preview').textContent.includes('symbols checked')")
    assert page.inner_text("#preview").startswith("0 alerts on 0 of 1 symbols checked")
    page.click("#rule-form button[type=submit]")
    page.wait_for_url(f"{servers}/settings/")
    assert "Typo" in page.inner_text("#rules")


def test_anonymous_visitors_are_sent_to_sign_in(servers, page, trader):
    page.goto(f"{servers}/")
    assert page.url.startswith(f"{servers}/login/")


def group_send(group: str, message: dict) -> None:
    """Put a message on the channel layer the way run_gateway does (from another thread's event loop)."""
    from channels.layers import get_channel_layer

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, get_channel_layer().group_send(group, message)).result(timeout=30)


def test_alerts_that_arrive_together_in_one_alerts_frame_all_reach_the_feed(servers, page, trader):
    from gateway import bridge

    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: frames.append(str(frame))))
    sign_in(page, servers)
    page.wait_for_selector("#conn[data-state=open]")
    wait_until_subscribed(page)
    burst = [
        alert_payload(name, to_ms(data.NOW) - n * 60_000) for n, name in enumerate(("BTCUSDT", "ETHUSDT"))
    ]
    burst.append(alert_payload("币安人生USDT", to_ms(data.NOW)))
    shown = "(ids) => ids.every((id) => document.querySelector(`#alert-feed li[data-id='${id}']`))"
    publish_until(  # again until the socket has joined (the page shows `open` once it is accepted)
        page,
        lambda: group_send(bridge.ALERTS_GROUP, bridge.alerts_message(burst)),
        shown,
        [alert["id"] for alert in burst],
    )
    assert any(frame.startswith('{"type":"alerts"') for frame in frames)  # one frame held all three
    assert page.locator("#alert-feed li").count() == 3


def test_the_market_table_hides_columns_flashes_changes_and_opens_a_symbol_from_the_keyboard(
    servers, page, trader
):
    sign_in(page, servers)
    page.wait_for_selector("#conn[data-state=open]")
    open_time = to_ms(data.NOW)
    publish_until(
        page,
        lambda: publish("metrics.live.ETHUSDT", live_payload("ETHUSDT", 2000.0, open_time)),
        ROW_PRICE,
        ["ETHUSDT", "2000.00"],
    )
    publish("metrics.live.BTCUSDT", live_payload("BTCUSDT", 100.0, open_time))
    page.wait_for_function(ROW_PRICE, arg=["BTCUSDT", "100.00"])

    publish("metrics.live.BTCUSDT", live_payload("BTCUSDT", 99.0, open_time))  # down: the row flashes red
    page.wait_for_function(ROW_PRICE, arg=["BTCUSDT", "99.00"])
    assert page.get_attribute("tr[data-symbol='BTCUSDT']", "class").startswith("flash-down-")
    publish("metrics.live.BTCUSDT", live_payload("BTCUSDT", 99.5, open_time))  # and green when it rises
    page.wait_for_function(ROW_PRICE, arg=["BTCUSDT", "99.50"])
    assert page.get_attribute("tr[data-symbol='BTCUSDT']", "class").startswith("flash-up-")

    page.click("details.columns summary")
    page.uncheck("#market-columns input[data-column=rsi_14]")
    assert not page.is_visible("th[data-key=rsi_14]")
    assert not page.is_visible("tr[data-symbol='BTCUSDT'] td[data-key=rsi_14]")
    page.reload()  # the choice is remembered
    page.wait_for_selector("tr[data-symbol='BTCUSDT']")
    assert not page.is_visible("th[data-key=rsi_14]") and page.is_visible("th[data-key=price]")

    page.click("th[data-key=symbol]")  # sort by symbol, A first
    page.wait_for_function(
        "() => document.querySelector('#market-table tbody tr')?.dataset.symbol === 'BTCUSDT'"
    )
    page.focus("#market-table")
    page.keyboard.press("ArrowDown")  # the first row
    page.keyboard.press("ArrowDown")  # the second
    assert page.get_attribute("tr[data-symbol='ETHUSDT']", "aria-selected") == "true"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{servers}/symbols/ETHUSDT/")
    page.go_back()
    page.click("tr[data-symbol='BTCUSDT'] td[data-key=price]")  # a click anywhere on a row opens it too
    page.wait_for_url(f"{servers}/symbols/BTCUSDT/")
