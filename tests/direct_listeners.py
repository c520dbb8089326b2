"""Direct listeners for tests without a swarm: a handler's streams behind a TLS port on 127.0.0.1, and the
blocking stream an inference session opens to it (what :class:`RemoteSequenceManager` does with a real swarm)."""
from __future__ import annotations

import asyncio

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
