"""The emulator's HTTP + WebSocket server (aiohttp, one port): Binance's REST and market streams, faults,
and a small control API for tests in other processes.

Efficiency matters (600 symbols × 4 frames/s to many clients on one core): each tick serializes a symbol's
frame once, already WebSocket-framed, and every connection gets one `transport.write` of the frames of its
streams. aiohttp writes its own frames (pongs, close) synchronously too, so frames never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from collector.emulator.derivatives import (
    FORCE_ORDER_STREAM,
    MARK_STREAM,
    Derivatives,
    Liquidation,
)
from collector.emulator.market import MINUTE_MS, Market, SymbolState
from collector.emulator.scenarios import FAULT_NAMES, ScenarioError, as_list, compile_scenario

logger = logging.getLogger(__name__)

CONTRACT_STREAM = "!contractInfo"
MAX_STREAMS = 1024
MAX_INCOMING_PER_SECOND = 10
WRITE_BUFFER_LIMIT = 64 * 1024 * 1024  # a client this far behind is dropped, as Binance drops slow readers
FUNDING_INFO_LIMIT = 500  # /fapi/v1/fundingInfo: its own budget of 500 requests per 5 minutes
FUNDING_INFO_WINDOW_MS = 5 * MINUTE_MS


# Short names accepted by the control API.
FAULT_ALIASES = {"drop": "drop_connections", "stall": "stall_connection", "garbage": "malformed_frames"}


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """An unmasked, final server→client WebSocket frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + struct.pack("!H", n) + payload
    return bytes((0x80 | opcode, 127)) + struct.pack("!Q", n) + payload


_PING = ws_frame(b"", 0x9)


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(eq=False)
class Connection:
    """One client socket. `kind`: combined (/market/stream), raw (/market/ws) or legacy (silent)."""

    id: int
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    kind: str
    streams: list[str] = field(default_factory=list)
    symbols: set[str] = field(default_factory=set)
    contract: bool = False
    mark: bool = False  # subscribed to !markPrice@arr@1s
    liq: bool = False  # subscribed to !forceOrder@arr
    muted: set[str] = field(default_factory=set)  # streams gone silent on this connection (fault)
    opened: float = field(default_factory=time.monotonic)
    last_in: float = field(default_factory=time.monotonic)
    last_ping: float = field(default_factory=time.monotonic)
    incoming: deque = field(default_factory=deque)
    stalled: bool = False
    closing: bool = False
    sent_frames: int = 0

    def write(self, data: bytes, frames: int = 1) -> None:
        if self.stalled or self.closing or self.transport.is_closing():
            return
        self.transport.write(data)
        self.sent_frames += frames
        if self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            logger.warning("emulator: connection %s cannot keep up; dropping it", self.id)
            self.abort()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()


class RestLog:
    """What the REST side saw, in venue time: every request's arrival and the last refusal (429/418)."""

    def __init__(self, keep: int = 100_000):
        self._times: deque[int] = deque(maxlen=keep)
        self._last_refused = 0
        self.refused = 0

    def request(self, venue_ms: int) -> None:
        self._times.append(venue_ms)

    def refusal(self, venue_ms: int) -> None:
        self._last_refused = venue_ms
        self.refused += 1

    def request_times_ms(self) -> list[int]:
        return list(self._times)

    def last_refused_ms(self) -> int:
        return self._last_refused


class Faults:
    """Fault injection on command (see docs/emulator.md); scheduled ones come from scenarios."""

    def __init__(self, server: EmulatorServer):
        self._server = server
        self.pending_duplicates = 0
        self.forced_429 = 0
        self.banned_until_ms = 0
        self.late_final_ms = 0
        self.late_until_minute = -1
        self._rng = random.Random(server.market.seed)

    def malformed_frames(self, n: int = 1) -> int:
        """Every kline connection gets `n` bad frames now; returns how many connections got them."""
        return self._server.send_malformed(int(n))

    def duplicate_frames(self, n: int = 1) -> None:
        self.pending_duplicates += int(n)

    def late_finals(self, delay_ms: int = 10_000, minutes: int = 1) -> None:
        self.late_final_ms = int(delay_ms)
        self.late_until_minute = self._server.market.now_ms() // MINUTE_MS + int(minutes)

    async def drop_connections(self, fraction: float = 1.0) -> int:
        conns = [c for c in self._server.connections if c.kind != "legacy" and not c.closing]
        count = round(len(conns) * max(0.0, min(1.0, float(fraction))))
        chosen = conns if count >= len(conns) else self._rng.sample(conns, count)
        for conn in chosen:
            conn.abort()
        await asyncio.sleep(0)
        return len(chosen)

    def stall_connection(self, stream: str | None = None) -> int | None:
        """One kline connection (or, with `stream`, one carrying that stream) stops receiving anything,
        without being closed; returns its id."""
        for conn in self._server.connections:
            carries = stream in conn.streams if stream else bool(conn.symbols)
            if carries and not conn.stalled and not conn.closing:
                conn.stalled = True
                return conn.id
        return None

    def silence_stream(self, stream: str) -> list[int]:
        """One stream (`<sym>@kline_1m`, `!markPrice@arr@1s`, …) goes quiet on every connection carrying it
        while the connection and its other streams stay alive; a new SUBSCRIBE of it (or a new connection)
        brings it back. Returns the connections affected."""
        hit = []
        for conn in self._server.connections:
            if stream in conn.streams and not conn.closing:
                conn.muted.add(stream)
                hit.append(conn.id)
        return hit

    def late_liquidation(
        self, symbol: str, side: str = "SELL", quote: float = 10_000.0, minutes_ago: int = 2
    ) -> dict:
        """Push now a liquidation whose trade time lies `minutes_ago` minutes back (its minute is already
        final): it counts in the oldest minute whose final has not gone out (docs/contract.md §7b)."""
        if side not in ("SELL", "BUY"):
            raise ValueError("side must be SELL or BUY")
        server = self._server
        state = server.market.states[symbol]
        now = server.market.now_ms()
        trade_time = (now // MINUTE_MS - int(minutes_ago)) * MINUTE_MS + 30_000
        price = server.market._close(state, trade_time // MINUTE_MS)
        qd = state.qty_decimals
        quantity = max(round(float(quote) / price, qd), 10.0**-qd)
        event = Liquidation(
            symbol, side, f"{quantity:.{qd}f}", f"{price:.{state.price_decimals}f}", trade_time
        )
        bucket = server.push_liquidations([event], now)
        return {"trade_time": trade_time, "counted_in": bucket.get(event)}

    def missing_minutes(self, symbol: str, start_ms: int, count: int = 1) -> list[int]:
        return self._server.market.skip_minutes(symbol, int(start_ms), int(count))

    def rate_limit(self, times: int = 1) -> None:
        self.forced_429 += int(times)

    def ban(self, minutes: float = 2.0) -> int:
        self.banned_until_ms = self._server.market.now_ms() + int(minutes * MINUTE_MS)
        return self.banned_until_ms

    async def list_symbol(self, symbol: str) -> None:
        state = self._server.market.list_symbol(symbol)
        self._server.contract_event(state)

    async def delist_symbol(self, symbol: str) -> None:
        state = self._server.market.delist_symbol(symbol)
        self._server.contract_event(state)

    async def close_all(self) -> None:
        for conn in list(self._server.connections):
            await self._server.close(conn, 1000, "connection lifetime exceeded")


class EmulatorServer:
    """`async with EmulatorServer(...) as emu:` runs the venue on `emu.rest_url` / `emu.ws_url`."""

    def __init__(
        self,
        symbols: list[str] | int = 10,
        speed: float = 60.0,
        seed: int = 1,
        t0_ms: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        scenarios: list[dict] | None = None,
        *,
        history_minutes: int = 3000,
        update_interval: float = 0.25,
        final_delay_ms: int = 2000,
        weight_limit: int = 2400,
        ban_after_429: int = 5,
        ping_interval: float = 180.0,
        silent_timeout: float = 600.0,
        max_connection_age: float = 24 * 3600.0,
        control: bool = True,
        mark_min_interval: float = 0.25,
    ):
        self.market = Market(symbols, seed=seed, speed=speed, t0_ms=t0_ms, history_minutes=history_minutes)
        self.derivatives = Derivatives(self.market)
        # markPrice goes out every venue second, but at most every `mark_min_interval` wall seconds
        self.mark_interval = max(1.0 / speed, mark_min_interval)
        self._funding_info_log: deque[int] = deque()
        self.host, self.port = host, port
        self.update_interval = update_interval
        self.final_delay_ms = final_delay_ms
        self.weight_limit = weight_limit
        self.ban_after_429 = ban_after_429
        self.ping_interval = ping_interval
        self.silent_timeout = silent_timeout
        self.max_connection_age = max_connection_age
        self.control = control
        self.faults = Faults(self)
        self.rest_log = RestLog()
        self.connections: set[Connection] = set()
        self.scheduled: list = []
        self.frames_sent = 0
        self._ids = 0
        self._weight_minute = -1
        self._weight_used = 0
        self._after_429 = 0
        self._limited_minute = -1
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task | None = None
        self._next_final = (self.market.t0_ms - final_delay_ms) // MINUTE_MS
        for spec in scenarios or []:
            self.add_scenario(spec)

    # --- lifecycle ----------------------------------------------------------------------------------------
    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/market"

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        # 1024 stream names fit in the URL of a combined stream, as on Binance.
        app = web.Application(handler_args={"max_line_size": 1 << 17, "max_field_size": 1 << 17})
        fapi = [
            ("/fapi/v1/ping", self._ping, lambda q: 1),
            ("/fapi/v1/time", self._time, lambda q: 1),
            ("/fapi/v1/exchangeInfo", self._exchange_info, lambda q: 1),
            ("/fapi/v1/klines", self._klines, _klines_weight),
            ("/fapi/v1/openInterest", self._open_interest, lambda q: 1),
            ("/fapi/v1/premiumIndex", self._premium_index, lambda q: 1 if q.get("symbol") else 10),
            ("/fapi/v1/fundingInfo", self._funding_info, lambda q: 0),
        ]
        for path, handler, weight in fapi:
            app.router.add_get(path, self._rest(handler, weight))
        for prefix, kind in (("/market", None), ("", "legacy")):
            app.router.add_get(f"{prefix}/stream", self._ws_handler("combined", kind))
            app.router.add_get(f"{prefix}/ws", self._ws_handler("raw", kind))
            app.router.add_get(prefix + "/ws/{streams:.+}", self._ws_handler("raw", kind))
        if self.control:
            app.router.add_get("/_emulator/status", self._control_status)
            app.router.add_get("/_emulator/truth", self._control_truth)
            app.router.add_get("/_emulator/rest_log", self._control_rest_log)
            app.router.add_post("/_emulator/faults/{name}", self._control_fault)
            app.router.add_post("/_emulator/scenarios", self._control_scenarios)
        self.market.prepare()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick_loop(), name="emulator ticker")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for conn in list(self.connections):
            conn.abort()
        if self._runner is not None:
            await self._runner.cleanup()

    def add_scenario(self, spec: dict) -> int:
        """Apply a scenario (dict, see docs/emulator.md); returns the first minute (ms) it shapes."""
        compiled = compile_scenario(spec, self.market.t0_ms, self.market.states)
        self.derivatives._liq_cache.clear()  # liquidations of minutes not reached yet may change
        self.scheduled.extend(compiled.faults)
        self.scheduled.sort(key=lambda fault: fault.at_ms)
        # While serving, the open minute and everything before it may have been seen: never reshape them.
        not_before = self.market.now_ms() // MINUTE_MS + 1 if self._runner is not None else None
        return self.market.add_scenario(compiled, not_before)

    # --- REST ---------------------------------------------------------------------------------------------
    def _rest(self, handler, weight_of):
        async def wrapped(request: web.Request) -> web.Response:
            now = self.market.now_ms()
            self.rest_log.request(now)
            minute = now // MINUTE_MS
            if minute != self._weight_minute:
                self._weight_minute, self._weight_used, self._after_429 = minute, 0, 0
            try:
                weight = weight_of(request.query)
            except ValueError:
                weight = 1
            self._weight_used += weight
            headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight_used)}
            if now < self.faults.banned_until_ms:
                return self._refuse(418, now, headers)
            if self._limited_minute == minute:
                self._after_429 += 1
                if self._after_429 > self.ban_after_429:
                    self.faults.ban(2)
                    return self._refuse(418, now, headers)
            if self.faults.forced_429 > 0 or self._weight_used > self.weight_limit:
                self.faults.forced_429 = max(0, self.faults.forced_429 - 1)
                self._limited_minute = minute
                return self._refuse(429, now, headers)
            status, body = handler(request, now)
            return web.Response(
                status=status, body=_json(body), content_type="application/json", headers=headers
            )

        return wrapped

    def _refuse(self, status: int, now: int, headers: dict) -> web.Response:
        self.rest_log.refusal(now)
        ip = "127.0.0.1"
        if status == 418:
            until = self.faults.banned_until_ms
            msg = (
                f"Way too many requests; IP({ip}) banned until {until}. "
                "Please use the websocket for live updates to avoid bans."
            )
            retry = max(1, (until - now) // 1000)
        else:
            msg = (
                f"Too many requests; current limit of IP({ip}) is {self.weight_limit} requests per minute. "
                "Please use the websocket for live updates to avoid polling the API."
            )
            retry = max(1, ((now // MINUTE_MS + 1) * MINUTE_MS - now) // 1000)
        return web.Response(
            status=status,
            body=_json({"code": -1003, "msg": msg}),
            content_type="application/json",
            headers={**headers, "Retry-After": str(retry)},
        )

    def _ping(self, request, now):
        return 200, {}

    def _time(self, request, now):
        return 200, {"serverTime": now}

    def _exchange_info(self, request, now):
        symbols = []
        for state in self.market.states.values():
            base = state.symbol.split("_")[0].removesuffix(state.quote)
            symbols.append(
                {
                    "symbol": state.symbol,
                    "pair": state.symbol.split("_")[0],
                    "contractType": state.contract_type,
                    "deliveryDate": 1758787200000
                    if state.contract_type == "CURRENT_QUARTER"
                    else 4133404800000,
                    "onboardDate": state.onboard_ms,
                    "status": state.status,
                    "maintMarginPercent": "2.5000",
                    "requiredMarginPercent": "5.0000",
                    "baseAsset": base,
                    "quoteAsset": state.quote,
                    "marginAsset": state.quote,
                    "pricePrecision": state.price_decimals,
                    "quantityPrecision": state.qty_decimals,
                    "baseAssetPrecision": 8,
                    "quotePrecision": 8,
                    "underlyingType": "COIN",
                    "underlyingSubType": [],
                    "triggerProtect": "0.0500",
                    "liquidationFee": "0.012500",
                    "marketTakeBound": "0.05",
                    "maxMoveOrderLimit": 10000,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "tickSize": f"{10.0**-state.price_decimals:.{state.price_decimals}f}",
                            "minPrice": f"{10.0**-state.price_decimals:.{state.price_decimals}f}",
                            "maxPrice": "1000000",
                        }
                    ],
                    "orderTypes": [
                        "LIMIT",
                        "MARKET",
                        "STOP",
                        "STOP_MARKET",
                        "TAKE_PROFIT",
                        "TAKE_PROFIT_MARKET",
                    ],
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
                }
            )
        return 200, {
            "timezone": "UTC",
            "serverTime": now,
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": symbols,
        }

    def _klines(self, request, now):
        query = request.query
        symbol = query.get("symbol")
        if not symbol:
            return 400, {
                "code": -1102,
                "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            }
        if symbol not in self.market.states:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if query.get("interval") != "1m":
            if not query.get("interval"):
                return 400, {
                    "code": -1102,
                    "msg": "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
                }
            return 400, {"code": -1120, "msg": "Invalid interval."}
        try:
            limit = int(query.get("limit", "500"))
            start = int(query["startTime"]) if "startTime" in query else None
            end = int(query["endTime"]) if "endTime" in query else None
        except ValueError as error:
            return 400, {"code": -1100, "msg": f"Illegal characters found in a parameter. ({error})"}
        if not 1 <= limit <= 1500:
            return 400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
        if start is not None and end is not None and start > end:
            return 400, {"code": -1023, "msg": "Start time is greater than end time."}
        return 200, self.market.klines(symbol, start, end, limit)

    def _symbol_state(self, query) -> tuple[SymbolState | None, tuple[int, dict] | None]:
        symbol = query.get("symbol")
        if not symbol:
            return None, (
                400,
                {
                    "code": -1102,
                    "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                },
            )
        state = self.market.states.get(symbol)
        if state is None or state.status != "TRADING":
            return None, (400, {"code": -1121, "msg": "Invalid symbol."})
        return state, None

    def _open_interest(self, request, now):
        state, error = self._symbol_state(request.query)
        if error:
            return error
        self.derivatives.record_open_interest(state.symbol, now)
        return 200, {
            "openInterest": self.derivatives.open_interest(state, now // MINUTE_MS),
            "symbol": state.symbol,
            "time": now,
        }

    def _premium_index(self, request, now):
        if not request.query.get("symbol"):
            return 200, [
                self.derivatives.premium_index(state, now)
                for state in self.market.states.values()
                if self.derivatives.marked(state, now // MINUTE_MS)
            ]
        state, error = self._symbol_state(request.query)
        if error:
            return error
        return 200, self.derivatives.premium_index(state, now)

    def _funding_info(self, request, now):
        log = self._funding_info_log
        while log and log[0] <= now - FUNDING_INFO_WINDOW_MS:
            log.popleft()
        if len(log) >= FUNDING_INFO_LIMIT:
            self.rest_log.refusal(now)
            return 429, {
                "code": -1003,
                "msg": "Too many requests; fundingInfo is limited to 500 requests per 5 minutes.",
            }
        log.append(now)
        return 200, self.derivatives.funding_info()

    # --- WebSocket ----------------------------------------------------------------------------------------
    def _ws_handler(self, kind: str, legacy: str | None):
        async def handler(request: web.Request) -> web.StreamResponse:
            ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 20)
            await ws.prepare(request)
            self._ids += 1
            conn = Connection(self._ids, ws, request.transport, legacy or kind)
            self.connections.add(conn)
            try:
                initial = []
                if "streams" in request.match_info:
                    initial = request.match_info["streams"].split("/")
                elif kind == "combined" and request.query.get("streams"):
                    initial = request.query["streams"].split("/")
                if initial and not self._subscribe(conn, [s for s in initial if s]):
                    await self.close(conn, 1008, "Too many streams")
                    return ws
                await self._read(conn)
            finally:
                self.connections.discard(conn)
                conn.closing = True
            return ws

        return handler

    async def _read(self, conn: Connection) -> None:
        ws = conn.ws
        while True:
            try:
                msg = await ws.receive()
            except Exception:
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            now = time.monotonic()
            conn.last_in = now
            conn.incoming.append(now)
            while conn.incoming and now - conn.incoming[0] > 1.0:
                conn.incoming.popleft()
            if len(conn.incoming) > MAX_INCOMING_PER_SECOND:
                await self.close(conn, 1008, "Too many requests")
                return
            if msg.type == WSMsgType.PING:
                if not conn.stalled:
                    conn.write(ws_frame(msg.data, 0xA))
            elif msg.type == WSMsgType.TEXT:
                if not await self._request(conn, msg.data):
                    return
            elif msg.type == WSMsgType.BINARY:
                self._reply(conn, {"error": {"code": 3, "msg": "Invalid JSON: binary frame"}, "id": None})

    def _reply(self, conn: Connection, body: dict) -> None:
        conn.write(ws_frame(_json(body)))

    async def _request(self, conn: Connection, text: str) -> bool:
        """One SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS; False when the connection was closed for it."""
        try:
            request = json.loads(text)
        except ValueError as error:
            self._reply(conn, {"error": {"code": 3, "msg": f"Invalid JSON: {error}"}, "id": None})
            return True
        if not isinstance(request, dict):
            self._reply(
                conn, {"error": {"code": 2, "msg": "Invalid request: request must be an object"}, "id": None}
            )
            return True
        rid = request.get("id")
        method, params = request.get("method"), request.get("params", [])
        if not (
            rid is None
            or isinstance(rid, str)
            or (isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0)
        ):
            self._reply(
                conn,
                {
                    "error": {"code": 1, "msg": "Invalid value type: expected u64 or string for 'id'"},
                    "id": None,
                },
            )
            return True
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"):
            self._reply(
                conn, {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": rid}
            )
            return True
        if method != "LIST_SUBSCRIPTIONS" and (
            not isinstance(params, list) or not all(isinstance(p, str) and p for p in params)
        ):
            self._reply(
                conn,
                {
                    "error": {
                        "code": 1,
                        "msg": "Invalid value type: 'params' must be a list of stream names",
                    },
                    "id": rid,
                },
            )
            return True
        if method == "SUBSCRIBE":
            if not self._subscribe(conn, params):
                await self.close(conn, 1008, "Too many streams")
                return False
            conn.muted -= set(params)  # a silent stream subscribed again comes back
            self._reply(conn, {"result": None, "id": rid})
        elif method == "UNSUBSCRIBE":
            gone = set(params)
            conn.streams = [s for s in conn.streams if s not in gone]
            self._index(conn)
            self._reply(conn, {"result": None, "id": rid})
        else:
            self._reply(conn, {"result": list(conn.streams), "id": rid})
        return True

    def _subscribe(self, conn: Connection, streams: list[str]) -> bool:
        known = set(conn.streams)
        for stream in streams:
            if stream not in known:
                conn.streams.append(stream)
                known.add(stream)
        if len(conn.streams) > MAX_STREAMS:
            return False
        self._index(conn)
        return True

    def _index(self, conn: Connection) -> None:
        by_stream = self.market.by_stream
        conn.symbols = {by_stream[s] for s in conn.streams if s in by_stream}
        conn.contract = CONTRACT_STREAM in conn.streams
        conn.mark = MARK_STREAM in conn.streams
        conn.liq = FORCE_ORDER_STREAM in conn.streams

    async def close(self, conn: Connection, code: int, reason: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()), 2.0)
        except Exception:
            conn.transport.abort()

    # --- the market on the wire ---------------------------------------------------------------------------
    def _kline_payload(
        self, state: SymbolState, minute: int, values: tuple, event_ms: int, final: bool
    ) -> bytes:
        o, h, low, c, v, q, n, tv, tq = values
        name = state.json_name
        open_time = minute * MINUTE_MS
        first_trade = minute * 100_000 % 10**12
        return (
            f'{{"e":"kline","E":{event_ms},"s":{name},"k":{{"t":{open_time},"T":{open_time + MINUTE_MS - 1},'
            f'"s":{name},"i":"1m","f":{first_trade},"L":{first_trade + max(n - 1, 0)},"o":"{o}","c":"{c}",'
            f'"h":"{h}","l":"{low}","v":"{v}","n":{n},"x":{"true" if final else "false"},"q":"{q}",'
            f'"V":"{tv}","Q":"{tq}","B":"0"}}}}'
        ).encode()

    def _broadcast(self, payloads: dict[str, bytes], repeat: int = 1) -> None:
        """Send each symbol's payload to the connections subscribed to it: framed once per kind."""
        if not payloads:
            return
        framed: dict[tuple[str, str], bytes] = {}
        states = self.market.states
        for conn in self.connections:
            if conn.kind == "legacy" or conn.stalled or conn.closing or not conn.symbols:
                continue
            parts = []
            muted = conn.muted
            for symbol in conn.symbols:
                payload = payloads.get(symbol)
                if payload is None or (muted and states[symbol].stream in muted):
                    continue
                key = (symbol, conn.kind)
                frame = framed.get(key)
                if frame is None:
                    if conn.kind == "combined":
                        body = b'{"stream":"' + states[symbol].stream.encode() + b'","data":' + payload + b"}"
                    else:
                        body = payload
                    frame = framed[key] = ws_frame(body)
                parts.append(frame)
            if parts:
                conn.write(b"".join(parts * repeat), len(parts) * repeat)
                self.frames_sent += len(parts) * repeat

    def contract_event(self, state: SymbolState) -> None:
        """A listing or delisting: `!contractInfo` to its subscribers; streams of a new symbol come alive."""
        for conn in self.connections:
            self._index(conn)
        payload = _json(
            {
                "e": "contractInfo",
                "E": self.market.now_ms(),
                "s": state.symbol,
                "ps": state.symbol.split("_")[0],
                "ct": state.contract_type,
                "dt": 4133404800000,
                "ot": state.onboard_ms,
                "cs": state.status,
                "bks": [],
            }
        )
        for conn in self.connections:
            if conn.contract and conn.kind != "legacy":
                body = (
                    payload if conn.kind == "raw" else b'{"stream":"!contractInfo","data":' + payload + b"}"
                )
                conn.write(ws_frame(body))

    def _subscribed(self) -> set[str]:
        wanted: set[str] = set()
        for conn in self.connections:
            if conn.kind != "legacy" and not conn.closing:
                wanted |= conn.symbols
        return wanted

    def _send_updates(self, now: int) -> None:
        minute = now // MINUTE_MS
        market = self.market
        payloads = {}
        for symbol in self._subscribed():
            state = market.states[symbol]
            if market.exists(state, minute):
                values = market.partial_strings(state, minute, now)
                payloads[symbol] = self._kline_payload(state, minute, values, now, False)
        self._broadcast(payloads)

    def _send_finals(self, minute: int, now: int) -> None:
        market = self.market
        payloads = {}
        for symbol in self._subscribed():
            state = market.states[symbol]
            values = market.final_strings(symbol, minute)
            if values is not None:
                payloads[symbol] = self._kline_payload(state, minute, values, now, True)
        repeat = 2 if self.faults.pending_duplicates > 0 and payloads else 1
        if repeat == 2:
            self.faults.pending_duplicates -= 1
        self._broadcast(payloads, repeat)

    def _derivative_conns(self, flag: str, stream: str) -> list[Connection]:
        return [
            conn
            for conn in self.connections
            if getattr(conn, flag)
            and conn.kind != "legacy"
            and not conn.stalled
            and not conn.closing
            and stream not in conn.muted
        ]

    def _send_derivative(self, conns: list[Connection], stream: str, payload: bytes) -> int:
        """One derivatives payload to its subscribers; returns how many connections it was written to."""
        framed: dict[str, bytes] = {}
        written = 0
        for conn in conns:
            frame = framed.get(conn.kind)
            if frame is None:
                body = payload if conn.kind == "raw" else b'{"stream":"' + stream.encode() + b'","data":'
                if conn.kind != "raw":
                    body += payload + b"}"
                frame = framed[conn.kind] = ws_frame(body)
            conn.write(frame)
            if not conn.closing:
                written += 1
        self.frames_sent += written
        return written

    def send_mark_prices(self, now: int) -> None:
        """`!markPrice@arr@1s`: every listed symbol's mark, index and funding in one array frame."""
        conns = self._derivative_conns("mark", MARK_STREAM)
        if conns and self._send_derivative(conns, MARK_STREAM, self.derivatives.mark_payload(now)):
            self.derivatives.record_mark(now)

    def push_liquidations(self, events: list[Liquidation], now: int) -> dict[Liquidation, int]:
        """`!forceOrder@arr` frames for `events`; each one written is counted in the truth (its bucket)."""
        buckets: dict[Liquidation, int] = {}
        conns = self._derivative_conns("liq", FORCE_ORDER_STREAM)
        if not conns:
            return buckets
        for event in events:
            payload = self.derivatives.force_order_payload(event, max(now, event.trade_time))
            if self._send_derivative(conns, FORCE_ORDER_STREAM, payload):
                buckets[event] = self.derivatives.record_liquidation(event, self._next_final)
        return buckets

    def send_malformed(self, n: int) -> int:
        samples = [
            b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,',
            b"not json at all",
            b'{"stream":"x@kline_1m","data":{"e":"kline","E":1,"s":"X","k":{"t":"soon"}}}',
        ]
        reached = 0
        derivative_samples = [
            b'{"stream":"!markPrice@arr@1s","data":[{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"NaN",'
            b'"i":"1","r":"0","T":1}]}',
            b'{"stream":"!forceOrder@arr","data":{"e":"forceOrder","E":1,"o":{"s":"BTCUSDT","S":"SIDEWAYS"}}}',
            b'{"stream":"!markPrice@arr@1s","data":[{"e":"markPriceUpdate","E":"soon"',
        ]
        for conn in self.connections:
            if conn.kind != "legacy" and not conn.closing and (conn.mark or conn.liq):
                reached += 1
                bad = [derivative_samples[i % 3] for i in range(n)]
                conn.write(b"".join(ws_frame(b) for b in bad), len(bad))
        for conn in self.connections:
            if conn.kind == "legacy" or not conn.symbols or conn.closing:
                continue
            reached += 1
            bad = []
            for i in range(n):
                if i % 4 == 3 and conn.symbols:
                    symbol = next(iter(conn.symbols))
                    state = self.market.states[symbol]
                    minute = self.market.now_ms() // MINUTE_MS
                    broken = ("1", "2", "5", "1", "1", "1", 1, "1", "1")  # high below low
                    payload = self._kline_payload(state, minute, broken, self.market.now_ms(), True)
                    bad.append(b'{"stream":"' + state.stream.encode() + b'","data":' + payload + b"}")
                else:
                    bad.append(samples[i % 4 % 3])
            conn.write(b"".join(ws_frame(b) for b in bad), len(bad))
        return reached

    def _final_due_ms(self) -> int:
        delay = self.final_delay_ms
        if self._next_final <= self.faults.late_until_minute:
            delay += self.faults.late_final_ms
        return (self._next_final + 1) * MINUTE_MS + delay

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.closing:
                continue
            if now - conn.opened > self.max_connection_age:
                asyncio.get_running_loop().create_task(self.close(conn, 1000, "connection lifetime exceeded"))
                continue
            if now - conn.last_in > self.silent_timeout:
                asyncio.get_running_loop().create_task(self.close(conn, 1008, "pong timeout"))
                continue
            if now - conn.last_ping >= self.ping_interval:
                conn.last_ping = now
                if conn.kind != "legacy":
                    conn.write(_PING, 0)

    async def _run_scheduled(self, now: int) -> None:
        while self.scheduled and self.scheduled[0].at_ms <= now:
            fault = self.scheduled.pop(0)
            try:
                result = getattr(self.faults, fault.name)(**fault.arguments)
                if asyncio.iscoroutine(result):
                    await result
                logger.info("emulator: scheduled fault %s %s", fault.name, fault.arguments)
            except Exception as error:
                logger.error("emulator: scheduled fault %s failed: %s", fault.name, error)

    async def _tick_loop(self) -> None:
        loop_time = time.monotonic
        next_update = next_mark = loop_time()
        house_period = min(1.0, self.ping_interval / 4, self.silent_timeout / 4, self.max_connection_age / 4)
        next_house = loop_time() + house_period
        while True:
            try:
                now_wall = loop_time()
                now = self.market.now_ms()
                # liquidations and mark prices before finals: their minute's final must not overtake them
                due = self.derivatives.due_liquidations(now)
                if due:
                    self.push_liquidations(due, now)
                if now_wall >= next_mark:
                    self.send_mark_prices(now)
                    next_mark += self.mark_interval
                    if next_mark < now_wall:
                        next_mark = now_wall + self.mark_interval
                while now >= self._final_due_ms():
                    self._send_finals(self._next_final, now)
                    self._next_final += 1
                if now_wall >= next_update:
                    self._send_updates(now)
                    next_update += self.update_interval
                    if next_update < now_wall:
                        next_update = now_wall + self.update_interval
                if now_wall >= next_house:
                    next_house = now_wall + house_period
                    self._housekeeping()
                if self.scheduled:
                    await self._run_scheduled(now)
                wake = min(next_update, next_house, next_mark, self.market.wall_at(self._final_due_ms()))
                next_liquidation = self.derivatives.next_liquidation_ms(now)
                if next_liquidation is not None:
                    wake = min(wake, self.market.wall_at(next_liquidation))
                await asyncio.sleep(max(0.0, wake - loop_time()))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("emulator tick failed; continuing")
                await asyncio.sleep(self.update_interval)

    # --- control API --------------------------------------------------------------------------------------
    async def _control_status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "speed": self.market.speed,
                "seed": self.market.seed,
                "t0_ms": self.market.t0_ms,
                "now_ms": self.market.now_ms(),
                "symbols": self.market.tradable(),
                "connections": len(self.connections),
                "frames_sent": self.frames_sent,
                "rest_url": self.rest_url,
                "ws_url": self.ws_url,
            },
            dumps=lambda v: json.dumps(v, ensure_ascii=False),
        )

    async def _control_truth(self, request: web.Request) -> web.Response:
        query = request.query
        symbol = query.get("symbol", "")
        if symbol not in self.market.states:
            return web.json_response({"error": f"unknown symbol {symbol!r}"}, status=404)
        try:
            if "open_time" in query:
                candle = self.truth(symbol, int(query["open_time"]))
                if candle is None:
                    return web.json_response({"error": "no final candle for that minute"}, status=404)
                return web.json_response(candle)
            start, end = int(query["start"]), int(query["end"])
        except (KeyError, ValueError):
            return web.json_response({"error": "give open_time, or start and end (ms)"}, status=400)
        first = -(-start // MINUTE_MS)
        candles = [self.truth(symbol, m * MINUTE_MS) for m in range(first, end // MINUTE_MS + 1)]
        return web.json_response([c for c in candles if c is not None])

    def truth(self, symbol: str, open_time: int) -> dict | None:
        """The final candle of that minute with its docs/contract.md §7b fields for what was pushed, or None."""
        candle = self.market.candle(symbol, open_time)
        if candle is not None:
            candle.update(self.derivatives.truth(symbol, open_time))
        return candle

    async def _control_rest_log(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "request_times_ms": self.rest_log.request_times_ms(),
                "last_refused_ms": self.rest_log.last_refused_ms(),
            }
        )

    async def _control_fault(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        name = FAULT_ALIASES.get(name, name)
        if name not in FAULT_NAMES:
            return web.json_response(
                {"error": f"unknown fault {name!r}; one of {sorted(FAULT_NAMES)}"}, status=404
            )
        try:
            arguments = await request.json() if request.can_read_body else {}
            if not isinstance(arguments, dict):
                raise TypeError("the body must be a JSON object of the fault's arguments")
            result = getattr(self.faults, name)(**arguments)
            if asyncio.iscoroutine(result):
                result = await result
        except (TypeError, ValueError, KeyError) as error:
            return web.json_response({"error": f"{name}: {error}"}, status=400)
        return web.json_response({"ok": True, "result": result})

    async def _control_scenarios(self, request: web.Request) -> web.Response:
        try:
            specs = as_list(await request.json())
            applied = [self.add_scenario(spec) for spec in specs]
        except (ScenarioError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response({"ok": True, "applied_from_ms": applied})


def _klines_weight(query) -> int:
    limit = int(query.get("limit", "500"))
    if limit <= 100:
        return 1
    if limit <= 500:
        return 2
    if limit <= 1000:
        return 5
    return 10
