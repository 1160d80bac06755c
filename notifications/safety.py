"""The outgoing address guard and the one HTTP client notifications use.

Webhook URLs are typed by users, so a URL is a request to reach into our network (SSRF). Every
request is resolved first; any resolved address that is loopback, private, link-local, shared
(CGNAT), multicast, reserved, unspecified or a cloud metadata address refuses the whole URL. The
connection then goes to the very address that was checked (pinned), so a DNS answer that changes
between the check and the connect (rebinding) cannot redirect it. TLS still verifies the host name.
`NOTIFICATIONS_ALLOW_PRIVATE_TARGETS` allows loopback/private/link-local targets (tests, a local
receiver); metadata, multicast and unspecified addresses stay refused even then. IPv6 addresses that
carry an IPv4 address to another host (mapped, NAT64, 6to4, Teredo) are judged by that IPv4 address.
Only ports 80 and 443 are allowed, plus `NOTIFICATIONS_ALLOWED_EXTRA_PORTS` (URLs the operator
configured may use any port). Redirects are never followed, responses are read only up to a size limit,
and the whole exchange (connect, TLS, request, headers, body) has one wall-clock deadline: a remote that
trickles bytes cannot hold a worker thread past it.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from notifications.base import TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


_trusted: ContextVar[bool] = ContextVar("notifications_trusted_targets", default=False)


@contextmanager
def trusted_targets() -> Iterator[None]:
    """Allow private addresses for URLs the operator configured (operator alerts), never users' URLs."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def _allow(allow_private: bool | None) -> bool:
    if allow_private is not None:
        return allow_private
    return _trusted.get() or settings.NOTIFICATIONS_ALLOW_PRIVATE_TARGETS


class UnsafeTarget(ValueError):
    """The URL may not be contacted: it is malformed or reaches a non-public address."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked IP the connection is pinned to


def _carried_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translator or tunnel (a relay on the way
    would deliver to them): IPv4-mapped, NAT64 (64:ff9b::/96), 6to4 (2002::/16), Teredo (server, client)."""
    carried: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        carried.append(ip.ipv4_mapped)
    if ip in _NAT64:
        carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        carried.append(ip.sixtofour)
    if ip.teredo is not None:
        carried.extend(ip.teredo)
    return carried


def address_problem(ip: IPAddress, allow_private: bool) -> str | None:
    """Why this address may not be contacted, or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in _carried_ipv4(ip):
            problem = address_problem(embedded, allow_private)
            if problem:
                return problem
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return None  # exactly the IPv4 address, judged above
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    for label, flag in (
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a private", ip.is_private),
        ("a reserved", ip.is_reserved),
    ):
        if flag:
            return f"{label} address"
    if not ip.is_global:
        return "not a public address"
    return None


def _parse(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UnsafeTarget("the URL is malformed") from None
    if parts.scheme not in {"http", "https"}:
        raise UnsafeTarget("only http:// and https:// URLs are allowed")
    if not parts.hostname:
        raise UnsafeTarget("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeTarget("credentials in the URL are not allowed")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _refuse(host: str, ip: IPAddress, allow: bool) -> None:
    problem = address_problem(ip, allow)
    if problem:
        shown = host if _is_literal(host) else f"{host} ({ip})"
        raise UnsafeTarget(f"refused: {shown} is {problem}")


def _refuse_port(port: int) -> None:
    """Web servers listen on 80 and 443; any other port is more likely an internal service (SSRF)."""
    if _trusted.get() or port in {80, 443} or port in settings.NOTIFICATIONS_ALLOWED_EXTRA_PORTS:
        return
    raise UnsafeTarget(f"refused: port {port} is not allowed (80 and 443 only)")


def clean_url(value: object) -> str:
    """A channel's URL as typed into a form, stripped and checked with `check_syntax`."""
    url = str(value or "").strip()
    check_syntax(url)
    return url


def check_syntax(url: str, allow_private: bool | None = None) -> None:
    """The checks that need no DNS (used when a channel is saved): scheme, host, IP literals, port."""
    allow = _allow(allow_private)
    _scheme, host, port, _path = _parse(url)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        _refuse(host, ip, allow)
    _refuse_port(port)


def resolve(url: str, allow_private: bool | None = None) -> Target:
    """Check `url` and return the target pinned to one checked address; raise UnsafeTarget."""
    allow = _allow(allow_private)
    scheme, host, port, path = _parse(url)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise TransientError(
                f"cannot resolve {host}: {error.args[-1] if error.args else error}"
            ) from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise TransientError(f"{host} has no address")
    for ip in addresses:
        _refuse(host, ip, allow)
    _refuse_port(port)
    return Target(scheme, host, port, path, str(addresses[0]))


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False

    def json(self) -> dict:
        import json

        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def text(self, limit: int = 200) -> str:
        return self.body[:limit].decode("utf-8", "replace").strip()


class _Deadline:
    """One wall-clock limit over a whole exchange.

    A socket timeout bounds each blocking call, not their sum: a remote sending a byte a second never
    trips it. So a timer shuts the connection's socket down when the deadline passes, which ends any
    call blocked on it (connect, TLS handshake, sending, reading headers or body) at once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def watch(self, sock: socket.socket) -> socket.socket:
        """Shut `sock` down when the deadline passes (at once if it already has)."""
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shutdown()
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is None:
            return
        # The plain socket's shutdown, even for TLS: it wakes the blocked reader and leaves TLS state alone.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._sock = None


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, deadline: _Deadline):
        super().__init__(target.host, target.port, timeout=deadline.seconds)
        self._address = target.address
        self._deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self._deadline.remaining())
        self.sock = self._deadline.watch(sock)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, deadline: _Deadline):
        super().__init__(
            target.host, target.port, timeout=deadline.seconds, context=ssl.create_default_context()
        )
        self._address = target.address
        self._deadline = deadline

    def connect(self) -> None:
        sock = self._deadline.watch(
            socket.create_connection((self._address, self.port), self._deadline.remaining())
        )
        # The handshake only once the TLS socket is watched: wrapping detaches the plain socket.
        tls = self._context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        self.sock = self._deadline.watch(tls)
        tls.do_handshake()


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float | None = None,
    max_bytes: int | None = None,
) -> Response:
    """POST to a checked, pinned address, all of it within `timeout` seconds of wall-clock time
    (NOTIFICATIONS_HTTP_TIMEOUT_SECONDS). Network failures raise TransientError naming only the host
    (paths can hold tokens); UnsafeTarget when the address guard refuses."""
    seconds = timeout or settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS
    max_bytes = max_bytes or settings.NOTIFICATIONS_MAX_RESPONSE_BYTES
    deadline = _Deadline(seconds)
    connection: http.client.HTTPConnection | None = None
    target: Target | None = None
    try:
        target = resolve(url)
        connection_class = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
        connection = connection_class(target, deadline)
        connection.request("POST", target.path, body=body, headers={"User-Agent": "cryptomon", **headers})
        raw = connection.getresponse()
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = raw.read1(min(8192, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if deadline.expired:  # the shutdown can look like a clean end of the body
            raise TimeoutError("deadline passed")
        data = b"".join(chunks)[:max_bytes]
        return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data, size > max_bytes)
    except (OSError, http.client.HTTPException) as error:
        if target is None:
            raise
        if deadline.expired or isinstance(error, TimeoutError):
            raise TransientError(f"no complete answer from {target.host} within {seconds:g} s") from None
        if isinstance(error, ssl.SSLError):
            raise TransientError(
                f"TLS error with {target.host}: {error.reason or error.__class__.__name__}"
            ) from None
        raise TransientError(f"connection to {target.host} failed: {error.__class__.__name__}") from None
    finally:
        deadline.cancel()
        if connection is not None:
            connection.close()
