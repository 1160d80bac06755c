"""One alert per (rule, symbol, bar) and the cooldown of docs/contract.md §8, shared by the live engine and backtest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from alerts.decisions import CooldownTracker, RuleSpec, alert_metrics, evaluate_bar
from alerts.presets import PRESETS_BY_SLUG
from alerts.rule_language import RuleError
from cryptomon.contract.messages import alert_id

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def bar(minutes: int) -> int:
    return T0 + minutes * MINUTE


# --- the tracker ---------------------------------------------------------------------------------


def test_a_rule_that_never_fired_may_fire():
    tracker = CooldownTracker()
    assert tracker.should_fire("r", "BTCUSDT", bar(0), 300)
    assert tracker.last_fired("r", "BTCUSDT") is None


def test_it_fires_again_only_once_the_cooldown_has_fully_passed():
    tracker = CooldownTracker()
    tracker.record("r", "BTCUSDT", bar(0))
    assert not tracker.should_fire("r", "BTCUSDT", bar(1), 300)
    assert not tracker.should_fire("r", "BTCUSDT", bar(4), 300)
    assert not tracker.should_fire("r", "BTCUSDT", bar(5) - 1, 300)
    assert tracker.should_fire("r", "BTCUSDT", bar(5), 300)  # t' − t = cooldown is enough
    assert tracker.should_fire("r", "BTCUSDT", bar(6), 300)


def test_cooldown_zero_fires_on_every_new_bar_but_never_twice_on_one():
    tracker = CooldownTracker()
    tracker.record("r", "BTCUSDT", bar(0))
    assert not tracker.should_fire("r", "BTCUSDT", bar(0), 0)
    assert tracker.should_fire("r", "BTCUSDT", bar(1), 0)


def test_a_bar_older_than_or_equal_to_the_last_fired_never_fires():
    tracker = CooldownTracker()
    tracker.record("r", "BTCUSDT", bar(100))
    for cooldown in (0, 60, 300):
        assert not tracker.should_fire("r", "BTCUSDT", bar(100), cooldown)
        assert not tracker.should_fire("r", "BTCUSDT", bar(99), cooldown)
        assert not tracker.should_fire("r", "BTCUSDT", bar(0), cooldown)


def test_recording_an_older_bar_never_moves_the_mark_back():
    tracker = CooldownTracker()
    tracker.record("r", "BTCUSDT", bar(10))
    tracker.record("r", "BTCUSDT", bar(3))
    assert tracker.last_fired("r", "BTCUSDT") == bar(10)


def test_rules_and_symbols_have_separate_cooldowns():
    tracker = CooldownTracker()
    tracker.record("r", "BTCUSDT", bar(0))
    assert tracker.should_fire("r", "ETHUSDT", bar(1), 300)
    assert tracker.should_fire("other", "BTCUSDT", bar(1), 300)
    assert tracker.should_fire("r", "我踏马来了USDT", bar(1), 300)
    assert len(tracker) == 1


def test_seeding_from_history_applies_the_cooldown_across_a_restart():
    tracker = CooldownTracker()
    tracker.seed("r", "BTCUSDT", bar(0))
    tracker.seed("r", "ETHUSDT", None)
    assert not tracker.should_fire("r", "BTCUSDT", bar(2), 300)
    assert tracker.should_fire("r", "BTCUSDT", bar(5), 300)
    assert tracker.should_fire("r", "ETHUSDT", bar(2), 300)
    tracker.seed("r", "BTCUSDT", bar(-10))
    assert tracker.last_fired("r", "BTCUSDT") == bar(0)


def test_a_negative_cooldown_is_a_programming_error():
    with pytest.raises(ValueError):
        CooldownTracker().should_fire("r", "BTCUSDT", bar(0), -1)


# --- evaluate_bar: the decider both engines call --------------------------------------------------


def always(slug: str = "always", cooldown_seconds: int = 300) -> RuleSpec:
    return RuleSpec.build(slug, "price > 0", cooldown_seconds=cooldown_seconds)


def run(rule: RuleSpec, truth_by_minute: list[bool | None], symbol: str = "BTCUSDT") -> list[int]:
    """Feed one rule minute after minute; return the minutes it fired on."""
    tracker = CooldownTracker()
    value = {True: 1.0, False: -1.0, None: None}
    fired = []
    for minute, truth in enumerate(truth_by_minute):
        if evaluate_bar([rule], symbol, bar(minute), {"price": value[truth]}, tracker):
            fired.append(minute)
    return fired


def test_a_rule_true_on_every_bar_fires_once_per_cooldown():
    assert run(always(cooldown_seconds=300), [True] * 16) == [0, 5, 10, 15]
    assert run(always(cooldown_seconds=0), [True] * 4) == [0, 1, 2, 3]
    assert run(always(cooldown_seconds=90), [True] * 7) == [0, 2, 4, 6]
    assert run(always(cooldown_seconds=3600), [True] * 121) == [0, 60, 120]


def test_a_true_bar_inside_the_cooldown_does_not_restart_it():
    # True at 4 is blocked; had it restarted the cooldown, 5 would be blocked too. Likewise 9 → 10.
    truths = [True, False, False, False, True, True, False, False, False, True, True]
    assert run(always(cooldown_seconds=300), truths) == [0, 5, 10]


def test_false_and_unknown_never_fire_and_do_not_start_a_cooldown():
    assert run(always(), [None, False, None, True, None, None, None, None, True]) == [3, 8]


def test_evaluate_bar_returns_the_rules_that_fired_in_order_and_records_them():
    tracker = CooldownTracker()
    a, b, c = always("a"), RuleSpec.build("b", "price < 0"), always("c", cooldown_seconds=0)
    assert evaluate_bar([a, b, c], "BTCUSDT", bar(0), {"price": 1.0}, tracker) == [a, c]
    assert tracker.last_fired("a", "BTCUSDT") == bar(0)
    assert tracker.last_fired("b", "BTCUSDT") is None
    assert evaluate_bar([a, b, c], "BTCUSDT", bar(0), {"price": 1.0}, tracker) == []  # same bar again
    assert evaluate_bar([a, b, c], "BTCUSDT", bar(1), {"price": 1.0}, tracker) == [c]


def test_an_intrabar_rule_fires_on_the_first_true_update_and_not_again_in_that_bar():
    rule = always("intra", cooldown_seconds=0)
    tracker = CooldownTracker()
    updates = [(bar(0), -1.0), (bar(0), 2.0), (bar(0), 3.0), (bar(0), 4.0), (bar(1), 1.0)]
    fired = [t for t, price in updates if evaluate_bar([rule], "BTCUSDT", t, {"price": price}, tracker)]
    assert fired == [bar(0), bar(1)]


@dataclass(frozen=True)
class CountingRule:
    """A RuleLike whose compiled rule counts evaluations (the engines may bring their own rule class)."""

    slug: str
    cooldown_seconds: int
    compiled: object


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, metrics: object) -> bool:
        self.calls += 1
        return True


def test_a_rule_in_cooldown_is_not_even_evaluated():
    counter = Counter()
    rule = CountingRule("counted", 300, counter)
    tracker = CooldownTracker()
    for minute in range(10):
        evaluate_bar([rule], "BTCUSDT", bar(minute), {}, tracker)
    assert counter.calls == 2  # minutes 0 and 5


# --- the alert's metrics and id ------------------------------------------------------------------


def test_alert_metrics_hold_every_name_the_rule_reads_plus_volume_1d():
    rule = RuleSpec.build("r", "change_8h > change_1h and rsi_14 < 30")
    metrics = {"change_8h": 2.5, "change_1h": 1.0, "rsi_14": None, "volume_1d": 9e6, "price": 3.0}
    assert alert_metrics(rule, metrics) == {
        "change_8h": 2.5,
        "change_1h": 1.0,
        "rsi_14": None,
        "volume_1d": 9e6,
    }
    assert list(alert_metrics(rule, metrics)) == ["change_8h", "change_1h", "rsi_14", "volume_1d"]


def test_alert_metrics_are_valid_json_values():
    rule = RuleSpec.build("r", "change_1h > 0 or trades_1h > 0 or vcp > 0")
    metrics = {"change_1h": math.nan, "trades_1h": 12, "vcp": math.inf}
    assert alert_metrics(rule, metrics) == {
        "change_1h": None,
        "trades_1h": 12,
        "vcp": None,
        "volume_1d": None,
    }


def test_a_rule_reading_volume_1d_lists_it_once():
    preset = PRESETS_BY_SLUG["futures_big_bull_60"].spec()
    names = list(alert_metrics(preset, {}))
    assert names.count("volume_1d") == 1
    assert set(names) == preset.compiled.names


def test_the_alert_id_is_rule_symbol_and_open_time():
    assert alert_id("futures_top_hunter", "BTCUSDT", bar(0)) == f"futures_top_hunter:BTCUSDT:{bar(0)}"


def test_building_a_rule_spec_compiles_its_expression_or_says_why_not():
    spec = RuleSpec.build("u7-mine", "rsi_14 < 30", owner_id=7, severity="critical")
    assert (spec.name, spec.mode, spec.cooldown_seconds, spec.direction) == (
        "u7-mine",
        "bar_close",
        300,
        "neutral",
    )
    assert spec.expression == "rsi_14 < 30"
    with pytest.raises(RuleError, match="did you mean rsi_14"):
        RuleSpec.build("bad", "rsi_41 < 30")
