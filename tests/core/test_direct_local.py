"""Local direct connections (core.direct_local): on one machine no TLS, and the server proves it holds the key of
the certificate it announced, for the address and port the connection reached; a stranger, or a relay to the real
server, gets no byte of the call; the server takes them only from its own machine, and a caller it refuses (or an
older, TLS-only server) is served over TLS."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading

import pytest

from core import transports
from core.direct_local import (
    PROOF_HEAD_BYTES, LocalConnectionRefusedError, check_local_proof, comes_from_this_machine, local_hello, local_proof,
    new_nonce, nonce_of_local_hello, proof_lengths,
)
from core.direct_protocol import DirectEndpoint, hello, server_greeting
from core.direct_tls import make_server_certificate
from core.errors import RemoteCallError
from core.server import direct
from core.utils.event_loop import EventLoopThread
from tests.direct_listeners import closed_within, start_listener


def test_a_proof_holds_for_the_announced_certificate_the_callers_nonce_and_the_address_only() -> None:
    certificate, other = make_server_certificate(), make_server_certificate()
    nonce = new_nonce()
    proof = local_proof(certificate, nonce, "127.0.0.1", 4000)
    lengths = proof_lengths(proof[:PROOF_HEAD_BYTES], "x")
    body = proof[PROOF_HEAD_BYTES:]
    assert len(body) == sum(lengths)
    check_local_proof(body, lengths[0], certificate.fingerprint, nonce, "127.0.0.1", 4000, "x")  # accepted
    check_local_proof(body, lengths[0], certificate.fingerprint, nonce, "::ffff:127.0.0.1", 4000, "x")  # same address
    with pytest.raises(RemoteCallError, match="x showed another certificate"):
        check_local_proof(body, lengths[0], other.fingerprint, nonce, "127.0.0.1", 4000, "x")
    # a replayed proof, or one the real server gave a relay at another port or address
    for wrong in ((new_nonce(), "127.0.0.1", 4000), (nonce, "127.0.0.1", 4001), (nonce, "127.0.0.2", 4000)):
        with pytest.raises(RemoteCallError, match="did not prove it holds its announced certificate's key"):
            check_local_proof(body, lengths[0], certificate.fingerprint, *wrong, "x")
    with pytest.raises(RemoteCallError, match="did not prove"):
        check_local_proof(body[:-1] + bytes([body[-1] ^ 1]), lengths[0], certificate.fingerprint, nonce, "127.0.0.1",
                          4000, "x")
    for head in (b"\x15\x03\x03\x00\x02\x02\x32" + bytes(13), b"HTTP/1.1 400 Bad Request"):  # a TLS alert, say
        with pytest.raises(LocalConnectionRefusedError, match="x did not answer a local connection"):
            proof_lengths(head[:PROOF_HEAD_BYTES], "x")
    for head in (b"BLOSSOM-LOCAL/1 \xff\xff\x00\x10", b"BLOSSOM-LOCAL/1 \x00\x00\x00\x10"):
        with pytest.raises(RemoteCallError, match="x announced a proof of"):
            proof_lengths(head, "x")


def test_only_connections_from_this_machine_count_as_local() -> None:
    for caller, reached in (("127.0.0.1", "10.0.0.5"), ("127.0.0.9", "127.0.0.1"), ("10.0.0.5", "10.0.0.5"),
                            ("::ffff:10.0.0.5", "10.0.0.5"), ("::1", "::1")):
        assert comes_from_this_machine(caller, reached), (caller, reached)
    for caller, reached in (("10.0.0.6", "10.0.0.5"), ("192.168.1.2", "127.0.0.1"), ("fd00::2", "fd00::1")):
        assert not comes_from_this_machine(caller, reached), (caller, reached)


def test_local_hellos_carry_a_fresh_nonce() -> None:
    first, second = new_nonce(), new_nonce()
    assert first != second and nonce_of_local_hello(local_hello(first)) == first
    for bad in (b"BLOSSOM-LOCAL/1 zz\n", local_hello(first)[:-1], b"BLOSSOM-DIRECT/2 rpc_inference\n",
                b"BLOSSOM-LOCAL/1 " + b"0" * 62 + b"\n"):
        assert nonce_of_local_hello(bad) is None, bad


def _impostor(sign: callable, connections: int) -> tuple[int, list[bytes], threading.Thread]:
    """A port on 127.0.0.1 answering local hellos with ``sign(nonce, host, port)`` and a greeting as QmPeer,
    recording all it receives."""
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
                    conn.sendall(sign(nonce_of_local_hello(data[:data.index(b"\n") + 1]), *listener.getsockname()[:2])
                                 + server_greeting("QmPeer"))
                    with contextlib.suppress(OSError):
                        while chunk := conn.recv(4096):
                            data += chunk
                    received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], received, thread


@pytest.mark.parametrize("impostor", ["its own certificate", "a proof for another port", "a proof for another address"])
def test_a_local_port_that_cannot_prove_the_key_receives_no_byte_of_the_call(impostor: str) -> None:
    announced, own = make_server_certificate(), make_server_certificate()
    if impostor == "its own certificate":
        def sign(nonce: bytes, host: str, port: int) -> bytes:
            return local_proof(own, nonce, host, port)
    elif impostor == "a proof for another port":  # what a program here gets by passing the nonce on to the server
        def sign(nonce: bytes, host: str, port: int) -> bytes:
            return local_proof(announced, nonce, host, port + 1)
    else:
        def sign(nonce: bytes, host: str, port: int) -> bytes:
            return local_proof(announced, nonce, "127.0.0.2", port)
    port, received, thread = _impostor(sign, 2)
    endpoint = DirectEndpoint("127.0.0.1", port, announced.fingerprint)
    reason = "showed another certificate" if impostor == "its own certificate" else \
        "did not prove it holds its announced certificate's key at this address"
    with pytest.raises(RemoteCallError, match=reason):
        transports.connect_direct_blocking(endpoint, "QmPeer", "rpc_inference")
    with pytest.raises(RemoteCallError, match=reason):
        asyncio.run(transports.open_direct_stream(endpoint, "QmPeer", "rpc_inference"))
    thread.join(10)
    assert len(received) == 2
    for data in received:  # the two hello lines, nothing after them
        local_line, method_line, rest = data.split(b"\n", 2)
        assert nonce_of_local_hello(local_line + b"\n") is not None and method_line + b"\n" == hello("rpc_inference")
        assert rest == b""


async def _echo(caller, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError):  # a caller that leaves without a line
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


def test_a_relay_at_another_address_of_this_machine_cannot_pass_the_servers_proof_on(echo_listener) -> None:
    """The server listens on 127.0.0.1:P; a program that took 127.0.0.2:P (announced there, say) relays to it."""
    relay = socket.create_server(("127.0.0.2", echo_listener.port))
    relayed: list[bytes] = []

    def serve() -> None:
        with relay, relay.accept()[0] as caller, socket.create_connection(
                (echo_listener.host, echo_listener.port), timeout=5) as server:
            caller.settimeout(5)
            with contextlib.suppress(OSError):
                while chunk := caller.recv(4096):
                    relayed.append(chunk)
                    server.sendall(chunk)
                    caller.sendall(server.recv(4096))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    endpoint = DirectEndpoint("127.0.0.2", echo_listener.port, echo_listener.fingerprint)
    with pytest.raises(RemoteCallError, match="did not prove it holds its announced certificate's key"):
        transports.connect_direct_blocking(endpoint, "QmServer", "rpc_inference")
    thread.join(10)
    assert b"ping" not in b"".join(relayed) and len(b"".join(relayed).split(b"\n")) == 3  # the two hello lines


def test_a_caller_the_server_refuses_locally_is_served_over_tls(echo_listener, monkeypatch) -> None:
    monkeypatch.setattr(direct, "comes_from_this_machine", lambda caller, reached: False)  # as if from elsewhere
    with socket.create_connection((echo_listener.host, echo_listener.port), timeout=5) as sock:
        sock.sendall(local_hello(new_nonce()) + hello("rpc_inference"))
        assert closed_within(sock, 5)  # closed (maybe reset, the hello unread): no proof, no greeting
    sock = transports.connect_direct_blocking(echo_listener, "QmServer", "rpc_inference")  # refused, then TLS
    assert isinstance(sock, ssl.SSLSocket) and sock.version() == "TLSv1.3"
    assert _round_trip(sock) == b"direct:127.0.0.1 ping\n"


def test_an_older_tls_only_server_on_this_machine_is_dialled_again_with_tls() -> None:
    certificate = make_server_certificate()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    first_bytes: list[bytes] = []

    def serve() -> None:  # what servers did before local connections: TLS, whatever the first byte
        with listener:
            for _ in range(4):  # a local attempt and a TLS one, from each face
                conn = listener.accept()[0]
                conn.settimeout(5)
                first_bytes.append(conn.recv(1, socket.MSG_PEEK))
                try:
                    with certificate.context.wrap_socket(conn, server_side=True) as tls:
                        tls.settimeout(5)
                        if tls.recv(100).startswith(hello("rpc_inference")):
                            tls.sendall(server_greeting("QmOld"))
                            tls.recv(100)
                except (OSError, ssl.SSLError):
                    conn.close()  # the local hello is no ClientHello

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    endpoint = DirectEndpoint("127.0.0.1", listener.getsockname()[1], certificate.fingerprint)
    sock = transports.connect_direct_blocking(endpoint, "QmOld", "rpc_inference")
    assert isinstance(sock, ssl.SSLSocket)
    sock.close()

    async def over_asyncio() -> None:
        _, writer = await transports.open_direct_stream(endpoint, "QmOld", "rpc_inference")
        assert writer.get_extra_info("ssl_object") is not None
        writer.close()

    asyncio.run(over_asyncio())
    thread.join(10)
    assert first_bytes == [b"B", b"\x16"] * 2  # a local hello ("BLOSSOM-LOCAL/1 ..."), then a TLS ClientHello
