"""The rule editor's backtest preview is bounded (docs/security.md): a per-user rate
limit, at most PREVIEW_MAX_SYMBOLS symbols and PREVIEW_MAX_MINUTES minutes each, a time budget that stops
early and says so, and a compile cache that never grows past its size. Every bound is tested by counts."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from alerts import backtest
from alerts.decisions import RuleSpec
from tests import dashboard_data as data

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"])

PREVIEW = "/settings/rules/preview"
EVERY_BAR = {"expression": "price > 0", "cooldown_seconds": "0"}  # fires on every replayed bar


def signed_in(name: str) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user(name))
    return client


@pytest.fixture
def client(redis_client, settings) -> Client:
    settings.PREVIEW_RATE_LIMIT_PER_MINUTE = 1000
    return signed_in("previewer")


def test_previews_beyond_the_rate_limit_get_a_429_naming_the_limit(client, settings):
    settings.PREVIEW_RATE_LIMIT_PER_MINUTE = 2
    data.candles("BTCUSDT", 5)
    for _ in range(2):
        assert client.post(PREVIEW, EVERY_BAR).status_code == 200
    refused = client.post(PREVIEW, EVERY_BAR)
    assert refused.status_code == 429
    body = refused.json()
    assert body["ok"] is False and "PREVIEW_RATE_LIMIT_PER_MINUTE" in body["message"], body
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert signed_in("neighbour").post(PREVIEW, EVERY_BAR).status_code == 200  # per user


def test_a_preview_checks_at_most_preview_max_symbols_and_says_it_was_truncated(client, settings):
    settings.PREVIEW_MAX_SYMBOLS = 2
    for name in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        data.candles(name, 5)
    body = client.post(PREVIEW, EVERY_BAR).json()
    assert body["symbols_checked"] == 2 and body["symbols_stored"] == 3
    assert body["truncated"] is True and body["truncated_by"] == ["symbols"]
    assert sorted(body["by_symbol"]) == ["AAAUSDT", "BBBUSDT"]


def test_a_preview_replays_only_the_newest_preview_max_minutes_of_each_symbol(client, settings):
    data.candles("BTCUSDT", 40)
    whole = client.post(PREVIEW, EVERY_BAR).json()
    assert whole["alerts"] == 40 and whole["minutes_replayed"] == 40 and whole["truncated"] is False
    settings.PREVIEW_MAX_MINUTES = 10
    body = client.post(PREVIEW, EVERY_BAR).json()
    assert body["alerts"] == 10 and body["minutes_replayed"] == 10
    assert body["truncated"] is True and body["truncated_by"] == ["minutes"]
    assert [a["open_time"] for a in body["newest"]] == [a["open_time"] for a in whole["newest"]]


def test_a_preview_over_its_time_budget_returns_what_it_computed(client, settings):
    settings.PREVIEW_MAX_SECONDS = 0  # the budget is spent after the first symbol
    for name in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        data.candles(name, 5)
    body = client.post(PREVIEW, EVERY_BAR).json()
    assert body["ok"] is True and body["symbols_checked"] == 1 and body["by_symbol"] == {"AAAUSDT": 5}
    assert body["truncated"] is True and body["truncated_by"] == ["seconds"]


def test_the_compile_cache_never_holds_more_than_its_size(client, monkeypatch):
    monkeypatch.setattr(backtest, "COMPILE_CACHE_SIZE", 3)
    monkeypatch.setattr(backtest, "_compiled", type(backtest._compiled)())
    data.candles("BTCUSDT", 3)
    for n in range(8):
        assert client.post(PREVIEW, {"expression": f"price > {n}", "cooldown_seconds": str(n)}).json()["ok"]
        assert len(backtest._compiled) <= 3


def test_the_compile_cache_keeps_the_rule_sets_used_most_recently(monkeypatch):
    monkeypatch.setattr(backtest, "COMPILE_CACHE_SIZE", 2)
    monkeypatch.setattr(backtest, "_compiled", type(backtest._compiled)())
    first, second, third = ([RuleSpec.build("p", f"price > {n}", cooldown_seconds=60)] for n in range(3))
    kept = backtest._vectors(first)
    backtest._vectors(second)
    assert backtest._vectors(first) is kept  # used again: now the most recent
    backtest._vectors(third)  # evicts `second`, the least recently used
    assert backtest._vectors(first) is kept and len(backtest._compiled) == 2
