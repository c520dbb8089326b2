"""The handshake of direct TCP connections (servers' ``--direct_port``) and which addresses a client may use.

The caller sends :func:`hello` naming one streaming RPC; the server answers with
:func:`server_greeting` (protocol, its peer id, newline), so a client that reached some other
program, or another server, notices and falls back to p2p. After that both sides speak
hivemind's stream frames (:mod:`core.wire`), exactly as on a p2p stream to that RPC.
"""
from __future__ import annotations

import ipaddress

from core.errors import RemoteCallError

PROTOCOL = b"BLOSSOM-DIRECT/1"
DIRECT_METHODS = ("rpc_inference", "rpc_forward_stream", "rpc_backward_stream", "rpc_push")
"""The streaming RPCs a direct connection can open."""
MAX_HELLO_BYTES = 64
MAX_GREETING_BYTES = 128
DIRECT_POLICIES = ("private", "always", "never")


def hello(method: str) -> bytes:
    """What a client sends first to open ``method`` (one of :data:`DIRECT_METHODS`)."""
    return PROTOCOL + b" " + method.encode() + b"\n"


def method_of_hello(line: bytes) -> str | None:
    """The RPC a received hello line names, or ``None`` if it is not a valid hello."""
    prefix = PROTOCOL + b" "
    if not line.startswith(prefix) or not line.endswith(b"\n"):
        return None
    method = line[len(prefix):-1].decode("ascii", errors="replace")
    return method if method in DIRECT_METHODS else None


def server_greeting(peer_id: str) -> bytes:
    """What a server answers to a valid hello."""
    return PROTOCOL + b" " + peer_id.encode() + b"\n"


def check_greeting(received: bytes, peer_id: str, where: str) -> bytes | None:
    """``None`` while ``received`` holds no complete line yet; then the bytes after the greeting, or
    :class:`RemoteCallError` if the line is not ``peer_id``'s greeting."""
    line, newline, rest = received.partition(b"\n")
    if not newline:
        if len(received) >= MAX_GREETING_BYTES:
            raise RemoteCallError(f"{where} is not server {peer_id}'s direct port (it sent {received[:64]!r})")
        return None
    if line + newline != server_greeting(peer_id):
        raise RemoteCallError(f"{where} is not server {peer_id}'s direct port (it answered {line[:64]!r})")
    return rest


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
