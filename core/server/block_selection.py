"""Choosing which blocks a new server should hold: a pure function over the swarm's spans."""
from __future__ import annotations

from typing import Sequence

from core.dht.schema import RemoteSpanInfo


def block_throughputs(spans: Sequence[RemoteSpanInfo], total_blocks: int) -> list[float]:
    """Total announced throughput of every block in the swarm."""
    totals = [0.0] * total_blocks
    for span in spans:
        for index in range(max(span.start, 0), min(span.end, total_blocks)):
            totals[index] += span.server_info.throughput
    return totals


def choose_best_start(spans: Sequence[RemoteSpanInfo], total_blocks: int, num_blocks: int) -> int:
    """The first block of the ``num_blocks``-long window where the swarm is weakest.

    Windows are ranked by the throughput of their weakest block, then by their total throughput,
    then by position, so an empty swarm fills from block 0 and a second identical server takes
    the next uncovered window.
    """
    if not 0 < num_blocks <= total_blocks:
        raise ValueError(f"num_blocks must be in 1..{total_blocks}, got {num_blocks}")
    totals = block_throughputs(spans, total_blocks)
    candidates = range(total_blocks - num_blocks + 1)
    return min(
        candidates,
        key=lambda start: (min(totals[start : start + num_blocks]), sum(totals[start : start + num_blocks]), start),
    )
