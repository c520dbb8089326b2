"""The ways to open a stream to a block server's RPC: a direct connection (TLS, or proven-local on one
machine), a relay circuit, or p2p.

Clients (:meth:`RemoteSequenceManager.open_call_stream
<core.client.sequence_manager.RemoteSequenceManager.open_call_stream>`) and servers pushing to the
next server (:mod:`core.server.push`) choose among them; whatever is chosen, the caller then speaks
hivemind's frames (:mod:`core.wire`) on the stream, exactly as on a p2p stream to that RPC.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

from hivemind.p2p import P2P, PeerID

from core.direct_local import (
    PROOF_HEAD_BYTES, LocalConnectionRefusedError, check_local_proof, local_hello, new_nonce, proof_lengths,
)
from core.direct_protocol import (
    MAX_GREETING_BYTES, DirectEndpoint, check_greeting, hello, is_own_address, on_own_network,
)
from core.direct_tls import check_certificate, client_context
from core.errors import RemoteCallError
from core.relay_protocol import (
    MAX_HELLO_BYTES,
    RELAY_HANDLE,
    parse_relay_answer,
    relay_hello,
)
from core.wire import block_rpc_handle

DIRECT_DIAL_TIMEOUT = 1.0
"""Seconds for the TCP connection to a direct port on the caller's own networks (where callers dial by default),
where it takes milliseconds: a firewall that drops it costs this long, then p2p. Other addresses get
:data:`DIRECT_CONNECT_TIMEOUT`."""
DIRECT_CONNECT_TIMEOUT = 5.0
"""Seconds for all of it (the connection, the TLS handshake or local proof, the greeting) before falling back to
p2p."""
RELAY_OPEN_TIMEOUT = 15.0
"""Seconds to open a circuit through a relay (the relay opens the server's stream meanwhile)."""
DIRECT_RETRY_AFTER = 300.0
"""Seconds a direct port that failed a caller is left alone (relays or p2p instead): every new stream to it would
pay its time-out again."""
RELAY_RETRY_AFTER = 60.0
"""Seconds a relay that failed a caller is tried only after the server's other relays."""

logger = logging.getLogger(__name__)

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_p2p_stream(p2p: P2P, peer_id: str, method: str) -> Stream:
    """A p2p stream to ``peer_id``'s streaming RPC ``method``.

    Written and read directly rather than through hivemind's stream helpers: no writer task and
    queue per call, one write per frame, and the caller closes as soon as it has its answer.
    """
    _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(peer_id), block_rpc_handle(method))
    return reader, writer


async def open_direct_stream(endpoint: DirectEndpoint, peer_id: str, method: str) -> Stream:
    """A stream to ``method`` over a direct connection to server ``peer_id`` at ``endpoint``: a local connection
    proven by the server's key when ``endpoint`` is this machine (:mod:`core.direct_local`; TLS if the server
    refuses it), else TLS pinned to the announced certificate; then :mod:`core.direct_protocol`'s handshake.
    ``OSError``, ``TimeoutError`` or :class:`RemoteCallError` if nothing is there or it is not that server."""
    async with asyncio.timeout(DIRECT_CONNECT_TIMEOUT):
        if is_own_address(endpoint.host):
            try:
                return await _open_direct(endpoint, peer_id, method, local=True)
            except LocalConnectionRefusedError as error:
                logger.debug("%s; dialling it again with TLS", error)
        return await _open_direct(endpoint, peer_id, method, local=False)


async def _open_direct(endpoint: DirectEndpoint, peer_id: str, method: str, local: bool) -> Stream:
    where = str(endpoint)
    sock = await _dial(endpoint)
    try:
        options = {} if local else {"ssl": client_context(), "server_hostname": ""}
        reader, writer = await asyncio.open_connection(sock=sock, **options)
    except BaseException:
        sock.close()
        raise
    try:
        if local:
            nonce = new_nonce()
            writer.write(local_hello(nonce) + hello(method))
            try:
                head = await reader.readexactly(PROOF_HEAD_BYTES)
            except (asyncio.IncompleteReadError, ConnectionError) as error:
                raise LocalConnectionRefusedError(f"{where} closed a local connection ({type(error).__name__})") \
                    from None
            lengths = proof_lengths(head, where)
            try:
                body = await reader.readexactly(sum(lengths))
            except asyncio.IncompleteReadError:
                raise RemoteCallError(f"{where} closed the connection in the middle of its proof") from None
            check_local_proof(body, lengths[0], endpoint.fingerprint, nonce, endpoint.host, endpoint.port, where)
        else:
            check_certificate(writer.get_extra_info("ssl_object"), endpoint.fingerprint, where)
            writer.write(hello(method))
        received = b""
        while (rest := check_greeting(received, peer_id, where)) is None:
            chunk = await reader.read(MAX_GREETING_BYTES)
            if not chunk:
                raise RemoteCallError(f"{where} closed the connection instead of greeting as {peer_id}")
            received += chunk
        if rest:
            raise RemoteCallError(f"{where} sent {len(rest)} unexpected bytes after its greeting")
    except BaseException:
        writer.close()
        raise
    return reader, writer


def _dial_timeout(endpoint: DirectEndpoint) -> float:
    """Seconds for the TCP connection alone: short on the caller's own networks, else the whole bound."""
    return DIRECT_DIAL_TIMEOUT if on_own_network(endpoint.host) else DIRECT_CONNECT_TIMEOUT


async def _dial(endpoint: DirectEndpoint) -> socket.socket:
    """A TCP connection to ``endpoint`` (no delay on small writes), within :func:`_dial_timeout`."""
    sock = socket.socket(socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with asyncio.timeout(_dial_timeout(endpoint)):
            await asyncio.get_running_loop().sock_connect(sock, (endpoint.host, endpoint.port))
    except BaseException:
        sock.close()
        raise
    return sock


def connect_direct_blocking(endpoint: DirectEndpoint, peer_id: str, method: str) -> socket.socket:
    """:func:`open_direct_stream` for a caller that then reads and writes with blocking calls (run it in a
    worker thread): the connected socket (plain for a proven local connection, else TLS), the greeting read,
    all within :data:`DIRECT_CONNECT_TIMEOUT`."""
    deadline = time.monotonic() + DIRECT_CONNECT_TIMEOUT
    if is_own_address(endpoint.host):
        try:
            return _connect_blocking(endpoint, peer_id, method, True, deadline)
        except LocalConnectionRefusedError as error:
            logger.debug("%s; dialling it again with TLS", error)
    return _connect_blocking(endpoint, peer_id, method, False, deadline)


def _connect_blocking(endpoint: DirectEndpoint, peer_id: str, method: str, local: bool,
                      deadline: float) -> socket.socket:
    where = str(endpoint)

    def left() -> float:
        seconds = deadline - time.monotonic()
        if seconds <= 0:
            raise TimeoutError(f"{where} did not finish the handshake and greeting in {DIRECT_CONNECT_TIMEOUT:g} s")
        return seconds

    def receive_exactly(length: int, what: str) -> bytes:
        received = b""
        while len(received) < length:
            sock.settimeout(left())
            chunk = sock.recv(length - len(received))
            if not chunk:
                raise RemoteCallError(f"{where} closed the connection instead of {what}")
            received += chunk
        return received

    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=min(_dial_timeout(endpoint), left()))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local:
            nonce = new_nonce()
            try:
                sock.sendall(local_hello(nonce) + hello(method))
                head = receive_exactly(PROOF_HEAD_BYTES, "proving who it is")
            except (RemoteCallError, ConnectionError) as error:
                raise LocalConnectionRefusedError(f"{where} closed a local connection ({error})") from None
            lengths = proof_lengths(head, where)
            check_local_proof(receive_exactly(sum(lengths), "finishing its proof"), lengths[0], endpoint.fingerprint,
                              nonce, endpoint.host, endpoint.port, where)
        else:
            sock.settimeout(left())
            sock = client_context().wrap_socket(sock)  # the handshake (the TLS socket takes over the connection)
            check_certificate(sock, endpoint.fingerprint, where)
            sock.sendall(hello(method))
        received = b""
        while check_greeting(received, peer_id, where) is None:  # byte by byte: nothing after it may be read here
            received += receive_exactly(1, f"greeting as {peer_id}")
    except BaseException:
        sock.close()
        raise
    return sock


async def open_relay_circuit(p2p: P2P, relay: str, peer_id: str, method: str) -> Stream:
    """A stream to server ``peer_id``'s ``method`` through ``relay`` (see :mod:`core.relay_protocol`);
    :class:`RemoteCallError` with the relay's reason if it refuses."""
    async with asyncio.timeout(RELAY_OPEN_TIMEOUT):
        _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(relay), RELAY_HANDLE)
        try:
            writer.write(relay_hello(peer_id, block_rpc_handle(method)))
            await writer.drain()
            try:
                answer = await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
                raise RemoteCallError(f"relay {relay} closed the circuit to {peer_id} without an answer") from error
            refusal = parse_relay_answer(answer[:MAX_HELLO_BYTES])
            if refusal is not None:
                raise RemoteCallError(f"relay {relay} cannot reach server {peer_id}: {refusal}")
        except BaseException:
            writer.close()
            raise
    return reader, writer
