"""The `candles.1m` / `candles.live` message: one 1-minute candle as the metrics engine and the backtest read it
(docs/contract.md §5, §9).

Framework-free. Prices become floats (the §7 formulas are float math on them, and any decimal price with at
most 15 significant digits survives the round trip exactly); the four volumes are kept as exact integers of
10⁻⁸ (`*_e8`), because §7 sums quote volumes exactly. Parsing accepts JSON numbers, decimal strings (also
with an exponent, as Binance's CSV files sometimes have) and `Decimal`, and names the field on bad input.

The §7b derivatives fields ride along as one `Derivatives` object (None when every field is null or absent,
the common case of CSV input and older messages), so a candle without them costs one slot, not nine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import msgspec

from cryptomon.contract.times import MINUTE_MS

VOLUME_SCALE = 100_000_000  # volumes are integers of 10⁻⁸
MAX_VOLUME_E8 = 10**19  # 10^11 of base or quote asset in one minute: beyond any market, fits 64 bits
_MAX_VOLUME = Decimal(10**11)
_TOO_LARGE = "too large for one minute (at most 10^11)"
_MICROSECONDS_FROM = 10**14  # a CSV open_time at or above this is in microseconds (docs/contract.md §9)

CSV_COLUMNS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)


def _bad(field: str, value: Any, why: str) -> ValueError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ValueError(f"{field}: {why} (got {shown})")


def _decimal_units(text: str, field: str) -> int:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise _bad(field, text, "not a number") from None
    if not number.is_finite():
        raise _bad(field, text, "not a finite number")
    if number < 0:
        raise _bad(field, text, "negative")
    if number >= _MAX_VOLUME:
        raise _bad(field, text, _TOO_LARGE)
    return int(number.scaleb(8).to_integral_value(rounding=ROUND_HALF_EVEN))


def volume_units(value: Any, field: str) -> int:
    """A non-negative volume as an exact integer of 10⁻⁸ (more decimals are rounded half-even)."""
    units = _volume_units(value, field)
    if units >= MAX_VOLUME_E8:
        raise _bad(field, value, _TOO_LARGE)
    return units


def _volume_units(value: Any, field: str) -> int:
    if type(value) is str:
        whole, _, fraction = value.partition(".")
        if (
            whole.isascii()
            and whole.isdigit()
            and len(fraction) <= 8
            and (not fraction or (fraction.isascii() and fraction.isdigit()))
        ):
            return int(whole) * VOLUME_SCALE + (int(fraction.ljust(8, "0")) if fraction else 0)
        return _decimal_units(value.strip(), field)
    if type(value) is int:
        if value < 0:
            raise _bad(field, value, "negative")
        return value * VOLUME_SCALE
    if type(value) is float:
        if not math.isfinite(value):
            raise _bad(field, value, "not a finite number")
        return _decimal_units(repr(value), field)
    if isinstance(value, Decimal):
        return _decimal_units(str(value), field)
    if value is None:
        raise _bad(field, value, "missing")
    raise _bad(field, value, "not a number")


def price_value(value: Any, field: str) -> float:
    """A non-negative finite price as a float."""
    if type(value) is bool or not isinstance(value, str | int | float | Decimal):
        raise _bad(field, value, "missing" if value is None else "not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise _bad(field, value, "not a number") from None
    if not math.isfinite(number):
        raise _bad(field, value, "not a finite number")
    if number < 0:
        raise _bad(field, value, "negative")
    return number


def integer_value(value: Any, field: str) -> int:
    """An integer given as a JSON integer, an integral float or a decimal string (exponents allowed)."""
    if type(value) is int:
        return value
    if type(value) is str:
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise _bad(field, value, "not an integer") from None
    elif type(value) is float or isinstance(value, Decimal):
        number = Decimal(value) if type(value) is float else value
    else:
        raise _bad(field, value, "missing" if value is None else "not an integer")
    if not number.is_finite() or number != number.to_integral_value():
        raise _bad(field, value, "not an integer")
    return int(number)


def signed_value(value: Any, field: str) -> float:
    """A finite number of either sign as a float (a funding rate)."""
    if type(value) is bool or not isinstance(value, str | int | float | Decimal):
        raise _bad(field, value, "missing" if value is None else "not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise _bad(field, value, "not a number") from None
    if not math.isfinite(number):
        raise _bad(field, value, "not a finite number")
    return number


DERIVATIVE_FIELDS: tuple[str, ...] = (
    "mark_close",
    "index_close",
    "funding_rate",
    "funding_interval_hours",
    "next_funding_time",
    "open_interest",
    "liq_long_quote",
    "liq_short_quote",
    "liq_count",
)
"""The §7b fields of a candle (docs/contract.md §5), each a number or null; absent means null."""


@dataclass(slots=True)
class Derivatives:
    """The §7b fields of one candle; None = unknown. Liquidation sums are exact integers of 10⁻⁸ USDT
    (`*_e8`), as §7b sums them exactly; the rest are floats like the prices."""

    mark_close: float | None = None
    index_close: float | None = None
    funding_rate: float | None = None
    funding_interval_hours: float | None = None
    next_funding_time: int | None = None
    open_interest: float | None = None
    liq_long_quote_e8: int | None = None
    liq_short_quote_e8: int | None = None
    liq_count: int | None = None

    @classmethod
    def parse(cls, values: Sequence[Any]) -> Derivatives | None:
        """From the nine field values in `DERIVATIVE_FIELDS` order; None when all are null."""
        mark, index, rate, hours, next_time, oi, long_q, short_q, count = values
        if (
            mark is None
            and index is None
            and rate is None
            and hours is None
            and next_time is None
            and oi is None
            and long_q is None
            and short_q is None
            and count is None
        ):
            return None
        if next_time is not None:
            next_time = integer_value(next_time, "next_funding_time")
        if count is not None:
            count = integer_value(count, "liq_count")
            if count < 0:
                raise _bad("liq_count", count, "negative")
        return cls(
            None if mark is None else price_value(mark, "mark_close"),
            None if index is None else price_value(index, "index_close"),
            None if rate is None else signed_value(rate, "funding_rate"),
            None if hours is None else price_value(hours, "funding_interval_hours"),
            next_time,
            None if oi is None else price_value(oi, "open_interest"),
            None if long_q is None else volume_units(long_q, "liq_long_quote"),
            None if short_q is None else volume_units(short_q, "liq_short_quote"),
            count,
        )

    def values(self) -> tuple:
        """The nine fields in `DERIVATIVE_FIELDS` order, liquidation sums as exact JSON numbers."""
        long_q, short_q = self.liq_long_quote_e8, self.liq_short_quote_e8
        return (
            self.mark_close,
            self.index_close,
            self.funding_rate,
            self.funding_interval_hours,
            self.next_funding_time,
            self.open_interest,
            None if long_q is None else msgspec.Raw(units_text(long_q).encode()),
            None if short_q is None else msgspec.Raw(units_text(short_q).encode()),
            self.liq_count,
        )


_NO_DERIVATIVES = (None,) * len(DERIVATIVE_FIELDS)


def units_text(units: int) -> str:
    """Exact decimal text of an integer of 10⁻⁸ (what a JSON number or a DecimalField gets)."""
    whole, fraction = divmod(units, VOLUME_SCALE)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:08d}".rstrip("0")


@dataclass(slots=True)
class Candle:
    """A 1-minute candle; `open_time`/`close_time` in ms; volumes exact in `*_e8` (floats as properties).

    Treat it as immutable (use `dataclasses.replace`); it is not frozen only because frozen dataclasses
    are several times slower to create, and the replay creates millions.
    """

    symbol: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume_e8: int
    quote_volume_e8: int
    trades: int
    taker_buy_volume_e8: int
    taker_buy_quote_volume_e8: int
    event_time: int | None = None
    source: str | None = None
    derivatives: Derivatives | None = None

    @property
    def volume(self) -> float:
        return self.volume_e8 / VOLUME_SCALE

    @property
    def quote_volume(self) -> float:
        return self.quote_volume_e8 / VOLUME_SCALE

    @property
    def taker_buy_volume(self) -> float:
        return self.taker_buy_volume_e8 / VOLUME_SCALE

    @property
    def taker_buy_quote_volume(self) -> float:
        return self.taker_buy_quote_volume_e8 / VOLUME_SCALE

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], symbol: str | None = None) -> Candle:
        """A `candles.1m`/`candles.live` payload or a JSON Lines row; unknown keys are ignored.

        Raises ValueError naming the field. `close_time` defaults to the minute's last millisecond.
        """
        get = payload.get
        name = get("symbol", symbol) if symbol is None else symbol
        if not isinstance(name, str) or not name or "." in name or any(ch.isspace() for ch in name):
            raise _bad("symbol", name, "missing" if name is None else "not a symbol")
        open_time = integer_value(get("open_time"), "open_time")
        if open_time % MINUTE_MS:
            raise _bad("open_time", open_time, "not at the start of a minute")
        close_time = get("close_time")
        close_time = (
            open_time + MINUTE_MS - 1 if close_time is None else integer_value(close_time, "close_time")
        )
        if not open_time <= close_time < open_time + MINUTE_MS:
            raise _bad("close_time", close_time, "not inside the candle's minute")
        trades = integer_value(get("trades"), "trades")
        if trades < 0:
            raise _bad("trades", trades, "negative")
        event_time = get("event_time")
        if event_time is not None:
            event_time = integer_value(event_time, "event_time")
        source = get("source")
        if source is not None and not isinstance(source, str):
            raise _bad("source", source, "not a string")
        high = price_value(get("high"), "high")
        low = price_value(get("low"), "low")
        if high < low:
            raise _bad("high", high, f"below low {low}")
        derivatives = Derivatives.parse(
            (
                get("mark_close"),
                get("index_close"),
                get("funding_rate"),
                get("funding_interval_hours"),
                get("next_funding_time"),
                get("open_interest"),
                get("liq_long_quote"),
                get("liq_short_quote"),
                get("liq_count"),
            )
        )
        return cls(
            name,
            open_time,
            close_time,
            price_value(get("open"), "open"),
            high,
            low,
            price_value(get("close"), "close"),
            volume_units(get("volume"), "volume"),
            volume_units(get("quote_volume"), "quote_volume"),
            trades,
            volume_units(get("taker_buy_volume"), "taker_buy_volume"),
            volume_units(get("taker_buy_quote_volume"), "taker_buy_quote_volume"),
            event_time,
            source,
            derivatives,
        )

    @classmethod
    def from_csv_row(cls, symbol: str, row: Sequence[str]) -> Candle:
        """One row of Binance's public kline CSV (the 12 `CSV_COLUMNS`); microsecond times are converted."""
        if len(row) != len(CSV_COLUMNS):
            raise ValueError(f"expected {len(CSV_COLUMNS)} columns, got {len(row)}")
        values = dict(zip(CSV_COLUMNS, row, strict=True))
        for field in ("open_time", "close_time"):
            stamp = integer_value(values[field], field)
            values[field] = stamp // 1000 if stamp >= _MICROSECONDS_FROM else stamp
        values["trades"] = values.pop("count")
        return cls.from_payload(values, symbol=symbol)

    def same_market_data(self, other: Candle) -> bool:
        """Equal as a market fact (event time and source aside): how duplicates are told from conflicts."""
        return (
            self.symbol == other.symbol
            and self.open_time == other.open_time
            and self.close_time == other.close_time
            and self.open == other.open
            and self.high == other.high
            and self.low == other.low
            and self.close == other.close
            and self.volume_e8 == other.volume_e8
            and self.quote_volume_e8 == other.quote_volume_e8
            and self.trades == other.trades
            and self.taker_buy_volume_e8 == other.taker_buy_volume_e8
            and self.taker_buy_quote_volume_e8 == other.taker_buy_quote_volume_e8
            and self.derivatives == other.derivatives
        )

    def payload(self, live: bool = False) -> dict[str, Any]:
        """The §5 `candles.1m` payload (`live=True`: `candles.live`, without `source`); volumes exact."""
        body: dict[str, Any] = {
            "v": 1,
            "symbol": self.symbol,
            "open_time": self.open_time,
            "close_time": self.close_time,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": msgspec.Raw(units_text(self.volume_e8).encode()),
            "quote_volume": msgspec.Raw(units_text(self.quote_volume_e8).encode()),
            "trades": self.trades,
            "taker_buy_volume": msgspec.Raw(units_text(self.taker_buy_volume_e8).encode()),
            "taker_buy_quote_volume": msgspec.Raw(units_text(self.taker_buy_quote_volume_e8).encode()),
            "event_time": self.event_time,
        }
        derivatives = self.derivatives
        body.update(
            zip(
                DERIVATIVE_FIELDS,
                _NO_DERIVATIVES if derivatives is None else derivatives.values(),
                strict=True,
            )
        )
        if not live:
            body["source"] = self.source
        return body

    def decimal(self, field: str) -> Decimal:
        """A price or volume as an exact Decimal, for the `candles_1m` row."""
        if field.endswith("volume"):
            return Decimal(getattr(self, f"{field}_e8")).scaleb(-8)
        return Decimal(repr(getattr(self, field)))


_exact_decoder = msgspec.json.Decoder(float_hook=str)


def decode_payload(data: bytes, symbol: str | None = None) -> Candle:
    """A candle from a JSON message, reading numbers from their exact text (no float round trip)."""
    try:
        payload = _exact_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise ValueError(f"malformed JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    return Candle.from_payload(payload, symbol=symbol)
