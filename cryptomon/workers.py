"""What the long-running workers (collector, metrics, alerts, the gateway bridge) share: one lifecycle, one
stats type, one way to call the ORM from async code.

Lifecycle: `await worker.run()` works until `worker.stop()` is called (or the task running it is
cancelled); `worker.started` is set once it is live (subscribed, consuming). Each management command runs
its worker with `run_until_signalled`, which turns SIGINT/SIGTERM into `stop()`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, connections

# Latency buckets in seconds (a batch, a DB write, a send): 1 ms to 10 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Stats:
    """A worker's counters, gauges and latency histograms by (name, label pairs): what its periodic log
    line, its `/metrics` endpoint (`cryptomon/exporter.py`) and the tests read. Cheap to bump from the
    hot path."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple], float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float | None]] = {}
        # Per (name, labels): a count per bucket (the last one +Inf), then the sum.
        self.histograms: dict[tuple[str, tuple], list[float]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self.values[(name, tuple(sorted(labels.items())))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge with labels, set by whoever measures it (e.g. consumer lag)."""
        self.values[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """One latency sample into the histogram `name`."""
        key = (name, tuple(sorted(labels.items())))
        counts = self.histograms.get(key)
        if counts is None:
            counts = self.histograms[key] = [0.0] * (len(BUCKETS) + 2)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        counts[-1] += seconds

    @contextlib.contextmanager
    def timed(self, name: str, **labels: str) -> Iterator[None]:
        """Observe how long the block takes (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(name, time.perf_counter() - started, **labels)

    def get(self, name: str, **labels: str) -> float:
        """A counter with exactly these labels (none: the unlabelled one), or a gauge's current value."""
        if name in self.gauges:
            return self.gauges[name]() or 0
        return self.values.get((name, tuple(sorted(labels.items()))), 0)

    def total(self, name: str) -> float:
        """A counter summed over its labels."""
        return sum(value for (key, _), value in self.values.items() if key == name)

    def gauge(self, name: str, read: Callable[[], float | None]) -> None:
        self.gauges[name] = read

    def summary(self) -> str:
        """`name=value` of every counter (summed over labels) and gauge, for a log line."""
        names = sorted({name for name, _ in self.values} | set(self.gauges))
        return ", ".join(
            f"{name}={_number(self.get(name) if name in self.gauges else self.total(name))}" for name in names
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class Worker:
    """The shape every long-running worker has.

    Subclasses implement `serve()`. A worker whose `graceful` is true watches `stopping` itself and
    returns (e.g. after finishing the message in hand); otherwise `stop()` cancels `serve()`, whose
    `finally` blocks clean up."""

    graceful = False

    def __init__(self) -> None:
        self.stats = Stats()
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    async def serve(self) -> None:
        raise NotImplementedError

    def consumers(self) -> list[tuple[str, str, str]]:
        """(stream, durable, label) of the JetStream consumers whose lag `/metrics` reports."""
        return []

    async def run(self) -> None:
        """Work until `stop()` (or cancellation); an error of `serve()` is raised."""
        if self.graceful:
            await self.serve()
            return
        serving = asyncio.create_task(self.serve())
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not serving.done():
                serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        if not serving.cancelled():
            serving.result()


async def until_one_ends(tasks: list[asyncio.Task], worker: str) -> None:
    """Wait while a worker's loops run. Each runs until cancelled, so one that ends, with an error or
    without, is raised: the worker restarts or its process exits for the supervisor, never a silent stop."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()
    ended = ", ".join(task.get_name() for task in done)
    raise RuntimeError(f"{worker}: a loop ended unexpectedly: {ended}")


async def run_until_signalled(
    worker: Worker,
    on_started: Callable[[], None] | None = None,
    *,
    alongside: Coroutine | None = None,
) -> None:
    """Run a worker in a management command: SIGINT and SIGTERM stop it; `on_started` once it is live.
    `alongside` runs while the worker does (its `/metrics` endpoint, `cryptomon.exporter.serve_worker`)."""
    loop = asyncio.get_running_loop()
    exporting = asyncio.create_task(alongside) if alongside is not None else None
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, worker.stop)
    announce = None
    if on_started is not None:

        async def wait_started() -> None:
            await worker.started.wait()
            on_started()

        announce = asyncio.create_task(wait_started())
    try:
        await worker.run()
    finally:
        for task in (announce, exporting):
            if task is not None:
                task.cancel()


def _reconnecting(function: Callable) -> Callable:
    """`function`, dropping the thread's connections after a database error so the retry reconnects."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (DatabaseError, InterfaceError):
            for connection in connections.all(initialized_only=True):
                connection.close()
            raise

    return call


class OwnThread:
    """A serial thread of ORM work of one's own, beside the shared one of `in_thread(serial=True)`: its calls
    run one after another in order on its own kept connection (dropped after a database error, as there),
    so a worker's bulky, less urgent writes never queue in front of its urgent ones (run_alerts' personal
    rules behind the global ones, docs/alerts.md). `close()` closes its connections and ends the thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def __call__(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        call = sync_to_async(_reconnecting(function), thread_sensitive=False, executor=self._executor)
        return await call(*args, **kwargs)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self(connections.close_all)
        self._executor.shutdown(wait=False)


async def in_thread(function: Callable, *args: Any, serial: bool = False, **kwargs: Any) -> Any:
    """Run ORM work off the event loop.

    By default in a pool thread, whose connection is closed afterwards (no idle sessions left behind by
    pool threads; calls run in parallel). `serial=True` runs it in the one thread-sensitive thread, so
    calls run one after another in order (writes stay ordered) on one kept connection, which is dropped
    after a database error so the retry reconnects (e.g. after a database restart)."""

    if serial:
        return await sync_to_async(_reconnecting(function), thread_sensitive=True)(*args, **kwargs)

    def call_and_close():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return await sync_to_async(call_and_close, thread_sensitive=False)()
