"""Local direct connections (core.direct_local): on one machine no TLS, and the server proves it holds the key of
the certificate it announced, for the port it listens on; a stranger, or a relay to the real server, gets no byte
of the call; the server takes them only from its own machine."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading

import pytest

from core import transports
from core.direct_local import (
    PROOF_HEAD_BYTES, check_local_proof, local_hello, local_proof, new_nonce, nonce_of_local_hello, proof_lengths,
)
from core.direct_protocol import DirectEndpoint, hello, server_greeting
from core.direct_tls import make_server_certificate
from core.errors import RemoteCallError
from core.server import direct
from core.utils.event_loop import EventLoopThread
from tests.direct_listeners import start_listener


def test_a_proof_holds_for_the_announced_certificate_the_callers_nonce_and_the_port_only() -> None:
    certificate, other = make_server_certificate(), make_server_certificate()
    nonce = new_nonce()
    proof = local_proof(certificate, nonce, 4000)
    lengths = proof_lengths(proof[:PROOF_HEAD_BYTES], "x")
    body = proof[PROOF_HEAD_BYTES:]
    assert len(body) == sum(lengths)
    check_local_proof(body, lengths[0], certificate.fingerprint, nonce, 4000, "x")  # accepted
    with pytest.raises(RemoteCallError, match="x showed another certificate"):
        check_local_proof(body, lengths[0], other.fingerprint, nonce, 4000, "x")
    for wrong_nonce, wrong_port in ((new_nonce(), 4000), (nonce, 4001)):  # a replayed or relayed proof
        with pytest.raises(RemoteCallError, match="did not prove it holds its announced certificate's key"):
            check_local_proof(body, lengths[0], certificate.fingerprint, wrong_nonce, wrong_port, "x")
    with pytest.raises(RemoteCallError, match="did not prove"):
        check_local_proof(body[:-1] + bytes([body[-1] ^ 1]), lengths[0], certificate.fingerprint, nonce, 4000, "x")
    for head in (b"HTTP/1.1 400 Bad Request", b"BLOSSOM-LOCAL/1 \xff\xff\x00\x10", b"BLOSSOM-LOCAL/1 \x00\x00\x00\x10"):
        with pytest.raises(RemoteCallError, match="x "):
            proof_lengths(head[:PROOF_HEAD_BYTES], "x")


def test_local_hellos_carry_a_fresh_nonce() -> None:
    first, second = new_nonce(), new_nonce()
    assert first != second and nonce_of_local_hello(local_hello(first)) == first
    for bad in (b"BLOSSOM-LOCAL/1 zz\n", local_hello(first)[:-1], b"BLOSSOM-DIRECT/2 rpc_inference\n",
                b"BLOSSOM-LOCAL/1 " + b"0" * 62 + b"\n"):
        assert nonce_of_local_hello(bad) is None, bad


def _impostor(sign: callable, connections: int) -> tuple[int, list[bytes], threading.Thread]:
    """A port on 127.0.0.1 answering local hellos with ``sign(nonce, port)`` and a greeting as QmPeer, recording
    all it receives."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    received: list[bytes] = []

    def serve() -> None:
        with listener:
            for _ in range(connections):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    data = b""
                    while data.count(b"\n") < 2:
                        data += conn.recv(4096)
                    conn.sendall(sign(nonce_of_local_hello(data[:data.index(b"\n") + 1]), listener.getsockname()[1])
                                 + server_greeting("QmPeer"))
                    with contextlib.suppress(OSError):
                        while chunk := conn.recv(4096):
                            data += chunk
                    received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], received, thread


@pytest.mark.parametrize("impostor", ["its own certificate", "a proof for another port"])
def test_a_local_port_that_cannot_prove_the_key_receives_no_byte_of_the_call(impostor: str) -> None:
    announced, own = make_server_certificate(), make_server_certificate()
    if impostor == "its own certificate":
        def sign(nonce: bytes, port: int) -> bytes:
            return local_proof(own, nonce, port)
    else:  # what a program at this port gets by passing the nonce on to the real server at its own port
        def sign(nonce: bytes, port: int) -> bytes:
            return local_proof(announced, nonce, port + 1)
    port, received, thread = _impostor(sign, 2)
    endpoint = DirectEndpoint("127.0.0.1", port, announced.fingerprint)
    with pytest.raises(RemoteCallError, match="another certificate|did not prove"):
        transports.connect_direct_blocking(endpoint, "QmPeer", "rpc_inference")
    with pytest.raises(RemoteCallError, match="another certificate|did not prove"):
        asyncio.run(transports.open_direct_stream(endpoint, "QmPeer", "rpc_inference"))
    thread.join(10)
    assert len(received) == 2
    for data in received:  # the two hello lines, nothing after them
        local_line, method_line, rest = data.split(b"\n", 2)
        assert nonce_of_local_hello(local_line + b"\n") is not None and method_line + b"\n" == hello("rpc_inference")
        assert rest == b""


async def _echo(caller, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(caller.peer_id.encode() + b" " + await reader.readuntil(b"\n"))
    await writer.drain()


@pytest.fixture
def echo_listener():
    loop = EventLoopThread("test-direct-local")
    server, endpoint = start_listener(loop, {"rpc_inference": _echo}, "QmServer")
    yield endpoint
    loop.run(server.stop(), timeout=10)
    loop.stop()


def _round_trip(sock: socket.socket) -> bytes:
    with sock:
        sock.settimeout(5)
        sock.sendall(b"ping\n")
        return sock.recv(100)


def test_a_caller_on_the_same_machine_gets_a_plain_proven_connection(echo_listener) -> None:
    sock = transports.connect_direct_blocking(echo_listener, "QmServer", "rpc_inference")
    assert not isinstance(sock, ssl.SSLSocket)
    assert _round_trip(sock) == b"direct:127.0.0.1 ping\n"

    async def over_asyncio() -> bytes:
        reader, writer = await transports.open_direct_stream(echo_listener, "QmServer", "rpc_inference")
        assert writer.get_extra_info("ssl_object") is None
        writer.write(b"pong\n")
        answer = await reader.readuntil(b"\n")
        writer.close()
        return answer

    assert asyncio.run(over_asyncio()) == b"direct:127.0.0.1 pong\n"


def test_the_server_takes_local_connections_only_from_its_own_machine(echo_listener, monkeypatch) -> None:
    monkeypatch.setattr(direct, "is_own_address", lambda host: False)  # as if the caller were on another machine
    with socket.create_connection((echo_listener.host, echo_listener.port), timeout=5) as sock:
        sock.sendall(local_hello(new_nonce()) + hello("rpc_inference"))
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # closed with the hello unread
            answer = b""
        assert answer == b""  # closed: no proof, no greeting
    monkeypatch.setattr(transports, "is_own_address", lambda host: False)  # that caller speaks TLS: served
    sock = transports.connect_direct_blocking(echo_listener, "QmServer", "rpc_inference")
    assert isinstance(sock, ssl.SSLSocket) and sock.version() == "TLSv1.3"
    assert _round_trip(sock) == b"direct:127.0.0.1 ping\n"
