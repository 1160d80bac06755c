"""The 16 global presets of docs/contract.md §8 (10 on klines) and §7b (6 on derivatives) as plain data, for the
backtest's `--rules presets` (which needs no database) and for tests. Expressions are those of the contract,
character for character; the migrations `0002_presets` and `0010_derivatives_presets` install them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

from alerts.decisions import RuleSpec

__all__ = ["PRESETS", "PRESETS_BY_SLUG", "Preset", "preset_specs"]


@dataclass(frozen=True, slots=True)
class Preset:
    """One preset rule: global (no owner), enabled, `bar_close`, cooldown 300 s unless stated."""

    slug: str
    name: str
    description: str
    expression: str
    severity: str
    direction: str
    mode: str = "bar_close"
    cooldown_seconds: int = 300
    enabled: bool = True

    def spec(self) -> RuleSpec:
        """This preset compiled, as the engines and the backtest use it."""
        return RuleSpec.of(self)


PRESETS: tuple[Preset, ...] = (
    Preset(
        slug="futures_big_bull_60",
        name="60 Big Bull",
        description="sustained momentum over multiple timeframes",
        expression=(
            "change_1h > 1.6 and change_1d < 15 and change_8h > change_1h and change_1d > change_8h"
            " and volume_1h > 500_000 and volume_8h > 5_000_000 and 6 * volume_1h > volume_8h"
            " and 16 * volume_1h > volume_1d"
        ),
        severity="warning",
        direction="bull",
    ),
    Preset(
        slug="futures_big_bear_60",
        name="60 Big Bear",
        description="sustained downward momentum",
        expression=(
            "change_1h < -1.6 and change_1d > -15 and change_8h < change_1h and change_1d < change_8h"
            " and volume_1h > 500_000 and volume_8h > 5_000_000 and 6 * volume_1h > volume_8h"
            " and 16 * volume_1h > volume_1d"
        ),
        severity="warning",
        direction="bear",
    ),
    Preset(
        slug="futures_pioneer_bull",
        name="Pioneer Bull",
        description="early bullish trend",
        expression=(
            "change_5m > 1 and change_15m > 1 and 3 * change_5m > change_15m and 2 * volume_5m > volume_15m"
        ),
        severity="info",
        direction="bull",
    ),
    Preset(
        slug="futures_pioneer_bear",
        name="Pioneer Bear",
        description="early bearish trend",
        expression=(
            "change_5m < -1 and change_15m < -1 and 3 * change_5m < change_15m and 2 * volume_5m > volume_15m"
        ),
        severity="info",
        direction="bear",
    ),
    Preset(
        slug="futures_5_big_bull",
        name="5 Big Bull",
        description="5-minute bullish spike",
        expression=(
            "change_5m > 0.6 and change_1d < 15 and change_15m > change_5m and change_1h > change_15m"
            " and volume_5m > 100_000 and volume_1h > 1_000_000 and volume_5m > volume_15m / 3"
            " and volume_5m > volume_1h / 6 and volume_5m > volume_8h / 66"
        ),
        severity="info",
        direction="bull",
    ),
    Preset(
        slug="futures_5_big_bear",
        name="5 Big Bear",
        description="5-minute bearish spike",
        expression=(
            "change_5m < -0.6 and change_1d > -15 and change_15m < change_5m and change_1h < change_15m"
            " and volume_5m > 100_000 and volume_1h > 1_000_000 and volume_5m > volume_15m / 3"
            " and volume_5m > volume_1h / 6 and volume_5m > volume_8h / 66"
        ),
        severity="info",
        direction="bear",
    ),
    Preset(
        slug="futures_15_big_bull",
        name="15 Big Bull",
        description="15-minute bullish spike",
        expression=(
            "change_15m > 1 and change_1d < 15 and change_1h > change_15m and change_8h > change_1h"
            " and volume_15m > 400_000 and volume_1h > 1_000_000 and volume_15m > volume_1h / 3"
            " and volume_15m > volume_8h / 26"
        ),
        severity="info",
        direction="bull",
    ),
    Preset(
        slug="futures_15_big_bear",
        name="15 Big Bear",
        description="15-minute bearish spike",
        expression=(
            "change_15m < -1 and change_1d > -15 and change_1h < change_15m and change_8h < change_1h"
            " and volume_15m > 400_000 and volume_1h > 1_000_000 and volume_15m > volume_1h / 3"
            " and volume_15m > volume_8h / 26"
        ),
        severity="info",
        direction="bear",
    ),
    Preset(
        slug="futures_bottom_hunter",
        name="Bottom Hunter",
        description="potential bottom reversal",
        expression=(
            "change_1h < -0.7 and change_15m < -0.6 and change_5m > 0.5 and volume_5m > volume_15m / 2"
            " and volume_5m > volume_1h / 8"
        ),
        severity="info",
        direction="bull",
    ),
    Preset(
        slug="futures_top_hunter",
        name="Top Hunter",
        description="potential top reversal",
        expression=(
            "change_1h > 0.7 and change_15m > 0.6 and change_5m < -0.5 and volume_5m > volume_15m / 2"
            " and volume_5m > volume_1h / 8"
        ),
        severity="info",
        direction="bear",
    ),
    # §7b: the futures-native presets.
    Preset(
        slug="futures_crowded_longs",
        name="Crowded Longs",
        description="funding rich while open interest builds into a rise",
        expression="funding_apr > 50 and oi_change_4h > 5 and change_4h > 0",
        severity="info",
        direction="bull",
    ),
    Preset(
        slug="futures_crowded_shorts",
        name="Crowded Shorts",
        description="funding negative while open interest builds into a fall",
        expression="funding_apr < -50 and oi_change_4h > 5 and change_4h < 0",
        severity="info",
        direction="bear",
    ),
    Preset(
        slug="futures_long_squeeze",
        name="Long Squeeze",
        description="longs liquidated into a drop",
        expression="liq_long_5m > 1_000_000 and change_5m < -1",
        severity="warning",
        direction="bear",
    ),
    Preset(
        slug="futures_short_squeeze",
        name="Short Squeeze",
        description="shorts liquidated into a rise",
        expression="liq_short_5m > 1_000_000 and change_5m > 1",
        severity="warning",
        direction="bull",
    ),
    Preset(
        slug="futures_oi_surge",
        name="OI Surge",
        description="positions pile in while price stands still",
        expression="oi_change_15m > 5 and abs(change_15m) < 1",
        severity="info",
        direction="neutral",
    ),
    Preset(
        slug="futures_basis_dislocation",
        name="Basis Dislocation",
        description="mark far from index",
        expression="abs(basis) > 0.5",
        severity="info",
        direction="neutral",
    ),
)

PRESETS_BY_SLUG: Mapping[str, Preset] = MappingProxyType({preset.slug: preset for preset in PRESETS})


@cache
def preset_specs() -> tuple[RuleSpec, ...]:
    """All presets compiled once (shared: RuleSpec and CompiledRule are immutable)."""
    return tuple(preset.spec() for preset in PRESETS)
