"""The browser tests' shared fixtures: daphne + run_gateway on the test databases, Chromium, a page, a trader."""

from tests.browser.test_dashboard_browser import browser, page, servers, trader  # noqa: F401
