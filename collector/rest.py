"""The venue's REST API behind one clock and one weight limiter (docs/contract.md §4).

Every REST caller of the collector goes through one `RestClient`, so the 2400-weight-per-minute budget,
429 (stop until the next venue minute), 418 (banned until the time in the error) and 451 (region blocked:
said loudly, retried only after a long pause) are respected process-wide. Minutes are venue minutes: the
clock is the `/fapi/v1/time` offset (and, against an accelerated emulator, its rate), never the local one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

import aiohttp
import msgspec

from collector.binance import (
    Kline,
    OpenInterest,
    parse_funding_info,
    parse_open_interest,
    parse_rest_rows,
)
from cryptomon.contract.times import MINUTE_MS

logger = logging.getLogger(__name__)

_BAN_UNTIL = re.compile(r"(\d{12,14})")
# A 429/418 block ends this long (venue ms) after its time, by the earliest estimate of the venue's clock:
# a local clock slightly ahead of the venue's must not send a request into the refused minute.
BLOCK_MARGIN_MS = 1_000
_time_decoder = msgspec.json.Decoder()


class RestError(Exception):
    """A REST call failed after the limiter's handling; the caller retries later."""


class RegionBlocked(RestError):
    """451: Binance refuses this region. Nothing the collector does will help; it waits long."""


class VenueClock:
    """Venue time = offset + rate × local wall time, re-synced from /fapi/v1/time.

    `rate` is 1 against Binance; against the emulator at speed S it is S (measured, or given).
    """

    def __init__(self, rate: float | None = 1.0):
        self.fixed_rate = rate
        self.rate = rate or 1.0
        self._anchor_wall = time.time()
        self._anchor_venue = self._anchor_wall * 1000.0
        self._anchor_error_wall = 0.0  # half the anchor's round trip (seconds)
        self._rate_error = 0.0  # relative uncertainty of a measured rate
        self.synced = False

    def now_ms(self) -> int:
        return int(self._anchor_venue + (time.time() - self._anchor_wall) * 1000.0 * self.rate)

    def earliest_now_ms(self) -> int:
        """The earliest the venue's time can be now: what decides whether a REST row is closed.

        The anchor was read somewhere within a round trip, and a measured rate is known only to the
        precision of its samples; both errors scale with the rate. Against Binance (rate 1) this is tens of
        milliseconds below `now_ms`; against the emulator at speed 60 a 300 ms round trip under load is 9 s
        of venue time, enough to take a still-open minute for a closed one."""
        elapsed = max(0.0, time.time() - self._anchor_wall)
        error_wall = self._anchor_error_wall + elapsed * self._rate_error
        return self.now_ms() - int(error_wall * 1000.0 * self.rate)

    def set(
        self,
        venue_ms: float,
        wall: float,
        rate: float | None = None,
        *,
        anchor_error_seconds: float = 0.0,
        rate_error: float | None = None,
    ) -> None:
        if rate is not None:
            self.rate = rate
        if rate_error is not None:
            self._rate_error = rate_error
        self._anchor_wall = wall
        self._anchor_venue = venue_ms
        self._anchor_error_wall = anchor_error_seconds
        self.synced = True

    def wall_seconds(self, venue_ms: float) -> float:
        """How long `venue_ms` of venue time lasts on the local wall clock."""
        return max(0.0, venue_ms / 1000.0 / self.rate)

    def until_ms(self, venue_ms: int) -> float:
        """Wall seconds until venue time reaches `venue_ms`."""
        return self.wall_seconds(venue_ms - self.now_ms())


@dataclass
class WeightLimiter:
    """One budget per venue minute for every REST caller; blocks callers instead of letting Binance refuse."""

    clock: VenueClock
    budget: int = 2400
    minute: int = -1
    used: int = 0
    blocked_until_ms: int = 0
    peak_used: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _roll(self) -> None:
        minute = self.clock.now_ms() // MINUTE_MS
        if minute != self.minute:
            self.minute, self.used = minute, 0

    async def acquire(self, weight: int) -> None:
        """Wait until `weight` fits in this venue minute's budget (and no 429/418 block is on), then take it."""
        async with self._lock:
            while True:
                # A block ends by the venue's clock: wait until even our earliest estimate of it has passed.
                now = self.clock.earliest_now_ms()
                if now < self.blocked_until_ms + BLOCK_MARGIN_MS:
                    await asyncio.sleep(
                        min(
                            self.clock.wall_seconds(self.blocked_until_ms + BLOCK_MARGIN_MS - now) + 0.001,
                            30.0,
                        )
                    )
                    continue
                self._roll()
                if self.used + weight <= self.budget:
                    self.used += weight
                    self.peak_used = max(self.peak_used, self.used)
                    return
                next_minute = (self.minute + 1) * MINUTE_MS
                await asyncio.sleep(min(self.clock.until_ms(next_minute) + 0.001, 30.0))

    async def acquire_spare(self, weight: int, ceiling: int) -> None:
        """Low priority: take `weight` only while this minute's use stays ≤ `ceiling` and no `acquire()` caller
        is waiting, so polling never delays backfill (docs/collector.md "REST budget")."""
        while True:
            now = self.clock.earliest_now_ms()
            if now < self.blocked_until_ms + BLOCK_MARGIN_MS:
                await asyncio.sleep(
                    min(self.clock.wall_seconds(self.blocked_until_ms + BLOCK_MARGIN_MS - now) + 0.001, 30.0)
                )
                continue
            self._roll()
            if self.used + weight > min(ceiling, self.budget):
                next_minute = (self.minute + 1) * MINUTE_MS
                await asyncio.sleep(min(self.clock.until_ms(next_minute) + 0.001, 30.0))
            elif self._lock.locked():
                await asyncio.sleep(0.05)  # a backfill is waiting for weight: it goes first
            else:
                self.used += weight
                self.peak_used = max(self.peak_used, self.used)
                return

    def observe(self, used_header: str | None) -> None:
        """The venue's own count (`X-MBX-USED-WEIGHT-1M`) wins when it is higher than ours."""
        if not used_header:
            return
        try:
            used = int(used_header)
        except ValueError:
            return
        self._roll()
        if used > self.used:
            self.used = used
            self.peak_used = max(self.peak_used, used)

    def block_until(self, venue_ms: int) -> None:
        self.blocked_until_ms = max(self.blocked_until_ms, venue_ms)


def klines_weight(limit: int) -> int:
    if limit <= 100:
        return 1
    if limit <= 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


class RequestBudget:
    """A count of requests per sliding window of venue time (fundingInfo: 500 per 5 minutes)."""

    def __init__(self, clock: VenueClock, limit: int, window_ms: int):
        self.clock, self.limit, self.window_ms = clock, limit, window_ms
        self._times: list[int] = []

    async def acquire(self) -> None:
        while True:
            now = self.clock.now_ms()
            self._times = [t for t in self._times if t > now - self.window_ms]
            if len(self._times) < self.limit:
                self._times.append(now)
                return
            await asyncio.sleep(min(self.clock.until_ms(self._times[0] + self.window_ms) + 0.001, 30.0))


@dataclass
class RestStats:
    requests: int = 0
    errors: int = 0
    rate_limited: int = 0
    banned: int = 0
    region_blocked: int = 0
    refused_rows: dict = field(default_factory=dict)


class RestClient:
    def __init__(
        self,
        base_url: str,
        *,
        clock_rate: float | None = 1.0,
        budget: int = 2400,
        region_block_pause_seconds: float = 600.0,
        timeout_seconds: float = 10.0,
        time_sync_seconds: float = 60.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.clock = VenueClock(clock_rate)
        self.limiter = WeightLimiter(self.clock, budget)
        self.funding_info_budget = RequestBudget(self.clock, 500, 5 * MINUTE_MS)
        self.region_block_pause_seconds = region_block_pause_seconds
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.time_sync_seconds = time_sync_seconds
        self.stats = RestStats()
        self._session: aiohttp.ClientSession | None = None
        self._samples: list[tuple[float, float, float]] = []  # (wall, venue ms, half round trip)
        self._region_blocked_until = 0.0  # wall clock
        self.banned_until_ms = 0  # venue time of the last 418 ban's end
        self.region_blocked = False  # a 451 not yet followed by a successful call

    async def __aenter__(self) -> RestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        await self.sync_time()
        if self.clock.fixed_rate is None:
            await asyncio.sleep(0.5)
            await self.sync_time()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def venue_now_ms(self) -> int:
        return self.clock.now_ms()

    def state(self) -> str:
        """`ok`, `banned` (418, until `banned_until_ms`) or `region_blocked` (451) for the heartbeat.

        A region block lasts until a call succeeds again, so the operator alert does not flap while the
        collector waits out its pause."""
        if self.region_blocked:
            return "region_blocked"
        if self.clock.now_ms() < self.banned_until_ms:
            return "banned"
        return "ok"

    async def sync_time(self) -> None:
        """Anchor the venue clock on /fapi/v1/time (midpoint of the round trip); estimate its rate if unknown."""
        sent = time.time()
        body = await self._request("/fapi/v1/time", {}, weight=1)
        received = time.time()
        server_ms = float(_time_decoder.decode(body)["serverTime"])
        wall, half_trip = (sent + received) / 2, (received - sent) / 2
        self._samples = [*self._samples[-5:], (wall, server_ms, half_trip)]
        rate = rate_error = None
        if self.clock.fixed_rate is None and len(self._samples) >= 2:
            (w0, v0, e0), (w1, v1, e1) = self._samples[0], self._samples[-1]
            if w1 - w0 > 0.2:
                measured = (v1 - v0) / 1000.0 / (w1 - w0)
                if abs(measured - 1.0) < 0.05:  # Binance: real time
                    rate, rate_error = 1.0, 0.0
                else:  # an accelerated emulator, known as well as the two samples' round trips allow
                    rate, rate_error = measured, (e0 + e1) / (w1 - w0)
        self.clock.set(server_ms, wall, rate, anchor_error_seconds=half_trip, rate_error=rate_error)

    async def run_time_sync(self) -> None:
        while True:
            await asyncio.sleep(self.time_sync_seconds)
            try:
                await self.sync_time()
            except RestError as error:
                logger.warning("venue time sync failed: %s", error)

    async def exchange_info(self) -> dict:
        return _time_decoder.decode(await self._request("/fapi/v1/exchangeInfo", {}, weight=1))

    async def klines(self, symbol: str, start_ms: int, limit: int) -> list[Kline]:
        """Closed candles from `start_ms` on (at most `limit` rows); invalid rows are counted and left out."""
        limit = max(1, min(limit, 1500))
        params = {"symbol": symbol, "interval": "1m", "startTime": str(start_ms), "limit": str(limit)}
        body = await self._request("/fapi/v1/klines", params, weight=klines_weight(limit))
        candles, refused = parse_rest_rows(
            symbol, body, self.clock.earliest_now_ms(), event_time=self.clock.now_ms()
        )
        for open_time, reason in refused:
            self.stats.refused_rows[reason] = self.stats.refused_rows.get(reason, 0) + 1
            logger.warning("REST kline %s %s refused: %s", symbol, open_time, reason)
        return candles

    async def open_interest(self, symbol: str, ceiling: int) -> OpenInterest:
        """One open interest sample (weight 1, low priority: see `WeightLimiter.acquire_spare`)."""
        body = await self._request("/fapi/v1/openInterest", {"symbol": symbol}, weight=1, ceiling=ceiling)
        return parse_open_interest(body)

    async def funding_info(self) -> dict[str, int]:
        """Funding interval hours of the symbols fundingInfo lists (weight 0; its own 500 / 5 min budget)."""
        await self.funding_info_budget.acquire()
        return parse_funding_info(await self._request("/fapi/v1/fundingInfo", {}, weight=0))

    async def _request(self, path: str, params: dict, weight: int, ceiling: int | None = None) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        pause = self._region_blocked_until - time.time()
        if pause > 0:
            raise RegionBlocked(f"region blocked by Binance (451); next try in {pause:.0f} s")
        if ceiling is None:
            await self.limiter.acquire(weight)
        else:
            await self.limiter.acquire_spare(weight, ceiling)
        self.stats.requests += 1
        try:
            async with self._session.get(self.base_url + path, params=params) as response:
                body = await response.read()
                # No await between the answer and the block: leaving the context manager may yield, and
                # another caller must not slip a request in after a 429/418.
                self.limiter.observe(response.headers.get("X-MBX-USED-WEIGHT-1M"))
                status = response.status
                if status != 200:
                    self._refusal(status, body, response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as error:
            self.stats.errors += 1
            raise RestError(f"{path}: {type(error).__name__}: {error}") from None
        if status == 200:
            self.region_blocked = False
            return body
        text = body[:300].decode(errors="replace")
        if status == 451:
            raise RegionBlocked(text)
        raise RestError(f"{path}: HTTP {status}: {text}")

    def _refusal(self, status: int, body: bytes, retry_after: str | None) -> None:
        """Apply a non-200 answer to the limiter at once (429: next venue minute, 418: the ban, 451: pause)."""
        self.stats.errors += 1
        text = body[:300].decode(errors="replace")
        now = self.clock.now_ms()
        if status == 429:
            self.stats.rate_limited += 1
            until = (now // MINUTE_MS + 1) * MINUTE_MS
            if retry_after and retry_after.isdigit():
                until = max(until, now + int(retry_after) * 1000)
            self.limiter.block_until(until)
            logger.warning("REST 429 (weight limit): every REST call waits for the next venue minute")
        elif status == 418:
            self.stats.banned += 1
            match = _BAN_UNTIL.search(text)
            until = int(match.group(1)) if match else now + 2 * MINUTE_MS
            if retry_after and retry_after.isdigit():
                until = max(until, now + int(retry_after) * 1000)
            self.limiter.block_until(until)
            self.banned_until_ms = max(self.banned_until_ms, until)
            logger.error("REST 418: IP banned by Binance until venue time %s; REST paused until then", until)
        elif status == 451:
            self.stats.region_blocked += 1
            self._region_blocked_until = time.time() + self.region_block_pause_seconds
            self.region_blocked = True
            logger.error(
                "REST 451: Binance blocks this region (%s). The collector cannot backfill from here; "
                "next REST attempt in %.0f s. Run it from an allowed region.",
                text,
                self.region_block_pause_seconds,
            )
