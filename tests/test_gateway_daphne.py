"""`/ws/alerts/` served by a real daphne process, as in production: back-pressure from a client that stops
reading reaches the socket's bounded send buffer (close 4008), and the server enforces the frame limits."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connections
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from cryptomon.embedded import free_port
from gateway import bridge, consumers

from .conftest import ROOT
from .test_gateway_consumer import cookie_headers, make_user, payload

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])


def database_url(variable: str, alias: str) -> str:
    """The URL of the test database behind `alias` (pytest-django renamed it), for the daphne process."""
    url = os.environ[variable]
    name = url.split("/")[3].split("?")[0]
    return url.replace(f"/{name}?", f"/{connections[alias].settings_dict['NAME']}?")


@pytest.fixture
def daphne(redis_client):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url("DATABASE_URL", "default"),
        "TIMESERIES_DATABASE_URL": database_url("TIMESERIES_DATABASE_URL", "timeseries"),
        "WS_SEND_BUFFER": "20",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-v",
            "0",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "cryptomon.asgi:application",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert process.poll() is None, "daphne exited"
        assert time.monotonic() < deadline, "daphne did not listen"
        time.sleep(0.1)
    yield port
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


async def open_client(port: int, user):
    headers = await database_sync_to_async(cookie_headers)(user)
    cookie = next(value.decode() for name, value in headers if name == b"cookie")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: back-pressure comes soon
    client.connect(("127.0.0.1", port))
    ws = await connect(
        f"ws://127.0.0.1:{port}/ws/alerts/",
        sock=client,
        origin=f"http://127.0.0.1:{port}",
        additional_headers={"Cookie": cookie},
        max_queue=1,
        max_size=None,
        ping_interval=None,
    )
    kinds = [(await ws.recv())[:20] for _ in range(2)]
    assert kinds == ['{"type":"status","fe', '{"type":"snapshot","']
    return ws


async def test_under_daphne_a_client_that_stops_reading_is_closed_with_4008(daphne):
    me = await database_sync_to_async(make_user)("stuck")
    ws = await open_client(daphne, me)
    layer = get_channel_layer()
    # 12 MB: more than the kernel buffers on both ends of a loopback connection hold (4 MB each here).
    flood = [payload(symbol=f"S{n}USDT", description="x" * 20_000) for n in range(600)]
    for alert in flood:
        await layer.group_send(bridge.ALERTS_GROUP, bridge.alerts_message([alert]))
    async with asyncio.timeout(60):  # the server gave up on the socket: its slot is released
        while await consumers.open_sockets(me.pk):
            await asyncio.sleep(0.1)
    received = 0
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.recv()
            received += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
    assert received < len(flood)  # it was cut off, not buffered without bound


async def test_under_daphne_a_reading_client_gets_every_alert_and_big_frames_get_an_error(daphne):
    me = await database_sync_to_async(make_user)("reader")
    ws = await open_client(daphne, me)
    layer = get_channel_layer()
    sent = [payload(symbol=f"S{n}USDT") for n in range(100)]
    for alert in sent:
        await layer.group_send(bridge.ALERTS_GROUP, bridge.alerts_message([alert]))
    got = []
    async with asyncio.timeout(30):
        while len(got) < len(sent):
            got.append((await ws.recv())[:16])
    assert got == ['{"type":"alert",'] * len(sent)
    await ws.send('{"type":"ping","pad":"' + "x" * 70_000 + '"}')
    assert (await ws.recv()).startswith('{"type":"error"')
    await ws.send('{"type":"ping"}')
    assert await ws.recv() == '{"type":"pong"}'
    await ws.send("x" * (1024 * 1024 + 1))
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
