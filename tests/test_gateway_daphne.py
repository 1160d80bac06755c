"""`/ws/alerts/` served by a real daphne process, as in production: back-pressure from a client that stops
reading reaches the socket's bounded send buffer (close 4008), and the server enforces the frame limits."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connections
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from cryptomon.embedded import free_port
from gateway import bridge, consumers, serving

from .conftest import ROOT
from .test_gateway_consumer import cookie_headers, make_user, payload

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])


def database_url(variable: str, alias: str) -> str:
    """The URL of the test database behind `alias` (pytest-django renamed it), for the daphne process."""
    url = os.environ[variable]
    name = url.split("/")[3].split("?")[0]
    return url.replace(f"/{name}?", f"/{connections[alias].settings_dict['NAME']}?")


def start_daphne(workers: int = 1, **environment: str):
    """`workers` daphne processes on one listening socket (as `run_monitor --web-workers`); yields the port."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url("DATABASE_URL", "default"),
        "TIMESERIES_DATABASE_URL": database_url("TIMESERIES_DATABASE_URL", "timeseries"),
        "WS_SEND_BUFFER": "20",
        "LOG_LEVEL": "WARNING",
        **environment,
    }
    listener = serving.listen("127.0.0.1", port)
    processes = [
        subprocess.Popen(
            serving.daphne_argv(listener, "-v", "0"), cwd=ROOT, env=env, pass_fds=(listener.fileno(),)
        )
        for _ in range(workers)
    ]
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 60
        while True:  # the socket listens before daphne runs: wait for an answer
            assert all(p.poll() is None for p in processes), "daphne exited"
            assert time.monotonic() < deadline, "daphne did not answer"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        listener.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def daphne(redis_client):
    yield from start_daphne()


@pytest.fixture
def two_daphnes(redis_client):
    yield from start_daphne(workers=2, WS_SEND_BUFFER="1000", WS_MAX_SOCKETS_PER_USER="50")


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


async def alert_ids(ws, count: int) -> list[str]:
    """The ids of the next `count` alerts on `ws`, from `alert` and `alerts` frames alike, in arrival order."""
    ids: list[str] = []
    async with asyncio.timeout(60):
        while len(ids) < count:
            frame = json.loads(await ws.recv())
            if frame["type"] == "alert":
                ids.append(frame["alert"]["id"])
            elif frame["type"] == "alerts":
                ids.extend(alert["id"] for alert in frame["alerts"])
    return ids


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
    assert await alert_ids(ws, len(sent)) == [alert["id"] for alert in sent]
    await ws.send('{"type":"ping","pad":"' + "x" * 70_000 + '"}')
    assert (await ws.recv()).startswith('{"type":"error"')
    await ws.send('{"type":"ping"}')
    assert await ws.recv() == '{"type":"pong"}'
    await ws.send("x" * (1024 * 1024 + 1))
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_with_two_web_processes_every_socket_gets_every_alert_exactly_once_and_in_order(two_daphnes):
    users = [await database_sync_to_async(make_user)(f"viewer{n}") for n in range(3)]
    sockets = [await open_client(two_daphnes, users[n % len(users)]) for n in range(12)]
    layer = get_channel_layer()
    sent = [payload(symbol=f"S{n % 7}USDT", minutes_ago=1 + n) for n in range(150)]
    for start in range(0, len(sent), 10):  # singles and batches, as the bridge sends them
        chunk = sent[start : start + 10]
        for message in [chunk] if start % 20 else [[alert] for alert in chunk]:
            await layer.group_send(bridge.ALERTS_GROUP, bridge.alerts_message(message))
    expected = [alert["id"] for alert in sent]
    received = await asyncio.gather(*(alert_ids(ws, len(sent)) for ws in sockets))
    assert all(ids == expected for ids in received)
    for ws in sockets:  # and nothing more: the ping's answer is the next frame
        await ws.send('{"type":"ping"}')
        assert await ws.recv() == '{"type":"pong"}'
        await ws.close()
