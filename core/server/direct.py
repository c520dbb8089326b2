"""Direct connections: the same frames as a p2p stream, over TLS on a TCP port, without the p2p daemons.

Every p2p stream goes client -> client's p2p daemon -> server's p2p daemon -> server, and that costs
about 1.2 ms per round trip and moves about 100 MB/s on loopback (benchmarks/README.md), while a
plain TCP round trip costs about 0.1 ms. So a server also takes its streaming RPCs (inference
sessions, large forward and backward calls, pushes from the previous server) on a TCP port of its
own (``--direct_port``, any free one by default) and announces it with the fingerprint of its TLS
certificate (:mod:`core.direct_tls`); callers that can dial it skip the daemons.

A connection is TLS 1.3, or, for a caller on this very machine, a local connection whose server proves
it holds the certificate's key (:mod:`core.direct_local`; the server tells them apart by the first
byte). Then comes the handshake of :mod:`core.direct_protocol`, and after it hivemind's stream frames,
served by the very handler the p2p stream uses (:mod:`core.server.bounded_streams`: size limits, idle
time-outs, clear errors). Callers check the server's certificate against the announced fingerprint;
the server does not learn who the caller is beyond its IP address (as with any caller, only hidden
states and gradients travel here).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable

from core.direct_local import LOCAL_PROTOCOL, comes_from_this_machine, local_proof, nonce_of_local_hello
from core.direct_protocol import MAX_HELLO_BYTES, method_of_hello, server_greeting
from core.direct_tls import ServerCertificate
from core.errors import PortInUseError

logger = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
"""Seconds a new connection has for everything before its hello is read (TLS handshake or local proof)."""
MAX_CONNECTIONS = 256
"""Open direct connections a server takes at once; more are closed at once (clients fall back to p2p)."""
ACCEPT_RETRY_SECONDS = 0.5
STREAM_LIMIT = 2**16
"""Longest line (hello) a connection's reader takes (asyncio's default)."""

StreamHandle = Callable[[object, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class DirectCaller:
    """Who is on the other end of a direct connection, named by its IP address (nothing proves more). Every
    connection of one client gets the same name, so a backward finds the graph its forward kept."""

    peer_id: str


class DirectListener:
    """Accepts direct connections on ``host:port`` with ``certificate`` (TLS, or a local connection's proof for
    callers on this machine: :mod:`core.direct_local`) and hands each to the handle of the RPC its hello names
    (run on the server's event loop)."""

    def __init__(self, handles: dict[str, StreamHandle], peer_id: str, certificate: ServerCertificate) -> None:
        self._handles, self._peer_id, self._certificate = handles, peer_id, certificate
        self._accepting: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (a free one when ``port`` is 0)."""
        try:
            listening = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                             backlog=MAX_CONNECTIONS)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(port, "--direct_port") from None
            raise
        listening.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(listening))
        return listening.getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut the open connections."""
        tasks = [task for task in (self._accepting, *self._connections) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with listening:
            while True:
                try:
                    sock, address = await loop.sock_accept(listening)
                except OSError as error:  # out of file descriptors, say: wait instead of spinning
                    logger.warning("Could not accept a direct connection: %s", error)
                    await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                    continue
                if len(self._connections) >= MAX_CONNECTIONS:  # one that never finishes its handshake counts too
                    logger.warning("Refused a direct connection: %d are open already", MAX_CONNECTIONS)
                    sock.close()
                    continue
                task = asyncio.create_task(self._on_connection(sock, address[0]))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)

    async def _on_connection(self, sock: socket.socket, host: str) -> None:
        writer = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                async with asyncio.timeout(HELLO_TIMEOUT):
                    local = await _first_byte(sock) == LOCAL_PROTOCOL[:1]
                    reached_host, reached_port = sock.getsockname()[:2]
                    if local and not comes_from_this_machine(host, reached_host):  # the caller retries with TLS
                        raise ConnectionRefusedError(f"a local connection from {host}, not from this machine")
                    reader, writer = await _streams(sock, None if local else self._certificate.context)
                    if local:
                        nonce = nonce_of_local_hello(await reader.readuntil(b"\n"))
                        if nonce is None:
                            raise ConnectionRefusedError("not a local hello")
                        writer.write(local_proof(self._certificate, nonce, reached_host, reached_port))
                    line = await reader.readuntil(b"\n")
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as error:
                # no TLS (e.g. an older client's plain hello), a broken record, silence, a hang-up, a stranger
                logger.debug("Closed a direct connection from %s before its hello: %r", host, error)
                return
            method = method_of_hello(line) if len(line) <= MAX_HELLO_BYTES else None
            if method is None or method not in self._handles:
                logger.debug("Closed a direct connection from %s: no valid hello (%r)", host, line[:MAX_HELLO_BYTES])
                return  # not a Blossom client: nothing it would understand can be said
            writer.write(server_greeting(self._peer_id))
            await self._handles[method](DirectCaller(f"direct:{host}"), reader, writer)
        except Exception:  # a handle's own failure (they answer callers' errors themselves): logged, not left unseen
            logger.warning("Direct connection from %s failed", host, exc_info=True)
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()


async def _first_byte(sock: socket.socket) -> bytes:
    """The first byte the caller sent, left unread in the socket (``b""`` if it hung up first)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), _settle, readable)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _streams(sock: socket.socket, tls: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over an accepted connection, after the TLS handshake when ``tls`` is given."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    options = {} if tls is None else {"ssl": tls, "ssl_handshake_timeout": HELLO_TIMEOUT}
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, **options)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


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
