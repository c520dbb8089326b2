"""Routing for pushed inference: the chain with the least latency counts server-to-server round trips
(announced as ``next_pings``) where both servers push, and the client's round trips elsewhere."""
from __future__ import annotations

import pytest

from core.client.routing import link_time, make_route, pushed_chain_time
from core.dht.schema import RemoteSpanInfo, ServerInfo, ServerState
from core.errors import MissingBlocksError

FAST = 1e6  # tokens/s per block: compute is negligible next to the network here


def span(peer: str, start: int, end: int, can_push: bool = True, **next_pings: float) -> RemoteSpanInfo:
    info = ServerInfo(ServerState.ONLINE, FAST, start, end, inference_rps=FAST, next_pings=next_pings,
                      can_push=can_push)
    return RemoteSpanInfo(peer, start, end, info)


def peers(route: list[RemoteSpanInfo]) -> list[str]:
    return [hop.peer_id for hop in route]


def test_push_routes_by_the_servers_round_trips_and_the_client_route_by_its_own():
    # the client is close to b1 but a is far from it; a is close to b2
    spans = [span("a", 0, 2, b1=0.200, b2=0.020), span("b1", 2, 4), span("b2", 2, 4)]
    pings = {"a": 0.050, "b1": 0.050, "b2": 0.100}
    assert peers(make_route(spans, 0, 4, pings=pings, push=True)) == ["a", "b2"]
    assert peers(make_route(spans, 0, 4, pings=pings)) == ["a", "b1"]  # client-mediated: 2 legs per server


def test_a_chain_costs_n_plus_one_legs_with_push_and_2n_without():
    spans = [span("a", 0, 2, b=0.1), span("b", 2, 4, c=0.1), span("c", 4, 6)]
    pings = {"a": 0.1, "b": 0.1, "c": 0.1}
    route = make_route(spans, 0, 6, pings=pings, push=True)
    assert peers(route) == ["a", "b", "c"]
    assert pushed_chain_time(route, pings) == pytest.approx(4 * 0.05, rel=1e-3)  # 4 one-way legs + ~0 compute


def test_a_server_that_does_not_push_costs_a_detour_through_the_client():
    a, old = span("a", 0, 2, old=0.1, new=0.1), span("old", 2, 4, can_push=False)
    new = span("new", 2, 4)
    pings = {"a": 0.1, "old": 0.1, "new": 0.1}
    assert link_time(a, old, pings) == pytest.approx(0.1)  # a -> client -> old
    assert link_time(a, new, pings) == pytest.approx(0.05)
    assert peers(make_route([a, old, new], 0, 4, pings=pings, push=True)) == ["a", "new"]


def test_an_unannounced_link_is_counted_through_the_client():
    a, b = span("a", 0, 2), span("b", 2, 4)  # a announced no ping to b (e.g. not measured yet)
    assert link_time(a, b, {"a": 0.04, "b": 0.06}) == pytest.approx(0.05)


def test_push_routes_still_trim_spans_prefer_fewer_hops_and_name_missing_blocks():
    spans = [span("a", 0, 3, b=0.01), span("b", 3, 6), span("big", 0, 6)]
    route = make_route(spans, 1, 5, pings={"a": 0.01, "b": 0.01, "big": 0.01}, push=True)
    assert [(hop.peer_id, hop.start, hop.end) for hop in route] == [("big", 1, 5)]
    with pytest.raises(MissingBlocksError):
        make_route([span("a", 0, 3)], 0, 6, push=True)
