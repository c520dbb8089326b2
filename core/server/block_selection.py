"""Choosing which blocks a server should hold: pure functions over the swarm's announced spans."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from core.dht.schema import RemoteSpanInfo, ServerState


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


def claim_is_contested(
    spans: Sequence[RemoteSpanInfo], peer_id: str, start: int, end: int, claimed_at: float
) -> bool:
    """Whether another server claimed blocks overlapping ``[start, end)`` before this one did.

    Servers that start together all see the same empty swarm and would pick the same span. Each
    announces its claim (with the time of the claim), and looks again after a moment and once more
    after loading its blocks; of two overlapping claims the earlier one stands (ties: the smaller
    peer id) and the other server chooses again. When every window is already covered the new
    choice is the same span, and the server keeps it.
    """
    return any(
        span.peer_id != peer_id
        and span.server_info.state in (ServerState.JOINING, ServerState.ONLINE)
        and (span.server_info.claimed_at, span.peer_id) < (claimed_at, peer_id)
        and span.start < end
        and start < span.end
        for span in spans
    )


def choose_move(
    spans: Sequence[RemoteSpanInfo], peer_id: str, total_blocks: int, balance_quality: float = 0.75
) -> int | None:
    """The new first block for server ``peer_id`` if moving there makes the swarm meaningfully stronger.

    The swarm is as strong as its weakest block. Moving pays when the weakest block's throughput
    now is below ``balance_quality`` times what it would be after the move (so uncovered blocks
    always attract a spare server, and small gains never cause churn). ``None``: stay.
    """
    mine = [span for span in spans if span.peer_id == peer_id]
    if not mine:
        return None
    me = mine[0]
    others = [span for span in spans if span.peer_id != peer_id]
    new_start = choose_best_start(others, total_blocks, me.length)
    if new_start == me.start:
        return None
    moved = replace(me, start=new_start, end=new_start + me.length)
    before = min(block_throughputs(spans, total_blocks))
    after = min(block_throughputs([*others, moved], total_blocks))
    return new_start if before < balance_quality * after - 1e-9 else None
