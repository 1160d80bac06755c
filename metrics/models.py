"""Candles and computed metrics (docs/contract.md §6). Both live on the `timeseries` alias."""

from __future__ import annotations

from django.db import models

from cryptomon.contract.names import TIMEFRAMES

PRICE_DIGITS = {"max_digits": 38, "decimal_places": 8}


class StoredCandle(models.Model):
    """One row of `candles_1m`: a closed 1-minute candle as Binance had it (`source` ws/rest) or a flat filler (`filled`)."""

    pk = models.CompositePrimaryKey("symbol", "time")
    symbol = models.TextField()
    time = models.DateTimeField(help_text="open time of the minute")
    open = models.DecimalField(**PRICE_DIGITS)
    high = models.DecimalField(**PRICE_DIGITS)
    low = models.DecimalField(**PRICE_DIGITS)
    close = models.DecimalField(**PRICE_DIGITS)
    volume = models.DecimalField(**PRICE_DIGITS)
    quote_volume = models.DecimalField(**PRICE_DIGITS)
    trades = models.BigIntegerField()
    taker_buy_volume = models.DecimalField(**PRICE_DIGITS)
    taker_buy_quote_volume = models.DecimalField(**PRICE_DIGITS)
    source = models.CharField(max_length=8)
    event_time = models.DateTimeField()
    # §7b derivatives fields, null when unknown. Floats, as the metrics engine reads them (so the backtest of
    # this table equals the live bars); the liquidation sums exact, as the engine sums them.
    mark_close = models.FloatField(null=True, blank=True)
    index_close = models.FloatField(null=True, blank=True)
    funding_rate = models.FloatField(null=True, blank=True, help_text="a fraction per funding interval")
    funding_interval_hours = models.FloatField(null=True, blank=True)
    next_funding_time = models.DateTimeField(null=True, blank=True)
    open_interest = models.FloatField(null=True, blank=True, help_text="contracts")
    liq_long_quote = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    liq_short_quote = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    liq_count = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "candles_1m"
        indexes = [models.Index(fields=["time"], name="candles_1m_time")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.time:%Y-%m-%d %H:%M}"


class MetricBar(models.Model):
    """The metrics of one timeframe for one final bar; 6 rows per symbol per minute."""

    pk = models.CompositePrimaryKey("symbol", "timeframe", "time")
    symbol = models.TextField()
    timeframe = models.CharField(max_length=3, choices=[(tf, tf) for tf in TIMEFRAMES])
    time = models.DateTimeField(help_text="open time of the bar")
    open = models.FloatField(null=True)
    high = models.FloatField(null=True)
    low = models.FloatField(null=True)
    change = models.FloatField(null=True)
    volume = models.FloatField(null=True)
    volume_ratio = models.FloatField(null=True)
    trades = models.FloatField(null=True)
    taker_buy_ratio = models.FloatField(null=True)
    price = models.FloatField(null=True)
    rsi_14 = models.FloatField(null=True)
    macd = models.FloatField(null=True)
    macd_signal = models.FloatField(null=True)
    macd_hist = models.FloatField(null=True)
    bb_upper = models.FloatField(null=True)
    bb_middle = models.FloatField(null=True)
    bb_lower = models.FloatField(null=True)
    vcp = models.FloatField(null=True)
    oi_change = models.FloatField(null=True)
    liq_long = models.FloatField(null=True)
    liq_short = models.FloatField(null=True)
    mark_price = models.FloatField(null=True)
    index_price = models.FloatField(null=True)
    basis = models.FloatField(null=True)
    funding_rate = models.FloatField(null=True)
    funding_apr = models.FloatField(null=True)
    oi = models.FloatField(null=True)

    class Meta:
        db_table = "metrics_calculated"
        indexes = [models.Index(fields=["time"], name="metrics_calculated_time")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.time:%Y-%m-%d %H:%M}"
