"""A socket's send buffer (gateway.consumers.Outbox): what a client that is behind receives (docs/gateway.md)."""

from __future__ import annotations

import json

from gateway import bridge
from gateway.consumers import Alerts, Outbox
from gateway.hub import AlertBatch


def alert(n: int) -> dict:
    return {"id": f"a{n}", "symbol": "BTCUSDT", "seq": n}


def row(symbol: str, price: float) -> dict:
    return {"symbol": symbol, "price": price}


def market(*rows: dict) -> list[dict]:
    """A market message as the hub hands it over (`bridge.market_message`)."""
    return [bridge.market_message(list(rows))]


def drain(outbox: Outbox) -> list[dict]:
    frames = []
    while outbox.entries or outbox.market:
        frames.append(json.loads(outbox.take()))
    return frames


def test_alerts_waiting_together_leave_as_one_alerts_frame_oldest_first():
    outbox = Outbox(10)
    batch = AlertBatch([alert(0), alert(1)], [json.dumps(alert(0)), json.dumps(alert(1))])
    outbox.put('{"type":"pong"}')
    outbox.put(Alerts(batch.texts, batch.frame()))
    outbox.put(Alerts([json.dumps(alert(2))]))
    outbox.put('{"type":"pong"}')
    outbox.put(Alerts([json.dumps(alert(3))]))
    assert drain(outbox) == [
        {"type": "pong"},
        {"type": "alerts", "alerts": [alert(0), alert(1), alert(2)]},
        {"type": "pong"},
        {"type": "alert", "alert": alert(3)},
    ]


def test_a_socket_that_is_behind_gets_the_newest_market_rows_once_after_its_alerts():
    outbox = Outbox(10)
    outbox.put_market(market(row("BTCUSDT", 1.0), row("ETHUSDT", 2.0)))
    outbox.put(Alerts([json.dumps(alert(0))]))
    outbox.put_market(market(row("ETHUSDT", 2.5)))  # merged with the unsent rows
    outbox.put_market(market(row("SOLUSDT", 3.0), row("BTCUSDT", 1.5)))
    assert drain(outbox) == [
        {"type": "alert", "alert": alert(0)},
        {"type": "market", "rows": [row("BTCUSDT", 1.5), row("ETHUSDT", 2.5), row("SOLUSDT", 3.0)]},
    ]


def test_one_market_message_goes_out_as_the_bridges_own_frame():
    outbox = Outbox(10)
    message = market(row("BTCUSDT", 2.0), row("ETHUSDT", 3.0))
    outbox.put_market(message)
    assert outbox.take() is message[0]["frame"]  # not encoded again for this socket
    assert not outbox.market


def test_a_full_buffer_refuses_more_frames():
    outbox = Outbox(2)
    assert outbox.put("a") and outbox.put(Alerts(["{}"]))
    assert not outbox.put("b")
    outbox.put_market(market(row("BTCUSDT", 1.0)))  # market rows never overflow it: they merge
    assert len(outbox) == 2
