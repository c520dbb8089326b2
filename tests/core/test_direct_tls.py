"""Direct connections' TLS: a server's certificate is its own, and callers accept only the pinned one.

Every server here listens on 127.0.0.1, which is this machine, where callers make local connections
(tests/core/test_direct_local.py); ``other_machine`` makes the caller take such a server for one on
another machine (one cannot exist in this test), so that it speaks TLS."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time

import pytest

from core import transports
from core.direct_protocol import DirectEndpoint
from core.direct_tls import check_certificate, client_context, is_fingerprint, make_server_certificate
from core.errors import RemoteCallError


@pytest.fixture
def other_machine(monkeypatch):
    """Callers take 127.0.0.1 for another machine's address: they dial it with TLS."""
    monkeypatch.setattr(transports, "is_own_address", lambda host: False)


def _handshake(server_context: ssl.SSLContext) -> ssl.SSLSocket:
    """A client TLS socket connected to a one-shot server with ``server_context`` on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener, server_context.wrap_socket(listener.accept()[0], server_side=True) as conn:
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = client_context().wrap_socket(socket.create_connection(listener.getsockname(), timeout=10))
    client.sendall(b"x")
    thread.join(10)
    return client


def test_each_server_gets_its_own_certificate_and_callers_pin_it() -> None:
    first, second = make_server_certificate(), make_server_certificate()
    assert is_fingerprint(first.fingerprint) and first.fingerprint != second.fingerprint
    with _handshake(first.context) as client:
        assert client.version() == "TLSv1.3"
        check_certificate(client, first.fingerprint, "127.0.0.1:1")  # the announced one: accepted
        with pytest.raises(RemoteCallError, match="another certificate than the one its server announced"):
            check_certificate(client, second.fingerprint, "127.0.0.1:1")


def test_only_announced_fingerprints_are_taken() -> None:
    assert is_fingerprint("0f" * 32)
    for bad in ("0F" * 32, "0f" * 31, "zz" * 32, 7, None):
        assert not is_fingerprint(bad), bad


@pytest.fixture(params=["tls", "local"])
def silent_port(monkeypatch, request):
    """A port that accepts TCP connections and never says a word (no TLS, no proof, no greeting), dialled as
    another machine's (TLS) and as this one's (a local connection)."""
    monkeypatch.setattr(transports, "DIRECT_CONNECT_TIMEOUT", 0.5)
    if request.param == "tls":
        request.getfixturevalue("other_machine")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_a_silent_port_ends_the_blocking_connect_in_time(silent_port) -> None:
    endpoint = DirectEndpoint("127.0.0.1", silent_port, "ab" * 32)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        transports.connect_direct_blocking(endpoint, "QmPeer", "rpc_inference")
    assert time.monotonic() - started < 5


def test_a_silent_port_ends_the_asyncio_connect_in_time(silent_port) -> None:
    endpoint = DirectEndpoint("127.0.0.1", silent_port, "ab" * 32)
    started = time.monotonic()
    with pytest.raises((TimeoutError, asyncio.TimeoutError)):
        asyncio.run(transports.open_direct_stream(endpoint, "QmPeer", "rpc_inference"))
    assert time.monotonic() - started < 5


@pytest.fixture
def dropping_port():
    """A port whose connections never complete: its accept queue is full, so the kernel drops new SYNs (as a
    firewall that drops packets does)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(listener.getsockname())
            fillers.append(filler)
        time.sleep(0.2)
        yield listener.getsockname()[1]
        for filler in fillers:
            filler.close()


def test_a_dropped_dial_gives_up_after_the_dial_timeout(dropping_port) -> None:
    endpoint = DirectEndpoint("127.0.0.1", dropping_port, "ab" * 32)
    for connect in (lambda: transports.connect_direct_blocking(endpoint, "QmPeer", "rpc_inference"),
                    lambda: asyncio.run(transports.open_direct_stream(endpoint, "QmPeer", "rpc_inference"))):
        started = time.monotonic()
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            connect()
        assert time.monotonic() - started < transports.DIRECT_CONNECT_TIMEOUT  # the dial's bound, not the whole one


def test_a_port_showing_another_certificate_receives_no_byte_of_the_call(other_machine) -> None:
    impostor, announced = make_server_certificate(), make_server_certificate()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    received: list[bytes] = []

    def serve(connections: int) -> None:
        with listener:
            for _ in range(connections):
                with impostor.context.wrap_socket(listener.accept()[0], server_side=True) as conn:
                    data = b""
                    with contextlib.suppress(OSError):
                        while chunk := conn.recv(4096):
                            data += chunk
                    received.append(data)

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    endpoint = DirectEndpoint("127.0.0.1", listener.getsockname()[1], announced.fingerprint)
    with pytest.raises(RemoteCallError, match="another certificate"):
        transports.connect_direct_blocking(endpoint, "QmPeer", "rpc_inference")
    with pytest.raises(RemoteCallError, match="another certificate"):
        asyncio.run(transports.open_direct_stream(endpoint, "QmPeer", "rpc_inference"))
    thread.join(10)
    assert received == [b"", b""]  # not even the hello naming the call
