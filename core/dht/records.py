"""Declaring and reading block spans (and the models a swarm serves) in the DHT.

Every record is stored under the announcing server's signed subkey (see :mod:`core.dht.identity`);
readers drop records whose subkey is unsigned or names a peer id that does not own the key.
The coroutines run inside the DHT's own process via ``dht.run_coroutine``, so they are
module-level functions bound with ``functools.partial`` (they must be picklable).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Sequence

import hivemind
from hivemind.dht.node import DHTNode
from hivemind.utils import get_dht_time

from core.dht.identity import owner_of_subkey
from core.dht.schema import MODELS_KEY, ModelInfo, RemoteSpanInfo, ServerInfo, ServerState, block_key

logger = logging.getLogger(__name__)


def declare_blocks(
    dht: hivemind.DHT,
    dht_prefix: str,
    indices: Sequence[int],
    info: ServerInfo,
    expiration: float,
    subkey: bytes,
    model: ModelInfo | None = None,
) -> dict[str, bool]:
    """Announce ``info`` under every block key in ``indices`` (and ``model`` under the models key).

    ``subkey`` is the server's signed subkey (:func:`core.dht.identity.owner_subkey`); records live
    ``expiration`` seconds.
    """
    keys = [block_key(dht_prefix, index) for index in indices]
    values: list[dict] = [info.to_record()] * len(keys)
    if model is not None:
        keys.append(MODELS_KEY)
        values.append(model.to_record())
    return dht.run_coroutine(
        partial(_store, keys=keys, values=values, subkey=subkey, expiration_time=get_dht_time() + expiration)
    )


async def _store(
    dht: hivemind.DHT, node: DHTNode, keys: list[str], values: list[dict], subkey: bytes, expiration_time: float
) -> dict[str, bool]:
    return await node.store_many(
        keys, values, expiration_time, subkeys=[subkey] * len(keys), num_workers=max(1, len(keys))
    )


def get_block_servers(
    dht: hivemind.DHT, dht_prefix: str, indices: Sequence[int], latest: bool = True
) -> list[dict[str, ServerInfo]]:
    """For each block in ``indices``, the servers announcing it: ``{peer_id: ServerInfo}``.

    Malformed records are skipped; records of servers in the OFFLINE state are kept (callers filter).
    """
    keys = [block_key(dht_prefix, index) for index in indices]
    raw = dht.run_coroutine(partial(_get, keys=keys, latest=latest))
    return [_parse_entry(entry, ServerInfo.from_record) for entry in raw]


def get_models(dht: hivemind.DHT) -> dict[str, ModelInfo]:
    """Every model announced in the swarm, by DHT prefix (from servers currently announcing one)."""
    (entry,) = dht.run_coroutine(partial(_get, keys=[MODELS_KEY], latest=True))
    models: dict[str, ModelInfo] = {}
    for info in _parse_entry(entry, ModelInfo.from_record).values():
        models.setdefault(info.dht_prefix, info)
    return models


def _parse_entry(entry: dict | None, parse) -> dict:
    """``{peer_id: parsed record}`` for the validly signed, well-formed records of one key."""
    parsed: dict = {}
    if isinstance(entry, dict):
        for subkey, record in entry.items():
            peer_id = owner_of_subkey(subkey)
            value = parse(record) if peer_id is not None else None
            if value is not None:
                parsed[peer_id] = value
    return parsed


async def _get(dht: hivemind.DHT, node: DHTNode, keys: list[str], latest: bool) -> list[dict | None]:
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


def compute_spans(
    block_servers: list[dict[str, ServerInfo]],
    start_index: int = 0,
    states: frozenset[ServerState] = frozenset({ServerState.ONLINE}),
) -> list[RemoteSpanInfo]:
    """Collapse per-block announcements into one span per server in one of ``states`` (online by default).

    ``block_servers[i]`` describes block ``start_index + i``. A server's span is cut to the blocks
    where it was actually found, so a stale or partial announcement never routes to missing blocks.
    """
    found: dict[str, tuple[int, int, ServerInfo]] = {}
    for offset, servers in enumerate(block_servers):
        index = start_index + offset
        for peer_id, info in servers.items():
            if info.state not in states:
                continue
            if peer_id in found and found[peer_id][1] == index:
                found[peer_id] = (found[peer_id][0], index + 1, info)
            elif peer_id not in found:
                found[peer_id] = (index, index + 1, info)
    return [RemoteSpanInfo(peer_id, start, end, info) for peer_id, (start, end, info) in found.items()]
