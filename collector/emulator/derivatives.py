"""The emulator's derivatives data: mark/index prices, funding, open interest and liquidations (docs/emulator.md).

Values are pure functions of (seed, symbol, time) shaped by scenario rules, like the candles: the mark and
index of a `markPriceUpdate` at event time E follow the symbol's in-progress close at E, funding rates change
by the hour, open interest is one value per minute, and each minute has a fixed list of liquidations (at most
one per symbol per second: of several in the same second only the largest is pushed, as Binance does).

Ground truth is "what was pushed": the server records the newest markPrice event time it actually wrote in
each minute, the liquidations it wrote (bucketed by the docs/contract.md §7b rule: a liquidation pushed after
its minute's final kline went out counts in the oldest minute whose final has not gone out yet) and the
minutes in which it answered an openInterest request. `truth()` turns that into the §7b candle fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from collector.emulator.market import Market, SymbolState, _mix, _uniforms
from cryptomon.contract.times import MINUTE_MS

HOUR_MS = 3_600_000
SECOND_MS = 1_000
LIQUIDATION_LAST_SECOND = 55  # liquidations fall in the first 56 s of a minute: all pushed before its final
MARK_STREAM = "!markPrice@arr@1s"
FORCE_ORDER_STREAM = "!forceOrder@arr"
DERIVATIVE_STREAMS = (MARK_STREAM, FORCE_ORDER_STREAM)
_UNIT = Decimal("0.00000001")


def interval_hours(state: SymbolState) -> int:
    """The symbol's funding interval: 8 h for most, 4 h and 1 h for some (fixed by the symbol's name)."""
    return (8, 8, 8, 4, 1)[state.key % 5]


def quote_units(quantity: str, price: str) -> int:
    """z × ap in integers of 10⁻⁸ USDT (rounded half-even once per liquidation; docs/emulator.md)."""
    return int((Decimal(quantity) * Decimal(price)).quantize(_UNIT, rounding=ROUND_HALF_EVEN) / _UNIT)


def units_text(units: int) -> str:
    """Integers of 10⁻⁸ as exact decimal text."""
    text = str(Decimal(units).scaleb(-8).normalize())
    return text if "E" not in text else f"{Decimal(units).scaleb(-8):f}"


@dataclass(frozen=True, slots=True)
class Liquidation:
    symbol: str
    side: str  # SELL: a long liquidated; BUY: a short liquidated
    quantity: str
    price: str
    trade_time: int

    def units(self) -> int:
        return quote_units(self.quantity, self.price)


class Derivatives:
    """Derivatives values of a `Market`, the frames and REST bodies serving them, and what was pushed."""

    def __init__(self, market: Market, keep_minutes: int = 4000):
        self.market = market
        self.keep_minutes = keep_minutes
        self.mark_pushed: dict[int, int] = {}  # minute -> newest markPrice event time written to a client
        self.liq_pushed: dict[tuple[str, int], list[int]] = {}  # (symbol, bucket minute) -> [long, short, n]
        self.oi_served: set[tuple[str, int]] = set()  # (symbol, minute) answered by /fapi/v1/openInterest
        self._liq_cache: dict[int, dict[str, list[Liquidation]]] = {}
        self.liq_cursor_ms = market.now_ms()  # liquidations with trade time ≤ this went out (or were due)

    # --- values ---------------------------------------------------------------------------------------------
    def _rule(self, state: SymbolState, minute: int):
        return state.rules.get(minute) if state.rules else None

    def marked(self, state: SymbolState, minute: int) -> bool:
        """Is the symbol in the markPrice array at that minute (listed and trading; maintenance included)?"""
        return minute >= state.first_minute and state.trading_at(minute) and state.status == "TRADING"

    def funding_rate(self, state: SymbolState, event_ms: int) -> float:
        rule = self._rule(state, event_ms // MINUTE_MS)
        if rule is not None and rule.funding_rate is not None:
            return rule.funding_rate
        u = _uniforms(_mix(self.market.seed, state.key, (event_ms // HOUR_MS) + (3 << 40)))
        # around 0.01 % per 8 hours, scaled to the interval: the same APR whatever the interval
        return (0.0001 + (u[0] - 0.5) * 0.0002) * interval_hours(state) / 8

    def mark_values(self, state: SymbolState, event_ms: int) -> tuple[str, str, str, int]:
        """(mark, index, funding rate, next funding time) of a markPriceUpdate at `event_ms`."""
        minute = event_ms // MINUTE_MS
        index = float(self.market.partial_strings(state, minute, event_ms)[3])
        rule = self._rule(state, minute)
        if rule is not None and rule.basis_pct is not None:
            basis = rule.basis_pct
        else:
            basis = (_uniforms(_mix(self.market.seed, state.key, minute + (4 << 40)))[0] - 0.5) * 0.04
        mark = index * (1 + basis / 100.0)
        rate = self.funding_rate(state, event_ms)
        period = interval_hours(state) * HOUR_MS
        return f"{mark:.8f}", f"{index:.8f}", f"{rate:.8f}", (event_ms // period + 1) * period

    def open_interest(self, state: SymbolState, minute: int) -> str:
        """Open interest (contracts) during `minute`: one value per minute, scripted changes compounded."""
        base = state.volume_level / max(state.start_price, 1e-9) * 40
        noise = 1 + (_uniforms(_mix(self.market.seed, state.key, minute + (5 << 40)))[0] - 0.5) * 0.002
        factor = 1.0
        for m, rule in state.rules.items():
            if m <= minute and rule.oi_change_pct is not None:
                factor *= 1 + rule.oi_change_pct / 100.0
        return f"{base * noise * factor:.{state.qty_decimals}f}"

    def liquidations(self, minute: int) -> dict[str, list[Liquidation]]:
        """Every symbol's liquidations of `minute`, at most one per second (the largest of that second)."""
        cached = self._liq_cache.get(minute)
        if cached is not None:
            return cached
        out: dict[str, list[Liquidation]] = {}
        for symbol, state in self.market.states.items():
            if not self.market.exists(state, minute):
                continue
            events = self._minute_liquidations(state, minute)
            if events:
                out[symbol] = events
        self._liq_cache[minute] = out
        for old in [m for m in self._liq_cache if m < minute - 5]:
            del self._liq_cache[old]
        return out

    def _minute_liquidations(self, state: SymbolState, minute: int) -> list[Liquidation]:
        seed = self.market.seed
        # the previous close: generating this minute's close early would stop a scenario from shaping it
        price = self.market._close(state, minute - 1) if minute > state.first_minute else state.start_price
        decimals, qd = state.price_decimals, state.qty_decimals
        candidates: dict[int, list[tuple[str, float]]] = {}  # second -> [(side, quote)]
        u = _uniforms(_mix(seed, state.key, minute + (6 << 40)))
        if u[0] < 0.25:  # the ordinary trickle: one or two forced orders in the same second, or none
            second = int(u[1] * (LIQUIDATION_LAST_SECOND + 1))
            side = "SELL" if u[2] < 0.5 else "BUY"
            size = state.volume_level * (0.002 + 0.02 * u[3])
            candidates.setdefault(second, []).append((side, size))
            if u[3] > 0.7:
                candidates[second].append(("BUY" if side == "SELL" else "SELL", size * 0.5))
        rule = self._rule(state, minute)
        for side, total in (
            ("SELL", rule.liq_long_quote if rule is not None else None),
            ("BUY", rule.liq_short_quote if rule is not None else None),
        ):
            if not total:
                continue
            pieces = 4
            for piece in range(pieces):
                v = _uniforms(_mix(seed, state.key, minute * 16 + piece + (7 << 40) + (side == "BUY")))
                second = min(LIQUIDATION_LAST_SECOND, piece * 14 + int(v[0] * 12))
                candidates.setdefault(second, []).append((side, total / pieces))
        events = []
        for second in sorted(candidates):
            side, quote = max(candidates[second], key=lambda pair: pair[1])  # Binance: the largest only
            quantity = max(round(quote / price, qd), 10.0**-qd)
            trade_time = minute * MINUTE_MS + second * SECOND_MS + 137
            events.append(
                Liquidation(state.symbol, side, f"{quantity:.{qd}f}", f"{price:.{decimals}f}", trade_time)
            )
        return events

    def due_liquidations(self, now_ms: int) -> list[Liquidation]:
        """Liquidations with trade time in (cursor, now], in time order; moves the cursor."""
        start, self.liq_cursor_ms = self.liq_cursor_ms, max(self.liq_cursor_ms, now_ms)
        if now_ms <= start:
            return []
        due: list[Liquidation] = []
        for minute in range(start // MINUTE_MS, now_ms // MINUTE_MS + 1):
            for events in self.liquidations(minute).values():
                due.extend(e for e in events if start < e.trade_time <= now_ms)
        due.sort(key=lambda e: e.trade_time)
        return due

    def next_liquidation_ms(self, now_ms: int) -> int | None:
        """Trade time of the next liquidation after `now_ms` (this minute or the next), for the ticker."""
        best = None
        for minute in (now_ms // MINUTE_MS, now_ms // MINUTE_MS + 1):
            for events in self.liquidations(minute).values():
                for event in events:
                    if event.trade_time > now_ms and (best is None or event.trade_time < best):
                        best = event.trade_time
            if best is not None:
                return best
        return best

    # --- frames and REST bodies ----------------------------------------------------------------------------
    def mark_payload(self, event_ms: int) -> bytes:
        """The `!markPrice@arr@1s` data: an array of markPriceUpdate events, one per listed symbol."""
        minute = event_ms // MINUTE_MS
        parts = []
        for state in self.market.states.values():
            if not self.marked(state, minute):
                continue
            mark, index, rate, next_funding = self.mark_values(state, event_ms)
            parts.append(
                f'{{"e":"markPriceUpdate","E":{event_ms},"s":{state.json_name},"p":"{mark}",'
                f'"P":"{index}","i":"{index}","r":"{rate}","T":{next_funding}}}'
            )
        return ("[" + ",".join(parts) + "]").encode()

    def force_order_payload(self, event: Liquidation, event_ms: int) -> bytes:
        state = self.market.states[event.symbol]
        return (
            f'{{"e":"forceOrder","E":{event_ms},"o":{{"s":{state.json_name},"S":"{event.side}",'
            f'"o":"LIMIT","f":"IOC","q":"{event.quantity}","p":"{event.price}","ap":"{event.price}",'
            f'"X":"FILLED","l":"{event.quantity}","z":"{event.quantity}","T":{event.trade_time}}}}}'
        ).encode()

    def premium_index(self, state: SymbolState, now_ms: int) -> dict:
        mark, index, rate, next_funding = self.mark_values(state, now_ms)
        return {
            "symbol": state.symbol,
            "markPrice": mark,
            "indexPrice": index,
            "estimatedSettlePrice": index,
            "lastFundingRate": rate,
            "interestRate": "0.00010000",
            "nextFundingTime": next_funding,
            "time": now_ms,
        }

    def funding_info(self) -> list[dict]:
        """Only symbols whose funding settings were adjusted are listed (the rest have 8 h), as on Binance."""
        return [
            {
                "symbol": state.symbol,
                "adjustedFundingRateCap": "0.02000000",
                "adjustedFundingRateFloor": "-0.02000000",
                "fundingIntervalHours": interval_hours(state),
                "disclaimer": False,
            }
            for state in self.market.states.values()
            if state.status == "TRADING" and interval_hours(state) != 8
        ]

    # --- what was pushed ----------------------------------------------------------------------------------
    def record_mark(self, event_ms: int) -> None:
        minute = event_ms // MINUTE_MS
        if event_ms >= self.mark_pushed.get(minute, -1):
            self.mark_pushed[minute] = event_ms
        if len(self.mark_pushed) > self.keep_minutes:
            for old in sorted(self.mark_pushed)[: len(self.mark_pushed) - self.keep_minutes]:
                del self.mark_pushed[old]

    def record_liquidation(self, event: Liquidation, oldest_unfinalised_minute: int) -> int:
        """Count a pushed liquidation in its §7b minute; returns that minute (ms)."""
        bucket = max(event.trade_time // MINUTE_MS, oldest_unfinalised_minute)
        sums = self.liq_pushed.setdefault((event.symbol, bucket), [0, 0, 0])
        sums[0 if event.side == "SELL" else 1] += event.units()
        sums[2] += 1
        return bucket * MINUTE_MS

    def record_open_interest(self, symbol: str, now_ms: int) -> None:
        self.oi_served.add((symbol, now_ms // MINUTE_MS))

    def expected(self, symbol: str, open_time: int) -> dict:
        """The §7b fields of a final minute as a collector connected all along would publish them: the mark of
        the minute's last second, an open interest sample, every liquidation of the minute. Needs no client
        (backtests of the scenarios use it); `truth()` is the record of what was actually pushed."""
        state = self.market.states[symbol]
        minute = open_time // MINUTE_MS
        mark, index, rate, next_funding = self.mark_values(state, open_time + 59_000)
        long_units = short_units = count = 0
        for event in self.liquidations(minute).get(symbol, []):
            if event.side == "SELL":
                long_units += event.units()
            else:
                short_units += event.units()
            count += 1
        return {
            "mark_close": mark,
            "index_close": index,
            "funding_rate": rate,
            "next_funding_time": next_funding,
            "funding_interval_hours": interval_hours(state),
            "open_interest": self.open_interest(state, minute),
            "liq_long_quote": units_text(long_units),
            "liq_short_quote": units_text(short_units),
            "liq_count": count,
        }

    def truth(self, symbol: str, open_time: int) -> dict:
        """The §7b fields of minute `open_time` as a collector that received everything pushed would publish
        them (decimal text for numbers; liquidation sums exact)."""
        state = self.market.states[symbol]
        minute = open_time // MINUTE_MS
        out: dict = {"funding_interval_hours": interval_hours(state)}
        event_ms = self.mark_pushed.get(minute)
        if event_ms is not None and self.marked(state, minute):
            mark, index, rate, next_funding = self.mark_values(state, event_ms)
            out.update(mark_close=mark, index_close=index, funding_rate=rate, next_funding_time=next_funding)
        else:
            out.update(mark_close=None, index_close=None, funding_rate=None, next_funding_time=None)
        served = (symbol, minute) in self.oi_served
        out["open_interest"] = self.open_interest(state, minute) if served else None
        long_units, short_units, count = self.liq_pushed.get((symbol, minute), (0, 0, 0))
        out.update(
            liq_long_quote=units_text(long_units), liq_short_quote=units_text(short_units), liq_count=count
        )
        return out
