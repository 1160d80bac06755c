"""Clients and streams on a real 3-node NATS JetStream cluster (docs/operations.md "Scale").

The whole pipeline through a leader's death is tests/test_cluster.py (`make cluster-test`); these are the
quick checks of the pieces it stands on: the replica setting, and clients that fail over between nodes.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from nats.js.api import StreamConfig

from cryptomon import embedded, messaging
from cryptomon.contract import subjects
from cryptomon.health import mask_url
from tests.conftest import run_manage
from tests.nats_cluster import NatsCluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(tmp_path):
    cluster = NatsCluster(tmp_path, size=3)
    try:
        cluster.start()
        asyncio.run(cluster.wait_ready())
        yield cluster
    finally:
        cluster.stop()


async def _replicas_current(js, replicas: int) -> bool:
    for name in subjects.STREAMS:
        info = await js.stream_info(name)
        peers = info.cluster.replicas or [] if info.cluster else []
        if info.config.num_replicas != replicas or len(peers) != replicas - 1:
            return False
        if not all(peer.current for peer in peers):
            return False
    return True


async def test_streams_take_the_replica_setting_and_grow_from_one_copy_to_three_keeping_their_messages(
    cluster,
):
    nc = await cluster.connect()
    try:
        js = nc.jetstream(timeout=10)
        created = await messaging.ensure_streams(js, replicas=1)
        assert created == [f"created {name}" for name in subjects.STREAMS]
        await js.publish(subjects.candle_subject("BTCUSDT"), b"{}", headers={"Nats-Msg-Id": "one"})

        corrected = await messaging.ensure_streams(js, replicas=3)

        assert corrected == [f"corrected {name}" for name in subjects.STREAMS]
        deadline = asyncio.get_running_loop().time() + 60
        while not await _replicas_current(js, 3):
            assert asyncio.get_running_loop().time() < deadline, (
                "the streams never reached 3 current replicas"
            )
            await asyncio.sleep(0.2)
        assert (await js.stream_info(subjects.CANDLES_STREAM)).state.messages == 1
        assert await messaging.ensure_streams(js, replicas=3) == []  # nothing left to correct
    finally:
        await nc.close()


async def test_a_client_given_one_node_fails_over_to_the_nodes_the_cluster_tells_it_about(cluster):
    """Servers a client learns from the cluster come without credentials: it must use the URL's for them."""
    first = cluster.nodes[0]
    nc = await messaging.connect(
        "one-node", embedded._Nats.url(cluster.var_dir, first.port), reconnect_time_wait=0.1
    )
    try:
        js = nc.jetstream(timeout=10)
        await messaging.ensure_streams(js, replicas=3)
        await asyncio.to_thread(cluster.kill_node, first)

        async def published() -> bool:
            try:
                await js.publish(subjects.candle_subject("ETHUSDT"), b"{}", headers={"Nats-Msg-Id": "after"})
            except Exception:
                return False
            return True

        deadline = asyncio.get_running_loop().time() + 60
        while not await published():
            assert asyncio.get_running_loop().time() < deadline, (
                "the client never failed over to another node"
            )
            await asyncio.sleep(0.2)
        assert nc.connected_url.port != first.port
    finally:
        await nc.close()


async def test_after_a_message_that_was_not_stored_none_later_on_its_subject_is_sent(jetstream):
    """How a stream leader's death must look to the alert engine: a hole, never later bars before it."""
    _nc, js = jetstream
    await js.add_stream(StreamConfig(name="SILENT", subjects=["silent.>"], no_ack=True))  # acks never come
    try:
        publisher = messaging.OrderedPublisher(js, timeout=0.5)
        lost = [await publisher.publish("silent.AUSDT", b"{}", f"AUSDT:{n}") for n in range(3)]
        other = await publisher.publish(subjects.metrics_subject("BUSDT"), b"{}", "BUSDT:0")

        errors = await messaging.ack_errors([*lost, other], None)

        assert isinstance(errors[0], TimeoutError)  # its ack never came
        assert all(isinstance(error, messaging.NotSentAfterFailure) for error in errors[1:3])
        assert errors[3] is None  # another subject is not held up
        assert (await js.stream_info("SILENT")).state.messages == 1  # the later two were never sent
        late = await publisher.publish("silent.AUSDT", b"{}", "AUSDT:3")  # after the failure was known
        assert isinstance((await messaging.ack_errors([late], None))[0], messaging.NotSentAfterFailure)
        assert (await js.stream_info("SILENT")).state.messages == 1
    finally:
        await js.delete_stream("SILENT")


async def test_a_subjects_messages_are_stored_in_the_order_they_were_published(jetstream):
    _nc, js = jetstream
    publisher = messaging.OrderedPublisher(js, timeout=10)
    subject = subjects.metrics_subject("AUSDT")
    futures = [await publisher.publish(subject, str(n).encode(), f"AUSDT:{n}") for n in range(50)]
    assert await messaging.ack_errors(futures, None) == [None] * 50
    stored = [
        (await js.get_msg(subjects.METRICS_STREAM, ack.seq)).data for ack in await asyncio.gather(*futures)
    ]
    assert stored == [str(n).encode() for n in range(50)]


def test_a_cluster_url_is_masked_server_by_server():
    url = "nats://cryptomon:s3cret@10.0.0.1:4222,nats://cryptomon:s3cret@10.0.0.2:4222"
    assert mask_url(url) == "nats://cryptomon:***@10.0.0.1:4222,nats://cryptomon:***@10.0.0.2:4222"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NATS_URL", "nats://a:4222,,nats://b:4222", "NATS_URL has an empty entry"),
        ("NATS_URL", "nats://u:hunter2-secret@a:4222,b:4222", "NATS_URL must be a nats:// or tls:// URL"),
        ("NATS_STREAM_REPLICAS", "7", "NATS_STREAM_REPLICAS must be at most 5"),
        ("NATS_STREAM_REPLICAS", "0", "NATS_STREAM_REPLICAS must be at least 1"),
    ],
)
def test_a_bad_cluster_setting_is_named_in_one_line(variable, value, message):
    env = {
        "DATABASE_URL": "postgresql://u@localhost/db",
        "SECRET_KEY": "x",
        "CRYPTOMON_EMBEDDED": "",
        variable: value,
    }
    result = run_manage("check", env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "hunter2-secret" not in result.stderr


def test_check_infra_reaches_a_cluster_through_its_comma_separated_url_and_shows_no_password(cluster):
    result = run_manage("check_infra", env={"NATS_URL": cluster.url, "NATS_STREAM_REPLICAS": "3"})
    # (The databases may fail here: the session's are not migrated outside the test database.)
    nats_lines = [line for line in result.stdout.splitlines() if "NATS" in line or "stream" in line]
    assert "✓ NATS" in result.stdout and "✓ stream CANDLES" in result.stdout, result.stdout + result.stderr
    assert all(line.startswith("✓") for line in nats_lines), nats_lines
    assert embedded.credentials(cluster.var_dir)["nats"] not in result.stdout + result.stderr


async def test_candles_in_hand_when_the_publisher_stops_go_out_first_when_it_drains(private_nats):
    """A collector stopping mid-batch (its shutdown) must not leave a hole behind the candles its drain
    sends: the batch it had in hand goes back to the front of the queue."""
    from collector.binance import Kline
    from collector.publisher import Publisher
    from cryptomon.workers import Stats

    nc, js = await messaging.connect_jetstream("test", private_nats.url, reconnect_time_wait=0.1)
    try:
        publisher = Publisher(nc, js, Stats(), batch_size=3, ack_timeout=60)
        candles = [Kline.filled("AUSDT", minute * 60_000, "1", 0) for minute in range(6)]
        for candle in candles:
            await publisher.put(candle)
        private_nats.stop()  # the first batch's acks never come
        run = asyncio.create_task(publisher.run())
        while publisher.in_flight == 0:
            await asyncio.sleep(0.01)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        assert [candle.open_time for candle in publisher.queue] == [c.open_time for c in candles]

        private_nats.start()
        drain = asyncio.create_task(publisher.run())
        assert await publisher.drain(timeout=60)
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        info = await js.stream_info(subjects.CANDLES_STREAM, subjects_filter=subjects.candle_subject("AUSDT"))
        assert info.state.subjects == {subjects.candle_subject("AUSDT"): 6}
    finally:
        await nc.close()
