"""`/ws/alerts/` under hostile frames (docs/contract.md §10, docs/security.md "Limits"): every frame gets its
answer — an `error` naming the problem, or what a valid message gets — and the socket stays usable (a
`ping` afterwards gets `pong`); only a frame over 1 MiB closes it, with 1009. Through the full ASGI
application, on the real Redis channel layer and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.consumers import MAX_CLOSE_FRAME_BYTES, MAX_FRAME_BYTES
from tests.hostile import NASTY, fuzzing, hostile_text

from .test_gateway_consumer import ORIGIN, close_code, connect_ready, cookie_headers, make_user, receive

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "timeseries"])


@pytest.fixture(autouse=True)
def _fast(settings, redis_client):
    settings.WS_RESYNC_JITTER_SECONDS = 0
    settings.ALLOW_ANONYMOUS_DASHBOARD = True
    settings.WS_SUBSCRIBE_BURST = 10**6  # the subscribe rate limit has its own test (test_security_websocket)


@pytest.fixture(params=["signed in", "anonymous"])
def headers(request) -> list[tuple[bytes, bytes]]:
    if request.param == "anonymous":
        return [ORIGIN]
    return cookie_headers(make_user("hostile"))


# --- what is sent, and what it must get ------------------------------------------------------------------

ERROR, PONG, SUBSCRIBE = "error", "pong", "subscribe"


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; JSON (and msgspec) do not


def expected(text: str) -> str:
    """What the §10 protocol answers `text` with (json reads the frames the way the server does)."""
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return ERROR
    if not isinstance(message, dict) or len(text.encode()) > MAX_FRAME_BYTES:
        return ERROR
    kind = message.get("type")
    return PONG if kind == "ping" else SUBSCRIBE if kind == "subscribe" else ERROR


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | hostile_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(hostile_text, children, max_size=5),
    max_leaves=25,
)
message_types = st.one_of(
    st.sampled_from(["ping", "subscribe", "Ping", "SUBSCRIBE", "pong", "error", "snapshot", "", " ping"]),
    json_values,
)
lists_of_names = st.one_of(
    st.none(),
    st.lists(hostile_text, max_size=20),
    st.lists(json_values, max_size=5),
    json_values,
    st.builds(lambda name, count: [name] * count, st.text(min_size=1, max_size=70), st.integers(990, 1010)),
)
subscribes = st.fixed_dictionaries(
    {"type": st.just("subscribe")},
    optional={
        "symbols": lists_of_names,
        "rules": lists_of_names,
        "market": st.one_of(st.booleans(), json_values),
        "extra": json_values,
    },
)
objects = st.builds(
    lambda kind, rest: {**rest, "type": kind}, message_types, st.dictionaries(hostile_text, json_values)
)
deep = st.integers(1, 60_000).flatmap(
    lambda depth: st.sampled_from(["[" * depth, "[" * depth + "]" * depth, '{"a":' * (depth // 5) + "1"])
)
text_frames = st.one_of(
    st.text(max_size=200),
    st.sampled_from(NASTY),
    deep,
    st.sampled_from(
        ["1" * 60_000, '{"type": "ping", "n": ' + "9" * 5000 + "}", '{"type": "ping", "x": NaN}']
    ),
    json_values.map(json.dumps),
    objects.map(json.dumps),
    subscribes.map(json.dumps),
)


async def answers(socket, text: str | None = None, data: bytes | None = None) -> list[dict]:
    """Send one frame, then a probe `ping`: every frame answered before the probe's `pong`."""
    # As the server hands frames over (the communicator's send_to refuses an empty frame; a client may send one).
    await socket.send_input({"type": "websocket.receive", "text": text, "bytes": data})
    await socket.send_json_to({"type": "ping"})
    frames = []
    while (frame := await receive(socket))["type"] != "pong":
        frames.append(frame)
    return frames


def check_answer(text: str, frames: list[dict], probe_pong_pending: bool) -> None:
    kinds = [frame["type"] for frame in frames]
    want = expected(text)
    if want == PONG:
        assert kinds == [] and probe_pong_pending, (text[:80], frames)
    elif want == ERROR:
        assert kinds == ["error"], (text[:80], frames)
    else:
        assert kinds in (["error"], ["snapshot"], ["snapshot", "market"]), (text[:80], frames)
    for frame in frames:
        if frame["type"] == "error":
            assert isinstance(frame["error"], str) and frame["error"]
            assert "Traceback" not in frame["error"]
            if want == SUBSCRIBE:  # names the field it refused
                assert any(f"'{field}'" in frame["error"] for field in ("symbols", "rules", "market")), frame


@fuzzing
@given(st.lists(text_frames, min_size=1, max_size=4))
async def test_every_hostile_text_frame_gets_its_answer_and_the_socket_stays_usable(headers, texts):
    socket, _, _ = await connect_ready(headers)
    try:
        for text in texts:
            frames = await answers(socket, text)
            check_answer(text, frames, probe_pong_pending=True)
            if expected(text) == PONG:
                assert await receive(socket) == {"type": "pong"}
    finally:
        await socket.disconnect()


@fuzzing
@given(st.lists(subscribes, min_size=1, max_size=4))
async def test_hostile_subscribes_are_applied_or_refused_naming_the_field(headers, messages):
    socket, _, _ = await connect_ready(headers)
    try:
        for message in messages:
            text = json.dumps(message)
            check_answer(text, await answers(socket, text), probe_pong_pending=True)
    finally:
        await socket.disconnect()


@fuzzing
@given(st.binary(max_size=2000))
async def test_a_binary_frame_gets_an_error_and_the_socket_stays_usable(headers, data):
    socket, _, _ = await connect_ready(headers)
    try:
        frames = await answers(socket, data=data)
        assert [frame["type"] for frame in frames] == ["error"] and "binary" in frames[0]["error"]
    finally:
        await socket.disconnect()


@fuzzing
@given(st.integers(MAX_FRAME_BYTES + 1, MAX_CLOSE_FRAME_BYTES), st.sampled_from(["x", "é", "币", "{"]))
async def test_a_frame_over_64_kib_gets_an_error_naming_the_limit_and_the_socket_stays_usable(
    headers, size, unit
):
    text = unit * (size // len(unit.encode()))
    socket, _, _ = await connect_ready(headers)
    try:
        frames = await answers(socket, text)
        if len(text.encode()) > MAX_FRAME_BYTES:
            assert [frame["type"] for frame in frames] == ["error"] and "too large" in frames[0]["error"]
    finally:
        await socket.disconnect()


@fuzzing
@given(st.integers(MAX_CLOSE_FRAME_BYTES + 1, 2 * MAX_CLOSE_FRAME_BYTES), st.booleans())
async def test_a_frame_over_one_mebibyte_closes_with_1009(headers, size, binary):
    socket, _, _ = await connect_ready(headers)
    try:
        if binary:
            await socket.send_to(bytes_data=b"x" * size)
        else:
            await socket.send_to(text_data="x" * size)
        assert await close_code(socket) == 1009
    finally:
        await socket.disconnect()


@pytest.mark.parametrize(
    "text",
    [
        "[" * 60_000,
        '{"a":' * 12_000 + "1" + "}" * 12_000,
        json.dumps({"type": "subscribe", "symbols": ["BTC\x00USDT"]}),
        json.dumps({"type": "subscribe", "rules": ["a\x00b"], "market": True}),
    ],
    ids=["60,000 open brackets", "12,000 nested objects", "a NUL in a symbol", "a NUL in a rule"],
)
async def test_deep_nesting_and_nul_characters_get_an_answer_not_a_crash(headers, text):
    socket, _, _ = await connect_ready(headers)
    try:
        check_answer(text, await answers(socket, text), probe_pong_pending=True)
    finally:
        await socket.disconnect()
