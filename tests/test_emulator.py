"""The Binance emulator speaks the venue's protocol over real sockets (docs/contract.md §4, docs/emulator.md).

Each test talks to a real `EmulatorServer` with a plain aiohttp or websockets client, as a collector would, and
checks a fact the collector relies on. Payload shapes are compared field by field, types included, with
payloads recorded from Binance's USDⓈ-M API.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from collector.binance import parse_frame, parse_rest_rows
from collector.emulator import EmulatorServer, ScenarioError
from collector.universe import select_symbols

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
ROOT = Path(__file__).resolve().parent.parent

# Recorded from fapi.binance.com / fstream.binance.com (values shortened, shapes and types as served).
RECORDED_KLINE_EVENT = {
    "e": "kline",
    "E": 1767225662012,
    "s": "BTCUSDT",
    "k": {
        "t": 1767225600000,
        "T": 1767225659999,
        "s": "BTCUSDT",
        "i": "1m",
        "f": 6932186345,
        "L": 6932187001,
        "o": "87432.10",
        "c": "87440.00",
        "h": "87451.20",
        "l": "87420.00",
        "v": "61.732",
        "n": 657,
        "x": True,
        "q": "5397645.51910",
        "V": "30.117",
        "Q": "2633337.85450",
        "B": "0",
    },
}
RECORDED_REST_ROW = [
    1767225600000,
    "87432.10",
    "87451.20",
    "87420.00",
    "87440.00",
    "61.732",
    1767225659999,
    "5397645.51910",
    657,
    "30.117",
    "2633337.85450",
    "0",
]
RECORDED_CONTRACT_INFO = {
    "e": "contractInfo",
    "E": 1767225662012,
    "s": "NEWUSDT",
    "ps": "NEWUSDT",
    "ct": "PERPETUAL",
    "dt": 4133404800000,
    "ot": 1767225600000,
    "cs": "TRADING",
    "bks": [],
}
RECORDED_SYMBOL_KEYS = {
    "symbol",
    "pair",
    "contractType",
    "deliveryDate",
    "onboardDate",
    "status",
    "baseAsset",
    "quoteAsset",
    "marginAsset",
    "pricePrecision",
    "quantityPrecision",
    "filters",
}


def shape(value):
    """The JSON shape of a value: key names and scalar types, recursively (list items by position)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def emulator(**options) -> EmulatorServer:
    values = {"symbols": ["AAAUSDT", "BBBUSDT", "币安人生USDT"], "speed": 60.0, "seed": 1, "t0_ms": T0}
    values.update(options)
    return EmulatorServer(**values)


async def get(emu: EmulatorServer, path: str, **params) -> tuple[int, dict, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(emu.rest_url + path, params={k: str(v) for k, v in params.items()}) as response,
    ):
        return response.status, response.headers, json.loads(await response.read())


async def frames(ws, count: int, timeout: float = 10.0) -> list[dict]:
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            out.append(json.loads(await ws.recv()))
    return out


async def until(ws, predicate, timeout: float = 10.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if predicate(message):
                return message


def is_final(message: dict) -> bool:
    data = message.get("data", message)
    return data.get("e") == "kline" and data["k"]["x"]


async def closed_with(ws, timeout: float = 5.0) -> int:
    """Read until the server closes the socket; the close code it sent."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else 1006
    raise AssertionError("still open")


def stream_url(emu: EmulatorServer, *streams: str) -> str:
    from urllib.parse import quote

    return f"{emu.ws_url}/stream?streams={quote('/'.join(streams), safe='/@!_')}"


# --- REST -----------------------------------------------------------------------------------------------------


async def test_exchange_info_has_the_kinds_the_universe_filter_must_exclude_and_a_non_ascii_symbol():
    async with emulator() as emu:
        status, headers, info = await get(emu, "/fapi/v1/exchangeInfo")
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "1"
    by_name = {entry["symbol"]: entry for entry in info["symbols"]}
    assert {"BTCUSDC", "BTCUSDT_260925", "XAUUSDT", "OLDUSDT"} <= set(by_name)
    assert by_name["BTCUSDC"]["quoteAsset"] == "USDC"
    assert by_name["BTCUSDT_260925"]["contractType"] == "CURRENT_QUARTER"
    assert by_name["XAUUSDT"]["contractType"] == "TRADIFI_PERPETUAL"
    assert by_name["OLDUSDT"]["status"] == "SETTLING"
    for entry in by_name.values():
        assert set(entry) >= RECORDED_SYMBOL_KEYS
        assert isinstance(entry["onboardDate"], int) and isinstance(entry["pricePrecision"], int)
    assert sorted(select_symbols(info)) == sorted(["AAAUSDT", "BBBUSDT", "币安人生USDT"])
    assert sorted(select_symbols(info, include_tradifi=True)) == sorted(
        ["AAAUSDT", "BBBUSDT", "币安人生USDT", "XAUUSDT"]
    )


async def test_venue_time_is_t0_plus_speed_times_elapsed_wall_time():
    async with emulator(speed=600.0) as emu:
        started = time.monotonic()
        _, _, first = await get(emu, "/fapi/v1/time")
        await asyncio.sleep(0.3)
        _, _, second = await get(emu, "/fapi/v1/time")
        elapsed = time.monotonic() - started
    assert T0 <= first["serverTime"] < second["serverTime"]
    # 0.3 s of wall time at 600× is at least 180 venue seconds, and no more than the whole elapsed time allows.
    assert 180_000 <= second["serverTime"] - first["serverTime"] <= (elapsed + 0.05) * 600_000


async def test_klines_follow_binance_start_end_and_limit_semantics_with_the_open_minute_last():
    async with emulator() as emu:
        now = emu.market.now_ms()
        open_minute = now // MINUTE * MINUTE
        _, _, newest = await get(emu, "/fapi/v1/klines", symbol="AAAUSDT", interval="1m", limit=5)
        start = open_minute - 100 * MINUTE
        _, _, from_start = await get(
            emu, "/fapi/v1/klines", symbol="AAAUSDT", interval="1m", startTime=start + 1, limit=3
        )
        _, _, to_end = await get(
            emu, "/fapi/v1/klines", symbol="AAAUSDT", interval="1m", endTime=start, limit=3
        )
        _, _, both = await get(
            emu,
            "/fapi/v1/klines",
            symbol="AAAUSDT",
            interval="1m",
            startTime=start,
            endTime=start + 9 * MINUTE,
        )
        _, _, default = await get(emu, "/fapi/v1/klines", symbol="AAAUSDT", interval="1m", startTime=start)
        _, _, paged = await get(
            emu, "/fapi/v1/klines", symbol="AAAUSDT", interval="1m", startTime=start, limit=1500
        )
        truth = emu.market.candle("AAAUSDT", start)
    for rows in (newest, from_start, to_end, both, default):
        assert all(shape(row) == shape(RECORDED_REST_ROW) for row in rows)
    assert [row[0] for row in newest] == [open_minute - i * MINUTE for i in range(4, -1, -1)]
    assert [row[0] for row in from_start] == [start + MINUTE, start + 2 * MINUTE, start + 3 * MINUTE]
    assert [row[0] for row in to_end] == [start - 2 * MINUTE, start - MINUTE, start]
    assert [row[0] for row in both] == [start + i * MINUTE for i in range(10)]
    assert len(default) == 101 and default[-1][0] == open_minute  # not 500: nothing after the open minute
    assert paged[-1][0] == open_minute and len(paged) == 101
    first = both[0]
    assert first[6] == start + MINUTE - 1
    assert dict(zip(["open", "high", "low", "close", "volume"], first[1:6], strict=True)) == {
        k: truth[k] for k in ("open", "high", "low", "close", "volume")
    }
    assert [first[7], first[8], first[9], first[10]] == [
        truth["quote_volume"],
        truth["trades"],
        truth["taker_buy_volume"],
        truth["taker_buy_quote_volume"],
    ]
    # Consecutive minutes chain: each open is the previous close.
    assert all(b[1] == a[4] for a, b in itertools.pairwise(both))
    # The collector's own parser accepts the closed rows and leaves out the open one.
    candles, refused = parse_rest_rows("AAAUSDT", json.dumps(newest).encode(), now + 6_000)
    assert refused == [] and [c.open_time for c in candles] == [row[0] for row in newest[:-1]]


async def test_klines_weights_are_counted_per_venue_minute_in_the_used_weight_header():
    async with emulator(speed=1.0) as emu:
        seen = []
        for limit, weight in ((100, 1), (101, 2), (500, 2), (1000, 5), (1500, 10)):
            _, headers, _ = await get(emu, "/fapi/v1/klines", symbol="AAAUSDT", interval="1m", limit=limit)
            seen.append((weight, int(headers["X-MBX-USED-WEIGHT-1M"])))
    used = 0
    for weight, header in seen:
        used += weight
        assert header == used


async def test_over_the_weight_budget_rest_answers_429_and_then_bans_with_418():
    async with emulator(speed=1.0, weight_limit=3, ban_after_429=2) as emu:
        answers = [await get(emu, "/fapi/v1/time") for _ in range(7)]
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 200, 200, 429, 429, 429, 418]
    _, headers, body = answers[3]
    assert body["code"] == -1003 and "Too many requests" in body["msg"]
    assert int(headers["Retry-After"]) >= 1 and headers["X-MBX-USED-WEIGHT-1M"] == "4"
    _, _, banned = answers[6]
    assert banned["code"] == -1003 and "banned until" in banned["msg"]
    until = int(banned["msg"].split("banned until ")[1].split(".")[0])
    assert until >= T0 + 2 * MINUTE - 1000


async def test_bad_kline_requests_get_binance_error_bodies():
    async with emulator() as emu:
        cases = [
            ({"interval": "1m"}, -1102),
            ({"symbol": "NOPEUSDT", "interval": "1m"}, -1121),
            ({"symbol": "AAAUSDT", "interval": "7m"}, -1120),
            ({"symbol": "AAAUSDT", "interval": "1m", "limit": 1501}, -1130),
            ({"symbol": "AAAUSDT", "interval": "1m", "startTime": 5, "endTime": 4}, -1023),
        ]
        answers = [await get(emu, "/fapi/v1/klines", **params) for params, _ in cases]
    for (_, code), (status, _, body) in zip(cases, answers, strict=True):
        assert status == 400 and body["code"] == code and body["msg"]


# --- WebSocket ------------------------------------------------------------------------------------------------


async def test_combined_streams_send_updates_every_250_ms_and_a_final_two_seconds_after_the_close():
    async with (
        emulator(speed=30.0) as emu,
        connect(stream_url(emu, "aaausdt@kline_1m", "币安人生usdt@kline_1m")) as ws,
    ):
        received = []
        async with asyncio.timeout(15):  # the minute that opens at t0 (2 s of wall time at 30×) and its final
            while not any(
                is_final(m) and m["data"]["k"]["t"] == T0 and m["data"]["s"] == "AAAUSDT" for m, _ in received
            ):
                received.append((json.loads(await ws.recv()), time.monotonic()))
        truth_of = emu.market.candle
    streams = {m["stream"] for m, _ in received}
    assert streams == {"aaausdt@kline_1m", "币安人生usdt@kline_1m"}
    for message, _ in received:
        assert set(message) == {"stream", "data"}
        assert shape(message["data"]) == {
            **shape(RECORDED_KLINE_EVENT),
            "k": {**shape(RECORDED_KLINE_EVENT["k"])},
        }
        frame = parse_frame(json.dumps(message, ensure_ascii=False).encode(), {"AAAUSDT", "币安人生USDT"})
        assert frame.kind == "kline", frame.reason
    updates = [(m["data"], t) for m, t in received if m["stream"] == "aaausdt@kline_1m" and not is_final(m)]
    # Every 250 ms of wall time, read from the emulator's own stamps (E, venue ms at 30×) so that this
    # client's scheduling does not matter.
    gaps = sorted(b["E"] - a["E"] for (a, _), (b, _) in itertools.pairwise(updates))
    assert len(updates) >= 4 and 0.6 * 7_500 < gaps[len(gaps) // 2] < 1.6 * 7_500
    final = next(
        m["data"]
        for m, _ in received
        if is_final(m) and m["data"]["k"]["t"] == T0 and m["data"]["s"] == "AAAUSDT"
    )
    k = final["k"]
    assert 2_000 <= final["E"] - (k["T"] + 1) < 2_000 + 30 * 500  # ~2 s (venue) after the close
    truth = truth_of("AAAUSDT", k["t"])
    assert [k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["n"], k["V"], k["Q"]] == [
        truth[name]
        for name in (
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
    ]
    # In-progress updates of that minute never leave the final range and only grow in volume.
    same = [d["k"] for d, _ in updates if d["k"]["t"] == k["t"]]
    for partial in same:
        assert float(k["l"]) <= float(partial["l"]) <= float(partial["h"]) <= float(k["h"])
        assert float(partial["v"]) <= float(k["v"]) and partial["o"] == k["o"]


async def test_raw_stream_answers_subscribe_unsubscribe_and_list_subscriptions():
    async with emulator(speed=60.0) as emu, connect(emu.ws_url + "/ws") as ws:
        await ws.send(
            json.dumps({"method": "SUBSCRIBE", "params": ["aaausdt@kline_1m", "bbbusdt@kline_1m"], "id": 1})
        )
        reply = await until(ws, lambda m: "id" in m)
        assert reply == {"result": None, "id": 1}
        event = await until(ws, lambda m: m.get("e") == "kline")
        assert shape(event) == shape(RECORDED_KLINE_EVENT) and event["s"] in {"AAAUSDT", "BBBUSDT"}
        await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["bbbusdt@kline_1m"], "id": "two"}))
        assert await until(ws, lambda m: "id" in m) == {"result": None, "id": "two"}
        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        assert await until(ws, lambda m: "id" in m) == {"result": ["aaausdt@kline_1m"], "id": 3}
        later = [m for m in await frames(ws, 12) if m.get("e") == "kline"]
        await ws.send("{not json")
        error = await until(ws, lambda m: "error" in m)
        await ws.send(json.dumps({"method": "FLY", "params": [], "id": 4}))
        unknown = await until(ws, lambda m: "error" in m)
    assert later[-1]["s"] == "AAAUSDT"  # frames already queued before the UNSUBSCRIBE may still be BBB
    assert error["error"]["code"] == 3 and unknown["error"]["code"] == 2 and unknown["id"] == 4


async def test_legacy_root_paths_accept_subscriptions_and_send_nothing():
    async with emulator(speed=600.0) as emu:
        root = emu.ws_url.removesuffix("/market")
        async with (
            connect(f"{root}/stream?streams=aaausdt@kline_1m") as combined,
            connect(f"{root}/ws") as raw,
        ):
            await raw.send(json.dumps({"method": "SUBSCRIBE", "params": ["aaausdt@kline_1m"], "id": 1}))
            assert json.loads(await raw.recv()) == {"result": None, "id": 1}
            for ws in (combined, raw):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(1.0):  # 10 venue minutes at 600×
                        await ws.recv()


async def test_more_than_1024_streams_on_one_connection_closes_it():
    async with emulator() as emu:
        names = [f"s{i}usdt@kline_1m" for i in range(1024)]
        async with connect(emu.ws_url + "/ws") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": names, "id": 1}))
            assert json.loads(await ws.recv()) == {"result": None, "id": 1}
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["one@kline_1m"], "id": 2}))
            assert await closed_with(ws) == 1008
        async with connect(emu.ws_url + "/stream?streams=" + "/".join([*names, "x@kline_1m"])) as ws:
            assert await closed_with(ws) == 1008


async def test_more_than_10_incoming_messages_a_second_closes_the_connection():
    async with emulator(speed=1.0) as emu, connect(emu.ws_url + "/ws") as ws:
        for i in range(10):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        assert len(await frames(ws, 10)) == 10  # ten are fine
        await asyncio.sleep(1.1)
        for i in range(11):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        assert await closed_with(ws) == 1008


async def test_the_server_pings_and_closes_a_client_that_never_answers():
    async with (
        emulator(speed=1.0, ping_interval=0.2, silent_timeout=1.0) as emu,
        aiohttp.ClientSession() as session,
    ):
        silent = await session.ws_connect(emu.ws_url + "/ws", autoping=False)
        async with connect(emu.ws_url + "/ws") as polite:  # websockets answers pings itself
            first = await silent.receive(timeout=3)
            assert first.type == aiohttp.WSMsgType.PING
            async with asyncio.timeout(5):
                while (msg := await silent.receive()).type == aiohttp.WSMsgType.PING:
                    pass
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert silent.close_code == 1008
            await polite.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
            assert json.loads(await polite.recv()) == {"result": [], "id": 1}
        await silent.close()


async def test_every_connection_is_closed_at_its_maximum_age():
    async with emulator(speed=1.0, max_connection_age=0.5) as emu, connect(emu.ws_url + "/ws") as ws:
        assert await closed_with(ws) == 1000


async def test_listing_and_delisting_send_contract_info_and_change_exchange_info():
    async with (
        emulator(speed=60.0) as emu,
        connect(stream_url(emu, "!contractInfo", "newusdt@kline_1m")) as ws,
    ):
        await emu.faults.list_symbol("NEWUSDT")
        listed = await until(ws, lambda m: m["stream"] == "!contractInfo")
        kline = await until(ws, lambda m: m["stream"] == "newusdt@kline_1m")
        _, _, info = await get(emu, "/fapi/v1/exchangeInfo")
        await emu.faults.delist_symbol("NEWUSDT")
        delisted = await until(ws, lambda m: m["stream"] == "!contractInfo")
        _, _, after = await get(emu, "/fapi/v1/exchangeInfo")
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                while True:
                    if json.loads(await ws.recv())["stream"] == "newusdt@kline_1m":
                        break
    assert shape(listed["data"]) == shape(RECORDED_CONTRACT_INFO)
    assert listed["data"]["s"] == "NEWUSDT" and listed["data"]["cs"] == "TRADING"
    assert kline["data"]["k"]["t"] >= listed["data"]["ot"]
    assert "NEWUSDT" in select_symbols(info) and "NEWUSDT" not in select_symbols(after)
    assert delisted["data"]["cs"] == "SETTLING"


# --- faults ---------------------------------------------------------------------------------------------------


async def test_dropped_connections_are_cut_without_a_close_frame():
    async with (
        emulator() as emu,
        connect(stream_url(emu, "aaausdt@kline_1m")) as a,
        connect(stream_url(emu, "bbbusdt@kline_1m")) as b,
    ):
        await frames(a, 1)
        await frames(b, 1)
        assert await emu.faults.drop_connections(fraction=0.5) == 1
        assert await emu.faults.drop_connections() == 1
        codes = [await closed_with(a), await closed_with(b)]
    assert codes == [1006, 1006]


async def test_a_stalled_connection_stays_open_and_receives_nothing():
    async with (
        emulator(speed=60.0, ping_interval=0.1) as emu,
        connect(stream_url(emu, "aaausdt@kline_1m")) as ws,
    ):
        await frames(ws, 1)
        assert emu.faults.stall_connection() is not None
        await asyncio.sleep(0.3)
        while True:  # what was already on the wire
            try:
                async with asyncio.timeout(0.2):
                    await ws.recv()
            except TimeoutError:
                break
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await ws.recv()
        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await ws.recv()
        assert ws.state.name == "OPEN"


async def test_malformed_duplicate_and_late_frames_reach_a_plain_client():
    async with emulator(speed=60.0) as emu, connect(stream_url(emu, "aaausdt@kline_1m")) as ws:
        await frames(ws, 1)
        assert emu.faults.malformed_frames(4) == 1
        bad = []
        async with asyncio.timeout(5):
            while len(bad) < 4:
                raw = await ws.recv()
                frame = parse_frame(raw.encode() if isinstance(raw, str) else raw, {"AAAUSDT"})
                if frame.kind == "invalid":
                    bad.append(frame.reason)
        emu.faults.duplicate_frames(1)
        first = await until(ws, is_final)
        second = json.loads(await ws.recv())
        emu.faults.late_finals(delay_ms=20_000, minutes=1)
        late = await until(ws, is_final)
        while late["data"]["k"]["t"] <= first["data"]["k"]["t"]:
            late = await until(ws, is_final)
    assert {"bad_json", "high_below_low"} <= set(bad)
    assert second == first
    assert late["data"]["E"] - (late["data"]["k"]["T"] + 1) >= 22_000


async def test_missing_minutes_have_no_kline_anywhere():
    async with emulator(speed=60.0) as emu, connect(stream_url(emu, "aaausdt@kline_1m")) as ws:
        start = emu.market.now_ms() // MINUTE * MINUTE + MINUTE
        assert emu.faults.missing_minutes("AAAUSDT", start, 2) == [start, start + MINUTE]
        finals = []
        async with asyncio.timeout(10):
            while not finals or finals[-1] < start + 2 * MINUTE:
                message = await until(ws, is_final)
                finals.append(message["data"]["k"]["t"])
        _, _, rows = await get(
            emu, "/fapi/v1/klines", symbol="AAAUSDT", interval="1m", startTime=start - MINUTE, limit=4
        )
        truth = [emu.market.candle("AAAUSDT", start + i * MINUTE) for i in range(-1, 3)]
    assert start not in finals and start + MINUTE not in finals and start + 2 * MINUTE in finals
    assert [row[0] for row in rows][:2] == [start - MINUTE, start + 2 * MINUTE]
    assert [t is None for t in truth] == [False, True, True, False]


# --- market -------------------------------------------------------------------------------------------------


async def test_the_same_seed_gives_the_same_market_and_another_seed_another():
    async def klines(seed: int):
        async with emulator(seed=seed, speed=1.0) as emu:
            _, _, rows = await get(
                emu, "/fapi/v1/klines", symbol="BBBUSDT", interval="1m", endTime=T0 - MINUTE, limit=200
            )
        return rows

    one, again, other = await klines(7), await klines(7), await klines(8)
    assert one == again and len(one) == 200
    assert [row[4] for row in one] != [row[4] for row in other]


async def test_a_scenario_sets_price_moves_and_quote_volumes_for_a_symbol():
    scenario = {
        "name": "pump",
        "symbol": "AAAUSDT",
        "start_minute": -30,
        "steps": [
            {"minutes": 5, "change_pct": 1.0, "quote_volume": 400000},
            {"minutes": 4, "close": 50.0, "quote_volume": 1000, "trades": 7, "taker_buy_ratio": 0.75},
        ],
    }
    async with emulator(scenarios=[scenario], speed=1.0) as emu:
        start = T0 - 30 * MINUTE
        candles = [emu.market.candle("AAAUSDT", start + i * MINUTE) for i in range(-1, 9)]
        added = emu.add_scenario(
            {
                "name": "late",
                "symbol": "BBBUSDT",
                "start_minute": -5,
                "steps": [{"minutes": 10, "change_pct": -2}],
            }
        )
        with pytest.raises(ScenarioError, match="unknown symbol 'ZZZUSDT'"):
            emu.add_scenario({"symbol": "ZZZUSDT", "start_minute": 1, "steps": [{"minutes": 1}]})
        with pytest.raises(ScenarioError, match=r"unknown key.*chnage_pct"):
            emu.add_scenario(
                {"symbol": "AAAUSDT", "start_minute": 1, "steps": [{"minutes": 1, "chnage_pct": 1}]}
            )
        await asyncio.sleep(0.1)
        later = [emu.market.candle("BBBUSDT", added + i * MINUTE) for i in range(-1, 1)]
    previous = float(candles[0]["close"])
    for candle in candles[1:6]:
        close = float(candle["close"])
        assert close == pytest.approx(previous * 1.01, rel=1e-3)
        assert candle["quote_volume"] == "400000.00"
        previous = close
    assert candles[9]["close"] == "50.0000" and all(c["quote_volume"] == "1000.00" for c in candles[6:])
    assert candles[9]["trades"] == 7 and candles[9]["taker_buy_quote_volume"] == "750.00"
    assert added == (emu.market.t0_ms // MINUTE + 1) * MINUTE  # run-time scenarios shape only future minutes
    assert later[1] is None or float(later[1]["close"]) == pytest.approx(
        float(later[0]["close"]) * 0.98, rel=1e-3
    )


# --- control API and command ------------------------------------------------------------------------------------


async def test_the_control_api_drives_faults_scenarios_and_reads_the_truth():
    async with emulator(speed=60.0) as emu, aiohttp.ClientSession() as session:
        base = emu.rest_url + "/_emulator"
        async with session.post(base + "/faults/rate_limit", json={"times": 1}) as response:
            assert response.status == 200
        status, _, _ = await get(emu, "/fapi/v1/time")
        async with session.post(base + "/faults/list_symbol", json={"symbol": "NEWUSDT"}) as response:
            assert response.status == 200
        async with session.post(base + "/faults/drop", data=b"{}") as response:
            assert response.status == 200 and (await response.json())["result"] == 0
        async with session.post(base + "/faults/explode", json={}) as response:
            assert response.status == 404 and "unknown fault" in (await response.json())["error"]
        async with session.post(base + "/faults/rate_limit", json={"never": 1}) as response:
            assert response.status == 400
        spec = {"symbol": "AAAUSDT", "start_minute": 5, "steps": [{"minutes": 2, "quote_volume": 5}]}
        async with session.post(base + "/scenarios", json=spec) as response:
            assert (await response.json())["applied_from_ms"] == [T0 // MINUTE * MINUTE + 5 * MINUTE]
        async with session.post(base + "/scenarios", json={"symbol": "AAAUSDT"}) as response:
            assert response.status == 400 and "steps" in (await response.json())["error"]
        minute = T0 // MINUTE * MINUTE - 10 * MINUTE
        async with session.get(
            base + "/truth", params={"symbol": "AAAUSDT", "open_time": str(minute)}
        ) as response:
            truth = await response.json()
        async with session.get(
            base + "/truth",
            params={"symbol": "AAAUSDT", "start": str(minute), "end": str(minute + 2 * MINUTE)},
        ) as response:
            many = await response.json()
        async with session.get(base + "/rest_log") as response:
            log = await response.json()
        async with session.get(base + "/status") as response:
            info = await response.json()
    assert status == 429
    candle = emu.market.candle("AAAUSDT", minute)
    assert {name: truth[name] for name in candle} == candle and many[0] == truth and len(many) == 3
    assert truth["funding_interval_hours"] == 8 and "liq_long_quote" in truth  # docs/contract.md §7b fields
    assert log["last_refused_ms"] == log["request_times_ms"][0]
    assert "NEWUSDT" in info["symbols"] and info["speed"] == 60.0


def test_run_emulator_serves_as_a_process_without_any_server(tmp_path):
    url_file = tmp_path / "emulator.env"
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        "NATS_URL": "nats://127.0.0.1:1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "run_emulator",
            "--port",
            "0",
            "--speed",
            "60",
            "--symbols",
            "3",
            "--url-file",
            str(url_file),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("emulator listening rest=http://127.0.0.1:"), process.stderr.read()
        values = dict(item.split("=", 1) for item in url_file.read_text().split())
        rest = values["BINANCE_REST_URL"]
        with urlopen(rest + "/fapi/v1/exchangeInfo") as response:
            info = json.loads(response.read())
        assert values["BINANCE_WS_URL"] == rest.replace("http", "ws") + "/market"
        assert len(select_symbols(info)) == 3 and "币安人生USDT" in select_symbols(info)
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0


def test_run_emulator_names_a_bad_scenario_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"symbol": "BTCUSDT", "start_minute": 1, "steps": [{"minutes": 0}]}))
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "run_emulator", "--port", "0", "--scenario", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "minutes must be ≥ 1" in result.stderr


def urlopen(url: str):
    from urllib.request import urlopen as open_url

    return open_url(url, timeout=10)


async def test_a_scenario_can_schedule_faults_at_a_venue_minute():
    scenario = {
        "symbol": "AAAUSDT",
        "start_minute": 0,
        "steps": [{"minutes": 1}],
        "faults": [{"at_minute": 1, "fault": "rate_limit", "times": 1}],
    }
    async with emulator(speed=60.0, scenarios=[scenario]) as emu:
        before, _, _ = await get(emu, "/fapi/v1/time")
        async with asyncio.timeout(10):
            while emu.market.now_ms() < T0 + MINUTE:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        after, _, _ = await get(emu, "/fapi/v1/time")
        again, _, _ = await get(emu, "/fapi/v1/time")
    assert (before, after, again) == (200, 429, 200)


def test_scenario_files_may_be_yaml_or_json_lists(tmp_path):
    from collector.emulator import load_file

    yaml_file = tmp_path / "dump.yaml"
    yaml_file.write_text(
        "scenarios:\n  - symbol: AAAUSDT\n    start_minute: 3\n    steps:\n      - {minutes: 2, change_pct: -1}\n"
    )
    json_file = tmp_path / "both.json"
    json_file.write_text(json.dumps([{"symbol": "AAAUSDT", "start_ms": T0, "steps": [{"minutes": 1}]}] * 2))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert load_file(yaml_file)[0]["steps"][0]["change_pct"] == -1
    assert len(load_file(json_file)) == 2
    with pytest.raises(ScenarioError, match=r"broken\.json: not valid json"):
        load_file(broken)


async def test_a_stream_in_the_raw_path_is_subscribed_and_a_ban_answers_418_until_its_time():
    async with emulator(speed=60.0) as emu, connect(emu.ws_url + "/ws/bbbusdt@kline_1m") as ws:
        event = json.loads(await ws.recv())
        until_ms = emu.faults.ban(minutes=1)
        status, headers, body = await get(emu, "/fapi/v1/time")
        async with asyncio.timeout(10):
            while emu.market.now_ms() < until_ms:
                await asyncio.sleep(0.05)
        after, _, _ = await get(emu, "/fapi/v1/time")
    assert event["e"] == "kline" and event["s"] == "BBBUSDT"
    assert status == 418 and f"banned until {until_ms}" in body["msg"] and int(headers["Retry-After"]) >= 1
    assert after == 200
