"""Rows for the dashboard, API and browser tests: symbols, candles, metrics and alerts as the workers store them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from alerts.models import AlertHistory
from collector.models import Symbol
from cryptomon.contract.names import TIMEFRAMES
from metrics.models import MetricBar, StoredCandle

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def symbol(name: str, trading: bool = True, tick_size: str = "") -> Symbol:
    return Symbol.objects.create(
        tick_size=tick_size,
        symbol=name,
        status="TRADING" if trading else "SETTLING",
        contract_type="PERPETUAL",
        base_asset=name.removesuffix("USDT"),
        quote_asset="USDT",
        first_seen=NOW - timedelta(days=3),
        last_seen=NOW,
        history_start=NOW - timedelta(days=3),
        trading=trading,
    )


def candles(
    name: str, minutes: int, end: datetime = NOW, start_price: float = 100.0, step: float = 0.1
) -> list[StoredCandle]:
    """`minutes` closed 1-minute candles ending before `end`, rising by `step` each minute (high +2 steps,
    low −1 step, close +1 step)."""
    rows = []
    tick = Decimal(str(step))
    for i in range(minutes):
        time = end - timedelta(minutes=minutes - i)
        price = Decimal(str(round(start_price + i * step, 8)))
        rows.append(
            StoredCandle(
                symbol=name,
                time=time,
                open=price,
                high=price + 2 * tick,
                low=price - tick,
                close=price + tick,
                volume=Decimal("10"),
                quote_volume=Decimal("1000.5"),
                trades=7,
                taker_buy_volume=Decimal("6"),
                taker_buy_quote_volume=Decimal("600.3"),
                source="ws",
                event_time=time + timedelta(seconds=62),
            )
        )
    return StoredCandle.objects.bulk_create(rows)


def metrics(
    name: str,
    time: datetime,
    change_1h: float | None = 1.5,
    price: float = 101.0,
    ohlc: tuple[float, float, float] = (100.0, 102.0, 99.0),
) -> None:
    """One final bar of every timeframe; 4h has no row (unknown), the rest carry made-up values."""
    for timeframe in TIMEFRAMES:
        if timeframe == "4h":
            continue
        MetricBar.objects.create(
            symbol=name,
            timeframe=timeframe,
            time=time,
            open=ohlc[0],
            high=ohlc[1],
            low=ohlc[2],
            change=change_1h if timeframe == "1h" else 0.5,
            volume=2_500_000.0 if timeframe == "1d" else 50_000.0,
            volume_ratio=None,
            trades=900.0,
            taker_buy_ratio=0.55,
            price=price,
            rsi_14=61.25,
            macd=0.1,
            macd_signal=None,
            macd_hist=None,
            bb_upper=103.0,
            bb_middle=101.0,
            bb_lower=99.0,
            vcp=0.3,
        )


def alert(
    rule: str,
    name: str,
    minutes_ago: int,
    owner: int | None = None,
    direction: str = "bull",
    late: bool = False,
    volume_1d: float | None = 5e6,
    price: float = 101.25,
) -> AlertHistory:
    return AlertHistory.objects.create(
        rule=rule,
        rule_name=rule.replace("_", " ").title(),
        severity="info",
        direction=direction,
        symbol=name,
        time=NOW - timedelta(minutes=minutes_ago),
        triggered_at=NOW - timedelta(minutes=minutes_ago) + timedelta(seconds=61),
        price=price,
        description=f"{rule} description",
        metrics={"change_1h": 1.5, "volume_1d": volume_1d},
        owner_id=owner,
        late=late,
    )
