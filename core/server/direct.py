"""Direct connections: the same frames as a p2p stream, over TLS on a TCP port, without the p2p daemons.

Every p2p stream goes client -> client's p2p daemon -> server's p2p daemon -> server, and that costs
about 1.2 ms per round trip and moves about 100 MB/s on loopback (benchmarks/README.md), while a
plain TCP round trip costs about 0.1 ms. So a server also takes its streaming RPCs (inference
sessions, large forward and backward calls, pushes from the previous server) on a TCP port of its
own (``--direct_port``, any free one by default) and announces it with the fingerprint of its TLS
certificate (:mod:`core.direct_tls`); callers that can dial it skip the daemons.

A connection is TLS 1.3, then the handshake of :mod:`core.direct_protocol`; after that the bytes are
hivemind's stream frames, served by the very handler the p2p stream uses
(:mod:`core.server.bounded_streams`: size limits, idle time-outs, clear errors). Callers check the
server's certificate against the announced fingerprint; the server does not learn who the caller
is beyond its IP address (as with any caller, only hidden states and gradients travel here).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable

from core.direct_protocol import MAX_HELLO_BYTES, method_of_hello, server_greeting
from core.errors import PortInUseError

logger = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
"""Seconds a new connection has for its TLS handshake, and again to send its hello."""
MAX_CONNECTIONS = 256
"""Open direct connections a server takes at once; more are closed at once (clients fall back to p2p)."""

StreamHandle = Callable[[object, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class DirectCaller:
    """Who is on the other end of a direct connection, named by its IP address (nothing proves more). Every
    connection of one client gets the same name, so a backward finds the graph its forward kept."""

    peer_id: str


class DirectListener:
    """Accepts TLS connections (``tls``: the server's context) on ``host:port`` and hands each to the handle of
    the RPC its hello names (run on the server's event loop)."""

    def __init__(self, handles: dict[str, StreamHandle], peer_id: str, tls: ssl.SSLContext) -> None:
        self._handles, self._peer_id, self._tls = handles, peer_id, tls
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (a free one when ``port`` is 0)."""
        try:
            # TLS starts in _on_connection, after the cap on connections: one that never finishes its handshake counts
            self._server = await asyncio.start_server(self._on_connection, host, port)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(port, "--direct_port") from None
            raise
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut the open connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS:
            logger.warning("Refused a direct connection: %d are open already", MAX_CONNECTIONS)
            writer.close()
            return
        self._connections.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await writer.start_tls(self._tls, ssl_handshake_timeout=HELLO_TIMEOUT)
                line = await asyncio.wait_for(reader.readuntil(b"\n"), HELLO_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                writer.close()  # no TLS (e.g. an older client's plain hello), a broken record, silence, a hang-up
                return
            method = method_of_hello(line) if len(line) <= MAX_HELLO_BYTES else None
            if method is None or method not in self._handles:
                logger.debug("Closed a direct connection from %s: no valid hello (%r)",
                             writer.get_extra_info("peername"), line[:MAX_HELLO_BYTES])
                writer.close()  # not a Blossom client: nothing it would understand can be said
                return
            writer.write(server_greeting(self._peer_id))
            host = (writer.get_extra_info("peername") or ("?",))[0]
            await self._handles[method](DirectCaller(f"direct:{host}"), reader, writer)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._connections.discard(task)


def direct_hosts(host_maddrs: tuple[str, ...], announce_maddrs: tuple[str, ...],
                 visible_maddrs: list[str]) -> tuple[str, str]:
    """``(bind host, announced host)`` for the direct port: the IPv4 the p2p side listens on, announced as the
    first of ``--announce_maddrs``, else that IP, else (listening on 0.0.0.0) a private address the p2p node
    sees, preferring one other programs on the LAN can reach over loopback."""
    bind = next(iter(_ipv4s(host_maddrs)), "0.0.0.0")
    announced = next(iter(_ipv4s(announce_maddrs)), None) or (bind if bind != "0.0.0.0" else None)
    if announced is None:
        seen = [ip for ip in _ipv4s(visible_maddrs) if ip != "0.0.0.0"]
        announced = next((ip for ip in seen if not ip.startswith("127.")), seen[0] if seen else "127.0.0.1")
    return bind, announced


def _ipv4s(maddrs) -> list[str]:
    """The IPv4 addresses of ``/ip4/<address>/...`` multiaddrs, in order."""
    found = []
    for maddr in maddrs:
        parts = str(maddr).split("/")
        if len(parts) > 2 and parts[1] == "ip4":
            found.append(parts[2])
    return found
