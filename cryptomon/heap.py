"""Short garbage-collector pauses in the long-running workers.

A worker's start leaves hundreds of thousands of long-lived objects (Django, the 600 symbol states and,
in run_metrics, their history columns of 2,880 minutes). Every full collection walks all of them: 55–180 ms
with the world stopped, measured in run_collector, run_metrics, the gateway and daphne during
`benchmarks/bench_end_to_end.py`. One that lands in a minute's burst delays every alert of that minute.
`gc.freeze()` after one collection moves the survivors out of the collector's sight, so later collections
only walk what was made since. The workers freeze once started and again every hour, in the middle of a
minute (away from the minute close), so objects that replaced frozen ones (trimmed columns) are hidden too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

logger = logging.getLogger(__name__)

REFREEZE_SECONDS = 3600.0
MID_MINUTE_SECOND = 30.0


def freeze_long_lived() -> float:
    """One full collection, then every survivor frozen; returns the pause in seconds.

    Unfreezing first lets what an earlier freeze kept and has since died be collected now (no leak)."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


def seconds_to_mid_minute(now: float) -> float:
    """Seconds from the epoch time `now` to the next half-past of a minute (where nothing is due)."""
    return (MID_MINUTE_SECOND - now % 60.0) % 60.0


async def keep_collections_short(name: str, every: float = REFREEZE_SECONDS) -> None:
    """Freeze now (the worker has just started), then every `every` seconds at the middle of a minute."""
    while True:
        pause = freeze_long_lived()
        logger.info(
            "%s: %d long-lived objects frozen out of the garbage collector's passes (%.0f ms)",
            name,
            gc.get_freeze_count(),
            pause * 1000,
        )
        await asyncio.sleep(every)
        await asyncio.sleep(seconds_to_mid_minute(time.time()))
