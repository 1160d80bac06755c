"""`/ws/alerts/` (docs/contract.md §10) through the full ASGI application, real PostgreSQL and Redis channel layer."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client
from prometheus_client import REGISTRY

from alerts import services as alert_services
from alerts.models import AlertHistory, UserSettings
from cryptomon.asgi import application
from gateway import bridge, consumers

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])

ORIGIN = (b"origin", b"http://localhost")


@pytest.fixture(autouse=True)
def _fast(settings, redis_client):
    settings.WS_RESYNC_JITTER_SECONDS = 0
    settings.GATEWAY_TICK_SECONDS = 0.2
    settings.ALLOW_ANONYMOUS_DASHBOARD = False


def make_user(name: str, **prefs):
    user = get_user_model().objects.create_user(name, password="pw-" + name)
    if prefs:
        UserSettings.objects.create(user=user, **prefs)
    return user


def cookie_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    return [ORIGIN, (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]


def payload(
    rule="futures_pioneer_bull", symbol="BTCUSDT", minutes_ago=1, owner=None, volume_1d=5e7, **extra
) -> dict:
    open_time = int((datetime.now(UTC) - timedelta(minutes=minutes_ago)).timestamp()) // 60 * 60_000
    return {
        "v": 1,
        "id": f"{rule}:{symbol}:{open_time}",
        "rule": rule,
        "rule_name": rule,
        "severity": "info",
        "direction": "bull",
        "symbol": symbol,
        "open_time": open_time,
        "triggered_at": open_time + 61_000,
        "price": 100.0,
        "description": "",
        "metrics": {"change_5m": 1.5, "volume_1d": volume_1d},
        "owner": owner,
        "late": False,
        **extra,
    }


def store(p: dict) -> dict:
    """Insert a payload into alert_history the way run_alerts would, and return the stored payload."""
    row = AlertHistory.objects.create(
        rule=p["rule"],
        rule_name=p["rule_name"],
        severity=p["severity"],
        direction=p["direction"],
        symbol=p["symbol"],
        time=datetime.fromtimestamp(p["open_time"] / 1000, UTC),
        triggered_at=datetime.fromtimestamp(p["triggered_at"] / 1000, UTC),
        price=p["price"],
        description=p["description"],
        metrics=p["metrics"],
        owner_id=p["owner"],
        late=p["late"],
    )
    return row.to_payload()


async def publish(p: dict) -> None:
    """What the bridge does with an `alerts.triggered` message."""
    await get_channel_layer().group_send(bridge.ALERTS_GROUP, bridge.alerts_message([p]))


async def open_socket(headers, app=application) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(app, "/ws/alerts/", headers=headers)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def receive(socket, timeout: float = 5) -> dict:
    return await socket.receive_json_from(timeout=timeout)


async def connect_ready(headers, app=application) -> tuple[WebsocketCommunicator, dict, dict]:
    """Open a socket and read the two frames every connection starts with: status, then snapshot."""
    socket = await open_socket(headers, app)
    status = await receive(socket)
    snapshot = await receive(socket)
    assert status["type"] == "status"
    assert snapshot["type"] == "snapshot"
    return socket, status, snapshot


async def close_code(socket, timeout: float = 5) -> int:
    output = await socket.receive_output(timeout)
    assert output["type"] == "websocket.close", output
    return output.get("code")


async def subscribe(socket, **fields) -> dict:
    await socket.send_json_to({"type": "subscribe", **fields})
    frame = await receive(socket)
    assert frame["type"] == "snapshot", frame
    return frame


async def alerts_received(socket, quiet: float = 0.4) -> list[str]:
    """Ids of the alert frames that arrive until the socket is quiet."""
    ids = []
    while not await socket.receive_nothing(timeout=quiet):
        frame = await receive(socket)
        if frame["type"] == "alert":
            ids.append(frame["alert"]["id"])
        elif frame["type"] == "alerts":
            ids.extend(alert["id"] for alert in frame["alerts"])
    return ids


async def test_an_anonymous_socket_is_closed_with_4401():
    socket = await open_socket([ORIGIN])
    assert await close_code(socket) == 4401
    await socket.disconnect()


async def test_a_foreign_origin_is_refused_at_the_handshake():
    user = await database_sync_to_async(make_user)("origin")
    headers = [h for h in await database_sync_to_async(cookie_headers)(user) if h[0] != b"origin"]
    socket = WebsocketCommunicator(
        application, "/ws/alerts/", headers=[*headers, (b"origin", b"http://evil.example")]
    )
    connected, _ = await socket.connect(timeout=5)
    assert not connected
    socket = WebsocketCommunicator(application, "/ws/alerts/", headers=headers)  # no Origin at all
    connected, _ = await socket.connect(timeout=5)
    assert not connected


async def test_anonymous_viewers_see_global_alerts_unfiltered_when_the_dashboard_is_public(settings):
    settings.ALLOW_ANONYMOUS_DASHBOARD = True
    owner = await database_sync_to_async(make_user)("owner")
    global_stored = await database_sync_to_async(store)(payload(volume_1d=None))
    await database_sync_to_async(store)(payload(rule=f"u{owner.pk}-mine", owner=owner.pk))
    socket, status, snapshot = await connect_ready([ORIGIN])
    assert [a["id"] for a in snapshot["alerts"]] == [global_stored["id"]]
    assert set(status["feed"]) == {"symbols_live", "lag_ms", "last_open_time", "stale"}
    live_global = payload(symbol="ETHUSDT", volume_1d=1.0)
    await publish(payload(rule=f"u{owner.pk}-mine", symbol="ETHUSDT", owner=owner.pk))
    await publish(live_global)
    assert await alerts_received(socket) == [live_global["id"]]
    await socket.disconnect()


async def test_the_snapshot_holds_the_newest_100_visible_alerts_of_the_last_day_newest_first():
    me = await database_sync_to_async(make_user)("me")
    other = await database_sync_to_async(make_user)("other")

    def fill():
        for minute in range(1, 106):
            store(payload(symbol=f"S{minute}USDT", minutes_ago=minute))
        store(payload(symbol="OLDUSDT", minutes_ago=24 * 60 + 5))
        store(payload(rule=f"u{other.pk}-theirs", owner=other.pk, minutes_ago=0))
        return store(payload(rule=f"u{me.pk}-mine", owner=me.pk, minutes_ago=30))

    mine = await database_sync_to_async(fill)()
    socket, _, snapshot = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    alerts = snapshot["alerts"]
    assert len(alerts) == 100
    times = [a["open_time"] for a in alerts]
    assert times == sorted(times, reverse=True)
    symbols = [a["symbol"] for a in alerts]
    assert symbols[0] == "S1USDT" and "OLDUSDT" not in symbols
    assert mine in alerts
    assert all(a["owner"] in (None, me.pk) for a in alerts)
    assert set(alerts[0]) >= {"id", "rule", "rule_name", "severity", "direction", "symbol", "open_time"}
    await socket.disconnect()


async def test_subscribe_replaces_the_subscription_null_means_all_and_empty_means_none():
    me = await database_sync_to_async(make_user)("sub")
    btc = await database_sync_to_async(store)(payload(symbol="BTCUSDT", minutes_ago=2))
    eth = await database_sync_to_async(store)(
        payload(symbol="ETHUSDT", rule="futures_top_hunter", minutes_ago=3)
    )
    socket, _, snapshot = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert [a["id"] for a in snapshot["alerts"]] == [btc["id"], eth["id"]]  # initial: everything

    snap = await subscribe(socket, symbols=["ETHUSDT"], rules=None, market=False)
    assert [a["id"] for a in snap["alerts"]] == [eth["id"]]
    live_btc, live_eth = payload(symbol="BTCUSDT", minutes_ago=0), payload(symbol="ETHUSDT", minutes_ago=0)
    await publish(live_btc)
    await publish(live_eth)
    assert await alerts_received(socket) == [live_eth["id"]]

    snap = await subscribe(socket, symbols=None, rules=["futures_pioneer_bull"], market=False)
    assert [a["id"] for a in snap["alerts"]] == [btc["id"]]  # replaced: the symbol filter is gone
    hunter = payload(symbol="BTCUSDT", rule="futures_top_hunter", minutes_ago=0)
    await publish(hunter)
    await publish(live_btc | {"id": "futures_pioneer_bull:BTCUSDT:1"})
    assert await alerts_received(socket) == ["futures_pioneer_bull:BTCUSDT:1"]

    snap = await subscribe(socket, symbols=[], rules=None, market=False)
    assert snap["alerts"] == []
    await publish(payload(symbol="XRPUSDT"))
    assert await alerts_received(socket) == []

    snap = await subscribe(socket, symbols=None, rules=None, market=False)
    assert {a["id"] for a in snap["alerts"]} == {btc["id"], eth["id"]}
    await socket.disconnect()


async def test_live_alerts_follow_the_watchlist_active_mutes_and_minimum_volume():
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    me = await database_sync_to_async(make_user)(
        "picky",
        watchlist=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        muted_rules={"futures_top_hunter": None, "futures_5_big_bull": past},
        muted_symbols={"SOLUSDT": future},
        min_volume_1d=1_000_000,
    )
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    shown = [
        payload(symbol="BTCUSDT"),
        payload(symbol="ETHUSDT", rule="futures_5_big_bull"),  # that mute expired
        payload(symbol="XRPUSDT", rule=f"u{me.pk}-mine", owner=me.pk, volume_1d=None),  # own: unfiltered
    ]
    hidden = [
        payload(symbol="XRPUSDT"),  # not on the watchlist
        payload(symbol="BTCUSDT", rule="futures_top_hunter"),  # muted rule
        payload(symbol="SOLUSDT"),  # muted symbol
        payload(symbol="ETHUSDT", rule="futures_bottom_hunter", volume_1d=999_999.0),  # below minimum
        payload(symbol="ETHUSDT", rule="futures_15_big_bull", volume_1d=None),  # unknown volume
    ]
    for p in hidden + shown:
        await publish(p)
    assert await alerts_received(socket) == [p["id"] for p in shown]
    await socket.disconnect()


async def test_bad_stored_settings_hide_alerts_live_and_in_the_snapshot():
    """alerts.visibility: an unparsable mute expiry mutes until lifted; a boolean volume is not a number."""
    me = await database_sync_to_async(make_user)(
        "garbled", muted_symbols={"SOLUSDT": "soon"}, min_volume_1d=1_000_000
    )
    await database_sync_to_async(store)(payload(symbol="SOLUSDT", minutes_ago=3))  # muted
    await database_sync_to_async(store)(payload(symbol="ETHUSDT", minutes_ago=2, volume_1d=True))
    shown = await database_sync_to_async(store)(payload(symbol="BTCUSDT", minutes_ago=4))
    socket, _, snapshot = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert [a["id"] for a in snapshot["alerts"]] == [shown["id"]]
    live = payload(symbol="BTCUSDT", rule="futures_top_hunter")
    for p in [payload(symbol="SOLUSDT", rule="futures_top_hunter"), payload(volume_1d=True), live]:
        await publish(p)
    assert await alerts_received(socket) == [live["id"]]
    await socket.disconnect()


async def test_a_user_never_sees_another_users_personal_alerts():
    me = await database_sync_to_async(make_user)("alice")
    other = await database_sync_to_async(make_user)("bob")
    theirs = payload(rule=f"u{other.pk}-secret", owner=other.pk)
    await database_sync_to_async(store)(theirs)
    socket, _, snapshot = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert snapshot["alerts"] == []
    snap = await subscribe(socket, symbols=None, rules=[theirs["rule"]], market=False)
    assert snap["alerts"] == []
    await publish(payload(rule=f"u{other.pk}-secret", owner=other.pk, minutes_ago=0))
    mine = payload(rule=theirs["rule"], owner=me.pk, minutes_ago=0)  # a forged owner never matters
    assert await alerts_received(socket) == []
    await subscribe(socket)
    await publish(mine | {"owner": other.pk, "id": "x:1"})
    await publish(mine)
    assert await alerts_received(socket) == [mine["id"]]
    await socket.disconnect()


async def test_every_bad_input_gets_an_error_and_the_socket_stays_open():
    me = await database_sync_to_async(make_user)("clumsy")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    bad = [
        "{not json",
        "[1, 2]",
        '"subscribe"',
        '{"type": "dance"}',
        '{"symbols": null}',
        '{"type": "subscribe", "symbols": "BTCUSDT"}',
        '{"type": "subscribe", "symbols": [1]}',
        '{"type": "subscribe", "rules": [""]}',
        '{"type": "subscribe", "market": "yes"}',
        json.dumps({"type": "ping", "pad": "x" * (64 * 1024)}),
    ]
    for text in bad:
        await socket.send_to(text_data=text)
        frame = await receive(socket)
        assert frame["type"] == "error" and frame["error"], (text[:40], frame)
    await socket.send_to(bytes_data=b'{"type": "ping"}')
    assert (await receive(socket))["type"] == "error"
    await socket.send_json_to({"type": "ping"})
    assert await receive(socket) == {"type": "pong"}
    await socket.disconnect()


async def test_a_frame_over_one_mebibyte_closes_the_socket_with_1009():
    me = await database_sync_to_async(make_user)("flood")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    await socket.send_to(text_data="é" * (600 * 1024))  # 1.2 MB in UTF-8, 600 Ki characters
    assert await close_code(socket) == 1009
    await socket.disconnect()


class BlockedClient:
    """An ASGI server whose client stopped reading: once `blocked` is set, frames are never written."""

    def __init__(self, app):
        self.app = app
        self.blocked = asyncio.Event()

    async def __call__(self, scope, receive, send):
        async def slow_send(message):
            if message["type"] == "websocket.send" and self.blocked.is_set():
                await asyncio.Event().wait()  # TCP window full: the write never completes
            await send(message)

        return await self.app(scope, receive, slow_send)


async def test_a_client_that_cannot_keep_up_is_closed_with_4008_and_gets_a_snapshot_on_reconnect(settings):
    settings.WS_SEND_BUFFER = 5
    me = await database_sync_to_async(make_user)("slow")
    headers = await database_sync_to_async(cookie_headers)(me)
    server = BlockedClient(application)
    socket, _, _ = await connect_ready(headers, server)
    server.blocked.set()
    closes = REGISTRY.get_sample_value("cryptomon_web_websocket_send_buffer_closes_total")
    for n in range(100):  # one at a time (alerts arriving together share a frame) until the buffer is full
        await publish(payload(symbol=f"S{n}USDT", minutes_ago=1 + n))
        if not await socket.receive_nothing(timeout=0.05):
            break
    assert n >= 5
    assert await close_code(socket) == 4008
    assert REGISTRY.get_sample_value("cryptomon_web_websocket_send_buffer_closes_total") == closes + 1
    await socket.disconnect()
    stored = await database_sync_to_async(store)(payload(symbol="S1USDT"))
    socket, _, snapshot = await connect_ready(headers)
    assert stored in snapshot["alerts"]
    await socket.disconnect()


async def test_a_user_may_hold_at_most_five_sockets_by_default():
    me = await database_sync_to_async(make_user)("tabs")
    other = await database_sync_to_async(make_user)("neighbour")
    headers = await database_sync_to_async(cookie_headers)(me)
    tabs = [(await connect_ready(headers))[0] for _ in range(5)]
    sixth = await open_socket(headers)
    assert await close_code(sixth) == 4429
    await sixth.disconnect()
    assert await consumers.open_sockets(me.pk) == 5
    theirs, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(other))  # per user
    await tabs[0].disconnect()
    again, _, _ = await connect_ready(headers)  # a closed tab frees its slot
    for socket in [*tabs[1:], again, theirs]:
        await socket.disconnect()
    assert await consumers.open_sockets(me.pk) == 0


async def test_socket_slots_of_a_crashed_web_process_expire(settings):
    settings.WS_MAX_SOCKETS_PER_USER = 1
    settings.WS_SOCKET_TTL_SECONDS = 1
    me = await database_sync_to_async(make_user)("crash")
    assert await consumers.acquire_slot(me.pk, "socket-of-a-dead-process")
    headers = await database_sync_to_async(cookie_headers)(me)
    refused = await open_socket(headers)
    assert await close_code(refused) == 4429
    await refused.disconnect()
    await asyncio.sleep(1.2)
    socket, _, _ = await connect_ready(headers)
    await socket.disconnect()


async def test_market_frames_start_with_every_symbol_then_carry_only_changed_rows():
    me = await database_sync_to_async(make_user)("trader")
    layer = get_channel_layer()
    gateway = bridge.Bridge(layer)

    def live(symbol, price):
        return {"symbol": symbol, "price": price, "open_time": 1, "metrics": {"change_5m": 0.1, "rsi_14": 50}}

    for symbol, price in (("BTCUSDT", 1.0), ("ETHUSDT", 2.0), ("币安USDT", 3.0)):
        gateway.market.update(bridge.feed.market_row(live(symbol, price)))
    await gateway.tick()
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    await gateway.tick()  # nothing changed: no frame for anyone
    assert await socket.receive_nothing(timeout=0.3)
    await subscribe(socket, market=True)
    first = await receive(socket)
    assert first["type"] == "market"
    assert [r["symbol"] for r in first["rows"]] == ["BTCUSDT", "ETHUSDT", "币安USDT"]
    assert set(first["rows"][0]) == {
        "symbol", "price", "change_5m", "change_15m", "change_1h", "change_4h", "change_8h",
        "change_1d", "volume_1h", "volume_1d", "rsi_14", "open_time",
    }  # fmt: skip
    gateway.market.update(bridge.feed.market_row(live("ETHUSDT", 2.5)))
    gateway.market.update(bridge.feed.market_row(live("BTCUSDT", 1.0)))  # unchanged
    await gateway.tick()
    delta = await receive(socket)
    assert delta == {"type": "market", "rows": [bridge.feed.market_row(live("ETHUSDT", 2.5))]}
    await subscribe(socket, market=False)
    gateway.market.update(bridge.feed.market_row(live("ETHUSDT", 3.5)))
    await gateway.tick()
    assert await socket.receive_nothing(timeout=0.4)
    await socket.disconnect()


async def test_market_updates_inside_one_interval_arrive_merged_in_one_frame(settings):
    settings.GATEWAY_TICK_SECONDS = 0.5  # the socket's market interval (1 s in production)
    me = await database_sync_to_async(make_user)("merger")
    gateway = bridge.Bridge(get_channel_layer())

    def row(symbol, price):
        return bridge.feed.market_row({"symbol": symbol, "price": price, "open_time": 1, "metrics": {}})

    gateway.market.update(row("BTCUSDT", 1.0))
    await gateway.tick()
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    await subscribe(socket, market=True)
    assert [r["symbol"] for r in (await receive(socket))["rows"]] == ["BTCUSDT"]
    for symbol, price in (("ETHUSDT", 2.0), ("SOLUSDT", 3.0), ("ETHUSDT", 2.5)):
        gateway.market.update(row(symbol, price))
        await gateway.tick()  # three bridge frames right after the full one
    frame = await receive(socket)
    assert frame == {"type": "market", "rows": [row("ETHUSDT", 2.5), row("SOLUSDT", 3.0)]}
    assert await socket.receive_nothing(timeout=0.8)
    await socket.disconnect()


async def test_group_names_are_ascii_and_never_contain_a_symbol(redis_client):
    me = await database_sync_to_async(make_user)("groups")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    await subscribe(socket, symbols=["币安人生USDT", "BTCUSDT"], rules=None, market=True)
    await publish(payload(symbol="币安人生USDT"))
    frames = [await receive(socket), await receive(socket)]
    assert {f["type"] for f in frames} == {"market", "alert"}
    names = [name.decode("ascii") for name in redis_client.pubsub_channels()]  # raises on non-ASCII
    assert any("alerts" in name for name in names) and any("market" in name for name in names)
    assert not [name for name in names if "USDT" in name or "BTC" in name]
    await socket.disconnect()


async def test_a_new_socket_gets_the_current_feed_status_first(redis_client):
    current = {"symbols_live": 612, "lag_ms": 450, "last_open_time": 1_700_000_000_000, "stale": False}
    redis_client.set(bridge.feed.FEED_KEY, json.dumps(current))
    me = await database_sync_to_async(make_user)("status")
    socket, status, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert status == {"type": "status", "feed": current}
    await socket.disconnect()


async def test_feed_status_changes_reach_open_sockets_once():
    me = await database_sync_to_async(make_user)("watcher")
    socket, status, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert status["feed"]["stale"] is True  # no gateway has published a status
    fresh = {"symbols_live": 3, "lag_ms": 2100, "last_open_time": 1_700_000_000_000, "stale": False}
    layer = get_channel_layer()
    await layer.group_send(bridge.FEED_GROUP, bridge.status_message(fresh))
    assert await receive(socket) == {"type": "status", "feed": fresh}
    await layer.group_send(bridge.FEED_GROUP, bridge.status_message(fresh))
    assert await socket.receive_nothing(timeout=0.3)
    await socket.disconnect()


async def test_resync_gives_a_fresh_snapshot_and_alerts_already_in_it_are_not_repeated():
    me = await database_sync_to_async(make_user)("resync")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    missed = await database_sync_to_async(store)(payload(symbol="BTCUSDT"))  # stored while the bus was away
    await get_channel_layer().group_send(bridge.RESYNC_GROUP, {"type": "resync.event"})
    assert (await receive(socket))["type"] == "status"
    snapshot = await receive(socket)
    assert snapshot["type"] == "snapshot" and snapshot["alerts"] == [missed]
    await publish(missed)  # a late copy of an alert the screen already has
    assert await alerts_received(socket) == []
    await socket.disconnect()


async def test_changed_settings_apply_to_open_sockets():
    me = await database_sync_to_async(make_user)("mover", watchlist=["BTCUSDT"])
    eth = await database_sync_to_async(store)(payload(symbol="ETHUSDT"))
    socket, _, snapshot = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert snapshot["alerts"] == []

    def widen():
        UserSettings.objects.filter(user=me).update(watchlist=[])
        consumers.settings_changed(me.pk)

    await database_sync_to_async(widen)()
    snapshot = await receive(socket)
    assert snapshot == {"type": "snapshot", "alerts": [eth]}
    await socket.disconnect()


async def test_a_settings_write_in_alerts_reaches_open_sockets_through_the_signal():
    me = await database_sync_to_async(make_user)("starrer", watchlist=["BTCUSDT"])
    eth = await database_sync_to_async(store)(payload(symbol="ETHUSDT"))
    socket, _, snapshot = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    assert snapshot["alerts"] == []

    assert await database_sync_to_async(alert_services.toggle_watchlist)(me, "ETHUSDT")
    assert await receive(socket) == {"type": "snapshot", "alerts": [eth]}
    await socket.disconnect()


async def test_an_alert_that_arrives_while_a_snapshot_is_read_follows_the_snapshot(monkeypatch):
    """The page replaces its feed with each snapshot: an alert sent ahead of a snapshot that missed it (the
    query read the table before the alert was committed) would vanish from the screen."""
    import threading

    me = await database_sync_to_async(make_user)("snapshot-race")
    socket, _, _ = await connect_ready(await database_sync_to_async(cookie_headers)(me))
    reading, release = threading.Event(), threading.Event()
    original = consumers.visible_alerts

    def slow_read(*args, **kwargs):
        reading.set()
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(consumers, "visible_alerts", slow_read)
    await socket.send_json_to({"type": "subscribe", "symbols": None, "rules": None, "market": False})
    assert await asyncio.to_thread(reading.wait, 30)
    late = payload(symbol="ETHUSDT")  # committed after the snapshot's query read the table
    await publish(late)
    assert await socket.receive_nothing(timeout=1)  # held: nothing goes ahead of the snapshot
    release.set()
    snapshot = await receive(socket)
    assert snapshot["type"] == "snapshot" and late["id"] not in [a["id"] for a in snapshot["alerts"]]
    assert await alerts_received(socket) == [late["id"]]
    await socket.disconnect()
