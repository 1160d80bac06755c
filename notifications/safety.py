"""The outgoing address guard and the one HTTP client notifications use.

Webhook URLs are typed by users, so a URL is a request to reach into our network (SSRF). Every
request is resolved first; any resolved address that is loopback, private, link-local, shared
(CGNAT), multicast, reserved, unspecified or a cloud metadata address refuses the whole URL. The
connection then goes to the very address that was checked (pinned), so a DNS answer that changes
between the check and the connect (rebinding) cannot redirect it. TLS still verifies the host name.
`NOTIFICATIONS_ALLOW_PRIVATE_TARGETS` allows loopback/private/link-local targets (tests, a local
receiver); metadata, multicast and unspecified addresses stay refused even then. Redirects are never
followed, timeouts are short and responses are read only up to a size limit.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
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


def address_problem(ip: IPAddress, allow_private: bool) -> str | None:
    """Why this address may not be contacted, or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return address_problem(embedded, allow_private)
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


def check_syntax(url: str, allow_private: bool | None = None) -> None:
    """The checks that need no DNS (used when a channel is saved): scheme, host, IP literals."""
    allow = _allow(allow_private)
    _scheme, host, _port, _path = _parse(url)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    _refuse(host, ip, allow)


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


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float | None = None,
    max_bytes: int | None = None,
) -> Response:
    """POST to a checked, pinned address. Network failures raise TransientError naming only the host
    (paths can hold tokens); UnsafeTarget when the address guard refuses."""
    timeout = timeout or settings.NOTIFICATIONS_HTTP_TIMEOUT_SECONDS
    max_bytes = max_bytes or settings.NOTIFICATIONS_MAX_RESPONSE_BYTES
    target = resolve(url)
    connection_class = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    connection = connection_class(target, timeout)
    deadline = time.monotonic() + timeout * 2
    try:
        connection.request("POST", target.path, body=body, headers={"User-Agent": "cryptomon", **headers})
        raw = connection.getresponse()
        chunks: list[bytes] = []
        size = 0
        truncated = False
        while size <= max_bytes:
            if time.monotonic() > deadline:
                raise TimeoutError("response too slow")
            chunk = raw.read(min(8192, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            truncated = True
        data = b"".join(chunks)[:max_bytes]
        return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data, truncated)
    except TimeoutError:
        raise TransientError(f"timed out talking to {target.host}") from None
    except ssl.SSLError as error:
        raise TransientError(
            f"TLS error with {target.host}: {error.reason or error.__class__.__name__}"
        ) from None
    except (OSError, http.client.HTTPException) as error:
        raise TransientError(f"connection to {target.host} failed: {error.__class__.__name__}") from None
    finally:
        connection.close()
