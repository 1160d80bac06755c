"""The numpy fast path decides exactly what the compiled closures and `evaluate_bar` decide."""

from __future__ import annotations

import math
import random
from decimal import Decimal

from alerts.decisions import CooldownTracker, RuleSpec, evaluate_bar
from alerts.presets import preset_specs
from alerts.vectorized import VectorRule, decide_series, decide_symbols

NAMES = ["price", "change_1h", "volume_5m", "rsi_14", "trades_1d"]
ODD_VALUES = [None, math.nan, math.inf, -math.inf, 0.0, -0.0, 0, 3, True, "7", Decimal("2.5"), 1e308, -1e308]


def random_rule(generator: random.Random) -> str:
    def number(depth: int) -> str:
        choice = generator.random()
        if depth > 3 or choice < 0.3:
            return generator.choice([*NAMES, "2", "0", "0.5", "1_000", "3.25", "1000"])
        if choice < 0.45:
            return f"-{number(depth + 1)}"
        if choice < 0.6:
            fn = generator.choice(["abs", "min", "max"])
            count = 1 if fn == "abs" else generator.randint(1, 3)
            return f"{fn}({', '.join(number(depth + 1) for _ in range(count))})"
        if choice < 0.7:
            return f"({number(depth + 1)})"
        return f"{number(depth + 1)} {generator.choice('+-*/')} {number(depth + 1)}"

    def condition(depth: int) -> str:
        choice = generator.random()
        if depth > 2 or choice < 0.4:
            return f"{number(0)} {generator.choice(['<', '<=', '>', '>=', '==', '!='])} {number(0)}"
        if choice < 0.55:
            return f"not {condition(depth + 1)}"
        if choice < 0.65:
            return f"({condition(depth + 1)})"
        return f"{condition(depth + 1)} {generator.choice(['and', 'or'])} {condition(depth + 1)}"

    return condition(0)


def random_row(generator: random.Random) -> dict:
    row = {}
    for name in NAMES:
        pick = generator.random()
        if pick < 0.2:
            row[name] = generator.choice(ODD_VALUES)
        elif pick < 0.25:
            continue  # absent
        else:
            row[name] = generator.choice([0.5, 1.0, 2.0, 3.0, 7.25, 1e3, -4.0, 1e300])
    return row


def test_random_rules_on_odd_values_agree_with_the_closures():
    generator = random.Random(20261129)
    checked = fired = 0
    for index in range(600):
        rule = RuleSpec.build(f"r{index}", random_rule(generator))
        rows = [random_row(generator) for _ in range(40)]
        truth = VectorRule(rule).truth_of(rows)
        expected = [rule.compiled.evaluate(row) is True for row in rows]
        assert truth == expected, rule.expression
        checked += len(rows)
        fired += sum(expected)
    assert checked == 24_000 and 1000 < fired < 23_000


def test_deciding_many_symbols_at_once_equals_evaluate_bar_symbol_by_symbol():
    generator = random.Random(7)
    rules = [
        *preset_specs(),
        RuleSpec.build("often", "change_5m > 0.2 or rsi_14 > 60", cooldown_seconds=0),
        RuleSpec.build("cool", "abs(change_15m) > 0.5", cooldown_seconds=180),
    ]
    vectors = [VectorRule(rule) for rule in rules]
    symbols = [f"S{i}USDT" for i in range(80)]
    one, many = CooldownTracker(), CooldownTracker()
    for minute in range(30):
        open_time = 1_767_225_600_000 + minute * 60_000
        rows = []
        for _ in symbols:
            row = {
                name: generator.gauss(0, 1.5)
                for name in ("change_5m", "change_15m", "change_1h", "change_8h")
            }
            row.update(change_1d=generator.gauss(0, 5), rsi_14=generator.uniform(20, 80))
            row.update(
                {f"volume_{w}": generator.lognormvariate(13, 1) for w in ("5m", "15m", "1h", "8h", "1d")}
            )
            rows.append(row)
        expected = [
            [rule.slug for rule in evaluate_bar(rules, symbol, open_time, row, one)]
            for symbol, row in zip(symbols, rows, strict=True)
        ]
        decided = decide_symbols(vectors, symbols, [open_time] * len(symbols), rows, many)
        assert [[rule.slug for rule in fired] for fired in decided] == expected
    assert one._last == many._last and len(one) > 50


def test_deciding_a_series_of_bars_at_once_equals_evaluate_bar_bar_after_bar():
    generator = random.Random(11)
    rules = [
        RuleSpec.build("often", "change_5m > 0.5", cooldown_seconds=0),
        RuleSpec.build("cool", "abs(change_15m) > 1 or not rsi_14 < 70", cooldown_seconds=300),
        RuleSpec.build("odd", "change_5m / change_15m > 0.5 and rsi_14 != 50", cooldown_seconds=120),
    ]
    open_times = [1_767_225_600_000 + minute * 60_000 for minute in range(500)]
    rows = [
        {"change_5m": generator.gauss(0, 1), "change_15m": generator.choice([0.0, None, generator.gauss(0, 2)]),
         "rsi_14": generator.choice([50, generator.uniform(20, 80)])}
        for _ in open_times
    ]  # fmt: skip
    one = CooldownTracker()
    expected = [
        (index, rule.slug)
        for index, (open_time, row) in enumerate(zip(open_times, rows, strict=True))
        for rule in evaluate_bar(rules, "BTCUSDT", open_time, row, one)
    ]
    many = CooldownTracker()
    decided = decide_series([VectorRule(r) for r in rules], "BTCUSDT", open_times, rows, many)
    assert [(index, rule.slug) for index, rule in decided] == expected
    assert one._last == many._last and len(expected) > 100
