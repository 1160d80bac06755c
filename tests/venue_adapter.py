"""The collector tests' view of the Binance emulator (`collector/emulator/`, docs/emulator.md).

Every venue interaction of tests/test_collector_integration.py goes through this adapter, so the tests
read as what a user would notice and only this file follows the emulator's API.
"""

from __future__ import annotations

import contextlib

from collector import emulator

FIELDS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_volume",
    "taker_buy_quote_volume",
)


class Venue:
    """What the collector tests need from the emulator (names of the emulator's API in the calls)."""

    def __init__(self, emu):
        self.emu = emu
        self.rest_url = emu.rest_url
        self.ws_url = emu.ws_url

    def now_ms(self) -> int:
        return self.emu.market.now_ms()

    def truth(self, symbol: str, open_time: int) -> dict | None:
        """The final candle the venue has for that minute, as a dict of FIELDS, or None (no kline)."""
        candle = self.emu.market.candle(symbol, open_time)
        if candle is None:
            return None
        if isinstance(candle, dict):
            return candle
        if isinstance(candle, list | tuple):  # a REST row
            return {
                "open": candle[1],
                "high": candle[2],
                "low": candle[3],
                "close": candle[4],
                "volume": candle[5],
                "quote_volume": candle[7],
                "trades": candle[8],
                "taker_buy_volume": candle[9],
                "taker_buy_quote_volume": candle[10],
            }
        return {name: getattr(candle, name) for name in FIELDS}

    def send_garbage(self) -> None:
        self.emu.faults.malformed_frames(2)

    async def drop_all_connections(self) -> None:
        await self.emu.faults.drop_connections()

    def skip_minutes(self, symbol: str, start_ms: int, count: int) -> None:
        self.emu.faults.missing_minutes(symbol, start_ms, count)

    def stall_one_connection(self) -> None:
        self.emu.faults.stall_connection()

    def answer_429(self, times: int = 1) -> None:
        self.emu.faults.rate_limit(times)

    def last_limited_at_ms(self) -> int:
        return self.emu.rest_log.last_refused_ms()

    def rest_request_times_ms(self) -> list[int]:
        return self.emu.rest_log.request_times_ms()

    # --- derivatives (docs/emulator.md "Derivatives") ------------------------------------------------------
    def derivatives_truth(self, symbol: str, open_time: int) -> dict:
        """The §7b fields of that minute for what the venue pushed (decimal text, ints, or None)."""
        return self.emu.derivatives.truth(symbol, open_time)

    def funding_interval_hours(self, symbol: str) -> int:
        return self.derivatives_truth(symbol, 0)["funding_interval_hours"]

    def silence_stream(self, stream: str) -> None:
        self.emu.faults.silence_stream(stream)

    def stall_stream_connection(self, stream: str) -> None:
        self.emu.faults.stall_connection(stream)

    def push_late_liquidation(self, symbol: str, quote: float, minutes_ago: int = 2) -> int:
        """A long liquidated `minutes_ago` minutes back, pushed now; returns the minute it counts in."""
        return self.emu.faults.late_liquidation(symbol, "SELL", quote, minutes_ago)["counted_in"]

    def script(self, spec: dict) -> int:
        return self.emu.add_scenario(spec)

    async def list_symbol(self, symbol: str) -> None:
        await self.emu.faults.list_symbol(symbol)

    async def delist_symbol(self, symbol: str) -> None:
        await self.emu.faults.delist_symbol(symbol)


@contextlib.asynccontextmanager
async def start(symbols: list[str], speed: float = 60.0, scenarios: list[dict] | None = None):
    async with emulator.EmulatorServer(symbols=symbols, speed=speed, seed=1, scenarios=scenarios) as emu:
        yield Venue(emu)
