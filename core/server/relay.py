"""The relay and dial-back services every public peer offers (block servers and ``run_dht`` peers).

- **Dial back** (:data:`~core.relay_protocol.DIAL_BACK_HANDLE`): a peer sends candidate ``host:port``
  addresses of its own; this peer tries a plain TCP connection to each and answers which connected.
  That is how a server behind NAT learns that nobody can dial it (or that its router mapped a port).
- **Reservations** (:data:`~core.relay_protocol.RESERVE_HANDLE`): a server that cannot be dialled
  reserves a slot here and renews it; its connection to this peer stays open meanwhile.
- **Circuits** (:data:`~core.relay_protocol.RELAY_HANDLE`): a client names a server holding a
  reservation and one of its RPC handles; this peer opens that stream to the server over the
  server's own connection and copies bytes both ways.

Limits keep a relay from being used as anyone's free pipe: reservations only while this peer is
itself dialable and the service is on, at most :data:`MAX_RESERVATIONS` servers, at most
:data:`MAX_CIRCUITS_PER_SERVER` open circuits per server, only Blossom RPC handles as targets,
circuits closed after :data:`CIRCUIT_IDLE_TIMEOUT` seconds without a byte, at most
:data:`MAX_DIAL_BACK_ADDRESSES` addresses per dial-back and one dial-back per peer every
:data:`DIAL_BACK_INTERVAL` seconds.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo
from hivemind.proto import runtime_pb2

from core.direct_protocol import parse_direct_address
from core.relay_protocol import (
    DIAL_BACK_HANDLE, DIAL_BACK_TIMEOUT, MAX_DIAL_BACK_ADDRESSES, MAX_HELLO_BYTES, RELAY_HANDLE, RESERVATION_TTL,
    RESERVE_HANDLE, parse_relay_hello, relay_ok, relay_refusal,
)
from core.wire import block_rpc_handle, pack_metadata, unpack_metadata

logger = logging.getLogger(__name__)

MAX_RESERVATIONS = 128
MAX_CIRCUITS_PER_SERVER = 32
CIRCUIT_IDLE_TIMEOUT = 15 * 60.0
DIAL_BACK_INTERVAL = 5.0
HELLO_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0
LINGER_SECONDS = 5.0
RELAYABLE_PREFIX = block_rpc_handle("")  # circuits reach the block servers' RPCs and nothing else


class RelayService:
    """Dial-backs, reservations and circuits on one P2P instance.

    ``refusal()`` says why reservations are refused right now (e.g. this peer is not dialable itself,
    or the operator turned the relay off), or ``None`` when they are taken.
    """

    def __init__(self, p2p: P2P, refusal: Callable[[], str | None]) -> None:
        self.p2p, self.refusal = p2p, refusal
        self.reservations: dict[str, float] = {}  # server peer id -> expiry (monotonic)
        self.circuits: dict[str, int] = {}  # server peer id -> open circuits
        self._dial_backs: dict[str, float] = {}  # caller peer id -> time of its last dial-back

    async def add_p2p_handlers(self) -> None:
        await self.p2p.add_protobuf_handler(DIAL_BACK_HANDLE, self.rpc_dial_back, runtime_pb2.ExpertRequest)
        await self.p2p.add_protobuf_handler(RESERVE_HANDLE, self.rpc_reserve, runtime_pb2.ExpertRequest)
        await self.p2p.add_binary_stream_handler(RELAY_HANDLE, self.handle_circuit)

    async def remove_p2p_handlers(self) -> None:
        await self.p2p.remove_protobuf_handler(DIAL_BACK_HANDLE)
        await self.p2p.remove_protobuf_handler(RESERVE_HANDLE)
        await self.p2p.remove_binary_stream_handler(RELAY_HANDLE)

    # ---- dial back -----------------------------------------------------------------------------
    async def rpc_dial_back(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        caller = context.remote_id.to_base58()
        now = time.monotonic()
        if now - self._dial_backs.get(caller, -DIAL_BACK_INTERVAL) < DIAL_BACK_INTERVAL:
            return _answer(error=f"one dial-back every {DIAL_BACK_INTERVAL:g} s; try again later")
        self._dial_backs = {peer: at for peer, at in self._dial_backs.items() if now - at < DIAL_BACK_INTERVAL}
        self._dial_backs[caller] = now
        try:
            addresses = [str(a) for a in unpack_metadata(request.metadata).get("addresses", [])]
        except Exception:
            return _answer(error="the request's metadata is not a msgpack map with 'addresses'")
        parsed = [parse_direct_address(a) for a in addresses[:MAX_DIAL_BACK_ADDRESSES]]
        results = await asyncio.gather(*(_can_connect(a) for a in parsed if a is not None))
        reachable = [f"{host}:{port}" for (host, port), ok in zip([a for a in parsed if a], results) if ok]
        return _answer(reachable=reachable)

    # ---- reservations --------------------------------------------------------------------------
    async def rpc_reserve(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        server = context.remote_id.to_base58()
        now = time.monotonic()
        self.reservations = {peer: until for peer, until in self.reservations.items() if until > now}
        reason = self.refusal()
        if reason is None and server not in self.reservations and len(self.reservations) >= MAX_RESERVATIONS:
            reason = f"this relay holds its maximum of {MAX_RESERVATIONS} reservations"
        if reason is not None:
            return _answer(error=reason)
        if server not in self.reservations:
            logger.info("Relaying for server %s", server)
        self.reservations[server] = now + RESERVATION_TTL
        return _answer(ttl=RESERVATION_TTL)

    # ---- circuits ------------------------------------------------------------------------------
    async def handle_circuit(self, stream_info: StreamInfo, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        """Serve one circuit: read the caller's hello, open the server's stream, then copy bytes both ways."""
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), HELLO_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        hello = parse_relay_hello(line[:MAX_HELLO_BYTES])
        reason = self._circuit_refusal(hello)
        if reason is not None:
            await _say_and_close(writer, relay_refusal(reason))
            return
        target, handle = hello
        try:
            _, server_reader, server_writer = await asyncio.wait_for(
                self.p2p.call_binary_stream_handler(PeerID.from_base58(target), handle), OPEN_TIMEOUT)
        except Exception as error:
            await _say_and_close(writer, relay_refusal(f"server {target} did not answer through this relay ({error})"))
            return
        self.circuits[target] = self.circuits.get(target, 0) + 1
        try:
            writer.write(relay_ok())
            await writer.drain()
            await _pipe_both_ways((reader, writer), (server_reader, server_writer))
        finally:
            self.circuits[target] -= 1
            server_writer.close()
            writer.close()

    def _circuit_refusal(self, hello: tuple[str, str] | None) -> str | None:
        if hello is None:
            return "not a relay hello line"
        target, handle = hello
        if not handle.startswith(RELAYABLE_PREFIX):
            return f"'{handle[:64]}' is not a Blossom RPC this relay carries"
        if self.reservations.get(target, 0.0) < time.monotonic():
            return f"server {target[:64]} holds no reservation with this relay"
        if self.circuits.get(target, 0) >= MAX_CIRCUITS_PER_SERVER:
            return f"server {target} already has {MAX_CIRCUITS_PER_SERVER} open circuits through this relay"
        return None


async def _pipe_both_ways(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                          b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy ``a``'s reader to ``b``'s writer and back until both ends finished (or one fell idle/failed).

    When one direction ends, the other gets :data:`LINGER_SECONDS` to deliver its last bytes (a server's
    final answer follows the caller's goodbye), so neither side half-closes early.
    """
    forward = asyncio.create_task(_copy(a[0], b[1]))
    backward = asyncio.create_task(_copy(b[0], a[1]))
    done, pending = await asyncio.wait({forward, backward}, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=LINGER_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            async with asyncio.timeout(CIRCUIT_IDLE_TIMEOUT):  # a deadline per chunk, without a task per chunk
                chunk = await reader.read(64 * 1024)
            if not chunk:
                return
            writer.write(chunk)
            await writer.drain()
    except (TimeoutError, ConnectionError, OSError):
        pass


async def _say_and_close(writer: asyncio.StreamWriter, line: bytes) -> None:
    try:
        writer.write(line)
        await writer.drain()
        await asyncio.sleep(0.1)  # let the daemon deliver the line before the stream closes
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _can_connect(address: tuple[str, int]) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), DIAL_BACK_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def _answer(**fields) -> runtime_pb2.ExpertResponse:
    return runtime_pb2.ExpertResponse(metadata=pack_metadata(fields))
