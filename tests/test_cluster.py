"""The pipeline on a 3-node NATS JetStream cluster loses nothing when a stream leader dies (docs/operations.md "Scale").

The whole product runs as in tests/test_end_to_end.py, but on a real 3-node cluster (tests/nats_cluster.py)
with every stream at 3 replicas, and with two shards of each engine (`--shard k/2`). Mid-run the node that
leads the CANDLES stream is killed with SIGKILL; the pipeline keeps going on the other two, the node comes
back and catches up, and then the two equalities the design promises must still hold: `candles_1m` equals
the venue's klines (nothing lost), and `alert_history` equals the backtest of `candles_1m` (no alert lost
or doubled).

Slow (a cluster and eleven processes on one machine), so it runs with `make cluster-test`, not in the
default test command (pyproject.toml deselects the `cluster` marker).
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.e2e_system import System
from tests.nats_cluster import NatsCluster
from tests.test_end_to_end import (
    SPEED,
    SYMBOLS,
    add_rules,
    assert_candles_equal_venue,
    assert_history_equals_backtest,
    let_market_run,
    scenario_files,
    stop_collecting_and_drain,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

REPLICAS = 3
SHARDS = 2


class ClusterSystem(System):
    """The product with NATS as a 3-node cluster and the metrics and alerts engines as SHARDS shards each."""

    own_servers = ("postgres", "valkey")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cluster = NatsCluster(self.var_dir, size=REPLICAS)

    @property
    def nats_url(self) -> str:
        return self.cluster.url

    def start_servers(self) -> None:
        (self.var_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.cluster.start()
        asyncio.run(self.cluster.wait_ready(REPLICAS))
        super().start_servers()
        self.env.update(NATS_STREAM_REPLICAS=str(REPLICAS), NATS_RECONNECT_WAIT_SECONDS="0.2")

    def define(self) -> None:
        super().define()
        for kind in ("metrics", "alerts"):
            single = self.processes.pop(kind)
            for k in range(SHARDS):
                shard = type(single)(
                    f"{kind}-{k}",
                    [*single.argv, "--shard", f"{k}/{SHARDS}"],
                    self.var_dir / "logs" / f"{kind}-{k}.log",
                )
                self.processes[shard.name] = shard

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.cluster.stop()

    def newest_candle(self) -> int:
        rows = self.sql("SELECT coalesce(max(extract(epoch FROM time) * 1000), 0)::bigint FROM candles_1m")
        return rows[0][0]

    async def figures(self) -> dict:
        """Messages stored per stream and the consumers' redeliveries, as JetStream reports them."""
        nc = await self.cluster.connect()
        try:
            js = nc.jetstream(timeout=10)
            stored, redelivered = {}, 0
            for stream in ("CANDLES", "METRICS", "ALERTS"):
                stored[stream] = (await js.stream_info(stream)).state.messages
                for consumer in await js.consumers_info(stream):
                    redelivered += consumer.num_redelivered or 0
            return {"stored": stored, "redelivered": redelivered}
        finally:
            await nc.close()

    async def in_stream(self, stream: str, wildcard: str) -> dict[str, int]:
        """Per symbol, the messages a stream holds (each minute once: JetStream drops duplicates by id)."""
        nc = await self.cluster.connect()
        try:
            info = await nc.jetstream(timeout=10).stream_info(stream, subjects_filter=wildcard)
            return {
                subject.rsplit(".", 1)[1]: count for subject, count in (info.state.subjects or {}).items()
            }
        finally:
            await nc.close()

    def per_symbol(self, table: str, where: str = "TRUE") -> dict[str, int]:
        return dict(self.sql(f"SELECT symbol, count(*) FROM {table} WHERE {where} GROUP BY symbol"))

    def log_total(self, pattern: str) -> int:
        return sum(self.log_count(name, pattern) for name in self.processes)


@pytest.fixture
def system(tmp_path):
    system = ClusterSystem(tmp_path / "cluster", symbols=SYMBOLS, speed=SPEED, scenarios=scenario_files())
    try:
        system.start_servers()
        add_rules(system)
        system.start_all()
        yield system
    finally:
        system.stop()


def test_killing_the_stream_leader_loses_and_doubles_nothing(system):
    started = time.monotonic()
    let_market_run(system, 10)
    system.wait_until(lambda: system.newest_candle() > 0, "the first candles stored", 120)

    leaders = asyncio.run(system.cluster.stream_leaders())
    victim = system.cluster.node(leaders["CANDLES"])
    before = system.newest_candle()
    killed_at = time.monotonic()
    system.cluster.kill_node(victim)
    new_leaders = system.wait_until(
        lambda: _led_elsewhere(asyncio.run(system.cluster.stream_leaders()), victim.name),
        f"every stream led by a node other than the killed {victim.name}",
        120,
    )
    failover = time.monotonic() - killed_at
    let_market_run(system, 5)
    system.wait_until(lambda: system.newest_candle() > before, f"candles stored with {victim.name} dead", 120)

    system.cluster.start_node(victim)
    asyncio.run(system.cluster.wait_ready(REPLICAS))
    let_market_run(system, 5)

    stop_collecting_and_drain(system)
    # Every candle the collector got into JetStream was stored, and every stored bar reached the alert
    # engines (none skipped by a rebuild): each symbol's minutes once in the stream and once in the table.
    assert asyncio.run(system.in_stream("CANDLES", "candles.1m.>")) == system.per_symbol("candles_1m")
    assert_candles_equal_venue(system)
    assert asyncio.run(system.in_stream("METRICS", "metrics.calculated.>")) == system.per_symbol(
        "metrics_calculated", "timeframe = '5m'"
    )
    alerts = assert_history_equals_backtest(system)
    assert alerts > 0
    figures = asyncio.run(system.figures())
    print(
        f"cluster figures: killed {victim.name} (leader of "
        f"{', '.join(s for s, n in leaders.items() if n == victim.name)}); new leaders {new_leaders}; "
        f"failover {failover:.1f} s; stored {figures['stored']}; alerts {alerts}; "
        f"consumer redeliveries {figures['redelivered']}; "
        f"worker resumes {system.log_total('unacknowledged messages redelivered')}; "
        f"metrics rebuilds {system.log_total('rebuilding')}; "
        f"collector publish retries {system.log_count('collector', 'JetStream publish failed')}; "
        f"pulls answered 503 {system.log_total('JetStream unavailable (503)')}; "
        f"reconnects {system.log_total('): reconnected')}; "
        f"ack timeouts {_count(system, r'no JetStream ack within')}; "
        f"total {time.monotonic() - started:.0f} s"
    )


def _led_elsewhere(leaders: dict[str, str | None], dead: str) -> dict | None:
    return leaders if all(leader and leader != dead for leader in leaders.values()) else None


def _count(system: ClusterSystem, pattern: str) -> int:
    return sum(
        len(re.findall(pattern, process.log.read_text(errors="replace")))
        for process in system.processes.values()
        if process.log.exists()
    )
