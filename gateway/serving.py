"""Several web processes behind one listening socket (`run_monitor --web-workers N`, docs/gateway.md).

One daphne process is one core. The socket is bound and listening once, here, and every daphne child adopts
it with ``--fd``: the kernel hands each new connection to whichever process accepts first, and the pub/sub
channel layer delivers each group message to each process once (``gateway.hub``), so a process adds about
a core's worth of viewers.
"""

from __future__ import annotations

import socket
import sys

LISTEN_BACKLOG = 4096  # a thousand browsers reconnecting at once must not overflow the accept queue
# daphne drops a WebSocket whose handshake has not finished in 5 s; in a reconnect storm of a thousand
# browsers a busy process answers later than that, and each dropped one only comes back to retry.
HANDSHAKE_TIMEOUT_SECONDS = 30


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket that child processes inherit (keep it open while they run)."""
    if ":" in host:  # daphne's `fd:` endpoint adopts IPv4 sockets only
        raise ValueError(f"--web-workers needs an IPv4 address to listen on, not {host!r}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def daphne_argv(sock: socket.socket, *options: str) -> list[str]:
    """The command of one daphne process serving the already listening `sock` (pass its fd to the child)."""
    return [
        sys.executable,
        "-m",
        "daphne",
        *options,
        "--websocket_connect_timeout",
        str(HANDSHAKE_TIMEOUT_SECONDS),
        "--fd",
        str(sock.fileno()),
        "cryptomon.asgi:application",
    ]
