"""Scripted market scenarios for the emulator (format in docs/emulator.md), validated with clear errors.

A scenario becomes per-minute rules (`MinuteRule`) for the market's walk plus scheduled faults; a typo in a
key is an error naming it, so a test never silently runs on the plain random walk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptomon.contract.times import MINUTE_MS

_SCENARIO_KEYS = {"name", "description", "symbol", "symbols", "start_minute", "start_ms", "steps", "faults"}
_STEP_KEYS = {
    "minutes",
    "change_pct",
    "close",
    "quote_volume",
    "trades",
    "taker_buy_ratio",
    "range_pct",
    # derivatives (docs/emulator.md "Derivatives")
    "funding_rate",
    "basis_pct",
    "oi_change_pct",
    "liq_long_quote",
    "liq_short_quote",
}
FAULT_NAMES = {
    "drop_connections",
    "stall_connection",
    "malformed_frames",
    "duplicate_frames",
    "late_finals",
    "missing_minutes",
    "rate_limit",
    "ban",
    "list_symbol",
    "delist_symbol",
    "close_all",
    "silence_stream",
    "late_liquidation",
}


class ScenarioError(ValueError):
    """A scenario that cannot be applied; the message names the scenario and the problem."""


@dataclass(frozen=True, slots=True)
class MinuteRule:
    """What a scenario fixes for one minute of one symbol (None: the random walk decides)."""

    change_pct: float | None = None
    target_close: float | None = None
    target_minute: int = 0  # the minute index at which target_close is reached
    quote_volume: float | None = None
    trades: int | None = None
    taker_buy_ratio: float | None = None
    range_pct: float | None = None
    funding_rate: float | None = None  # a fraction per funding interval, as Binance sends it
    basis_pct: float | None = None  # (mark − index) / index × 100
    oi_change_pct: float | None = None  # open interest change over the minute, percent
    liq_long_quote: float | None = None  # USDT of longs liquidated (SELL orders) in the minute
    liq_short_quote: float | None = None  # USDT of shorts liquidated (BUY orders) in the minute


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    at_ms: int
    name: str
    arguments: dict


@dataclass
class CompiledScenario:
    name: str
    rules: dict[str, dict[int, MinuteRule]]  # symbol -> minute index -> rule
    faults: list[ScheduledFault]
    first_minute: int
    last_minute: int


def load_file(path: str | Path) -> list[dict]:
    """Scenarios from a JSON or YAML file: one object, a list, or {"scenarios": [...]}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read ({error.strerror})") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:
        raise ScenarioError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {error}") from None
    try:
        return as_list(data)
    except ScenarioError as error:
        raise ScenarioError(f"{path}: {error}") from None


def as_list(data) -> list[dict]:
    if isinstance(data, dict) and "scenarios" in data and set(data) <= {"scenarios", "description"}:
        data = data["scenarios"]
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        return data
    raise ScenarioError('a scenario is a JSON object (or a list of them, or {"scenarios": [...]})')


def _number(where: str, value, *, minimum: float | None = None, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where} must be a number, not {value!r}")
    if integer and int(value) != value:
        raise ScenarioError(f"{where} must be a whole number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ScenarioError(f"{where} must be ≥ {minimum:g}, not {value!r}")
    return value


def _when(where: str, spec: dict, relative_key: str, absolute_key: str, t0_minute: int) -> int:
    """A minute index from `relative_key` (minutes after t0's minute) or `absolute_key` (ms on a minute)."""
    has_rel, has_abs = relative_key in spec, absolute_key in spec
    if has_rel == has_abs:
        raise ScenarioError(f"{where}: give exactly one of {relative_key!r} and {absolute_key!r}")
    if has_rel:
        return t0_minute + int(_number(f"{where}.{relative_key}", spec[relative_key], integer=True))
    at = int(_number(f"{where}.{absolute_key}", spec[absolute_key], integer=True, minimum=0))
    if at % MINUTE_MS:
        raise ScenarioError(f"{where}.{absolute_key} must be on a minute (a multiple of 60000)")
    return at // MINUTE_MS


def compile_scenario(spec: dict, t0_ms: int, known_symbols) -> CompiledScenario:
    """Validate one scenario and expand it to per-minute rules. Errors name the scenario and the key."""
    if not isinstance(spec, dict):
        raise ScenarioError(f"a scenario must be an object, not {type(spec).__name__}")
    name = str(spec.get("name") or "scenario")
    where = f"scenario {name!r}"
    unknown = set(spec) - _SCENARIO_KEYS
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if ("symbol" in spec) == ("symbols" in spec):
        raise ScenarioError(f"{where}: give exactly one of 'symbol' and 'symbols'")
    symbols = [spec["symbol"]] if "symbol" in spec else spec["symbols"]
    if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
        raise ScenarioError(f"{where}: 'symbols' must be a non-empty list of symbol names")
    for symbol in symbols:
        if symbol not in known_symbols:
            raise ScenarioError(f"{where}: unknown symbol {symbol!r} (not one of the emulator's symbols)")
    t0_minute = t0_ms // MINUTE_MS
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{where}: 'steps' must be a non-empty list")
    minute = first = _when(where, spec, "start_minute", "start_ms", t0_minute)
    rules: dict[int, MinuteRule] = {}
    for index, step in enumerate(steps):
        at = f"{where} step {index + 1}"
        if not isinstance(step, dict):
            raise ScenarioError(f"{at}: a step must be an object")
        unknown = set(step) - _STEP_KEYS
        if unknown:
            raise ScenarioError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
        if "change_pct" in step and "close" in step:
            raise ScenarioError(f"{at}: give at most one of 'change_pct' and 'close'")
        count = int(_number(f"{at}.minutes", step.get("minutes"), minimum=1, integer=True))
        change = (
            _number(f"{at}.change_pct", step["change_pct"], minimum=-99) if "change_pct" in step else None
        )
        close = _number(f"{at}.close", step["close"]) if "close" in step else None
        if close is not None and close <= 0:
            raise ScenarioError(f"{at}.close must be > 0")
        volume = (
            _number(f"{at}.quote_volume", step["quote_volume"], minimum=0) if "quote_volume" in step else None
        )
        trades = (
            int(_number(f"{at}.trades", step["trades"], minimum=0, integer=True))
            if "trades" in step
            else None
        )
        ratio = (
            _number(f"{at}.taker_buy_ratio", step["taker_buy_ratio"], minimum=0)
            if "taker_buy_ratio" in step
            else None
        )
        if ratio is not None and ratio > 1:
            raise ScenarioError(f"{at}.taker_buy_ratio must be between 0 and 1")
        wick = _number(f"{at}.range_pct", step["range_pct"], minimum=0) if "range_pct" in step else None
        funding = _number(f"{at}.funding_rate", step["funding_rate"]) if "funding_rate" in step else None
        if funding is not None and abs(funding) >= 0.05:
            raise ScenarioError(f"{at}.funding_rate is a fraction per interval: |rate| must be < 0.05")
        basis = _number(f"{at}.basis_pct", step["basis_pct"], minimum=-50) if "basis_pct" in step else None
        oi_change = (
            _number(f"{at}.oi_change_pct", step["oi_change_pct"], minimum=-50)
            if "oi_change_pct" in step
            else None
        )
        liq_long = (
            _number(f"{at}.liq_long_quote", step["liq_long_quote"], minimum=0)
            if "liq_long_quote" in step
            else None
        )
        liq_short = (
            _number(f"{at}.liq_short_quote", step["liq_short_quote"], minimum=0)
            if "liq_short_quote" in step
            else None
        )
        end = minute + count - 1
        for m in range(minute, end + 1):
            rules[m] = MinuteRule(
                change,
                close,
                end,
                volume,
                trades,
                ratio,
                wick,
                funding,
                basis,
                oi_change,
                liq_long,
                liq_short,
            )
        minute = end + 1
    faults = []
    for index, fault in enumerate(spec.get("faults") or []):
        at = f"{where} fault {index + 1}"
        if not isinstance(fault, dict) or fault.get("fault") not in FAULT_NAMES:
            raise ScenarioError(f"{at}: 'fault' must be one of {', '.join(sorted(FAULT_NAMES))}")
        when = _when(at, fault, "at_minute", "at_ms", t0_minute)
        arguments = {k: v for k, v in fault.items() if k not in {"fault", "at_minute", "at_ms"}}
        faults.append(ScheduledFault(when * MINUTE_MS, fault["fault"], arguments))
    return CompiledScenario(name, {symbol: dict(rules) for symbol in symbols}, faults, first, minute - 1)
