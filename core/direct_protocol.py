"""The handshake of direct TCP connections (servers' ``--direct_port``) and which addresses a client may use.

The caller sends :data:`HELLO`; the server answers with :func:`server_greeting` (protocol, its peer
id, newline), so a client that reached some other program, or another server, notices and falls back
to p2p. After that both sides speak hivemind's stream frames (:mod:`core.wire`).
"""
from __future__ import annotations

import ipaddress

PROTOCOL = b"BLOSSOM-DIRECT/1"
HELLO = PROTOCOL + b" rpc_inference\n"
MAX_GREETING_BYTES = 128
DIRECT_POLICIES = ("private", "always", "never")


def server_greeting(peer_id: str) -> bytes:
    """What a server answers to :data:`HELLO`."""
    return PROTOCOL + b" " + peer_id.encode() + b"\n"


def parse_direct_address(text: str) -> tuple[str, int] | None:
    """``(host, port)`` of an announced ``"host:port"``; ``None`` if empty or malformed."""
    host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        return None
    return (host, number) if 0 < number < 65536 else None


def may_connect_directly(host: str, policy: str) -> bool:
    """Whether a client with ``direct_connections=policy`` sends its hidden states in the clear to ``host``."""
    if policy == "always":
        return True
    if policy == "private":
        address = ipaddress.ip_address(host)
        return address.is_loopback or address.is_private
    return False
