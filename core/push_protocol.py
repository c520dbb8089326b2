"""Server-to-server push: what an inference step says about the rest of its route.

With push, a step costs n + 1 network legs (client -> A -> B -> ... -> client) instead of 2n
(client -> A -> client -> B -> client): each server, after its blocks, writes its output straight
into the next server's session. The client still holds an inference stream to every server of the
chain; each server answers its output on that stream too (in parallel with the push, off the
critical path), so the client keeps every hop's inputs and can replay them elsewhere after a failure.

What travels, all in a request's msgpack metadata (:mod:`core.wire`):

- the first message of a session whose inputs will be pushed carries ``{"max_length", "batch_size",
  "session_id"}`` and no tensors: the server reserves the cache and files the session under its id;
- every step carries ``"start_from_position"`` (where it starts in the sequence) so that a step that
  arrives twice (pushed, then sent again after a failure upstream) rolls the cache back and is
  computed again, giving the same output; and ``"route"``: a list of :class:`PushTarget` records,
  the hops after the receiver, in order. The receiver pushes its output to the first with the rest;
- the answer carries ``"position"`` (where the session stands after the step) and ``"pushed"``
  (``True`` when the output went on to the next server; ``False`` with ``"push_error"`` when it
  could not, and the client then sends it on itself).

A pushed message goes to the next server's ``rpc_push`` stream (:data:`PUSH_METHOD`), the same
frames as an inference stream, over the same transports (a direct TLS connection where dialable, a relay circuit
for relayed servers, else p2p).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.direct_tls import is_fingerprint
from core.errors import InvalidRequestError

PUSH_METHOD = "rpc_push"
CAPABILITY = "push"
"""The server record says it takes part in pushing (``ServerInfo.can_push``); older servers do not."""
MAX_ROUTE_HOPS = 64
SESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_FIELD_CHARS = 128


@dataclass(frozen=True)
class PushTarget:
    """Where a server pushes its output: the next server's session, and how to reach that server."""

    peer_id: str
    session_id: str
    direct_address: str = ""  # "host:port" of its direct port, "" for none (or a caller dialling no direct ports)
    relays: tuple[str, ...] = ()  # peer ids of the relays through which a relayed server is reached
    direct_fingerprint: str = ""  # its TLS certificate's fingerprint, as it announced it (core.direct_tls)

    def to_wire(self) -> list[Any]:
        # the fingerprint rides in the address field ("host:port#fingerprint"): servers from before TLS direct
        # ports read four fields and find no address there they would dial, so they push over relays or p2p
        address = f"{self.direct_address}#{self.direct_fingerprint}" if self.direct_address else ""
        return [self.peer_id, self.session_id, address, list(self.relays)]

    @classmethod
    def from_wire(cls, value: Any) -> "PushTarget":
        """Parse one route entry; :class:`InvalidRequestError` naming what is wrong."""
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise InvalidRequestError("a route entry must be [peer_id, session_id, direct_address, relays]")
        peer_id, session_id, direct_address, relays = value
        if not _short_str(peer_id) or not peer_id:
            raise InvalidRequestError("a route entry's peer_id must be a non-empty string")
        check_session_id(session_id)
        if not _short_str(direct_address):
            raise InvalidRequestError("a route entry's direct_address must be a 'host:port#fingerprint' string or ''")
        address, _, fingerprint = direct_address.partition("#")
        if address and not is_fingerprint(fingerprint):
            raise InvalidRequestError("a route entry's direct_address must end in '#' and the certificate's "
                                      "fingerprint (64 lowercase hex digits, SHA-256)")
        if not isinstance(relays, (list, tuple)) or len(relays) > 8 or not all(_short_str(r) and r for r in relays):
            raise InvalidRequestError("a route entry's relays must be a list of at most 8 peer ids")
        return cls(peer_id, session_id, address, tuple(relays), fingerprint)


def _short_str(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_FIELD_CHARS


def check_session_id(value: Any) -> str:
    """A session id as clients make them (32 lowercase hex digits); :class:`InvalidRequestError` otherwise."""
    if not isinstance(value, str) or not SESSION_ID_PATTERN.fullmatch(value):
        raise InvalidRequestError("session_id must be 32 lowercase hex digits (uuid4().hex)")
    return value


def parse_route(value: Any) -> list[PushTarget]:
    """The ``"route"`` of a step's metadata (missing: an empty route)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ROUTE_HOPS:
        raise InvalidRequestError(f"route must be a list of at most {MAX_ROUTE_HOPS} entries")
    return [PushTarget.from_wire(entry) for entry in value]


def route_to_wire(route: list[PushTarget]) -> list[list[Any]]:
    return [target.to_wire() for target in route]
