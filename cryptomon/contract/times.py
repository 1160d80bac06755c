"""Times on the wire are integer milliseconds since the epoch, UTC (docs/contract.md §5); the database stores datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

MINUTE_MS = 60_000


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(moment.timestamp() * 1000)


def from_ms(ms: int | float) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def minute_of(ms: int) -> int:
    """The open time of the minute that holds `ms`."""
    return ms // MINUTE_MS * MINUTE_MS
