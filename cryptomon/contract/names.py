"""Timeframes and metric names (docs/contract.md §6, §7, §7b): the metrics engine computes these, rules read them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

TIMEFRAMES: tuple[str, ...] = ("5m", "15m", "1h", "4h", "8h", "1d")
TIMEFRAME_MINUTES: Mapping[str, int] = MappingProxyType(
    {"5m": 5, "15m": 15, "1h": 60, "4h": 240, "8h": 480, "1d": 1440}
)
WINDOW_STEMS: tuple[str, ...] = (
    "open",
    "high",
    "low",
    "change",
    "volume",
    "volume_ratio",
    "trades",
    "taker_buy_ratio",
)
"""Per-timeframe metrics: `<stem>_<timeframe>`, one `metrics_calculated` column each."""

INDICATOR_NAMES: tuple[str, ...] = (
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "vcp",
)
EVERY_ROW_NAMES: tuple[str, ...] = ("price", *INDICATOR_NAMES)
"""Metrics of the bar itself, repeated on each of its `metrics_calculated` rows."""

DERIVATIVES_BAR_NAMES: tuple[str, ...] = (
    "mark_price",
    "index_price",
    "basis",
    "funding_rate",
    "funding_apr",
    "oi",
)
"""§7b metrics of the bar itself (from its candle's derivatives fields), on each `metrics_calculated` row."""

DERIVATIVES_WINDOW_STEMS: tuple[str, ...] = ("oi_change", "liq_long", "liq_short")
"""§7b per-timeframe metrics: `<stem>_<timeframe>`, one `metrics_calculated` column each."""

METRIC_NAMES: tuple[str, ...] = (
    "price",
    *(f"{stem}_{timeframe}" for timeframe in TIMEFRAMES for stem in WINDOW_STEMS),
    *INDICATOR_NAMES,
    *DERIVATIVES_BAR_NAMES,
    *(f"{stem}_{timeframe}" for timeframe in TIMEFRAMES for stem in DERIVATIVES_WINDOW_STEMS),
)
"""Every metric of a bar (§7, then §7b), in the order of a `metrics` payload."""

MARKET_METRICS: tuple[str, ...] = (
    "change_5m",
    "change_15m",
    "change_1h",
    "change_4h",
    "change_8h",
    "change_1d",
    "volume_1h",
    "volume_1d",
    "rsi_14",
)
"""The metrics of a dashboard market row (docs/contract.md §10), besides `symbol`, `price` and `open_time`."""
