"""Routing is a pure function over announced spans."""
import pytest

from core.client.routing import make_route, uncovered_blocks
from core.dht.schema import RemoteSpanInfo, ServerInfo, ServerState
from core.errors import MissingBlocksError


def span(peer: str, start: int, end: int, throughput: float = 100.0) -> RemoteSpanInfo:
    return RemoteSpanInfo(peer, start, end, ServerInfo(ServerState.ONLINE, throughput, start, end))


def test_single_server_covers_everything():
    route = make_route([span("a", 0, 8)], 0, 8)
    assert [(s.peer_id, s.start, s.end) for s in route] == [("a", 0, 8)]


def test_two_halves_are_chained_in_order():
    route = make_route([span("b", 4, 8), span("a", 0, 4)], 0, 8)
    assert [(s.peer_id, s.start, s.end) for s in route] == [("a", 0, 4), ("b", 4, 8)]


def test_prefers_fewer_hops_when_servers_are_equally_fast():
    spans = [span("a", 0, 3), span("b", 3, 6), span("c", 6, 8), span("big", 0, 8)]
    assert [s.peer_id for s in make_route(spans, 0, 8)] == ["big"]


def test_prefers_a_much_faster_chain_over_one_slow_server():
    spans = [span("slow", 0, 8, throughput=1.0), span("a", 0, 4, 1000.0), span("b", 4, 8, 1000.0)]
    assert [s.peer_id for s in make_route(spans, 0, 8)] == ["a", "b"]


def test_route_for_a_sub_range_trims_spans():
    route = make_route([span("a", 0, 8)], 2, 5)
    assert [(s.start, s.end) for s in route] == [(2, 5)]


def test_overlapping_spans_are_cut_where_the_next_starts():
    route = make_route([span("a", 0, 6), span("b", 4, 8, throughput=0.5)], 0, 8)
    assert [(s.peer_id, s.start, s.end) for s in route][-1][0] == "b"
    assert route[0].start == 0 and route[-1].end == 8
    assert all(x.end == y.start for x, y in zip(route, route[1:]))


def test_banned_servers_are_avoided():
    spans = [span("a", 0, 8), span("b", 0, 8, throughput=1.0)]
    assert [s.peer_id for s in make_route(spans, 0, 8, banned={"a"})] == ["b"]


def test_missing_blocks_are_named():
    with pytest.raises(MissingBlocksError) as caught:
        make_route([span("a", 0, 3), span("b", 5, 8)], 0, 8, dht_prefix="m")
    assert caught.value.blocks == [3, 4]
    assert "3-4" in str(caught.value) and "'m'" in str(caught.value)


def test_uncovered_blocks():
    assert uncovered_blocks([span("a", 1, 3)], 0, 4) == [0, 3]


def fast_span(peer: str, start: int, end: int, inference_rps: float) -> RemoteSpanInfo:
    info = ServerInfo(ServerState.ONLINE, 100.0, start, end, inference_rps=inference_rps)
    return RemoteSpanInfo(peer, start, end, info)


def test_latency_route_avoids_a_far_away_server():
    spans = [fast_span("near", 0, 8, 1000.0), fast_span("far", 0, 8, 1000.0)]
    route = make_route(spans, 0, 8, mode="latency", pings={"near": 0.001, "far": 0.2})
    assert [s.peer_id for s in route] == ["near"]


def test_latency_route_takes_two_near_hops_over_one_far_hop():
    spans = [fast_span("far", 0, 8, 1000.0), fast_span("a", 0, 4, 1000.0), fast_span("b", 4, 8, 1000.0)]
    route = make_route(spans, 0, 8, mode="latency", pings={"far": 0.5, "a": 0.002, "b": 0.002})
    assert [(s.peer_id, s.start, s.end) for s in route] == [("a", 0, 4), ("b", 4, 8)]


def test_latency_route_weighs_compute_against_network():
    # a nearby but slow server loses to a slightly farther fast one: 8 blocks at 10 steps/s = 0.8 s per token
    spans = [fast_span("slow", 0, 8, 10.0), fast_span("fast", 0, 8, 10_000.0)]
    route = make_route(spans, 0, 8, mode="latency", pings={"slow": 0.001, "fast": 0.05})
    assert [s.peer_id for s in route] == ["fast"]


def test_throughput_route_spreads_load_in_proportion_to_throughput():
    import random

    spans = [span("big", 0, 8, throughput=300.0), span("small", 0, 8, throughput=100.0)]
    rng = random.Random(0)
    picks = [make_route(spans, 0, 8, mode="throughput", rng=rng)[0].peer_id for _ in range(2000)]
    assert 0.70 < picks.count("big") / len(picks) < 0.80


def test_throughput_route_chains_spans_and_trims_them():
    import random

    spans = [span("a", 0, 5), span("b", 3, 8)]
    route = make_route(spans, 1, 7, mode="throughput", rng=random.Random(1))
    assert route[0].start == 1 and route[-1].end == 7
    assert all(r.start < r.end for r in route)
    assert all(a.end == b.start for a, b in zip(route, route[1:]))


def test_throughput_route_names_missing_blocks():
    with pytest.raises(MissingBlocksError, match="5"):
        make_route([span("a", 0, 5)], 0, 8, mode="throughput")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        make_route([span("a", 0, 8)], 0, 8, mode="fastest")
