"""The emulator's derivatives streams and endpoints speak Binance's formats, are deterministic, and its truth is
what it pushed (docs/emulator.md "Derivatives"). Plain clients over real sockets, as a collector would use."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from collector.binance import parse_frame
from collector.emulator.derivatives import Derivatives
from collector.emulator.market import Market
from collector.emulator.scenarios import compile_scenario, load_file
from tests.test_emulator import MINUTE, T0, emulator, get, shape, stream_url

# Shapes as documented by Binance (USDⓈ-M market streams and REST), values shortened.
RECORDED_MARK_PRICE = {
    "e": "markPriceUpdate",
    "E": 1562305380000,
    "s": "BTCUSDT",
    "p": "11794.15000000",
    "i": "11784.62659091",
    "P": "11784.25641265",
    "r": "0.00038167",
    "T": 1562306400000,
}
RECORDED_FORCE_ORDER = {
    "e": "forceOrder",
    "E": 1568014460893,
    "o": {
        "s": "BTCUSDT",
        "S": "SELL",
        "o": "LIMIT",
        "f": "IOC",
        "q": "0.014",
        "p": "9910",
        "ap": "9910",
        "X": "FILLED",
        "l": "0.014",
        "z": "0.014",
        "T": 1568014460893,
    },
}
RECORDED_OPEN_INTEREST = {"openInterest": "10659.509", "symbol": "BTCUSDT", "time": 1589437530011}
RECORDED_PREMIUM_INDEX = {
    "symbol": "BTCUSDT",
    "markPrice": "11793.63104562",
    "indexPrice": "11781.80495970",
    "estimatedSettlePrice": "11781.16138815",
    "lastFundingRate": "0.00038246",
    "interestRate": "0.00010000",
    "nextFundingTime": 1597392000000,
    "time": 1597370495002,
}
RECORDED_FUNDING_INFO = {
    "symbol": "BLZUSDT",
    "adjustedFundingRateCap": "0.02500000",
    "adjustedFundingRateFloor": "-0.02500000",
    "fundingIntervalHours": 8,
    "disclaimer": False,
}
SYMBOLS = ["AAAUSDT", "EEEUSDT", "GGGUSDT", "币安人生USDT"]  # funding every 8 h, 1 h, 4 h, 1 h
STREAMS = ("!markPrice@arr@1s", "!forceOrder@arr")


async def test_mark_prices_and_liquidations_arrive_in_binances_formats_with_8_4_and_1_hour_funding():
    squeeze = {"symbol": "AAAUSDT", "start_minute": 1, "steps": [{"minutes": 3, "liq_long_quote": 400000}]}
    async with (
        emulator(symbols=SYMBOLS, scenarios=[squeeze]) as emu,
        connect(stream_url(emu, *STREAMS)) as ws,
    ):
        marks, orders = [], []
        async with asyncio.timeout(15):
            while len(marks) < 8 or len(orders) < 6:
                message = json.loads(await ws.recv())
                (marks if message["stream"] == STREAMS[0] else orders).append(message)
                frame = parse_frame(json.dumps(message, ensure_ascii=False).encode(), set(SYMBOLS))
                assert frame.kind in ("mark", "liquidation") and not frame.refused, frame
    for message in marks:
        updates = message["data"]
        assert {u["s"] for u in updates} >= set(SYMBOLS)
        assert all(shape(u) == shape(RECORDED_MARK_PRICE) for u in updates)
    period = {u["s"]: u["T"] - u["E"] for u in marks[-1]["data"]}
    hours = {symbol: next(h for h in (1, 4, 8) if period[symbol] <= h * 3_600_000) for symbol in SYMBOLS}
    assert hours == {"AAAUSDT": 8, "EEEUSDT": 1, "GGGUSDT": 4, "币安人生USDT": 1}
    assert all(u["T"] % (hours[u["s"]] * 3_600_000) == 0 for u in marks[-1]["data"] if u["s"] in hours)
    assert all(shape(m["data"]) == shape(RECORDED_FORCE_ORDER) for m in orders)
    seconds = [(m["data"]["o"]["s"], m["data"]["o"]["T"] // 1000) for m in orders]
    assert len(seconds) == len(set(seconds))  # at most one liquidation per symbol per second
    assert any(m["data"]["o"]["s"] == "AAAUSDT" and m["data"]["o"]["S"] == "SELL" for m in orders)


async def test_open_interest_premium_index_and_funding_info_answer_like_binance():
    async with emulator(symbols=SYMBOLS) as emu:
        status, headers, body = await get(emu, "/fapi/v1/openInterest", symbol="AAAUSDT")
        assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "1"
        assert shape(body) == shape(RECORDED_OPEN_INTEREST) and body["symbol"] == "AAAUSDT"
        status, _, single = await get(emu, "/fapi/v1/premiumIndex", symbol="EEEUSDT")
        assert status == 200 and shape(single) == shape(RECORDED_PREMIUM_INDEX)
        _, _, every = await get(emu, "/fapi/v1/premiumIndex")
        assert {entry["symbol"] for entry in every} >= set(SYMBOLS)
        status, headers, info = await get(emu, "/fapi/v1/fundingInfo")
        assert status == 200 and all(shape(entry) == shape(RECORDED_FUNDING_INFO) for entry in info)
        listed = {entry["symbol"]: entry["fundingIntervalHours"] for entry in info}
        assert listed["EEEUSDT"] == 1 and listed["GGGUSDT"] == 4 and "AAAUSDT" not in listed  # unlisted: 8 h
        status, _, error = await get(emu, "/fapi/v1/openInterest")
        assert status == 400 and error["code"] == -1102
        status, _, error = await get(emu, "/fapi/v1/openInterest", symbol="NOPEUSDT")
        assert status == 400 and error["code"] == -1121


async def test_funding_info_has_its_own_budget_of_500_requests_per_5_minutes():
    async with emulator(symbols=["AAAUSDT"], speed=1.0) as emu:
        statuses = [(await get(emu, "/fapi/v1/fundingInfo"))[0] for _ in range(501)]
        weight = (await get(emu, "/fapi/v1/time"))[1]["X-MBX-USED-WEIGHT-1M"]
    assert statuses[:500] == [200] * 500 and statuses[500] == 429
    assert weight == "1"  # fundingInfo costs no request weight


async def test_scenarios_script_funding_basis_open_interest_and_liquidations_into_the_truth():
    spec = {
        "symbol": "AAAUSDT",
        "start_minute": 1,
        "steps": [
            {
                "minutes": 4,
                "funding_rate": 0.002,
                "basis_pct": 0.8,
                "oi_change_pct": 2,
                "liq_short_quote": 500000,
                "change_pct": 0.5,
            }
        ],
    }
    async with emulator(symbols=SYMBOLS, scenarios=[spec]) as emu, connect(stream_url(emu, *STREAMS)):
        first = T0 // MINUTE * MINUTE + MINUTE
        for minute in (first - MINUTE, first + 3 * MINUTE):
            await get(emu, "/fapi/v1/openInterest", symbol="AAAUSDT")
            while emu.market.now_ms() < minute:
                await asyncio.sleep(0.05)
            await get(emu, "/fapi/v1/openInterest", symbol="AAAUSDT")
        while emu.market.now_ms() < first + 4 * MINUTE + 3_000:
            await asyncio.sleep(0.05)
        truth = [emu.truth("AAAUSDT", first + k * MINUTE) for k in range(4)]
        before = emu.truth("AAAUSDT", first - MINUTE)
    for minute in truth:
        mark, index = Decimal(minute["mark_close"]), Decimal(minute["index_close"])
        assert abs((mark - index) / index * 100 - Decimal("0.8")) < Decimal("0.0001")
        assert minute["funding_rate"] == "0.00200000" and minute["funding_interval_hours"] == 8
        assert Decimal(minute["liq_short_quote"]) > 450000 and minute["liq_count"] >= 4
    growth = Decimal(truth[3]["open_interest"]) / Decimal(before["open_interest"])
    assert Decimal("1.07") < growth < Decimal("1.09")  # four minutes of +2 %


async def test_the_same_seed_pushes_the_same_derivatives_values():
    values = []
    for _ in range(2):
        async with emulator(symbols=SYMBOLS) as emu:
            state = emu.market.states["GGGUSDT"]
            values.append(
                (
                    emu.derivatives.mark_values(state, T0 + 12_345),
                    emu.derivatives.open_interest(state, T0 // MINUTE),
                    emu.derivatives.liquidations(T0 // MINUTE + 7),
                )
            )
    assert values[0] == values[1]


# --- the preset scenarios -----------------------------------------------------------------------------------
SCENARIOS = Path(__file__).resolve().parent.parent / "collector" / "emulator" / "scenarios"
DERIVATIVE_PRESETS = {
    # slug: the preset's condition on bar i, written from the docs/contract.md §7b formulas
    "futures_crowded_longs": lambda m: m.apr() > 50 and m.oi_change(240) > 5 and m.change(240) > 0,
    "futures_crowded_shorts": lambda m: m.apr() < -50 and m.oi_change(240) > 5 and m.change(240) < 0,
    "futures_long_squeeze": lambda m: m.liq("liq_long_quote", 5) > 1_000_000 and m.change(5) < -1,
    "futures_short_squeeze": lambda m: m.liq("liq_short_quote", 5) > 1_000_000 and m.change(5) > 1,
    "futures_oi_surge": lambda m: m.oi_change(15) > 5 and abs(m.change(15)) < 1,
    "futures_basis_dislocation": lambda m: abs(m.basis()) > 0.5,
}


class Bar:
    """§7b metrics of bar `i` over a list of (candle, derivatives fields) minutes, with plain arithmetic."""

    def __init__(self, rows: list[tuple[dict, dict]], i: int):
        self.rows, self.i = rows, i

    def field(self, name: str, back: int = 0) -> Decimal:
        return Decimal(str(self.rows[self.i - back][1][name]))

    def change(self, n: int) -> Decimal:
        first = Decimal(self.rows[self.i - n + 1][0]["open"])
        return (Decimal(self.rows[self.i][0]["close"]) - first) / first * 100

    def apr(self) -> Decimal:
        return self.field("funding_rate") * 100 * 24 / self.field("funding_interval_hours") * 365

    def oi_change(self, n: int) -> Decimal:
        return (
            (self.field("open_interest") - self.field("open_interest", n))
            / self.field("open_interest", n)
            * 100
        )

    def liq(self, name: str, n: int) -> Decimal:
        return sum(self.field(name, k) for k in range(n))

    def basis(self) -> Decimal:
        return (self.field("mark_close") - self.field("index_close")) / self.field("index_close") * 100


def fired_minutes(slug: str, spec: dict) -> list[int]:
    symbol = spec["symbol"]
    market = Market([symbol], seed=7, speed=1e9, t0_ms=T0, history_minutes=300, extras=False)
    market.add_scenario(compile_scenario(spec, market.t0_ms, market.states))
    derivatives = Derivatives(market)
    end = spec["start_minute"] + sum(step["minutes"] for step in spec["steps"])
    rows = []
    for minute in range(-299, end + 5):
        open_time = T0 + minute * MINUTE
        rows.append((market.candle(symbol, open_time), derivatives.expected(symbol, open_time)))
    condition = DERIVATIVE_PRESETS[slug]
    return [T0 + (k - 299) * MINUTE for k in range(241, len(rows)) if condition(Bar(rows, k))]


@pytest.mark.parametrize("slug", sorted(DERIVATIVE_PRESETS))
def test_each_derivatives_preset_scenario_meets_its_condition_first_while_scripted(slug):
    (spec,) = load_file(SCENARIOS / f"{slug}.json")
    start = T0 + spec["start_minute"] * MINUTE
    scripted = range(start, start + sum(step["minutes"] for step in spec["steps"]) * MINUTE, MINUTE)
    fired = fired_minutes(slug, spec)
    assert fired and fired[0] in scripted, (slug, fired[:3])
    assert fired[0] >= T0  # after the emulator's start: the demo shows it live
