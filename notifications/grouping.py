"""Turning alerts into messages: one message per channel for everything in the group window.

A market-wide dump is dozens of alerts within seconds; each channel's first new delivery schedules
one flush `NOTIFICATIONS_GROUP_SECONDS` later and that flush sends every pending delivery of the
channel as one message (chat transports cut long lists with "… and N more"; webhooks get every
payload). A group keeps its key across retries, so its Idempotency-Key stays the same.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from notifications.base import Message

MAX_GROUP = 500  # alerts in one message; more go out in the next message right after
_MARK = {"bull": "🟢", "bear": "🔴", "neutral": "⚪"}
_SHOWN_METRICS = ("change_5m", "change_15m", "change_1h", "change_1d", "volume_1h", "volume_1d", "rsi_14")


def _number(value) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:,.2f}M"
    return f"{value:.6g}"


def alert_line(payload: dict) -> str:
    mark = _MARK.get(payload.get("direction", ""), "⚪")
    late = " (late)" if payload.get("late") else ""
    return f"{mark} {payload['symbol']} · {payload['rule_name']} · {_number(payload.get('price'))}{late}"


def _bar_time(payload: dict) -> str:
    return datetime.fromtimestamp(payload["open_time"] / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def alerts_message(payloads: list[dict], idempotency_key: str, digest: bool = False) -> Message:
    """One message for a group; `digest`: the alerts held during quiet hours, sent when they ended."""
    message = _alerts_message(payloads, idempotency_key)
    if digest:
        message.title = f"Quiet hours digest: {message.title}"
        message.header = f"Quiet hours digest · {message.header}"
    return message


def _alerts_message(payloads: list[dict], idempotency_key: str) -> Message:
    payloads = sorted(payloads, key=lambda p: (p["open_time"], p["symbol"], p["rule"]))
    if len(payloads) == 1:
        alert = payloads[0]
        metrics = alert.get("metrics") or {}
        lines = [alert["description"]] if alert.get("description") else []
        lines.append(f"bar {_bar_time(alert)}, severity {alert['severity']}")
        lines += [f"{name}: {_number(metrics[name])}" for name in _SHOWN_METRICS if name in metrics]
        return Message(
            kind="alerts",
            title=f"{alert['rule_name']}: {alert['symbol']}",
            header=alert_line(alert),
            lines=lines,
            alerts=payloads,
            idempotency_key=idempotency_key,
        )
    counts = defaultdict(int)
    for payload in payloads:
        counts[payload.get("direction", "neutral")] += 1
    split = ", ".join(f"{counts[d]} {d}" for d in ("bull", "bear", "neutral") if counts[d])
    return Message(
        kind="alerts",
        title=f"cryptomon: {len(payloads)} alerts",
        header=f"cryptomon: {len(payloads)} alerts ({split})",
        lines=[alert_line(payload) for payload in payloads],
        alerts=payloads,
        idempotency_key=idempotency_key,
    )


def test_message(channel_label: str) -> Message:
    now = datetime.now(UTC)
    text = f"cryptomon test message for {channel_label} at {now:%Y-%m-%d %H:%M:%S} UTC"
    return Message(
        kind="test",
        title="cryptomon test message",
        header=text,
        event={"v": 1, "type": "test", "message": text, "time": int(now.timestamp() * 1000)},
        idempotency_key=f"test-{int(now.timestamp() * 1000)}",
    )


def operator_message(key: str, state: str, text: str, since_ms: int) -> Message:
    mark = "🚨 PROBLEM" if state == "raised" else "✅ RESOLVED"
    return Message(
        kind="operator",
        title=f"cryptomon operator: {mark.split()[-1].lower()} {key}",
        header=f"{mark} [{key}] {text}",
        event={"v": 1, "type": "operator", "key": key, "state": state, "message": text, "since": since_ms},
        idempotency_key=f"operator-{key}-{state}-{since_ms}",
    )


def groups(rows: list) -> dict[str, list]:
    """Claimed deliveries by group key; rows new to a group get the key of the first of them."""
    by_key: dict[str, list] = defaultdict(list)
    fresh = [row for row in rows if not row.group_key]
    if fresh:
        key = str(min(row.id for row in fresh))
        for row in fresh:
            row.group_key = key
    for row in rows:
        by_key[row.group_key].append(row)
    return dict(by_key)
