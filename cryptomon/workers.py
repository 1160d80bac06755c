"""What the long-running workers (collector, metrics, alerts, the gateway bridge) share: one lifecycle, one
stats type, one way to call the ORM from async code.

Lifecycle: `await worker.run()` works until `worker.stop()` is called (or the task running it is
cancelled); `worker.started` is set once it is live (subscribed, consuming). Each management command runs
its worker with `run_until_signalled`, which turns SIGINT/SIGTERM into `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, connections


class Stats:
    """A worker's counters and gauges by (name, label pairs): what its periodic log line, its `/metrics`
    endpoint and the tests read. Cheap to bump from the hot path."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple], float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float | None]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self.values[(name, tuple(sorted(labels.items())))] += amount

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

    def render(self, help_texts: Mapping[str, tuple[str, str]] | None = None) -> str:
        """Prometheus text format; `help_texts` maps a name to (kind, help)."""
        help_texts = help_texts or {}
        lines: list[str] = []
        names = sorted({name for name, _ in self.values} | set(self.gauges))
        for name in names:
            kind, text = help_texts.get(name, ("gauge" if name in self.gauges else "counter", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if name in self.gauges:
                lines.append(f"{name} {self.gauges[name]()}")
                continue
            for (key, labels), value in sorted(self.values.items()):
                if key == name:
                    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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


async def run_until_signalled(worker: Worker, on_started: Callable[[], None] | None = None) -> None:
    """Run a worker in a management command: SIGINT and SIGTERM stop it; `on_started` once it is live."""
    loop = asyncio.get_running_loop()
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
        if announce is not None:
            announce.cancel()


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
