"""Choosing a chain of servers for a range of blocks: pure functions over announced spans.

Two modes, as the two kinds of traffic need:

- ``"latency"`` (inference): the chain with the least time per generated token, counting each
  hop's measured round trip and its blocks' single-token compute time (Dijkstra over block positions);
- ``"throughput"`` (forward/backward of whole sequences): a random chain where each server is
  picked with a probability proportional to its announced throughput, which spreads load.
"""
from __future__ import annotations

import heapq
import random
from typing import Collection, Literal, Mapping, Sequence

from core.dht.schema import RemoteSpanInfo, uncovered_blocks
from core.errors import MissingBlocksError

DEFAULT_HOP_COST = 0.01  # seconds assumed per hop when a server's round trip is not measured
RouteMode = Literal["latency", "throughput"]


def step_time(span: RemoteSpanInfo, num_blocks: int) -> float:
    """Seconds ``span``'s server needs to compute one token through ``num_blocks`` of its blocks."""
    info = span.server_info
    speed = info.inference_rps or info.throughput
    return num_blocks / max(speed, 1e-6)


def make_route(
    spans: Sequence[RemoteSpanInfo],
    start: int,
    end: int,
    banned: Collection[str] = (),
    dht_prefix: str = "",
    mode: RouteMode = "latency",
    pings: Mapping[str, float] | None = None,
    rng: random.Random | None = None,
) -> list[RemoteSpanInfo]:
    """A chain of spans covering ``[start, end)``, each trimmed to the blocks it is used for.

    ``pings`` maps peer ids to measured round trips in seconds (unmeasured: :data:`DEFAULT_HOP_COST`).
    Servers in ``banned`` are skipped. Raises :class:`MissingBlocksError` naming the blocks no usable
    server holds.
    """
    usable = [span for span in spans if span.peer_id not in banned and span.start < end and span.end > start]
    missing = uncovered_blocks(usable, start, end)
    if missing:
        raise MissingBlocksError(missing, dht_prefix)
    if mode == "throughput":
        return _random_route_by_throughput(usable, start, end, rng or random.Random())
    if mode != "latency":
        raise ValueError(f"mode must be 'latency' or 'throughput', got {mode!r}")
    return _fastest_route(usable, start, end, pings or {})


def _fastest_route(
    usable: Sequence[RemoteSpanInfo], start: int, end: int, pings: Mapping[str, float]
) -> list[RemoteSpanInfo]:
    best_cost = {start: 0.0}
    previous: dict[int, tuple[int, RemoteSpanInfo]] = {}
    queue = [(0.0, start)]
    while queue:
        cost, position = heapq.heappop(queue)
        if position == end:
            break
        if cost > best_cost.get(position, float("inf")):
            continue
        for span in usable:
            if not span.start <= position < span.end:
                continue
            stop = min(span.end, end)
            hop = pings.get(span.peer_id, DEFAULT_HOP_COST) + step_time(span, stop - position)
            if cost + hop < best_cost.get(stop, float("inf")):
                best_cost[stop] = cost + hop
                previous[stop] = (position, span)
                heapq.heappush(queue, (cost + hop, stop))

    route: list[RemoteSpanInfo] = []
    position = end
    while position != start:
        origin, span = previous[position]
        route.append(RemoteSpanInfo(span.peer_id, origin, position, span.server_info))
        position = origin
    return route[::-1]


def _random_route_by_throughput(
    usable: Sequence[RemoteSpanInfo], start: int, end: int, rng: random.Random
) -> list[RemoteSpanInfo]:
    """Walk from ``start``: at each position pick one server holding it, weighted by throughput, and
    use as many of its blocks as possible."""
    route: list[RemoteSpanInfo] = []
    position = start
    while position < end:
        candidates = [span for span in usable if span.start <= position < span.end]
        weights = [max(span.server_info.throughput, 1e-6) for span in candidates]
        chosen = rng.choices(candidates, weights=weights)[0]
        stop = min(chosen.end, end)
        route.append(RemoteSpanInfo(chosen.peer_id, position, stop, chosen.server_info))
        position = stop
    return route
