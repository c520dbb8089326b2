"""Choosing a chain of servers for a range of blocks: pure functions over announced spans.

Two modes, as the two kinds of traffic need:

- ``"latency"`` (inference): the chain with the least time per generated token, counting the network
  legs a step takes and each hop's single-token compute time (Dijkstra). Client-mediated, a hop costs
  the client's round trip to it; with push (``push=True``) a step goes client -> A -> B -> ... ->
  client, so it costs half the client's round trip to the first and last servers plus half of each
  server-to-server round trip, as the servers announce them (``next_pings``) where both ends push;
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
    push: bool = False,
) -> list[RemoteSpanInfo]:
    """A chain of spans covering ``[start, end)``, each trimmed to the blocks it is used for.

    ``pings`` maps peer ids to measured round trips in seconds (unmeasured: :data:`DEFAULT_HOP_COST`).
    ``push``: the client lets servers push to each other (:mod:`core.push_protocol`). Servers in ``banned`` are skipped. Raises :class:`MissingBlocksError` naming the blocks no usable
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
    if push:
        return _fastest_pushed_route(usable, start, end, pings or {})
    return _fastest_route(usable, start, end, pings or {})


def link_time(previous: RemoteSpanInfo | None, span: RemoteSpanInfo, pings: Mapping[str, float]) -> float:
    """Seconds for a step's output to go from ``previous``'s server (``None``: the client) to ``span``'s: one
    leg when both push and ``previous`` announced its round trip to that server, else through the client."""
    to_span = pings.get(span.peer_id, DEFAULT_HOP_COST) / 2
    if previous is None:
        return to_span
    if previous.server_info.can_push and span.server_info.can_push:
        announced = previous.server_info.next_pings.get(span.peer_id)
        if announced is not None:
            return announced / 2
    return pings.get(previous.peer_id, DEFAULT_HOP_COST) / 2 + to_span


def pushed_chain_time(route: Sequence[RemoteSpanInfo], pings: Mapping[str, float]) -> float:
    """Seconds per token of ``route`` with push: every link (:func:`link_time`), the way back from the last
    server, and each server's compute."""
    if not route:
        return 0.0
    links = sum(link_time(previous, span, pings) for previous, span in zip([None, *route[:-1]], route))
    computes = sum(step_time(span, span.length) for span in route)
    return links + computes + pings.get(route[-1].peer_id, DEFAULT_HOP_COST) / 2


def _fastest_pushed_route(
    usable: Sequence[RemoteSpanInfo], start: int, end: int, pings: Mapping[str, float]
) -> list[RemoteSpanInfo]:
    """Dijkstra over (block position, span used last): a link's cost depends on the server before it."""
    State = tuple[int, int]  # position, index of the span that reached it (-1: the client)
    best: dict[State, float] = {(start, -1): 0.0}
    previous: dict[State, State] = {}
    queue: list[tuple[float, int, int]] = [(0.0, start, -1)]
    finish: State | None = None
    while queue:
        cost, position, last = heapq.heappop(queue)
        if position == end:
            finish = (position, last)
            break
        if cost > best.get((position, last), float("inf")):
            continue
        before = None if last < 0 else usable[last]  # only its server matters for the link
        for index, span in enumerate(usable):
            if not span.start <= position < span.end or index == last:
                continue
            stop = min(span.end, end)
            hop = RemoteSpanInfo(span.peer_id, position, stop, span.server_info)
            step = link_time(before, hop, pings) + step_time(span, stop - position)
            if stop == end:
                step += pings.get(span.peer_id, DEFAULT_HOP_COST) / 2  # the answer back to the client
            state = (stop, index)
            if cost + step < best.get(state, float("inf")):
                best[state] = cost + step
                previous[state] = (position, last)
                heapq.heappush(queue, (cost + step, stop, index))
    if finish is None:  # unreachable: the caller checked that every block is covered
        raise MissingBlocksError(uncovered_blocks(usable, start, end))
    route: list[RemoteSpanInfo] = []
    state = finish
    while state[1] >= 0:
        origin = previous[state]
        span = usable[state[1]]
        route.append(RemoteSpanInfo(span.peer_id, origin[0], state[0], span.server_info))
        state = origin
    return route[::-1]


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
