"""`/ws/alerts/` cannot be used as an amplifier (docs/security.md): anonymous sockets are
capped per client address, subscribes are rate limited per socket, and subscription lists are bounded."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from cryptomon.asgi import application
from gateway import consumers

from .test_gateway_consumer import (
    ORIGIN,
    alerts_received,
    close_code,
    connect_ready,
    cookie_headers,
    make_user,
    payload,
    publish,
    receive,
    subscribe,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])


@pytest.fixture(autouse=True)
def _fast(settings, redis_client):
    settings.WS_RESYNC_JITTER_SECONDS = 0
    settings.ALLOW_ANONYMOUS_DASHBOARD = False


def from_address(host: str):
    """The ASGI application as a server would call it for a client at `host` (daphne sets `client`)."""

    async def app(scope, receive, send):
        return await application({**scope, "client": [host, 40000]}, receive, send)

    return app


async def open_from(host: str) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(from_address(host), "/ws/alerts/", headers=[ORIGIN])
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def test_anonymous_sockets_are_capped_per_client_address_with_4429(settings):
    settings.ALLOW_ANONYMOUS_DASHBOARD = True
    settings.WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS = 2
    first, _, _ = await connect_ready([ORIGIN], from_address("203.0.113.7"))
    second, _, _ = await connect_ready([ORIGIN], from_address("203.0.113.7"))
    third = await open_from("203.0.113.7")
    assert await close_code(third) == consumers.CLOSE_TOO_MANY_SOCKETS == 4429
    await third.disconnect()
    assert await consumers.open_anonymous_sockets("203.0.113.7") == 2
    neighbour, _, _ = await connect_ready([ORIGIN], from_address("203.0.113.8"))  # per address
    await first.disconnect()
    again, _, _ = await connect_ready([ORIGIN], from_address("203.0.113.7"))  # a closed socket frees its slot
    for socket in (second, neighbour, again):
        await socket.disconnect()
    assert await consumers.open_anonymous_sockets("203.0.113.7") == 0


async def test_ipv6_clients_are_counted_per_64_prefix(settings):
    settings.ALLOW_ANONYMOUS_DASHBOARD = True
    settings.WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS = 1
    first, _, _ = await connect_ready([ORIGIN], from_address("2001:db8:1:2::1"))
    same_network = await open_from("2001:db8:1:2:ffff::9")
    assert await close_code(same_network) == 4429
    await same_network.disconnect()
    other_network, _, _ = await connect_ready([ORIGIN], from_address("2001:db8:1:3::1"))
    for socket in (first, other_network):
        await socket.disconnect()


async def test_signed_in_sockets_are_capped_per_user_not_per_address(settings):
    settings.WS_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS = 1
    me = await database_sync_to_async(make_user)("office")
    headers = await database_sync_to_async(cookie_headers)(me)
    tabs = [(await connect_ready(headers, from_address("198.51.100.1")))[0] for _ in range(3)]
    for socket in tabs:
        await socket.disconnect()


async def test_subscribes_beyond_the_burst_get_an_error_naming_the_limit_and_change_nothing(settings):
    settings.WS_SUBSCRIBE_BURST = 3
    settings.WS_SUBSCRIBES_PER_MINUTE = 0.01  # no token comes back during the test
    me = await database_sync_to_async(make_user)("looper")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    for _ in range(3):
        await subscribe(socket, symbols=["BTCUSDT"])
    await socket.send_json_to({"type": "subscribe", "symbols": ["ETHUSDT"]})
    error = await receive(socket)
    assert error["type"] == "error"
    assert "WS_SUBSCRIBE_BURST" in error["error"] and "not applied" in error["error"], error
    btc, eth = payload(symbol="BTCUSDT"), payload(symbol="ETHUSDT")
    await publish(eth)
    await publish(btc)
    assert await alerts_received(socket) == [btc["id"]]  # still the third subscription
    await socket.send_json_to({"type": "ping"})
    assert await receive(socket) == {"type": "pong"}  # the connection stays
    await socket.disconnect()


async def test_a_malformed_subscribe_costs_no_token(settings):
    settings.WS_SUBSCRIBE_BURST = 1
    settings.WS_SUBSCRIBES_PER_MINUTE = 0.01
    me = await database_sync_to_async(make_user)("typo")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    for _ in range(3):
        await socket.send_json_to({"type": "subscribe", "symbols": "BTCUSDT"})
        assert "'symbols' must be a list" in (await receive(socket))["error"]
    await subscribe(socket, symbols=["BTCUSDT"])
    await socket.disconnect()


async def test_subscription_lists_are_bounded_and_the_error_names_the_field():
    me = await database_sync_to_async(make_user)("hoarder")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    too_many = [
        ({"symbols": [f"S{n}USDT" for n in range(1001)]}, "'symbols' has 1001 items; at most 1000"),
        ({"rules": [f"rule_{n}" for n in range(501)]}, "'rules' has 501 items; at most 500"),
        ({"symbols": ["X" * 65]}, "'symbols' must hold non-empty strings of at most 64 characters"),
        ({"rules": ["r" * 121]}, "'rules' must hold non-empty strings of at most 120 characters"),
    ]
    for fields, message in too_many:
        await socket.send_to(text_data=json.dumps({"type": "subscribe", **fields}))
        frame = await receive(socket)
        assert frame == {"type": "error", "error": message}
    await subscribe(socket, symbols=[f"S{n}USDT" for n in range(1000)])
    await subscribe(socket, rules=["r" * 120] * 500)
    await socket.disconnect()


# --- sockets end with the session -----------------------------------------------------------------------


def session(user) -> tuple[Client, list[tuple[bytes, bytes]]]:
    """A signed-in browser of `user`: its test client and the headers its sockets carry."""
    client = Client()
    client.force_login(user)
    return client, [ORIGIN, (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]


async def still_open(socket) -> bool:
    await socket.send_json_to({"type": "ping"})
    return await receive(socket) == {"type": "pong"}


async def test_signing_out_closes_that_sessions_sockets_with_4403_and_no_others():
    me = await database_sync_to_async(make_user)("leaver")
    laptop, laptop_headers = await database_sync_to_async(session)(me)
    _, phone_headers = await database_sync_to_async(session)(me)
    tabs = [(await connect_ready(laptop_headers))[0] for _ in range(2)]
    phone, _, _ = await connect_ready(phone_headers)
    response = await database_sync_to_async(laptop.post)("/logout/")
    assert response.status_code == 302
    for tab in tabs:
        assert await close_code(tab) == consumers.CLOSE_SESSION_ENDED == 4403
        await tab.disconnect()
    assert await still_open(phone)  # signing out on the laptop leaves the phone signed in
    await phone.disconnect()
    assert await consumers.open_sockets(me.pk) == 0


async def test_deactivating_a_user_closes_every_socket_of_theirs_with_4403():
    me = await database_sync_to_async(make_user)("banned")
    other = await database_sync_to_async(make_user)("bystander")
    mine = [(await connect_ready((await database_sync_to_async(session)(me))[1]))[0] for _ in range(2)]
    theirs, _, _ = await connect_ready((await database_sync_to_async(session)(other))[1])

    def deactivate():
        me.is_active = False
        me.save()

    await database_sync_to_async(deactivate)()
    for socket in mine:
        assert await close_code(socket) == 4403
        await socket.disconnect()
    assert await still_open(theirs)
    await theirs.disconnect()


async def test_deleting_a_user_closes_their_sockets_with_4403():
    me = await database_sync_to_async(make_user)("deleted")
    socket, _, _ = await connect_ready((await database_sync_to_async(session)(me))[1])
    await database_sync_to_async(me.delete)()
    assert await close_code(socket) == 4403
    await socket.disconnect()
