"""What a swarm looks like right now: for each model, which servers hold which blocks and what is uncovered.

This is the data behind ``python -m core.cli.swarm_status`` and the app's swarm view.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import hivemind

from core.dht.records import compute_spans, get_block_servers, get_models
from core.dht.schema import ServerState, uncovered_blocks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerRow:
    """One server of a model, as it announces itself."""

    peer_id: str
    public_name: str
    start_block: int
    end_block: int
    state: str
    throughput: float
    torch_dtype: str
    quant_type: str
    cache_tokens_left: int
    version: str
    inference_rps: float = 0.0
    next_pings: tuple[tuple[str, float], ...] = ()
    can_push: bool = False  # passes inference outputs straight to the next server (core.push_protocol)


@dataclass(frozen=True)
class ModelSwarm:
    """One model served by the swarm: its servers and the blocks nobody serves."""

    dht_prefix: str
    total_blocks: int
    servers: tuple[ServerRow, ...]
    uncovered: tuple[int, ...]

    @property
    def block_throughputs(self) -> list[float]:
        """Total throughput of the online servers holding each block."""
        totals = [0.0] * self.total_blocks
        for row in self.servers:
            if row.state == ServerState.ONLINE.value:
                for index in range(row.start_block, min(row.end_block, self.total_blocks)):
                    totals[index] += row.throughput
        return totals

    @property
    def is_complete(self) -> bool:
        return not self.uncovered


def fetch_swarm_status(
    dht: hivemind.DHT, dht_prefix: str | None = None, total_blocks: int | None = None
) -> list[ModelSwarm]:
    """Read the swarm through ``dht``: one :class:`ModelSwarm` per model (``dht_prefix=None``: every
    model servers announce). ``total_blocks`` is needed only for a model no server announces."""
    models = get_models(dht)
    if dht_prefix is not None:
        known = models.get(dht_prefix)
        count = total_blocks or (known.num_blocks if known else None)
        targets = {dht_prefix: count} if count else {}
        if not targets:
            logger.info("No server announces model '%s' and its block count is unknown", dht_prefix)
    else:
        targets = {prefix: info.num_blocks for prefix, info in models.items()}
    return [_model_swarm(dht, prefix, count) for prefix, count in sorted(targets.items())]


def _model_swarm(dht: hivemind.DHT, dht_prefix: str, total_blocks: int) -> ModelSwarm:
    block_servers = get_block_servers(dht, dht_prefix, range(total_blocks))
    active = compute_spans(block_servers, states=frozenset({ServerState.ONLINE, ServerState.JOINING}))
    seen = {span.peer_id for span in active}
    offline = [span for span in compute_spans(block_servers, states=frozenset({ServerState.OFFLINE}))
               if span.peer_id not in seen]  # a server that moved is listed once, where it is now
    rows = [
        ServerRow(
            peer_id=span.peer_id, public_name=span.server_info.public_name, start_block=span.start,
            end_block=span.end, state=span.server_info.state.value, throughput=span.server_info.throughput,
            torch_dtype=span.server_info.torch_dtype, quant_type=span.server_info.quant_type,
            cache_tokens_left=span.server_info.cache_tokens_left, version=span.server_info.version,
            inference_rps=span.server_info.inference_rps,
            next_pings=tuple(sorted(span.server_info.next_pings.items())),
            can_push=span.server_info.can_push,
        )
        for span in active + offline
    ]
    rows.sort(key=lambda row: (row.start_block, row.end_block, row.peer_id))
    online = [span for span in active if span.server_info.state == ServerState.ONLINE]
    return ModelSwarm(dht_prefix, total_blocks, tuple(rows), tuple(uncovered_blocks(online, 0, total_blocks)))


def get_swarm_status(
    initial_peers: Sequence[str], dht_prefix: str | None = None, total_blocks: int | None = None
) -> list[ModelSwarm]:
    """:func:`fetch_swarm_status` through a client DHT node of its own (started and stopped here)."""
    from core.dht.node import create_dht, shutdown_client_dht

    dht = create_dht(initial_peers, client_mode=True).dht
    try:
        return fetch_swarm_status(dht, dht_prefix, total_blocks)
    finally:
        shutdown_client_dht(dht)
