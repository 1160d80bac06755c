"""Binance USDⓈ-M market data, parsed and validated without Django (docs/contract.md §4).

Compiled msgspec decoders turn a combined-stream frame into one small struct; everything a frame can get
wrong (bad JSON, wrong types, high < low, times off the minute, an unknown symbol, NaN or negative numbers)
is reported as a reason string so the caller can count it, log it and drop the frame. Prices and volumes
stay the venue's decimal strings end to end, so no float rounding ever touches a candle.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Container
from typing import Annotated, Literal

import msgspec

from cryptomon.contract.times import MINUTE_MS

# How much older than venue time a REST row's close must be before the row is final (docs/contract.md §4).
REST_CLOSED_MARGIN_MS = 5_000

_INFINITIES = (math.inf, -math.inf)
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_UNSIGNED = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
MARK_PRICE_STREAM = "!markPrice@arr@1s"
FORCE_ORDER_STREAM = "!forceOrder@arr"
DERIVATIVE_STREAMS = (MARK_PRICE_STREAM, FORCE_ORDER_STREAM)


class KlineFields(msgspec.Struct, frozen=True):
    """`k` of a kline event (the fields a `Kline` is made of); field names are Binance's."""

    t: int
    T: int
    s: str
    i: str
    o: str
    c: str
    h: str
    l: str  # noqa: E741 - Binance's name
    v: str
    n: int
    x: bool
    q: str
    V: str
    Q: str
    f: int = 0
    L: int = 0
    B: str = "0"


class KlineEvent(msgspec.Struct, frozen=True, tag_field="e", tag="kline"):
    E: int
    s: str
    k: KlineFields


class ContractInfoEvent(msgspec.Struct, frozen=True, tag_field="e", tag="contractInfo"):
    """`!contractInfo`: a listing, delisting or status change; `cs` is the contract status."""

    E: int
    s: str
    cs: str = ""
    ct: str = ""
    ps: str = ""
    ot: int = 0
    dt: int = 0


_POSITIVE = r"^(?:[1-9][0-9]*(?:\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)$"
_SIGNED = r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?$"
Positive = Annotated[str, msgspec.Meta(pattern=_POSITIVE)]


class MarkPriceUpdate(msgspec.Struct, frozen=True):
    """One element of `!markPrice@arr@1s`: `p` mark, `i` index, `r` funding rate, `T` next funding time.

    600 of these arrive every second: msgspec validates them in C while decoding (mark and index positive
    decimals, the rate a signed decimal, times positive); fields we do not use (`e`, `P`) are skipped."""

    E: Annotated[int, msgspec.Meta(gt=0)]
    s: str
    p: Positive
    i: Positive
    r: Annotated[str, msgspec.Meta(pattern=_SIGNED)]
    T: Annotated[int, msgspec.Meta(gt=0)]


class LenientMarkPriceUpdate(msgspec.Struct, frozen=True):
    """The same without constraints: an array with one bad element is decoded again with this, and only
    that element is dropped."""

    E: int
    s: str
    p: str
    i: str
    r: str
    T: int


class ForceOrder(msgspec.Struct, frozen=True):
    """`o` of a forceOrder event: `S` side (SELL = a long liquidated), `z` filled quantity, `ap` average
    price, `T` trade time."""

    s: str
    S: str
    z: str
    ap: str
    T: int
    o: str = ""
    f: str = ""
    q: str = ""
    p: str = ""
    X: str = ""
    l: str = ""  # noqa: E741 - Binance's name


class ForceOrderEvent(msgspec.Struct, frozen=True, tag_field="e", tag="forceOrder"):
    E: int
    o: ForceOrder


class Envelope(msgspec.Struct, frozen=True):
    stream: str
    data: KlineEvent | ContractInfoEvent


class MarketWideEnvelope(msgspec.Struct, frozen=True):
    """A `!…` stream (`!markPrice@arr@1s`, `!forceOrder@arr`, `!contractInfo`): kept out of the kline
    envelope so the 2,400 kline frames a second decode exactly as fast as without them."""

    stream: str
    data: ContractInfoEvent | ForceOrderEvent | list[MarkPriceUpdate]


class LenientMarkEnvelope(msgspec.Struct, frozen=True):
    stream: str
    data: list[LenientMarkPriceUpdate]


class Reply(msgspec.Struct, frozen=True):
    """The answer to SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS."""

    id: int | str | None = None
    result: object = None


# A REST kline row: [open_time, o, h, l, c, v, close_time, q, n, V, Q, ignore]
RestRow = tuple[int, str, str, str, str, str, int, str, int, str, str, str]

_envelope_decoder = msgspec.json.Decoder(Envelope)
_market_wide_decoder = msgspec.json.Decoder(MarketWideEnvelope)
_lenient_mark_decoder = msgspec.json.Decoder(LenientMarkEnvelope)
_MARKET_WIDE = (b'{"stream":"!', '{"stream":"!')
_reply_decoder = msgspec.json.Decoder(Reply)
_rows_decoder = msgspec.json.Decoder(list[RestRow])
_any_decoder = msgspec.json.Decoder()


class Kline(msgspec.Struct):
    """One 1-minute kline (from the WebSocket, from REST, or a filled minute) on its way to NATS as a `candles.1m`
    message (docs/contract.md §5), numbers kept as the venue's decimal text."""

    symbol: str
    open_time: int
    close_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str
    trades: int
    taker_buy_volume: str
    taker_buy_quote_volume: str
    event_time: int
    source: Literal["ws", "rest", "filled"] = "ws"
    # docs/contract.md §7b, attached when the candle is handed to the publisher (None: unknown)
    mark_close: str | None = None
    index_close: str | None = None
    funding_rate: str | None = None
    funding_interval_hours: int | None = None
    next_funding_time: int | None = None
    open_interest: str | None = None
    liq_long_quote: str | None = None
    liq_short_quote: str | None = None
    liq_count: int | None = None

    @classmethod
    def from_kline(cls, k: KlineFields, event_time: int) -> Kline:
        return cls(k.s, k.t, k.T, k.o, k.h, k.l, k.c, k.v, k.q, k.n, k.V, k.Q, event_time, "ws")

    @classmethod
    def from_row(cls, symbol: str, row: RestRow, event_time: int) -> Kline:
        t, o, h, low, c, v, close_time, q, n, taker_v, taker_q, _ = row
        return cls(symbol, t, close_time, o, h, low, c, v, q, n, taker_v, taker_q, event_time, "rest")

    @classmethod
    def filled(cls, symbol: str, open_time: int, previous_close: str, event_time: int) -> Kline:
        """A minute REST confirms has no kline while the symbol trades: flat at the previous close."""
        p = previous_close
        return cls(
            symbol,
            open_time,
            open_time + MINUTE_MS - 1,
            p,
            p,
            p,
            p,
            "0",
            "0",
            0,
            "0",
            "0",
            event_time,
            "filled",
        )

    def payload(self, live: bool = False) -> dict:
        """The §5 payload: numbers as JSON numbers written from the venue's exact decimal text."""
        body = {
            "v": 1,
            "symbol": self.symbol,
            "open_time": self.open_time,
            "close_time": self.close_time,
            "open": _number(self.open),
            "high": _number(self.high),
            "low": _number(self.low),
            "close": _number(self.close),
            "volume": _number(self.volume),
            "quote_volume": _number(self.quote_volume),
            "trades": self.trades,
            "taker_buy_volume": _number(self.taker_buy_volume),
            "taker_buy_quote_volume": _number(self.taker_buy_quote_volume),
            "event_time": self.event_time,
        }
        if (
            self.liq_count is not None
            or self.funding_interval_hours is not None
            or self.mark_close is not None
            or self.open_interest is not None
        ):  # nothing attached (a `rest` candle, derivatives off): the fields are absent, which reads as null
            body["mark_close"] = _optional(self.mark_close)
            body["index_close"] = _optional(self.index_close)
            body["funding_rate"] = _optional(self.funding_rate)
            body["funding_interval_hours"] = self.funding_interval_hours
            body["next_funding_time"] = self.next_funding_time
            body["open_interest"] = _optional(self.open_interest)
            body["liq_long_quote"] = _optional(self.liq_long_quote)
            body["liq_short_quote"] = _optional(self.liq_short_quote)
            body["liq_count"] = self.liq_count
        if not live:
            body["source"] = self.source
        return body

    def same_market_data(self, other: Kline) -> bool:
        """Equal as a market fact (source and event time aside)."""
        return (
            self.symbol == other.symbol
            and self.open_time == other.open_time
            and all(
                _same_number(getattr(self, name), getattr(other, name))
                for name in ("open", "high", "low", "close", "volume", "quote_volume")
            )
            and self.trades == other.trades
        )


def _same_number(a: str, b: str) -> bool:
    return a == b or float(a) == float(b)


def _number(text: str) -> msgspec.Raw:
    """A validated decimal string goes out verbatim as a JSON number (exact); anything else as a float."""
    if _DECIMAL.fullmatch(text):
        return msgspec.Raw(text.encode())
    return msgspec.Raw(msgspec.json.encode(float(text)))


def _optional(text: str | None) -> msgspec.Raw | None:
    """A derivatives field: its text was validated as a decimal on arrival (or made by us), so verbatim."""
    return None if text is None else msgspec.Raw(text.encode())


def check_numbers(
    o: str, h: str, low: str, c: str, v: str, q: str, taker_v: str, taker_q: str, n: int
) -> str | None:
    """The reason a candle's numbers are unusable, or None. float() is the fast path; NaN/inf/negatives fail."""
    try:
        fo, fh, fl, fc = float(o), float(h), float(low), float(c)
        fv, fq, ftv, ftq = float(v), float(q), float(taker_v), float(taker_q)
    except ValueError:
        return "bad_number"
    total = fo + fh + fl + fc + fv + fq + ftv + ftq
    if total != total or total in _INFINITIES:  # NaN anywhere makes the sum NaN; inf stays inf
        return "nan_or_infinite"
    if min(fo, fh, fl, fc, fv, fq, ftv, ftq) < 0 or n < 0:
        return "negative"
    if fh < fl:
        return "high_below_low"
    if not (fl <= fo <= fh and fl <= fc <= fh):
        return "ohlc_outside_range"
    return None


def check_times(open_time: int, close_time: int) -> str | None:
    if open_time % MINUTE_MS or close_time != open_time + MINUTE_MS - 1:
        return "time_off_minute"
    return None


class Frame(msgspec.Struct):
    """What one WebSocket frame turned out to be."""

    kind: Literal["kline", "contract", "mark", "liquidation", "reply", "invalid"]
    candle: Kline | None = None
    final: bool = False
    contract: ContractInfoEvent | None = None
    reason: str = ""
    marks: list[MarkPriceUpdate] | None = None  # the valid updates of a markPrice array
    refused: int = 0  # updates of that array refused as invalid
    liquidation: ForceOrder | None = None


_REPLY = Frame("reply")


def parse_frame(data: bytes | str, symbols: Container[str] | None = None) -> Frame:
    """Decode and validate one combined-stream frame; `symbols` is the set of symbols we subscribed."""
    if data[:12] in _MARKET_WIDE:
        return _parse_market_wide(data)
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError:
        return _parse_market_wide(data)  # spelled differently (spaces, raw path), or not a kline at all
    except msgspec.DecodeError:
        return _classify_undecodable(data, "bad_json")
    event = envelope.data
    if type(event) is ContractInfoEvent:
        return Frame("contract", contract=event)
    k = event.k
    if k.s != event.s or k.i != "1m":
        return Frame("invalid", reason="wrong_stream")
    if symbols is not None and k.s not in symbols:
        return Frame("invalid", reason="unknown_symbol")
    reason = check_times(k.t, k.T) or check_numbers(k.o, k.h, k.l, k.c, k.v, k.q, k.V, k.Q, k.n)
    if reason:
        return Frame("invalid", reason=reason)
    return Frame("kline", candle=Kline.from_kline(k, event.E), final=k.x)


def _parse_market_wide(data: bytes | str) -> Frame:
    try:
        event = _market_wide_decoder.decode(data).data
    except msgspec.ValidationError:
        return _lenient_marks(data)
    except msgspec.DecodeError:
        return _classify_undecodable(data, "bad_json")
    kind = type(event)
    if kind is list:
        return Frame("mark", marks=event)
    if kind is ContractInfoEvent:
        return Frame("contract", contract=event)
    order = event.o
    reason = check_liquidation(order)
    if reason:
        return Frame("invalid", reason=reason)
    return Frame("liquidation", liquidation=order)


def _lenient_marks(data: bytes | str) -> Frame:
    """A market-wide frame the strict decoder refused: a markPrice array with bad elements keeps the good
    ones (each checked as strictly); anything else is classified like any undecodable frame."""
    try:
        updates = _lenient_mark_decoder.decode(data).data
    except msgspec.DecodeError:
        return _classify_undecodable(data, "wrong_type")
    valid = []
    for update in updates:
        with contextlib.suppress(msgspec.ValidationError):
            valid.append(_mark_converter(update))
    return Frame("mark", marks=valid, refused=len(updates) - len(valid))


def _mark_converter(update: LenientMarkPriceUpdate) -> MarkPriceUpdate:
    return msgspec.convert(msgspec.structs.asdict(update), MarkPriceUpdate)


def check_liquidation(order: ForceOrder) -> str | None:
    """The reason a forceOrder is unusable, or None: side SELL/BUY, a positive quantity and price."""
    if order.S not in ("SELL", "BUY"):
        return "bad_side"
    if not (_UNSIGNED.fullmatch(order.z) and _UNSIGNED.fullmatch(order.ap)):
        return "bad_number"
    if float(order.z) <= 0 or float(order.ap) <= 0 or order.T <= 0:
        return "negative"
    return None


def _classify_undecodable(data: bytes | str, reason: str) -> Frame:
    """A frame that is not a kline/contract envelope: a SUBSCRIBE reply, or garbage with a reason."""
    try:
        _reply_decoder.decode(data)
    except msgspec.DecodeError:
        pass
    else:
        try:
            value = _any_decoder.decode(data)
        except msgspec.DecodeError:
            value = None
        if isinstance(value, dict) and "id" in value and ("result" in value or "error" in value):
            return _REPLY
    if reason == "wrong_type":
        # A well-formed envelope of an event we do not handle is not an error of the frame.
        try:
            value = _any_decoder.decode(data)
        except msgspec.DecodeError:
            return Frame("invalid", reason="bad_json")
        data = value.get("data") if isinstance(value, dict) else None
        if isinstance(data, dict) and data.get("e") not in ("kline", "contractInfo", "forceOrder"):
            return Frame("invalid", reason="unknown_event")
    return Frame("invalid", reason=reason)


class OpenInterest(msgspec.Struct, frozen=True):
    """`GET /fapi/v1/openInterest`: open interest in contracts at venue time `time`."""

    symbol: str
    openInterest: str
    time: int


class FundingInfo(msgspec.Struct, frozen=True):
    symbol: str
    fundingIntervalHours: int


_open_interest_decoder = msgspec.json.Decoder(OpenInterest)
_funding_info_decoder = msgspec.json.Decoder(list[FundingInfo])


def parse_open_interest(body: bytes) -> OpenInterest:
    """An openInterest answer; ValueError names what is wrong with it."""
    try:
        answer = _open_interest_decoder.decode(body)
    except msgspec.DecodeError as error:
        raise ValueError(f"openInterest answer unusable: {error}") from None
    if not _UNSIGNED.fullmatch(answer.openInterest) or answer.time <= 0:
        raise ValueError(f"openInterest answer unusable: {answer.openInterest!r} at {answer.time}")
    return answer


def parse_funding_info(body: bytes) -> dict[str, int]:
    """fundingInfo: the funding interval (hours) of every symbol it lists (the others have 8 h)."""
    try:
        entries = _funding_info_decoder.decode(body)
    except msgspec.DecodeError as error:
        raise ValueError(f"fundingInfo answer unusable: {error}") from None
    return {entry.symbol: entry.fundingIntervalHours for entry in entries if entry.fundingIntervalHours > 0}


def parse_rest_rows(
    symbol: str, body: bytes, venue_now_ms: int, event_time: int | None = None
) -> tuple[list[Kline], list[tuple[int, str]]]:
    """Closed, valid candles of a /fapi/v1/klines answer, plus (open_time, reason) for rows refused.

    A row is closed only when its close time is more than 5 s before venue time (docs/contract.md §4); the still-open
    last row is silently left out (not an error).
    """
    rows = _rows_decoder.decode(body)
    candles: list[Kline] = []
    refused: list[tuple[int, str]] = []
    stamp = venue_now_ms if event_time is None else event_time
    for row in rows:
        if row[6] >= venue_now_ms - REST_CLOSED_MARGIN_MS:
            continue
        t, o, h, low, c, v, close_time, q, n, taker_v, taker_q, _ = row
        reason = check_times(t, close_time) or check_numbers(o, h, low, c, v, q, taker_v, taker_q, n)
        if reason:
            refused.append((t, reason))
            continue
        candles.append(Kline.from_row(symbol, row, stamp))
    return candles, refused


def stream_name(symbol: str) -> str:
    return f"{symbol.lower()}@kline_1m"


def encode_request(method: str, params: list[str], request_id: int) -> bytes:
    return msgspec.json.encode({"method": method, "params": params, "id": request_id})
