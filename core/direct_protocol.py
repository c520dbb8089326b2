"""The handshake of direct connections (servers' direct port) and which addresses a caller dials.

A direct connection is TLS pinned to the certificate the server announced (:mod:`core.direct_tls`),
or, on one machine, a local connection where the server proves it holds that certificate's key
(:mod:`core.direct_local`). Over it, the caller sends :func:`hello` naming one streaming RPC; the
server answers with :func:`server_greeting` (protocol, its peer id, newline). After that both sides
speak hivemind's stream frames (:mod:`core.wire`), exactly as on a p2p stream to that RPC.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import psutil

from core.direct_tls import is_fingerprint
from core.errors import RemoteCallError

PROTOCOL = b"BLOSSOM-DIRECT/2"
DIRECT_METHODS = ("rpc_inference", "rpc_forward_stream", "rpc_backward_stream", "rpc_push")
"""The streaming RPCs a direct connection can open."""
MAX_HELLO_BYTES = 64
MAX_GREETING_BYTES = 128
DIRECT_POLICIES = ("private", "always", "never")
LOCAL_NETWORKS_TTL = 60.0
"""Seconds this machine's list of networks is reused before it is read again (a laptop changes networks)."""


@dataclass(frozen=True)
class DirectEndpoint:
    """Where a server takes direct connections, and the fingerprint of the certificate it serves them with."""

    host: str
    port: int
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def direct_endpoint(address: str, fingerprint: str) -> DirectEndpoint | None:
    """The endpoint of an announced ``"host:port"`` and fingerprint; ``None`` if either is missing or malformed
    (servers that announce no fingerprint are not dialled directly)."""
    parsed = parse_direct_address(address)
    return DirectEndpoint(*parsed, fingerprint) if parsed is not None and is_fingerprint(fingerprint) else None


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
    """Whether a caller with ``direct_connections=policy`` dials ``host`` directly. "private": a loopback
    address, or a private one on a network this machine is on; another network's private address may be
    nobody (a connect that times out), or somebody else on the caller's own LAN. "always": any address."""
    if policy == "always":
        return True
    return policy == "private" and ipaddress.ip_address(host).is_private and on_own_network(host)


def on_own_network(host: str) -> bool:
    """Whether ``host`` is a loopback address or on the network of one of this machine's interfaces."""
    address = ipaddress.ip_address(host)
    return address.is_loopback or any(address in interface.network for interface in local_interfaces())


def is_own_address(host: str) -> bool:
    """Whether ``host`` is this machine's: a loopback address or one of its interfaces' (traffic to it never
    leaves the machine; see :mod:`core.direct_local`)."""
    address = ip_of(host)
    return address.is_loopback or any(address == interface.ip for interface in local_interfaces())


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address ``host`` names (without an IPv6 zone; an IPv4-mapped IPv6 address as the IPv4 one, as a
    dual-stack socket names IPv4 peers)."""
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_interfaces: tuple[float, list] = (float("-inf"), [])


def local_interfaces() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """This machine's interface addresses with their networks (re-read every :data:`LOCAL_NETWORKS_TTL` s)."""
    global _interfaces
    read_at, interfaces = _interfaces
    if time.monotonic() - read_at > LOCAL_NETWORKS_TTL:
        interfaces = []
        for addresses in psutil.net_if_addrs().values():
            for entry in addresses:
                try:
                    address = entry.address.split("%")[0]  # an IPv6 link-local address names its interface
                    prefix = bin(int(ipaddress.ip_address(entry.netmask))).count("1")  # IPv6 masks come as addresses
                    interfaces.append(ipaddress.ip_interface(f"{address}/{prefix}"))
                except (ValueError, TypeError):
                    continue  # a link-layer address, or one without a netmask
        _interfaces = (time.monotonic(), interfaces)
    return interfaces
