"""Declaring and reading block spans in the DHT.

Both functions run inside the DHT's own process via ``dht.run_coroutine``, so the coroutines
here are module-level functions bound with ``functools.partial`` (they must be picklable).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Sequence

import hivemind
from hivemind.dht.node import DHTNode
from hivemind.utils import get_dht_time

from core.dht.schema import RemoteSpanInfo, ServerInfo, ServerState, block_key

logger = logging.getLogger(__name__)


def declare_blocks(
    dht: hivemind.DHT, dht_prefix: str, indices: Sequence[int], info: ServerInfo, expiration: float
) -> dict[str, bool]:
    """Announce ``info`` under every block key in ``indices``; the record lives ``expiration`` seconds."""
    return dht.run_coroutine(
        partial(_declare_blocks, dht_prefix=dht_prefix, indices=list(indices), record=info.to_record(),
                expiration_time=get_dht_time() + expiration)
    )


async def _declare_blocks(
    dht: hivemind.DHT, node: DHTNode, dht_prefix: str, indices: list[int], record: dict, expiration_time: float
) -> dict[str, bool]:
    keys = [block_key(dht_prefix, index) for index in indices]
    subkey = dht.peer_id.to_base58()
    return await node.store_many(
        keys, [record] * len(keys), expiration_time, subkeys=[subkey] * len(keys), num_workers=max(1, len(keys))
    )


def get_block_servers(
    dht: hivemind.DHT, dht_prefix: str, indices: Sequence[int], latest: bool = True
) -> list[dict[str, ServerInfo]]:
    """For each block in ``indices``, the servers announcing it: ``{peer_id: ServerInfo}``.

    Malformed records are skipped; records of servers in the OFFLINE state are kept (callers filter).
    """
    raw = dht.run_coroutine(partial(_get_blocks, dht_prefix=dht_prefix, indices=list(indices), latest=latest))
    result: list[dict[str, ServerInfo]] = []
    for entry in raw:
        servers: dict[str, ServerInfo] = {}
        if isinstance(entry, dict):
            for peer_id, record in entry.items():
                info = ServerInfo.from_record(record)
                if isinstance(peer_id, str) and info is not None:
                    servers[peer_id] = info
        result.append(servers)
    return result


async def _get_blocks(
    dht: hivemind.DHT, node: DHTNode, dht_prefix: str, indices: list[int], latest: bool
) -> list[dict | None]:
    keys = [block_key(dht_prefix, index) for index in indices]
    sufficient = float("inf") if latest else None
    found = await node.get_many(keys, sufficient_expiration_time=sufficient, num_workers=max(1, len(keys)))
    result: list[dict | None] = []
    for key in keys:
        value = found.get(key)
        if value is None or not isinstance(value.value, dict):
            result.append(None)
            continue
        result.append({subkey: item.value for subkey, item in value.value.items() if hasattr(item, "value")})
    return result


def compute_spans(block_servers: list[dict[str, ServerInfo]], start_index: int = 0) -> list[RemoteSpanInfo]:
    """Collapse per-block announcements into one span per online server.

    ``block_servers[i]`` describes block ``start_index + i``. A server's span is cut to the blocks
    where it was actually found, so a stale or partial announcement never routes to missing blocks.
    """
    found: dict[str, tuple[int, int, ServerInfo]] = {}
    for offset, servers in enumerate(block_servers):
        index = start_index + offset
        for peer_id, info in servers.items():
            if info.state != ServerState.ONLINE:
                continue
            if peer_id in found and found[peer_id][1] == index:
                found[peer_id] = (found[peer_id][0], index + 1, info)
            elif peer_id not in found:
                found[peer_id] = (index, index + 1, info)
    return [RemoteSpanInfo(peer_id, start, end, info) for peer_id, (start, end, info) in found.items()]
