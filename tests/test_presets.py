"""The 16 presets of docs/contract.md §8 and §7b: exactly as designed, and each one's verdict on hand-built markets."""

from __future__ import annotations

import pytest

from alerts.decisions import RuleSpec
from alerts.presets import PRESETS, PRESETS_BY_SLUG, preset_specs
from alerts.rule_language import compile_rule
from tests.contract_docs import all_presets

# A literal copy of the §8 table: the presets, the docs and this list must all agree.
EXPECTED = [
    (
        "futures_big_bull_60",
        "60 Big Bull",
        "sustained momentum over multiple timeframes",
        "change_1h > 1.6 and change_1d < 15 and change_8h > change_1h and change_1d > change_8h and volume_1h > 500_000 and volume_8h > 5_000_000 and 6 * volume_1h > volume_8h and 16 * volume_1h > volume_1d",
    ),
    (
        "futures_big_bear_60",
        "60 Big Bear",
        "sustained downward momentum",
        "change_1h < -1.6 and change_1d > -15 and change_8h < change_1h and change_1d < change_8h and volume_1h > 500_000 and volume_8h > 5_000_000 and 6 * volume_1h > volume_8h and 16 * volume_1h > volume_1d",
    ),
    (
        "futures_pioneer_bull",
        "Pioneer Bull",
        "early bullish trend",
        "change_5m > 1 and change_15m > 1 and 3 * change_5m > change_15m and 2 * volume_5m > volume_15m",
    ),
    (
        "futures_pioneer_bear",
        "Pioneer Bear",
        "early bearish trend",
        "change_5m < -1 and change_15m < -1 and 3 * change_5m < change_15m and 2 * volume_5m > volume_15m",
    ),
    (
        "futures_5_big_bull",
        "5 Big Bull",
        "5-minute bullish spike",
        "change_5m > 0.6 and change_1d < 15 and change_15m > change_5m and change_1h > change_15m and volume_5m > 100_000 and volume_1h > 1_000_000 and volume_5m > volume_15m / 3 and volume_5m > volume_1h / 6 and volume_5m > volume_8h / 66",
    ),
    (
        "futures_5_big_bear",
        "5 Big Bear",
        "5-minute bearish spike",
        "change_5m < -0.6 and change_1d > -15 and change_15m < change_5m and change_1h < change_15m and volume_5m > 100_000 and volume_1h > 1_000_000 and volume_5m > volume_15m / 3 and volume_5m > volume_1h / 6 and volume_5m > volume_8h / 66",
    ),
    (
        "futures_15_big_bull",
        "15 Big Bull",
        "15-minute bullish spike",
        "change_15m > 1 and change_1d < 15 and change_1h > change_15m and change_8h > change_1h and volume_15m > 400_000 and volume_1h > 1_000_000 and volume_15m > volume_1h / 3 and volume_15m > volume_8h / 26",
    ),
    (
        "futures_15_big_bear",
        "15 Big Bear",
        "15-minute bearish spike",
        "change_15m < -1 and change_1d > -15 and change_1h < change_15m and change_8h < change_1h and volume_15m > 400_000 and volume_1h > 1_000_000 and volume_15m > volume_1h / 3 and volume_15m > volume_8h / 26",
    ),
    (
        "futures_bottom_hunter",
        "Bottom Hunter",
        "potential bottom reversal",
        "change_1h < -0.7 and change_15m < -0.6 and change_5m > 0.5 and volume_5m > volume_15m / 2 and volume_5m > volume_1h / 8",
    ),
    (
        "futures_top_hunter",
        "Top Hunter",
        "potential top reversal",
        "change_1h > 0.7 and change_15m > 0.6 and change_5m < -0.5 and volume_5m > volume_15m / 2 and volume_5m > volume_1h / 8",
    ),
    # §7b
    (
        "futures_crowded_longs",
        "Crowded Longs",
        "funding rich while open interest builds into a rise",
        "funding_apr > 50 and oi_change_4h > 5 and change_4h > 0",
    ),
    (
        "futures_crowded_shorts",
        "Crowded Shorts",
        "funding negative while open interest builds into a fall",
        "funding_apr < -50 and oi_change_4h > 5 and change_4h < 0",
    ),
    (
        "futures_long_squeeze",
        "Long Squeeze",
        "longs liquidated into a drop",
        "liq_long_5m > 1_000_000 and change_5m < -1",
    ),
    (
        "futures_short_squeeze",
        "Short Squeeze",
        "shorts liquidated into a rise",
        "liq_short_5m > 1_000_000 and change_5m > 1",
    ),
    (
        "futures_oi_surge",
        "OI Surge",
        "positions pile in while price stands still",
        "oi_change_15m > 5 and abs(change_15m) < 1",
    ),
    ("futures_basis_dislocation", "Basis Dislocation", "mark far from index", "abs(basis) > 0.5"),
]
KLINE = {slug for slug, *_ in EXPECTED[:10]}


def test_the_presets_are_the_sixteen_rules_of_the_design_character_for_character():
    actual = [(p.slug, p.name, p.description, p.expression) for p in PRESETS]
    assert actual == EXPECTED


def test_the_presets_match_the_table_in_the_contract_docs():
    actual = [(p.slug, p.name, p.description, p.expression) for p in PRESETS]
    assert actual == all_presets()


def test_severity_direction_and_the_rest_follow_the_design():
    futures = {
        "futures_crowded_longs": "bull",
        "futures_short_squeeze": "bull",
        "futures_crowded_shorts": "bear",
        "futures_long_squeeze": "bear",
        "futures_oi_surge": "neutral",
        "futures_basis_dislocation": "neutral",
    }
    for preset in PRESETS:
        assert (preset.mode, preset.cooldown_seconds, preset.enabled) == ("bar_close", 300, True)
        if preset.slug in futures:
            assert preset.direction == futures[preset.slug]
            continue
        assert preset.severity == ("warning" if preset.name.startswith("60 Big") else "info")
        bull = "Bull" in preset.name or preset.name == "Bottom Hunter"
        assert preset.direction == ("bull" if bull else "bear")
    assert [p.slug for p in PRESETS if p.severity == "warning"] == [
        "futures_big_bull_60",
        "futures_big_bear_60",
        "futures_long_squeeze",
        "futures_short_squeeze",
    ]


def test_every_preset_compiles_and_becomes_a_global_rule_spec():
    specs = preset_specs()
    assert [s.slug for s in specs] == [p.slug for p in PRESETS]
    assert preset_specs() is specs  # compiled once
    for preset, spec in zip(PRESETS, specs, strict=True):
        assert isinstance(spec, RuleSpec)
        assert spec.compiled.source == preset.expression == spec.expression
        assert spec.owner_id is None
        assert (spec.name, spec.description, spec.severity, spec.direction) == (
            preset.name,
            preset.description,
            preset.severity,
            preset.direction,
        )
        assert (spec.mode, spec.cooldown_seconds) == ("bar_close", 300)
    assert set(PRESETS_BY_SLUG) == {p.slug for p in PRESETS}


# --- verdicts on hand-built metrics --------------------------------------------------------------

FIRING = {
    "futures_big_bull_60": dict(
        change_1h=2.0,
        change_8h=5.0,
        change_1d=10.0,
        volume_1h=1_000_000.0,
        volume_8h=5_500_000.0,
        volume_1d=15_000_000.0,
    ),
    "futures_big_bear_60": dict(
        change_1h=-2.0,
        change_8h=-5.0,
        change_1d=-10.0,
        volume_1h=1_000_000.0,
        volume_8h=5_500_000.0,
        volume_1d=15_000_000.0,
    ),
    "futures_pioneer_bull": dict(change_5m=1.2, change_15m=2.0, volume_5m=600_000.0, volume_15m=1_000_000.0),
    "futures_pioneer_bear": dict(
        change_5m=-1.2, change_15m=-2.0, volume_5m=600_000.0, volume_15m=1_000_000.0
    ),
    "futures_5_big_bull": dict(
        change_5m=0.8,
        change_15m=1.0,
        change_1h=1.5,
        change_1d=5.0,
        volume_5m=200_000.0,
        volume_15m=500_000.0,
        volume_1h=1_100_000.0,
        volume_8h=10_000_000.0,
    ),
    "futures_5_big_bear": dict(
        change_5m=-0.8,
        change_15m=-1.0,
        change_1h=-1.5,
        change_1d=-5.0,
        volume_5m=200_000.0,
        volume_15m=500_000.0,
        volume_1h=1_100_000.0,
        volume_8h=10_000_000.0,
    ),
    "futures_15_big_bull": dict(
        change_15m=1.2,
        change_1h=1.5,
        change_8h=3.0,
        change_1d=5.0,
        volume_15m=500_000.0,
        volume_1h=1_200_000.0,
        volume_8h=12_000_000.0,
    ),
    "futures_15_big_bear": dict(
        change_15m=-1.2,
        change_1h=-1.5,
        change_8h=-3.0,
        change_1d=-5.0,
        volume_15m=500_000.0,
        volume_1h=1_200_000.0,
        volume_8h=12_000_000.0,
    ),
    "futures_bottom_hunter": dict(
        change_1h=-1.0,
        change_15m=-0.8,
        change_5m=0.6,
        volume_5m=300_000.0,
        volume_15m=500_000.0,
        volume_1h=2_000_000.0,
    ),
    "futures_top_hunter": dict(
        change_1h=1.0,
        change_15m=0.8,
        change_5m=-0.6,
        volume_5m=300_000.0,
        volume_15m=500_000.0,
        volume_1h=2_000_000.0,
    ),
    "futures_crowded_longs": dict(funding_apr=60.0, oi_change_4h=6.0, change_4h=0.5),
    "futures_crowded_shorts": dict(funding_apr=-60.0, oi_change_4h=6.0, change_4h=-0.5),
    "futures_long_squeeze": dict(liq_long_5m=1_500_000.0, change_5m=-1.5),
    "futures_short_squeeze": dict(liq_short_5m=1_500_000.0, change_5m=1.5),
    "futures_oi_surge": dict(oi_change_15m=7.0, change_15m=-0.5),
    "futures_basis_dislocation": dict(basis=-0.7),
}

# A threshold exactly met is not crossed: every comparison in the presets is strict.
AT_THE_THRESHOLD = {
    "futures_big_bull_60": {"change_1h": 1.6},
    "futures_big_bear_60": {"change_1d": -15.0, "change_8h": -5.0},
    "futures_pioneer_bull": {"volume_5m": 500_000.0},
    "futures_pioneer_bear": {"change_15m": -3.6},
    "futures_5_big_bull": {"volume_8h": 13_200_000.0},
    "futures_5_big_bear": {"change_5m": -0.6},
    "futures_15_big_bull": {"volume_8h": 13_000_000.0},
    "futures_15_big_bear": {"change_1h": -1.2},
    "futures_bottom_hunter": {"volume_1h": 2_400_000.0},
    "futures_top_hunter": {"change_5m": -0.5},
    "futures_crowded_longs": {"funding_apr": 50.0},
    "futures_crowded_shorts": {"oi_change_4h": 5.0},
    "futures_long_squeeze": {"liq_long_5m": 1_000_000.0},
    "futures_short_squeeze": {"change_5m": 1.0},
    "futures_oi_surge": {"change_15m": -1.0},
    "futures_basis_dislocation": {"basis": 0.5},
}


@pytest.mark.parametrize("slug", list(PRESETS_BY_SLUG))
def test_each_preset_fires_on_its_textbook_market(slug):
    rule = compile_rule(PRESETS_BY_SLUG[slug].expression)
    assert set(FIRING[slug]) == rule.names | ({"volume_1d"} & set(FIRING[slug]))
    assert rule(FIRING[slug]) is True


@pytest.mark.parametrize("slug", list(PRESETS_BY_SLUG))
def test_each_preset_stays_silent_at_its_threshold(slug):
    rule = compile_rule(PRESETS_BY_SLUG[slug].expression)
    assert rule({**FIRING[slug], **AT_THE_THRESHOLD[slug]}) is False


@pytest.mark.parametrize("slug", list(PRESETS_BY_SLUG))
def test_each_preset_is_unknown_when_any_metric_it_reads_is_null(slug):
    rule = compile_rule(PRESETS_BY_SLUG[slug].expression)
    for name in rule.names:
        assert rule({**FIRING[slug], name: None}) is None, name
        missing = {key: value for key, value in FIRING[slug].items() if key != name}
        assert rule(missing) is None, name


@pytest.mark.parametrize("slug", list(PRESETS_BY_SLUG))
def test_only_the_preset_a_market_was_built_for_fires_on_it(slug):
    fired = {spec.slug for spec in preset_specs() if spec.compiled(FIRING[slug]) is True}
    assert fired == {slug}


def test_a_quiet_market_fires_nothing():
    quiet = {
        **{f"change_{w}": 0.05 for w in ("5m", "15m", "1h", "4h", "8h", "1d")},
        **{f"volume_{w}": 10_000.0 * m for w, m in (("5m", 5), ("15m", 15), ("1h", 60), ("8h", 480))},
        "volume_1d": 14_400_000.0,
        **{"funding_apr": 10.95, "oi_change_4h": 0.5, "oi_change_15m": 0.1, "basis": 0.01},
        **{"liq_long_5m": 0.0, "liq_short_5m": 0.0},
    }
    assert [spec.slug for spec in preset_specs() if spec.compiled(quiet) is not False] == []


def test_a_market_with_no_history_fires_nothing():
    assert [spec.compiled({}) for spec in preset_specs()] == [None] * 16
