"""NATS subjects, their wildcards and the JetStream streams that hold them (docs/contract.md §5).

Symbols never contain dots, so the symbol is the last token of every per-symbol subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

CANDLES_ROOT = "candles.1m"
CANDLES_LIVE_ROOT = "candles.live"
METRICS_ROOT = "metrics.calculated"
METRICS_LIVE_ROOT = "metrics.live"
ALERTS_ROOT = "alerts.triggered"

CANDLES = f"{CANDLES_ROOT}.>"
CANDLES_LIVE = f"{CANDLES_LIVE_ROOT}.>"
METRICS = f"{METRICS_ROOT}.>"
METRICS_LIVE = f"{METRICS_LIVE_ROOT}.>"
ALERTS = f"{ALERTS_ROOT}.>"
COLLECTOR_STATUS = "collector.status"
"""The collector's feed heartbeat (core NATS, every shard every few seconds)."""

CANDLES_STREAM = "CANDLES"
METRICS_STREAM = "METRICS"
ALERTS_STREAM = "ALERTS"
STREAMS: Mapping[str, str] = MappingProxyType(
    {CANDLES_STREAM: CANDLES, METRICS_STREAM: METRICS, ALERTS_STREAM: ALERTS}
)
"""Stream name → the one subject wildcard it stores."""

STREAM_MAX_AGE_SECONDS = 3600.0
DUPLICATE_WINDOW_SECONDS = 600.0


def candle_subject(symbol: str) -> str:
    return f"{CANDLES_ROOT}.{symbol}"


def candle_live_subject(symbol: str) -> str:
    return f"{CANDLES_LIVE_ROOT}.{symbol}"


def metrics_subject(symbol: str) -> str:
    return f"{METRICS_ROOT}.{symbol}"


def metrics_live_subject(symbol: str) -> str:
    return f"{METRICS_LIVE_ROOT}.{symbol}"


def alert_subject(symbol: str) -> str:
    return f"{ALERTS_ROOT}.{symbol}"


def symbol_of(subject: str, depth: int = 2) -> str:
    """The symbol token of a subject like `candles.1m.BTCUSDT`."""
    return subject.split(".", depth)[depth]
