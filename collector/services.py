"""Writes of the collector: the `symbols` table (first/last seen, trading, current history)."""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction

from collector.models import Symbol
from cryptomon.contract.times import from_ms, to_ms


def price_format(info: dict) -> dict:
    """The PRICE_FILTER tick size and pricePrecision of an exchangeInfo entry; blank/None when absent or odd."""
    tick = next(
        (
            f.get("tickSize")
            for f in info.get("filters") or []
            if isinstance(f, dict) and f.get("filterType") == "PRICE_FILTER"
        ),
        "",
    )
    precision = info.get("pricePrecision")
    return {
        "tick_size": tick if isinstance(tick, str) and len(tick) <= 40 else "",
        "price_precision": precision if isinstance(precision, int) and 0 <= precision <= 32 else None,
    }


def record_universe(
    listed: dict[str, dict],
    now_ms: int,
    starts: dict[str, int] | None = None,
    owns: Callable[[str], bool] = lambda symbol: True,
) -> dict[str, int]:
    """Upsert what exchangeInfo says; return each listed symbol's history start (ms).

    `listed` maps symbol → its exchangeInfo entry (only symbols passing the docs/contract.md §4 filter). A symbol
    seen for the first time, or back in TRADING after leaving it, starts a new history at `starts[symbol]`
    (when the change was observed) or now. Symbols this shard `owns` that are no longer listed are marked not
    trading.
    """
    now = from_ms(now_ms)
    starts = starts or {}
    result: dict[str, int] = {}
    created: list[Symbol] = []
    changed: list[Symbol] = []
    with transaction.atomic(using="timeseries"):
        existing = {row.symbol: row for row in Symbol.objects.select_for_update().all()}
        for symbol, info in listed.items():
            row = existing.get(symbol)
            onboard = info.get("onboardDate")
            onboard_dt = from_ms(int(onboard)) if onboard else None
            fields = {
                "status": info.get("status", "TRADING"),
                "contract_type": info.get("contractType", ""),
                "base_asset": info.get("baseAsset", ""),
                "quote_asset": info.get("quoteAsset", ""),
                "onboard_date": onboard_dt,
                "trading": True,
                **price_format(info),
            }
            if row is None:
                # Unknown onboard date: the venue's klines themselves tell where history begins.
                begin = from_ms(starts[symbol]) if symbol in starts else (onboard_dt or from_ms(0))
                row = Symbol(
                    symbol=symbol, first_seen=now, last_seen=now, history_start=min(begin, now), **fields
                )
                created.append(row)
            elif not row.trading or any(getattr(row, name) != value for name, value in fields.items()):
                if not row.trading:
                    row.history_start = from_ms(starts.get(symbol, now_ms))
                for name, value in fields.items():
                    setattr(row, name, value)
                changed.append(row)
            result[symbol] = to_ms(row.history_start)
        # A refresh usually changes nothing but last_seen: one statement, not a save per symbol (a save
        # loop held the collector's event loop for a second at 600 symbols).
        Symbol.objects.bulk_create(created)
        for row in changed:
            row.save(using="timeseries")
        seen = [symbol for symbol in listed if symbol in existing]
        if seen:
            Symbol.objects.filter(symbol__in=seen).update(last_seen=now)
        gone = [
            symbol
            for symbol, row in existing.items()
            if row.trading and owns(symbol) and symbol not in listed
        ]
        if gone:
            Symbol.objects.filter(symbol__in=gone).update(trading=False, status="NOT_LISTED")
    return result
