"""What travels between a server behind NAT, its relays and clients: names, hello lines and limits.

Most volunteers' PCs cannot accept connections (home NAT). Such a server keeps a connection *out*
to one or more public peers of the swarm (public servers, ``run_dht`` peers) and holds a
*reservation* with each (:data:`RESERVE_HANDLE`, renewed every :data:`RESERVATION_RENEW` seconds).
A client that wants that server opens a p2p stream to the relay's :data:`RELAY_HANDLE` and sends
:func:`relay_hello` naming the server and the server's RPC handle; the relay opens a stream to the
server over the server's own outgoing connection (no dial into the NAT), answers :func:`relay_ok`
(or :func:`relay_refusal` with the reason), and from then on copies bytes both ways. Whatever the
caller speaks next (hivemind's frames) reaches the server unchanged, so every RPC works relayed.

Reachability is learned by asking peers to dial back: a server sends candidate ``host:port``
addresses of its own to :data:`DIAL_BACK_HANDLE` of a few peers, which try a plain TCP connection to
each and answer which ones connected.

Both sides import this module; neither imports the other.
"""
from __future__ import annotations

import enum

RELAY_HANDLE = "blossom.relay"
RESERVE_HANDLE = "blossom.relay_reserve"
DIAL_BACK_HANDLE = "blossom.dial_back"

PROTOCOL = b"BLOSSOM-RELAY/1"
MAX_HELLO_BYTES = 256
RESERVATION_TTL = 60.0
"""Seconds a reservation lasts unless renewed."""
RESERVATION_RENEW = 20.0
"""Seconds between a relayed server's renewals (and checks that its relays are alive)."""
MAX_DIAL_BACK_ADDRESSES = 8
DIAL_BACK_TIMEOUT = 3.0
"""Seconds a peer tries each candidate address for."""
MAX_RELAYS_ANNOUNCED = 4


class Reachability(str, enum.Enum):
    """How clients reach a server."""

    DIRECT = "direct"  # others can dial it
    RELAYED = "relayed"  # only through relays it holds reservations with
    UNREACHABLE = "unreachable"  # neither: it announces no blocks as online


def relay_hello(target_peer_id: str, handle_name: str) -> bytes:
    """What a caller sends a relay first: the server it wants and that server's RPC handle."""
    return PROTOCOL + b" " + target_peer_id.encode() + b" " + handle_name.encode() + b"\n"


def parse_relay_hello(line: bytes) -> tuple[str, str] | None:
    """``(target peer id, handle name)`` of a hello line, or ``None`` if it is not one."""
    if not line.startswith(PROTOCOL + b" ") or not line.endswith(b"\n") or len(line) > MAX_HELLO_BYTES:
        return None
    parts = line[len(PROTOCOL) + 1 : -1].decode("ascii", errors="replace").split(" ")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def relay_ok() -> bytes:
    return PROTOCOL + b" OK\n"


def relay_refusal(reason: str) -> bytes:
    return PROTOCOL + b" NO " + reason.replace("\n", " ").encode()[: MAX_HELLO_BYTES - 32] + b"\n"


def parse_relay_answer(line: bytes) -> str | None:
    """``None`` if the relay agreed, else its reason for refusing (or a description of a garbled answer)."""
    if line == relay_ok():
        return None
    if line.startswith(PROTOCOL + b" NO "):
        return line[len(PROTOCOL) + 4 :].decode("utf-8", errors="replace").strip()
    return f"it answered {line[:64]!r} instead of a relay answer"
