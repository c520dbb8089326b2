"""Choosing a chain of servers for a range of blocks: pure functions over announced spans."""
from __future__ import annotations

import heapq
from typing import Collection, Sequence

from core.dht.schema import RemoteSpanInfo
from core.errors import MissingBlocksError

DEFAULT_HOP_COST = 0.01  # seconds assumed per server hop (network round trip and overheads)


def uncovered_blocks(spans: Sequence[RemoteSpanInfo], start: int, end: int) -> list[int]:
    """Blocks in ``[start, end)`` that no span holds."""
    covered = set()
    for span in spans:
        covered.update(range(max(span.start, start), min(span.end, end)))
    return [index for index in range(start, end) if index not in covered]


def make_route(
    spans: Sequence[RemoteSpanInfo],
    start: int,
    end: int,
    banned: Collection[str] = (),
    hop_cost: float = DEFAULT_HOP_COST,
    dht_prefix: str = "",
) -> list[RemoteSpanInfo]:
    """The cheapest chain of spans covering ``[start, end)``, each trimmed to the blocks it serves.

    Cost of a hop = ``hop_cost`` + blocks computed / server throughput, so the route prefers few
    hops through fast servers. Servers in ``banned`` are skipped. Raises
    :class:`MissingBlocksError` naming the blocks no usable server holds.
    """
    usable = [span for span in spans if span.peer_id not in banned and span.start < end and span.end > start]
    missing = uncovered_blocks(usable, start, end)
    if missing:
        raise MissingBlocksError(missing, dht_prefix)

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
            step = hop_cost + (stop - position) / max(span.server_info.throughput, 1e-6)
            if cost + step < best_cost.get(stop, float("inf")):
                best_cost[stop] = cost + step
                previous[stop] = (position, span)
                heapq.heappush(queue, (cost + step, stop))

    route: list[RemoteSpanInfo] = []
    position = end
    while position != start:
        origin, span = previous[position]
        route.append(RemoteSpanInfo(span.peer_id, origin, position, span.server_info))
        position = origin
    return route[::-1]
