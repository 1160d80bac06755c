"""The symbol page reads like a trading tool: prices in their tick size, a chart with volume, Bollinger bands,
RSI and MACD panes, server-side timeframes, alert names on hover, and pages that fit a phone.

Debian's Chromium driven by Playwright against daphne and run_gateway, as in test_dashboard_browser.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from collector.models import Symbol
from cryptomon.contract.times import to_ms
from tests import dashboard_data as data
from tests.browser.test_dashboard_browser import (
    ROW_PRICE,
    alert_payload,
    live_payload,
    publish,
    publish_until,
    screenshot,
    sign_in,
)

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

TINY, BIG, CHART = "TINYUSDT", "BIGUSDT", "CHARTUSDT"  # the chart test's symbol gets no live rows before it


@pytest.fixture
def console_errors(page):
    """Every console error and uncaught exception of the page; a test ends by asserting there were none."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


@pytest.fixture
def market(trader):
    """A coin priced 0.00000123 (tick 10⁻⁸) and one priced 123456.7 (tick 0.1), with two hours of candles,
    stored indicators for the last 30 minutes and an alert on the tiny coins."""
    Symbol.objects.filter(symbol="BTCUSDT").update(tick_size="0.10")
    for name, tick, start, step in (
        (TINY, "0.00000001", 0.00000123, 0.00000001),
        (CHART, "0.00000001", 0.00000123, 0.00000001),
        (BIG, "0.1", 123456.7, 0.1),
    ):
        data.symbol(name, tick_size=tick)
        data.candles(name, 120, start_price=start, step=step)
        for minutes_ago in range(1, 31):
            data.metrics(
                name, data.NOW - timedelta(minutes=minutes_ago), price=start, ohlc=(start, start, start)
            )
    data.alert("futures_top_hunter", TINY, 10, direction="bear", price=0.00000124)
    return data.alert("futures_top_hunter", CHART, 10, direction="bear", price=0.00000124)


def _fits(page, selector: str = "html") -> bool:
    return page.evaluate(
        "(s) => { const n = document.querySelector(s); return n.scrollWidth <= n.clientWidth + 1; }", selector
    )


def test_prices_keep_their_tick_size_from_0_00000123_to_123456_7(servers, page, market, console_errors):
    sign_in(page, servers)
    now = to_ms(data.NOW)
    publish_until(
        page,
        lambda: [
            publish(f"metrics.live.{n}", live_payload(n, p, now))
            for n, p in ((TINY, 0.00000123), (BIG, 123456.7))
        ],
        ROW_PRICE,
        [TINY, "0.00000123"],
    )
    page.wait_for_function(ROW_PRICE, arg=[BIG, "123456.7"])
    fresh = {**alert_payload(TINY, now - 120_000), "price": 0.00000125}
    publish_until(
        page,
        lambda: publish(f"alerts.triggered.{TINY}", fresh, jetstream=True),
        "(id) => !!document.querySelector(`#alert-feed li[data-id='${id}']`)",
        fresh["id"],
    )
    assert page.inner_text(f"#alert-feed li[data-id='{fresh['id']}'] .price") == "0.00000125"

    page.goto(f"{servers}/symbols/{TINY}/")
    page.wait_for_selector("#chart[data-loaded=true]")
    # The price scale and the crosshair use the series' formatter: the tick size's 8 decimals.
    assert page.get_attribute("#chart", "data-price-sample") == "0.00000243"  # the last close: 123 + 119 + 1
    assert (
        page.evaluate("() => document.querySelector('#metrics-table tbody td').textContent") == "0.00000123"
    )
    assert page.inner_text("#symbol-alerts li .price") == "0.00000124"
    assert page.inner_text("#live-price") == "0.00000123"
    page.goto(f"{servers}/symbols/{BIG}/")
    page.wait_for_selector("#chart[data-loaded=true]")
    assert page.get_attribute("#chart", "data-price-sample") == "123468.7"  # 123456.7 + 119 steps + 1
    page.goto(f"{servers}/history/?symbol={TINY}")
    assert page.inner_text("#history-table tbody tr td:nth-child(6)") == "0.00000124"
    assert console_errors == []


def test_the_chart_has_volume_bands_rsi_macd_timeframes_and_alert_names_on_hover(
    servers, page, market, console_errors
):
    sign_in(page, servers, f"/symbols/{CHART}/")
    page.wait_for_selector("#chart[data-loaded=true]")
    assert page.get_attribute("#chart", "data-bars") == "120"
    assert page.get_attribute("#chart", "data-indicators") == "30"  # stored bars carry RSI, MACD and bands
    assert page.get_attribute("#chart", "data-markers") == "1"
    assert page.evaluate("() => document.querySelectorAll('#chart table tr').length") >= 3  # three panes
    alert_time = to_ms(market.time)
    x = page.evaluate("(t) => document.getElementById('chart').timeToX(t)", alert_time)
    box = page.locator("#chart").bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + 200)
    page.wait_for_function(
        "() => document.getElementById('legend-alerts').textContent.includes('Futures Top Hunter')"
    )
    ohlc = page.inner_text("#legend-ohlc")
    assert " O 0.00000" in ohlc and " C 0.00000" in ohlc  # crosshair values in the tick size
    assert "RSI 61.25" in page.inner_text("#legend-indicators")
    screenshot(page, "symbol-chart")

    for interval, minutes in (("5m", 5), ("15m", 15), ("1h", 60), ("4h", 240), ("1d", 1440)):
        page.click(f"[data-interval='{interval}']")
        page.wait_for_function(f"() => document.getElementById('chart').dataset.interval === '{interval}'")
        page.wait_for_selector("#chart[data-loaded=true]")
        first = to_ms(data.NOW - timedelta(minutes=120))
        expected = len({t // (minutes * 60_000) for t in range(first, to_ms(data.NOW), 60_000)})
        assert page.get_attribute("#chart", "data-bars") == str(expected), interval
    assert page.get_attribute("#chart", "data-markers") == "1"
    page.click("[data-interval='1m']")
    page.wait_for_function("() => document.getElementById('chart').dataset.interval === '1m'")
    publish_until(
        page,
        lambda: publish(f"metrics.live.{CHART}", live_payload(CHART, 0.0000025, to_ms(data.NOW))),
        "() => document.getElementById('chart').dataset.lastPrice === '0.0000025'",
    )
    assert page.get_attribute("#chart", "data-bars") == "121"  # the open minute joined without a reload
    assert page.inner_text("#live-price") == "0.00000250"
    assert console_errors == []


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_the_pages_fit_the_screen_without_cutting_off_a_column(servers, browser, market, width, height):
    context = browser.new_context(viewport={"width": width, "height": height}, timezone_id="UTC")
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        sign_in(page, servers, f"/symbols/{BIG}/")
        page.wait_for_selector("#chart[data-loaded=true]")
        assert _fits(page), "the symbol page is wider than the screen"
        assert _fits(page, ".table-fit"), "the metrics table is cut off"
        assert page.locator("#metrics-table").is_visible()
        if width < 600:
            screenshot(page, "phone-symbol")
        for path in ("/", "/settings/", "/settings/notifications/", "/history/"):
            page.goto(f"{servers}{path}")
            page.wait_for_load_state("load")
            assert _fits(page), f"{path} is wider than a {width} px screen"
            if width < 600:
                screenshot(page, "phone-" + (path.strip("/").replace("/", "-") or "live"))
    finally:
        context.close()
    assert errors == []
