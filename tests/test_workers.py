"""The shape the long-running workers share: run until stop(), `started`, one stats type."""

from __future__ import annotations

import asyncio

import pytest

from cryptomon.workers import Stats, Worker


class Sleeper(Worker):
    """Works until cancelled, as the collector and the metrics worker do."""

    def __init__(self) -> None:
        super().__init__()
        self.cleaned_up = False

    async def serve(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cleaned_up = True


class Finisher(Worker):
    """Watches `stopping` itself and finishes what it has in hand, as the alert worker and the bridge do."""

    graceful = True

    async def serve(self) -> None:
        self.started.set()
        while not self.stopping.is_set():
            await asyncio.sleep(0.01)
        self.stats.inc("finished_total")


class Failer(Worker):
    async def serve(self) -> None:
        raise RuntimeError("broken")


@pytest.mark.parametrize("kind", [Sleeper, Finisher])
def test_a_worker_runs_until_stop_and_says_when_it_started(kind):
    async def scenario() -> Worker:
        worker = kind()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 5)
        assert not task.done()
        worker.stop()
        await asyncio.wait_for(task, 5)
        return worker

    worker = asyncio.run(scenario())
    assert getattr(worker, "cleaned_up", True)
    assert worker.stats.get("finished_total") == (1 if kind is Finisher else 0)


def test_a_workers_error_comes_out_of_run():
    with pytest.raises(RuntimeError, match="broken"):
        asyncio.run(Failer().run())


def test_stats_count_by_label_sum_over_labels_and_read_gauges():
    stats = Stats()
    stats.inc("candles_total", source="ws")
    stats.inc("candles_total", 2, source="rest")
    stats.gauge("lag_ms", lambda: 250)
    assert stats.get("candles_total", source="rest") == 2 and stats.total("candles_total") == 3
    assert stats.get("lag_ms") == 250 and stats.get("never_total") == 0
    assert stats.summary() == "candles_total=3, lag_ms=250"
