"""Which markets the collector follows (docs/contract.md §4), kept current without a restart.

exchangeInfo is the source of truth: USDT-quoted PERPETUAL contracts in status TRADING (TRADIFI_PERPETUAL
only with BINANCE_INCLUDE_TRADIFI). It is re-read every COLLECTOR_UNIVERSE_REFRESH_SECONDS and, sooner,
whenever `!contractInfo` announces a change; a symbol leaving TRADING is dropped at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from collector.binance import ContractInfoEvent
from collector.rest import RestClient

logger = logging.getLogger(__name__)

CONTRACT_STREAM = "!contractInfo"


def select_symbols(
    exchange_info: dict, include_tradifi: bool = False, only: Iterable[str] | None = None
) -> dict[str, dict]:
    """The docs/contract.md §4 filter. Symbols are kept exactly as the venue spells them (Unicode included)."""
    contract_types = {"PERPETUAL", "TRADIFI_PERPETUAL"} if include_tradifi else {"PERPETUAL"}
    wanted = set(only) if only else None
    selected: dict[str, dict] = {}
    for entry in exchange_info.get("symbols", []):
        symbol = entry.get("symbol")
        if (
            isinstance(symbol, str)
            and symbol
            and "." not in symbol
            and entry.get("quoteAsset") == "USDT"
            and entry.get("contractType") in contract_types
            and entry.get("status") == "TRADING"
            and (wanted is None or symbol in wanted)
        ):
            selected[symbol] = entry
    return selected


class Universe:
    """Holds the current selection and tells the collector about additions and removals."""

    def __init__(
        self,
        rest: RestClient,
        apply: Callable[[dict[str, dict], dict[str, int]], Awaitable[None]],
        *,
        include_tradifi: bool = False,
        only: Iterable[str] | None = None,
        owns: Callable[[str], bool] = lambda symbol: True,
        refresh_seconds: float = 300.0,
        debounce_seconds: float = 1.0,
    ):
        self.rest = rest
        self.apply = apply
        self.include_tradifi = include_tradifi
        self.only = set(only) if only else None
        self.owns = owns
        self.refresh_seconds = refresh_seconds
        self.debounce_seconds = debounce_seconds
        self.current: dict[str, dict] = {}
        self._changed_at: dict[str, int] = {}
        self._soon = asyncio.Event()
        self._lock = asyncio.Lock()

    async def refresh(self) -> dict[str, dict]:
        """Re-read exchangeInfo and apply the difference; returns the selection."""
        async with self._lock:
            info = await self.rest.exchange_info()
            selected = {
                symbol: entry
                for symbol, entry in select_symbols(info, self.include_tradifi, self.only).items()
                if self.owns(symbol)
            }
            added = selected.keys() - self.current.keys()
            removed = self.current.keys() - selected.keys()
            if added or removed:
                logger.info(
                    "universe: %d symbols (+%d: %s) (-%d: %s)",
                    len(selected),
                    len(added),
                    ", ".join(sorted(added)[:10]),
                    len(removed),
                    ", ".join(sorted(removed)[:10]),
                )
            starts = {symbol: self._changed_at[symbol] for symbol in added if symbol in self._changed_at}
            previous, self.current = self.current, selected
            try:
                await self.apply(selected, starts)
            except BaseException:
                self.current = previous  # the next refresh applies the same difference again
                raise
            for symbol in starts:
                del self._changed_at[symbol]
            return selected

    def on_contract_info(self, event: ContractInfoEvent) -> None:
        """A listing or status change: drop a symbol leaving TRADING now, re-read exchangeInfo soon."""
        self._changed_at[event.s] = event.E
        if event.s in self.current and event.cs and event.cs != "TRADING":
            self.current = {s: e for s, e in self.current.items() if s != event.s}
            logger.info("universe: %s left TRADING (%s)", event.s, event.cs)
            asyncio.get_running_loop().create_task(self._apply_now(dict(self.current)))
        self._soon.set()

    async def _apply_now(self, selected: dict[str, dict]) -> None:
        try:
            await self.apply(selected, {})
        except Exception as error:  # the periodic refresh applies the selection again
            logger.warning("universe change not applied yet (%s); the next refresh retries", error)

    async def run(self) -> None:
        """Refresh periodically and shortly after each `!contractInfo` event; never give up."""
        while True:
            try:
                await asyncio.wait_for(self._soon.wait(), self.refresh_seconds)
                await asyncio.sleep(self.debounce_seconds)
            except TimeoutError:
                pass
            self._soon.clear()
            try:
                await self.refresh()
            except Exception as error:  # the venue or the database away: the next refresh tries again
                logger.warning("universe refresh failed (%s); keeping %d symbols", error, len(self.current))
