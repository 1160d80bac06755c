"""The emulator's synthetic market: a seeded random walk per symbol, scripted by scenarios, on venue time.

Everything about a minute except its close is a pure function of (seed, symbol, minute), and closes are a
walk generated in order, never past the open minute, so the same seed always gives the same candles and a
scenario added at run time can still shape every minute after the open one. Candles are served as the
venue's decimal strings; REST rows, WebSocket finals and `candle()` (the ground truth) share one formatter,
so what a client received can be compared exactly.
"""

from __future__ import annotations

import json
import math
import random
import time
import zlib
from array import array
from dataclasses import dataclass, field

from collector.emulator.scenarios import CompiledScenario, MinuteRule
from cryptomon.contract.times import MINUTE_MS

_MASK = (1 << 64) - 1
_TWO_PI = 2 * math.pi

FAMOUS = (
    "BTCUSDT",
    "ETHUSDT",
    "BNBUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "DOGEUSDT",
    "ADAUSDT",
    "AVAXUSDT",
    "LINKUSDT",
    "DOTUSDT",
    "LTCUSDT",
    "TRXUSDT",
    "NEARUSDT",
    "ATOMUSDT",
    "APTUSDT",
    "ARBUSDT",
)
NON_ASCII = "币安人生USDT"

# Entries of exchangeInfo the docs/contract.md §4 filter must leave out (symbol, quote, contract type, status).
EXCLUDED = (
    ("BTCUSDC", "USDC", "PERPETUAL", "TRADING"),
    ("BTCUSDT_260925", "USDT", "CURRENT_QUARTER", "TRADING"),
    ("XAUUSDT", "USDT", "TRADIFI_PERPETUAL", "TRADING"),
    ("OLDUSDT", "USDT", "PERPETUAL", "SETTLING"),
)


def default_symbols(count: int) -> list[str]:
    """`count` symbol names: famous ones, the non-ASCII one, then C0001USDT, C0002USDT, …"""
    names = list(FAMOUS[: max(0, count - 1)])
    if count >= 1:
        names.append(NON_ASCII)
    index = 1
    while len(names) < count:
        names.append(f"C{index:04d}USDT")
        index += 1
    return names


def _mix(a: int, b: int, c: int) -> int:
    """splitmix64 of three integers: the per-minute randomness, random-access and seed-stable."""
    x = (
        a * 0x9E3779B97F4A7C15 + b * 0xBF58476D1CE4E5B9 + c * 0x94D049BB133111EB + 0x632BE59BD9B4E019
    ) & _MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _uniforms(value: int) -> tuple[float, float, float, float]:
    """Four uniforms in (0, 1) from one 64-bit value."""
    return tuple(((value >> shift) & 0xFFFF) / 65536.0 + 1 / 131072.0 for shift in (0, 16, 32, 48))


@dataclass
class SymbolState:
    symbol: str
    quote: str = "USDT"
    contract_type: str = "PERPETUAL"
    status: str = "TRADING"
    key: int = 0
    price_decimals: int = 2
    qty_decimals: int = 3
    sigma: float = 0.0015
    volume_level: float = 100_000.0
    onboard_ms: int = 0
    first_minute: int = 0  # minute index of the walk's first candle
    windows: list[list[int | None]] = field(default_factory=list)  # [start, end) minute indexes of TRADING
    closes: array = field(default_factory=lambda: array("d"))
    start_price: float = 100.0
    missing: set[int] = field(default_factory=set)
    rules: dict[int, MinuteRule] = field(default_factory=dict)
    stream: str = ""
    json_name: str = ""
    rng: random.Random | None = None  # the walk's draws, consumed one per minute in order

    def trading_at(self, minute: int) -> bool:
        return any(minute >= start and (end is None or minute < end) for start, end in self.windows)


class Market:
    """Venue time and candles. `now_ms()` = t0 + speed × elapsed wall time."""

    def __init__(
        self,
        symbols: list[str] | int,
        *,
        seed: int = 1,
        speed: float = 1.0,
        t0_ms: int | None = None,
        history_minutes: int = 3000,
        extras: bool = True,
    ):
        if isinstance(symbols, int):
            symbols = default_symbols(symbols)
        if not symbols:
            raise ValueError("the emulator needs at least one symbol")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, not {speed}")
        self.seed = int(seed)
        self.speed = float(speed)
        self.t0_ms = int(time.time() * 1000) if t0_ms is None else int(t0_ms)
        self._wall0 = time.monotonic()
        self.history_minutes = history_minutes
        self.names = list(symbols)  # the symbols asked for (exchangeInfo adds the excluded kinds)
        self.states: dict[str, SymbolState] = {}
        self.by_stream: dict[str, str] = {}
        genesis = self.t0_ms // MINUTE_MS - history_minutes
        for symbol in symbols:
            self._add_state(symbol, genesis)
        if extras:
            for symbol, quote, contract_type, status in EXCLUDED:
                if symbol in self.states:
                    continue
                state = self._add_state(symbol, genesis)
                state.quote, state.contract_type, state.status = quote, contract_type, status
                if status != "TRADING":
                    state.windows = []

    # --- time ---------------------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self.t0_ms + (time.monotonic() - self._wall0) * 1000.0 * self.speed)

    def wall_at(self, venue_ms: float) -> float:
        """time.monotonic() at which venue time reaches `venue_ms`."""
        return self._wall0 + (venue_ms - self.t0_ms) / 1000.0 / self.speed

    # --- symbols ------------------------------------------------------------------------------------------
    def _add_state(self, symbol: str, first_minute: int) -> SymbolState:
        key = zlib.crc32(symbol.encode())
        u = _uniforms(_mix(self.seed, key, -1))
        price = 10 ** (u[0] * 7 - 3)  # 0.001 .. 10 000
        decimals = (
            2 if price >= 1000 else 3 if price >= 10 else 4 if price >= 1 else 6 if price >= 0.01 else 8
        )
        state = SymbolState(
            symbol,
            key=key,
            price_decimals=decimals,
            qty_decimals=max(0, min(3, 3 - int(math.log10(max(price, 1))))),
            sigma=0.0008 + u[1] * 0.0016,
            volume_level=10 ** (4 + u[2] * 2.5),
            onboard_ms=first_minute * MINUTE_MS,
            first_minute=first_minute,
            windows=[[first_minute, None]],
            start_price=round(price, decimals),
            stream=symbol.lower() + "@kline_1m",
        )
        state.json_name = json.dumps(symbol, ensure_ascii=False)
        self.states[symbol] = state
        self.by_stream[state.stream] = symbol
        return state

    def prepare(self) -> None:
        """Generate every walk up to the open minute now, so serving never pauses for it."""
        minute = self.now_ms() // MINUTE_MS
        for state in self.states.values():
            if minute >= state.first_minute:
                self._close(state, minute)

    def tradable(self) -> list[str]:
        return [s for s, st in self.states.items() if st.status == "TRADING"]

    def list_symbol(self, symbol: str) -> SymbolState:
        """A listing now: TRADING from the next minute on (a relisted symbol starts a new history)."""
        start = self.now_ms() // MINUTE_MS + 1
        state = self.states.get(symbol)
        if state is None:
            state = self._add_state(symbol, start)
            state.windows = [[start, None]]
        elif state.status != "TRADING":
            state.windows.append([start, None])
        state.status = "TRADING"
        state.onboard_ms = start * MINUTE_MS
        return state

    def delist_symbol(self, symbol: str) -> SymbolState:
        """A delisting now: SETTLING, no kline from the open minute on."""
        state = self.states[symbol]
        now_minute = self.now_ms() // MINUTE_MS
        for window in state.windows:
            if window[1] is None:
                window[1] = max(window[0], now_minute)
        state.status = "SETTLING"
        return state

    def skip_minutes(self, symbol: str, start_ms: int, count: int) -> list[int]:
        """Maintenance: these minutes get no kline. Minutes already closed keep theirs (truth never changes)."""
        state = self.states[symbol]
        first = start_ms // MINUTE_MS
        now_minute = self.now_ms() // MINUTE_MS
        skipped = [m for m in range(first, first + count) if m >= now_minute]
        state.missing.update(skipped)
        return [m * MINUTE_MS for m in skipped]

    def add_scenario(self, compiled: CompiledScenario, not_before: int | None = None) -> int:
        """Apply a scenario's rules to minutes not generated yet (and ≥ `not_before`, a minute index);
        returns the first minute (ms) it shapes."""
        applied_from = compiled.first_minute
        for symbol, rules in compiled.rules.items():
            state = self.states[symbol]
            frontier = state.first_minute + len(state.closes)  # first minute whose close is not generated
            frontier = max(frontier, not_before or frontier)
            for minute, rule in rules.items():
                if minute >= frontier:
                    state.rules[minute] = rule
            applied_from = max(applied_from, frontier)
        return applied_from * MINUTE_MS

    # --- candles ------------------------------------------------------------------------------------------
    def exists(self, state: SymbolState, minute: int) -> bool:
        return minute >= state.first_minute and minute not in state.missing and state.trading_at(minute)

    def _close(self, state: SymbolState, minute: int) -> float:
        """The close of `minute`, extending the walk in order up to it."""
        closes = state.closes
        index = minute - state.first_minute
        if index < len(closes):
            return closes[index]
        if index < 0:
            raise ValueError(f"{state.symbol} has no candle before its first minute")
        decimals = state.price_decimals
        tick = 10.0**-decimals
        previous = closes[-1] if closes else state.start_price
        if state.rng is None:
            state.rng = random.Random(_mix(self.seed, state.key, -2))
        gauss, exp, sigma, rules = state.rng.gauss, math.exp, state.sigma, state.rules
        for m in range(state.first_minute + len(closes), minute + 1):
            z = gauss(0.0, 1.0)  # drawn for every minute, so a scripted range never shifts the walk after it
            rule = rules.get(m) if rules else None
            if rule is None:
                price = previous * exp(sigma * z)
            elif rule.change_pct is not None:
                price = previous * (1 + rule.change_pct / 100.0)
            elif rule.target_close is not None:
                remaining = rule.target_minute - m + 1
                price = previous * (rule.target_close / previous) ** (1.0 / remaining)
            else:
                price = previous * exp(sigma * z)
            previous = round(price, decimals)
            if previous < tick:
                previous = tick
            closes.append(previous)
        return closes[index]

    def _values(self, state: SymbolState, minute: int) -> tuple:
        """(o, h, l, c, v, q, n, V, Q) of a minute as numbers, final."""
        c = self._close(state, minute)
        o = self._close(state, minute - 1) if minute > state.first_minute else state.start_price
        rule = state.rules.get(minute)
        a, b, d, e = _uniforms(_mix(self.seed, state.key, minute + (1 << 40)))
        if rule is not None and rule.range_pct is not None:
            wick_up = wick_down = rule.range_pct / 200.0 * c
        else:
            wick_up, wick_down = state.sigma * a * c, state.sigma * b * c
        decimals = state.price_decimals
        h = round(max(o, c) + wick_up, decimals)
        low = round(min(o, c) - wick_down, decimals)
        if low <= 0:
            low = min(o, c)
        if rule is not None and rule.quote_volume is not None:
            q = float(rule.quote_volume)
        else:
            z = math.sqrt(-2.0 * math.log(d)) * math.cos(_TWO_PI * e)
            q = state.volume_level * math.exp(0.6 * z) * (1 + abs(c - o) / (o * state.sigma * 3))
        q = round(q, 2)
        typical = (o + h + low + c) / 4
        v = round(q / typical, state.qty_decimals) if q else 0.0
        if rule is not None and rule.trades is not None:
            n = rule.trades
        else:
            n = int(q / (800 + 1600 * a)) + (1 if q else 0)
        ratio = (
            rule.taker_buy_ratio if rule is not None and rule.taker_buy_ratio is not None else 0.35 + 0.3 * b
        )
        return o, h, low, c, v, q, n, round(v * ratio, state.qty_decimals), round(q * ratio, 2)

    def _strings(self, state: SymbolState, values: tuple) -> tuple:
        o, h, low, c, v, q, n, tv, tq = values
        p, qd = state.price_decimals, state.qty_decimals
        return (
            f"{o:.{p}f}",
            f"{h:.{p}f}",
            f"{low:.{p}f}",
            f"{c:.{p}f}",
            f"{v:.{qd}f}",
            f"{q:.2f}",
            n,
            f"{tv:.{qd}f}",
            f"{tq:.2f}",
        )

    def final_strings(self, symbol: str, minute: int) -> tuple | None:
        state = self.states.get(symbol)
        if state is None or not self.exists(state, minute):
            return None
        return self._strings(state, self._values(state, minute))

    def partial_strings(self, state: SymbolState, minute: int, now_ms: int) -> tuple:
        """The open minute as seen at `now_ms`: moving toward its final values, never outside them."""
        o, h, low, c, v, q, n, tv, tq = self._values(state, minute)
        f = min(max((now_ms - minute * MINUTE_MS) / MINUTE_MS, 0.0), 0.999)
        noise = (
            (_uniforms(_mix(self.seed, state.key, minute * 4096 + int(f * 4096)))[0] - 0.5) * (h - low) * 0.5
        )
        cf = min(max(o + (c - o) * f + noise * (1 - f), low), h)
        hf = max(o, cf, o + (h - o) * f)
        lf = min(o, cf, o - (o - low) * f)
        qd = state.qty_decimals
        return self._strings(
            state,
            (
                o,
                hf,
                lf,
                cf,
                round(v * f, qd),
                round(q * f, 2),
                int(n * f),
                round(tv * f, qd),
                round(tq * f, 2),
            ),
        )

    def candle(self, symbol: str, open_time: int) -> dict | None:
        """Ground truth: the final candle of that minute as served, or None (no kline, or not closed yet)."""
        if open_time % MINUTE_MS or open_time + MINUTE_MS > self.now_ms():
            return None
        values = self.final_strings(symbol, open_time // MINUTE_MS)
        if values is None:
            return None
        names = ("open", "high", "low", "close", "volume", "quote_volume", "trades")
        out = dict(zip(names, values[:7], strict=True))
        out["taker_buy_volume"], out["taker_buy_quote_volume"] = values[7], values[8]
        out["open_time"], out["close_time"] = open_time, open_time + MINUTE_MS - 1
        return out

    def rest_row(self, state: SymbolState, minute: int, now_ms: int) -> list:
        """A /fapi/v1/klines row; the open minute is partial."""
        open_time = minute * MINUTE_MS
        if minute == now_ms // MINUTE_MS:
            o, h, low, c, v, q, n, tv, tq = self.partial_strings(state, minute, now_ms)
        else:
            o, h, low, c, v, q, n, tv, tq = self._strings(state, self._values(state, minute))
        return [open_time, o, h, low, c, v, open_time + MINUTE_MS - 1, q, n, tv, tq, "0"]

    def klines(self, symbol: str, start: int | None, end: int | None, limit: int) -> list[list]:
        """Binance's selection: [start, end] by open time, the first `limit` rows; with only `end` (or
        neither), the `limit` rows ending there (or at the open minute)."""
        state = self.states[symbol]
        now = self.now_ms()
        newest = now // MINUTE_MS
        last = newest if end is None else min(newest, end // MINUTE_MS)
        rows: list[list] = []
        if start is None:
            m = last
            floor = state.first_minute
            while m >= floor and len(rows) < limit:
                if self.exists(state, m):
                    rows.append(self.rest_row(state, m, now))
                m -= 1
            rows.reverse()
            return rows
        m = max(-(-start // MINUTE_MS), state.first_minute)
        while m <= last and len(rows) < limit:
            if self.exists(state, m):
                rows.append(self.rest_row(state, m, now))
            m += 1
        return rows
