"""The traded universe as the collector last saw it (on the `timeseries` alias, beside the candles)."""

from __future__ import annotations

from django.db import models


class Symbol(models.Model):
    """A USDⓈ-M perpetual; `history_start` moves when a symbol leaves TRADING and returns (docs/contract.md §4)."""

    symbol = models.TextField(primary_key=True)
    status = models.CharField(max_length=32)
    contract_type = models.CharField(max_length=32)
    base_asset = models.TextField(blank=True, default="")
    quote_asset = models.TextField(blank=True, default="")
    onboard_date = models.DateTimeField(null=True, blank=True)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    history_start = models.DateTimeField(help_text="start of the current trading history")
    trading = models.BooleanField(default=True)
    tick_size = models.CharField(
        max_length=40, blank=True, default="", help_text="PRICE_FILTER tickSize as exchangeInfo spells it"
    )
    price_precision = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        db_table = "symbols"
        ordering = ["symbol"]

    def __str__(self) -> str:
        return self.symbol
