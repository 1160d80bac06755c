"""The `metrics.*`, `alerts.triggered` and `collector.status` messages (docs/contract.md §5, §10): one parser each, used
by every process that reads them. Readers ignore unknown keys; times are epoch milliseconds.

(The `candles.*` message is `cryptomon.contract.candles`.)
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec

from cryptomon.contract.subjects import symbol_of
from cryptomon.contract.times import MINUTE_MS

_decoder = msgspec.json.Decoder()


def decode_object(data: bytes) -> dict:
    """A JSON object payload; raises ValueError naming the problem."""
    try:
        payload = _decoder.decode(data)
    except msgspec.DecodeError as error:
        raise ValueError(f"malformed JSON payload: {error}") from None
    except RecursionError:  # msgspec's own nesting limit ("[" * 10_000 fits in a 64 KiB frame)
        raise ValueError("malformed JSON payload: nested too deeply") from None
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    return payload


# --- metrics.calculated.<SYMBOL> (final bars) and metrics.live.<SYMBOL> (the open minute) -------------------


class BadPayload(ValueError):
    """A metrics message that cannot be evaluated; the message says why."""


class MetricsMessage(msgspec.Struct, frozen=True):
    """A `metrics.calculated` (final) or `metrics.live` message, checked (the `MetricBar` model is its row)."""

    symbol: str
    open_time: int
    price: float
    metrics: dict[str, Any]
    late: bool
    final: bool


def parse_metrics(data: bytes, subject: str) -> MetricsMessage:
    """Decode and check a metrics message received on `subject`; BadPayload names the problem.

    Hand-checked rather than a typed decode: `metrics` holds some 60 values and is read by name, so a
    plain dict is the fastest form for the rule closures, and this path runs for every bar of every symbol."""
    try:
        payload = decode_object(data)
    except ValueError as error:
        raise BadPayload(str(error)) from None
    subject_symbol = symbol_of(subject)
    if payload.get("v") != 1:
        raise BadPayload(f"unsupported payload version v={payload.get('v')!r} (expected 1)")
    symbol = payload.get("symbol")
    if symbol != subject_symbol:
        raise BadPayload(f"symbol {symbol!r} does not match the subject {subject!r}")
    open_time = payload.get("open_time")
    if type(open_time) is not int or open_time <= 0 or open_time % MINUTE_MS:
        raise BadPayload(f"open_time {open_time!r} is not the start of a minute in epoch milliseconds")
    price = payload.get("price")
    if type(price) not in (int, float) or not math.isfinite(price) or price < 0:
        raise BadPayload(f"price {price!r} is not a finite number")
    metrics = payload.get("metrics")
    if not isinstance(metrics, dict):
        raise BadPayload("metrics is missing or not an object")
    late = payload.get("late", False)
    final = payload.get("final", False)
    if not isinstance(late, bool) or not isinstance(final, bool):
        raise BadPayload("late and final must be true or false")
    return MetricsMessage(symbol, open_time, float(price), metrics, late, final)


def metrics_payload(
    symbol: str, open_time: int, price: float | None, metrics: dict, final: bool, late: bool
) -> dict:
    """The §5 metrics message (what `parse_metrics` reads)."""
    return {
        "v": 1,
        "symbol": symbol,
        "open_time": open_time,
        "final": final,
        "late": late,
        "price": price,
        "metrics": metrics,
    }


# --- alerts.triggered.<SYMBOL> -------------------------------------------------------------------------------


def alert_id(rule: str, symbol: str, open_time: int) -> str:
    """An alert's id, also its `Nats-Msg-Id`: at most one alert per (rule, symbol, bar)."""
    return f"{rule}:{symbol}:{open_time}"


class Alert(msgspec.Struct, kw_only=True, frozen=True):
    """The `alerts.triggered` message. `id`, `rule` and `symbol` are what a socket needs to filter and show
    an alert; the rest is checked for type when present."""

    v: int = 1
    id: str
    rule: str
    rule_name: str = ""
    severity: str = ""
    direction: str = ""
    symbol: str
    open_time: int | None = None
    triggered_at: int | None = None
    price: float | None = None
    description: str = ""
    metrics: dict[str, float | None] = {}
    owner: int | None = None
    late: bool = False


def check_alert(payload: dict) -> Alert:
    """The alert of a decoded `alerts.triggered` payload; ValueError names the bad field."""
    try:
        return msgspec.convert(payload, Alert)
    except msgspec.ValidationError as error:
        raise ValueError(f"bad alert: {error}") from None


# --- collector.status ----------------------------------------------------------------------------------------


def _is_shard(shard: str) -> bool:
    index, _, count = shard.partition("/")
    return index.isdigit() and count.isdigit() and int(index) < int(count)


class Heartbeat(msgspec.Struct, kw_only=True, frozen=True):
    """One collector shard's `collector.status` heartbeat: the feed status the dashboard and the operator
    watchdog read. `shard` is "k/N"."""

    v: int = 1
    shard: str = "0/1"
    symbols: int = 0
    symbols_live: Annotated[int, msgspec.Meta(ge=0)]
    connections: int = 0
    streams: int = 0
    last_open_time: int | None = None
    lag_ms: int | None = None
    stale: bool
    buffered: int = 0
    backfilling: int = 0
    venue_time: int | None = None
    # Venue milliseconds per wall millisecond: 1 against Binance, S against the emulator at speed S. Readers
    # turn venue durations (lag_ms, candle ages) into wall time with it before comparing them with limits.
    clock_rate: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    rest: str = "ok"  # ok | banned | region_blocked
    banned_until: int | None = None

    def __post_init__(self) -> None:
        if not _is_shard(self.shard):
            raise ValueError(f"shard must look like 'k/N' (got {self.shard!r})")

    @property
    def shards(self) -> int:
        """N of the shard layout the collector runs with."""
        return int(self.shard.partition("/")[2])

    @classmethod
    def parse(cls, payload: dict) -> Heartbeat:
        """A heartbeat from a decoded payload; ValueError names the bad field."""
        try:
            return msgspec.convert(payload, cls)
        except msgspec.ValidationError as error:
            raise ValueError(str(error)) from None

    def as_dict(self) -> dict:
        return msgspec.structs.asdict(self)


_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def decode_heartbeat(data: bytes) -> Heartbeat:
    """A heartbeat from a `collector.status` message; ValueError names the problem."""
    try:
        return _heartbeat_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise ValueError(str(error)) from None
