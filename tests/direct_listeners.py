"""Direct listeners for tests without a swarm: a handler's streams behind a direct port on 127.0.0.1, the
blocking stream an inference session opens to it (what :class:`RemoteSequenceManager` does with a real swarm),
and whether the port closed a connection."""
from __future__ import annotations

import asyncio
import socket

from core.client.blocking_stream import BlockingStream
from core.direct_protocol import DirectEndpoint
from core.direct_tls import make_server_certificate
from core.server.direct import DirectListener, StreamHandle
from core.transports import connect_direct_blocking
from core.utils.event_loop import EventLoopThread


def start_listener(loop: EventLoopThread, handles: dict[str, StreamHandle],
                   peer_id: str) -> tuple[DirectListener, DirectEndpoint]:
    """A listener with a fresh certificate on a free port, and the endpoint a client pins."""
    certificate = make_server_certificate()
    listener = DirectListener(handles, peer_id, certificate)
    port = loop.run(listener.start("127.0.0.1", 0))
    return listener, DirectEndpoint("127.0.0.1", port, certificate.fingerprint)


async def open_blocking(endpoint: DirectEndpoint, peer_id: str, method: str, timeout: float) -> BlockingStream:
    """A blocking stream to ``method`` of ``peer_id`` at ``endpoint`` (opened in a worker thread)."""
    sock = await asyncio.to_thread(connect_direct_blocking, endpoint, peer_id, method)
    return BlockingStream(sock, peer_id, timeout)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the other end closes ``sock`` (or resets it) within ``seconds`` without sending a byte."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
