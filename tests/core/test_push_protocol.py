"""What a pushed step says about the rest of its route, and the capability in a server's record."""
from __future__ import annotations

import uuid

import pytest

from core.dht.schema import ServerInfo, ServerState
from core.direct_protocol import parse_direct_address
from core.errors import InvalidRequestError
from core.push_protocol import PushTarget, check_session_id, parse_route, route_to_wire


def test_a_route_travels_and_comes_back_the_same():
    route = [PushTarget("QmB", uuid.uuid4().hex, "10.0.0.2:31337", (), "ab" * 32),
             PushTarget("QmC", uuid.uuid4().hex, "", ("QmR",))]
    assert parse_route(route_to_wire(route)) == route
    wire = route_to_wire(route)
    assert all(len(entry) == 4 for entry in wire)  # as servers from before TLS direct ports read them...
    assert parse_direct_address(wire[0][2]) is None  # ...and they find no plain address to dial: relays or p2p
    assert parse_route(None) == []


@pytest.mark.parametrize("entry, problem", [
    ("QmB", "must be"),
    (["", uuid.uuid4().hex, "", []], "peer_id"),
    (["QmB", "not-hex", "", []], "session_id"),
    (["QmB", uuid.uuid4().hex, 7, []], "direct_address"),
    (["QmB", uuid.uuid4().hex, "", ["r"] * 9], "relays"),
    (["QmB", uuid.uuid4().hex, "10.0.0.2:1", []], "fingerprint"),  # a plain address: no certificate to pin
    (["QmB", uuid.uuid4().hex, "10.0.0.2:1#not-a-sha256", []], "fingerprint"),
    (["QmB", uuid.uuid4().hex, "", [], "extra"], "must be"),
])
def test_a_malformed_route_entry_is_refused_with_its_reason(entry, problem):
    with pytest.raises(InvalidRequestError, match=problem):
        parse_route([entry])


def test_routes_and_session_ids_are_bounded():
    with pytest.raises(InvalidRequestError, match="at most"):
        parse_route([PushTarget("QmB", uuid.uuid4().hex).to_wire()] * 65)
    with pytest.raises(InvalidRequestError, match="32 lowercase hex"):
        check_session_id("A" * 32)


def test_the_push_capability_is_announced_and_missing_in_older_records():
    info = ServerInfo(ServerState.ONLINE, 1.0, 0, 4, can_push=True)
    assert ServerInfo.from_record(info.to_record()).can_push is True
    older = info.to_record()
    del older["can_push"]
    assert ServerInfo.from_record(older).can_push is False
