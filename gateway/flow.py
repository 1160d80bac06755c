"""Back-pressure from daphne to a socket's bounded send buffer (docs/contract.md §10: a client that cannot keep up is
closed with 4008).

ASGI gives an application no back-pressure signal, and daphne's ``send`` never waits: it hands each frame to
Twisted, which buffers without bound for a client that stopped reading. Without help, the consumer's bounded
buffer would never fill and a stuck browser tab would grow the web process's memory forever.

:class:`FlowControlMiddleware` (outermost on the WebSocket stack, ``cryptomon.asgi``) recognises daphne's
``send`` and puts a factory for a :class:`TransportFlow` in the scope. The consumer takes it once the
socket is accepted: it registers a Twisted push producer on the connection (autobahn's public
``registerProducer``), Twisted pauses it when the connection's write buffer is past ``bufferSize`` (64 KiB on
top of the kernel's socket buffer) and resumes it when drained. The consumer's writer waits while paused, so
its bounded buffer fills and the socket is closed with 4008 (a client that reads nothing at all is dropped
``CLOSE_GRACE_SECONDS`` later). Under a server whose ``send`` itself waits
(uvicorn, the test communicator) there is no flow object and none is needed.
"""

from __future__ import annotations

import asyncio
import functools
import logging

logger = logging.getLogger(__name__)

SCOPE_KEY = "cryptomon.flow"
CLOSE_GRACE_SECONDS = 10.0


class TransportFlow:
    """A Twisted streaming producer whose only job is to tell the writer when the connection is writable."""

    def __init__(self, protocol):
        self.writable = asyncio.Event()
        self.writable.set()
        # Daphne's HTTP channel registered itself on the transport before the upgrade; it no longer writes.
        protocol.unregisterProducer()
        protocol.registerProducer(self, True)
        # autobahn refuses a message over daphne's 1 MiB limit by dropping the TCP connection unless told to
        # send the close frame first: docs/contract.md §10 says the client gets 1009.
        protocol.failByDrop = False
        # The close frame queues behind what is buffered; autobahn drops the connection 1 s after sending it
        # unless this is longer, and a slow (not dead) client would then see 1006 instead of 4008.
        protocol.closeHandshakeTimeout = CLOSE_GRACE_SECONDS

    # Twisted's IPushProducer (its names):
    def pauseProducing(self) -> None:
        self.writable.clear()

    def resumeProducing(self) -> None:
        self.writable.set()

    def stopProducing(self) -> None:
        self.writable.set()  # the connection is gone: never leave the writer waiting

    async def wait_writable(self) -> None:
        await self.writable.wait()


def _daphne_protocol(send):
    """The autobahn protocol behind daphne's ``send`` (``functools.partial(Server.handle_reply, protocol)``)."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    owner = getattr(send.func, "__self__", None)
    protocol = send.args[0]
    if type(owner).__module__.startswith("daphne.") and hasattr(protocol, "registerProducer"):
        return protocol
    return None


def take_flow(protocol) -> TransportFlow | None:
    try:
        return TransportFlow(protocol)
    except Exception as error:  # e.g. the connection closed during the handshake
        logger.info("ws: no back-pressure for this socket: %s", error)
        return None


class FlowControlMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and (protocol := _daphne_protocol(send)) is not None:
            scope = dict(scope, **{SCOPE_KEY: functools.partial(take_flow, protocol)})
        return await self.app(scope, receive, send)
