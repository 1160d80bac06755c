"""The preset scenarios (collector/emulator/scenarios/*.json, the emulator's format): each makes its preset
fire on the emulator's candles through the same metrics and rule code as live, and a near miss (the
decisive last move at a third of its size) does not."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from alerts.backtest import evaluate
from alerts.presets import PRESETS_BY_SLUG, preset_specs
from collector.emulator.derivatives import Derivatives
from collector.emulator.market import FAMOUS, Market
from collector.emulator.scenarios import compile_scenario, load_file
from cryptomon.contract.candles import Candle

SCENARIOS = Path(__file__).resolve().parent.parent / "collector" / "emulator" / "scenarios"
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
MINUTE = 60_000
NEAR_MISS_DERIVATIVES = ("funding_rate", "basis_pct", "oi_change_pct", "liq_long_quote", "liq_short_quote")
HISTORY = 1500  # minutes of emulator history before T0: the 1-day windows of every scenario


def scenario(slug: str) -> dict:
    (spec,) = load_file(SCENARIOS / f"{slug}.json")
    return spec


def alerts_on(spec: dict) -> list[dict]:
    """Every preset alert on the scenario's symbol over the emulator's history and the scenario."""
    symbol = spec["symbol"]
    market = Market([symbol], seed=7, speed=1e9, t0_ms=T0, history_minutes=HISTORY, extras=False)
    market.add_scenario(compile_scenario(spec, market.t0_ms, market.states))
    derivatives = Derivatives(market)  # the §7b fields a collector connected all along would attach
    end = spec["start_minute"] + sum(step["minutes"] for step in spec["steps"])
    candles = []
    for minute in range(-HISTORY, end + 5):
        row = market.candle(symbol, T0 + minute * MINUTE)
        if row is not None:
            row.update(derivatives.expected(symbol, T0 + minute * MINUTE))
            candles.append(Candle.from_payload(row, symbol=symbol))
    return evaluate(symbol, candles, preset_specs())


def scripted(spec: dict) -> range:
    start = T0 + spec["start_minute"] * MINUTE
    return range(start, start + sum(step["minutes"] for step in spec["steps"]) * MINUTE, MINUTE)


WITH_SCENARIO = sorted(path.stem for path in SCENARIOS.glob("*.json"))


def test_there_is_one_scenario_per_preset_on_distinct_symbols():
    files = WITH_SCENARIO
    assert set(files) == set(PRESETS_BY_SLUG)  # all 16: the §7b ones script derivatives fields too
    symbols = [scenario(slug)["symbol"] for slug in files]
    assert len(set(symbols)) == len(symbols) and set(symbols) <= set(FAMOUS)


@pytest.mark.parametrize("slug", WITH_SCENARIO)
def test_each_preset_fires_on_its_scenario(slug):
    spec = scenario(slug)
    fired = [alert for alert in alerts_on(spec) if alert["rule"] == slug]
    assert fired, f"{slug} did not fire on its scenario"
    assert fired[0]["open_time"] in scripted(spec)
    assert fired[0]["open_time"] >= T0  # after the emulator's start: the demo shows it live


@pytest.mark.parametrize("slug", WITH_SCENARIO)
def test_each_preset_stays_silent_on_a_near_miss_of_its_scenario(slug):
    spec = copy.deepcopy(scenario(slug))
    last = spec["steps"][-1]
    for key in ("change_pct", *NEAR_MISS_DERIVATIVES):
        if key in last:
            last[key] *= 0.3
    window = scripted(spec)
    assert not [a for a in alerts_on(spec) if a["rule"] == slug and a["open_time"] in window]
