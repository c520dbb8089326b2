"""A server's direct port on its own: the cap on connections counts those still before their TLS handshake, stop()
cuts them, and a broken TLS record ends its connection quietly (no traceback in the server's log)."""
from __future__ import annotations

import logging
import os
import socket

import pytest

from core.direct_tls import client_context
from core.server import direct
from core.utils.event_loop import EventLoopThread
from tests.direct_listeners import closed_within, start_listener


async def _never_called(caller, reader, writer) -> None:
    raise AssertionError("no connection here gets as far as a handler")


@pytest.fixture
def listener(monkeypatch):
    monkeypatch.setattr(direct, "MAX_CONNECTIONS", 3)
    loop = EventLoopThread("test-direct-listener")
    server, endpoint = start_listener(loop, {"rpc_inference": _never_called}, "QmServer")
    yield server, endpoint, loop
    loop.run(server.stop(), timeout=10)
    loop.stop()


def test_connections_that_never_finish_their_handshake_count_and_stop_cuts_them(listener):
    server, endpoint, loop = listener
    silent = [socket.create_connection((endpoint.host, endpoint.port), timeout=5) for _ in range(3)]
    try:
        assert not any(closed_within(sock, 0.3) for sock in silent)  # waiting for a ClientHello, within HELLO_TIMEOUT
        with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as one_too_many:
            assert closed_within(one_too_many, 5)
        loop.run(server.stop(), timeout=10)
        assert all(closed_within(sock, 5) for sock in silent)
    finally:
        for sock in silent:
            sock.close()


def test_a_broken_tls_record_closes_its_connection_without_a_traceback(listener, caplog):
    _, endpoint, _ = listener
    with caplog.at_level(logging.WARNING):
        with client_context().wrap_socket(socket.create_connection((endpoint.host, endpoint.port), timeout=5)) as sock:
            os.write(sock.fileno(), b"\x17\x03\x03\x00\x20" + bytes(32))  # application data that does not decrypt
            assert closed_within(sock, 5)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text
