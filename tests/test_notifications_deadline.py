"""A slow or hostile webhook cannot stop anyone else's notifications.

A real local server trickles its answer one byte a second (headers or body), the way a hostile receiver
holds a connection open; a real Celery worker (threads) delivers. Every send has one wall-clock deadline,
a channel has at most one send in flight, and a remote's Retry-After is capped.
"""

from __future__ import annotations

import math
import queue
import select
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest

from notifications import safety, services
from notifications.base import TransientError, retry_after_header
from notifications.models import Delivery
from tests import test_notifications_delivery as delivery_tests
from tests.test_notifications_delivery import deliveries, make_user, store_alert, wait_for

pytestmark = pytest.mark.django_db(databases=["default", "timeseries"], transaction=True)

celery_worker = delivery_tests.celery_worker  # the same fixtures: a real worker, a scripted receiver
receiver = delivery_tests.receiver


class TrickleServer:
    """Reads a request, then answers one byte a second, forever, until the client hangs up.

    `stage` is where the trickle starts: "headers" (the status line comes, the headers never end) or
    "body" (complete headers announcing a megabyte, then the body a byte at a time)."""

    def __init__(self, stage: str):
        self.stage = stage
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.open_now = 0
        self.most_open_at_once = 0
        self.hung_up = threading.Event()  # set when a client closed a connection we were trickling to
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            self.open_now += 1
            self.most_open_at_once = max(self.most_open_at_once, self.open_now)
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            if self.stage == "headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                endless = iter(lambda: b"X", None)  # a header line that never ends
                conn.sendall(b"X-Slow: ")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                endless = iter(lambda: b"{", None)
            for byte in endless:
                # The server's pace (a byte a second), watching for the client's hang-up meanwhile.
                readable, _, _ = select.select([conn], [], [], 1.0)
                if self.stopping.is_set():
                    return
                if readable and not conn.recv(1):
                    self.hung_up.set()
                    return
                conn.sendall(byte)
        except OSError:
            self.hung_up.set()
        finally:
            conn.close()
            with self.lock:
                self.open_now -= 1

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()


@pytest.fixture
def trickle():
    servers: list[TrickleServer] = []

    def start(stage: str = "headers") -> TrickleServer:
        servers.append(TrickleServer(stage))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _post_in_thread(url: str) -> BaseException | None:
    """Run safety.post off the test thread, so a send that never ends fails the test instead of hanging it."""
    result: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            safety.post(url, b"{}", {"Content-Type": "application/json"})
        except BaseException as error:  # handed to the test thread
            result.put(error)
        else:
            result.put(None)

    threading.Thread(target=run, daemon=True).start()
    try:
        return result.get(timeout=60)  # an upper bound for a slow machine, never reached when it works
    except queue.Empty:
        raise AssertionError("the send to a trickling server never ended") from None


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_a_server_trickling_its_answer_is_cut_off_at_the_deadline_with_a_clear_error(
    settings, trickle, stage
):
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = True
    settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS = 1.5
    server = trickle(stage)
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [server.port]

    error = _post_in_thread(server.url + "/hook")

    assert isinstance(error, TransientError)
    assert str(error) == "no complete answer from 127.0.0.1 within 1.5 s"
    wait_for(server.hung_up.is_set, what="the client to hang up")


@pytest.fixture
def slow(settings, receiver, trickle):
    """Fast delays, one attempt, a short deadline; both local servers' ports allowed explicitly."""
    server = trickle("headers")
    settings.NOTIFICATIONS_GROUP_SECONDS = 0.2
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 1
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = True
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [server.port, receiver.server.server_address[1]]
    settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS = 4.0
    settings.NOTIFICATIONS_STUCK_SECONDS = 0.01  # the sweep would reclaim at once, were it not for the lease
    settings.ALERTS_NOTIFY_LATE = False
    return server


def test_a_slow_webhook_holds_up_no_other_users_notifications_and_is_never_sent_twice_at_once(
    celery_worker, slow, receiver
):
    hostile = make_user("trickler")
    victim = make_user("bystander")
    slow_channel = services.create_channel(hostile, "webhook", {"url": slow.url + "/hook"})
    services.create_channel(victim, "webhook", {"url": receiver.url + "/hook"})

    store_alert(owner=hostile.pk)
    wait_for(lambda: slow.connections == 1, what="the slow webhook to be called")
    store_alert(owner=hostile.pk, minute=1)  # a second alert for the busy channel
    store_alert(owner=victim.pk, minute=2)

    wait_for(lambda: deliveries(user_id=victim.pk, status="sent"), what="the other user's delivery")
    assert len(receiver.requests) == 1
    assert services.requeue_stuck().reclaimed == 0  # the send in flight is not handed to another thread
    assert services.flush_channel(slow_channel.pk) == 0  # nor claimed by another flush

    wait_for(
        lambda: len(deliveries(user_id=hostile.pk, status="failed")) == 2,
        timeout=60,
        what="both slow deliveries to fail",
    )
    first, second = deliveries(user_id=hostile.pk)
    assert first.last_error == "gave up after 1 attempts: no complete answer from 127.0.0.1 within 4 s"
    assert second.last_error == first.last_error
    assert slow.connections == 2 and slow.most_open_at_once == 1


def test_the_admins_send_test_waits_its_turn_behind_a_send_in_flight_to_the_channel(
    celery_worker, slow, receiver
):
    hostile = make_user("trickler")
    slow_channel = services.create_channel(hostile, "webhook", {"url": slow.url + "/hook"})
    store_alert(owner=hostile.pk)
    wait_for(lambda: slow.connections == 1, what="the slow webhook to be called")

    refused = services.send_test(slow_channel)  # a flush's send is in flight: no second one at once

    assert not refused.ok
    assert refused.detail == "a send to this channel is in flight; try again once it is done"
    wait_for(lambda: deliveries(user_id=hostile.pk, status="failed"), timeout=60, what="the slow send to end")
    assert slow.connections == 1 and slow.most_open_at_once == 1
    other = services.create_channel(make_user("bystander"), "webhook", {"url": receiver.url + "/hook"})
    assert services.send_test(other).ok  # another channel's test is not held up
    assert claim_locks_held() == 0  # every test let its channel's claim go


def claim_locks_held() -> int:
    from django.db import connections

    with connections["timeseries"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s",
            [services.CLAIM_LOCK],
        )
        return cursor.fetchone()[0]


# --- Retry-After -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["99999999999999999999", "1e400", "inf", "nan", "-5", "Fri, 31 Dec 9999 23:59:59 GMT", "soon"]
)
def test_an_absurd_retry_after_is_clamped_never_an_exception(settings, value):
    settings.NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS = 3600
    seconds = retry_after_header({"retry-after": value})
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= 3600)
    delay = services.retry_delay(1, seconds)
    assert math.isfinite(delay) and 0 <= delay <= 3600


def test_a_retry_after_years_ahead_retries_at_the_cap(celery_worker, settings, receiver):
    settings.NOTIFICATIONS_GROUP_SECONDS = 0.2
    settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS = True
    settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS = [receiver.server.server_address[1]]
    settings.NOTIFICATIONS_RETRY_AFTER_SCALE = 1.0
    settings.NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS = 600
    services.create_channel(make_user("patient"), "webhook", {"url": receiver.url + "/hook"})
    receiver.answer((429, b"later", {"Retry-After": "99999999999"}))
    before = datetime.now(UTC)

    store_alert()

    (delivery,) = wait_for(
        lambda: deliveries(last_error__startswith="the webhook answered 429"), what="the rate-limited attempt"
    )
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.next_attempt_at <= datetime.now(UTC) + timedelta(seconds=600)
    assert delivery.next_attempt_at >= before + timedelta(seconds=600)


def test_telegrams_retry_after_too_large_for_a_float_is_clamped(settings):
    settings.NOTIFICATIONS_RETRY_AFTER_MAX_SECONDS = 3600
    assert services.retry_delay(1, 10**400) <= 3600
