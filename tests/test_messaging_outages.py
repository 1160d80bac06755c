"""NATS going away and coming back, as every worker sees it through `cryptomon.messaging`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from pathlib import Path

from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, StreamConfig

from cryptomon import embedded, messaging
from tests.conftest import PrivateServer


async def eventually(check, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


def start_without_jetstream(nats: PrivateServer) -> subprocess.Popen:
    """The same address served by a NATS server whose JetStream is not up (as while one starts)."""
    binary = Path(sys.executable).parent / "nats-server"
    log = nats.var_dir / "logs" / "nats-plain.log"
    auth = embedded._Nats.auth_args(nats.var_dir)  # the same user and password as before the restart
    server = embedded._spawn([str(binary), *auth, "-a", "127.0.0.1", "-p", str(nats.port)], log)
    embedded._wait_for(lambda: embedded._port_open(nats.port), "NATS without JetStream", log)
    return server


async def test_a_pull_while_jetstream_is_unavailable_comes_back_empty_and_pulls_again_after(private_nats):
    """The server answers such a pull with status 503, which nats-py raises; it used to end run_alerts
    and restart run_metrics at every NATS restart."""
    nc, js = await messaging.connect_jetstream("test", private_nats.url, reconnect_time_wait=0.1)
    try:
        await messaging.ensure_consumer(
            js, "CANDLES", "outage-test", ["candles.1m.>"], ack_policy=AckPolicy.EXPLICIT
        )
        subscription = await js.pull_subscribe_bind("outage-test", "CANDLES")
        reconnects = nc.stats["reconnects"]
        private_nats.stop()
        plain = start_without_jetstream(private_nats)
        try:

            async def reconnected() -> bool:
                return nc.is_connected and nc.stats["reconnects"] > reconnects

            await eventually(reconnected)
            for _ in range(3):
                assert await messaging.fetch_available(subscription, 10, poll_seconds=5) == []
        finally:
            plain.terminate()
            plain.wait(10)
        private_nats.start()

        async def delivered() -> bool:
            try:  # JetStream may still be recovering its store: not yet, ask again
                await js.publish("candles.1m.BTCUSDT", b'{"v":1}', timeout=1)
            except (NatsError, TimeoutError):
                return False
            return bool(await messaging.fetch_available(subscription, 10, poll_seconds=1))

        await eventually(delivered)
    finally:
        await nc.close()


async def test_live_frames_are_dropped_and_counted_while_nats_is_away_then_flow_again(private_nats, caplog):
    caplog.set_level(logging.INFO, logger="cryptomon.messaging")
    publisher = await messaging.connect("test-live", private_nats.url, reconnect_time_wait=0.1)
    live = messaging.LiveFrames(publisher, "test-live")
    try:
        assert await live.publish("metrics.live.BTCUSDT", b"{}")
        private_nats.stop()

        async def disconnected() -> bool:
            return not publisher.is_connected

        await eventually(disconnected)
        buffered = publisher.pending_data_size
        assert not await live.publish("metrics.live.BTCUSDT", b"{}")
        assert not await live.publish("metrics.live.ETHUSDT", b"{}")
        assert (live.published_total, live.dropped_total) == (1, 2)
        assert "test-live: dropping live frames until NATS is back" in caplog.text
        assert publisher.pending_data_size == buffered, "a dropped frame must not wait in the client's buffer"

        private_nats.start()
        listener = await messaging.connect("test-listener", private_nats.url)
        try:
            received = await listener.subscribe("metrics.live.>")
            await listener.flush()

            async def connected() -> bool:
                return publisher.is_connected

            await eventually(connected)
            assert await live.publish("metrics.live.BTCUSDT", b'{"fresh":true}')
            assert (await received.next_msg(timeout=10)).data == b'{"fresh":true}'
        finally:
            await listener.close()
        assert "test-live: live frames flow again; 2 dropped while NATS was away" in caplog.text
    finally:
        await publisher.close()


async def test_publishes_nobody_waits_for_any_more_give_their_pending_ack_slots_back(private_nats):
    """nats-py never fails a publish whose ack is lost: a batch abandoned while its acks were awaited (a
    worker rebuilding after an outage) must not keep its slots, or publishing stops once they are taken."""
    nc, js = await messaging.connect_jetstream("test", private_nats.url)
    try:
        await js.add_stream(
            StreamConfig(name="SILENT", subjects=["silent.>"], no_ack=True)
        )  # acks never come
        futures = await messaging.publish_pipelined(
            js, [(f"silent.S{n}USDT", b"{}", f"S{n}USDT:0") for n in range(3)]
        )
        assert js.publish_async_pending() == 3
        waiting = asyncio.create_task(messaging.ack_errors(futures, timeout=3600))
        await asyncio.sleep(0)  # the wait has begun
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert all(future.cancelled() for future in futures)
        assert js.publish_async_pending() == 0
    finally:
        await nc.close()
