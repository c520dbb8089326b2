"""Declaring and reading block spans (and the models a swarm serves) in the DHT.

Every record is stored under the announcing server's signed subkey (see :mod:`core.dht.identity`);
readers drop records whose subkey is unsigned or names a peer id that does not own the key.
The coroutines run inside the DHT's own process via ``dht.run_coroutine``, so they are
module-level functions bound with ``functools.partial`` (they must be picklable). Every look-up is
bounded: it ends within ``timeout`` seconds or raises :class:`~core.errors.LookupTimeoutError`.

A DHT made by the user (a plain ``hivemind.DHT``) works too: before its first look-up it is given the
signature validator (:func:`ensure_record_validator`). Without it, hivemind cannot parse signed
records (the signature trails the value) and its search never completes.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from functools import partial
from typing import Any, Awaitable, Callable, Sequence

import hivemind
from hivemind.dht.node import DHTNode
from hivemind.utils import get_dht_time

from core.dht.identity import owner_of_subkey, record_validator
from core.dht.schema import (
    MODELS_KEY,
    ModelInfo,
    RemoteSpanInfo,
    ServerInfo,
    ServerState,
    block_key,
)
from core.errors import LookupTimeoutError

logger = logging.getLogger(__name__)

DEFAULT_LOOKUP_TIMEOUT = 30.0
"""Seconds a DHT look-up may take when the caller names no other bound."""

_validated: "weakref.WeakSet[hivemind.DHT]" = weakref.WeakSet()


def ensure_record_validator(dht: hivemind.DHT, timeout: float = DEFAULT_LOOKUP_TIMEOUT) -> None:
    """Give ``dht`` the validator that reads (and checks) Blossom's signed records; once per DHT.

    hivemind merges a second RSA signature validator into the first, so DHTs started by
    :func:`core.dht.node.create_dht`, which have one already, are unchanged.
    """
    if dht in _validated:
        return
    run_bounded(dht, _add_record_validator, timeout, "its record validators (the DHT process is not answering)")
    _validated.add(dht)


async def _add_record_validator(dht: hivemind.DHT, node: DHTNode) -> None:
    node.protocol.record_validator.extend([record_validator()])


def run_bounded(dht: hivemind.DHT, coroutine: Callable[..., Awaitable[Any]], timeout: float, what: str) -> Any:
    """Run ``coroutine(dht, node)`` in the DHT's process; :class:`LookupTimeoutError` naming ``what`` after ``timeout`` s.

    The bound holds twice: inside the DHT process (the search is cancelled there) and here, in case the
    DHT process itself does not answer.
    """
    future = dht.run_coroutine(partial(_within, coroutine=coroutine, timeout=timeout), return_future=True)
    try:
        return future.result(timeout=timeout + 5)
    except (TimeoutError, asyncio.TimeoutError):
        future.cancel()
        raise LookupTimeoutError(what, timeout) from None


async def _within(dht: hivemind.DHT, node: DHTNode, coroutine: Callable[..., Awaitable[Any]], timeout: float) -> Any:
    return await asyncio.wait_for(coroutine(dht, node), timeout)


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
    dht: hivemind.DHT, dht_prefix: str, indices: Sequence[int], latest: bool = True,
    timeout: float = DEFAULT_LOOKUP_TIMEOUT,
) -> list[dict[str, ServerInfo]]:
    """For each block in ``indices``, the servers announcing it: ``{peer_id: ServerInfo}``.

    Malformed records are skipped; records of servers in the OFFLINE state are kept (callers filter).
    Raises :class:`LookupTimeoutError` when the DHT does not answer within ``timeout`` seconds.
    """
    ensure_record_validator(dht, timeout)
    indices = list(indices)
    keys = [block_key(dht_prefix, index) for index in indices]
    shown = f"block {indices[0]}" if len(indices) == 1 else f"blocks {indices[0]}..{indices[-1]}" if indices else "no blocks"
    raw = run_bounded(dht, partial(_get, keys=keys, latest=latest), timeout, f"the servers of {shown} of '{dht_prefix}'")
    return [_parse_entry(entry, ServerInfo.from_record) for entry in raw]


def get_models(dht: hivemind.DHT, timeout: float = DEFAULT_LOOKUP_TIMEOUT) -> dict[str, ModelInfo]:
    """Every model announced in the swarm, by DHT prefix (from servers currently announcing one)."""
    ensure_record_validator(dht, timeout)
    (entry,) = run_bounded(dht, partial(_get, keys=[MODELS_KEY], latest=True), timeout, "the swarm's list of models")
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
