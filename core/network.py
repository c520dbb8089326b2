"""Measuring the network between peers: round-trip pings and upload speed, both over the block servers'
``rpc_info``. Clients and servers both use it."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from core.wire import block_rpc_handle, serialize_tensors

logger = logging.getLogger(__name__)

UPLOAD_PAYLOAD_ELEMENTS = 256 * 1024  # 1 MiB of float32, under the unary message limit


async def call_unary(p2p: P2P, peer_id: str, method: str, request: runtime_pb2.ExpertRequest,
                     timeout: float) -> runtime_pb2.ExpertResponse:
    """A unary call of the block servers' RPC ``method`` (what hivemind's stubs do, without the handler class)."""
    return await asyncio.wait_for(p2p.call_protobuf_handler(
        PeerID.from_base58(peer_id), block_rpc_handle(method), request, runtime_pb2.ExpertResponse), timeout)


async def call_info(p2p: P2P, peer_id: str, request: runtime_pb2.ExpertRequest,
                    timeout: float) -> runtime_pb2.ExpertResponse:
    return await call_unary(p2p, peer_id, "rpc_info", request, timeout)


async def ping(p2p: P2P, peer_id: str, timeout: float = 5.0) -> float | None:
    """Round-trip seconds of an ``rpc_info`` call to ``peer_id``; ``None`` if it did not answer in time."""
    began = time.perf_counter()
    try:
        await call_info(p2p, peer_id, runtime_pb2.ExpertRequest(), timeout)
    except Exception as error:
        logger.debug("No answer from %s: %s", peer_id, error)
        return None
    return time.perf_counter() - began


async def ping_many(p2p: P2P, peer_ids: Iterable[str], timeout: float = 5.0) -> dict[str, float]:
    """Pings of several peers at once, the best of two each (the first may include dialing); unreachable ones left out."""
    peers = list(dict.fromkeys(peer_ids))

    async def best_of_two(peer: str) -> float | None:
        first = await ping(p2p, peer, timeout)
        second = await ping(p2p, peer, timeout) if first is not None else None
        return min(v for v in (first, second) if v is not None) if first is not None else None

    results = await asyncio.gather(*(best_of_two(peer) for peer in peers))
    return {peer: rtt for peer, rtt in zip(peers, results) if rtt is not None}


async def measure_upload(p2p: P2P, peer_id: str, rounds: int = 3, timeout: float = 10.0) -> float | None:
    """Bytes per second this peer uploads to ``peer_id`` (best of a few 1 MiB sends); ``None`` on failure."""
    payload = serialize_tensors([torch.zeros(UPLOAD_PAYLOAD_ELEMENTS)])
    size = sum(len(tensor.buffer) for tensor in payload)
    best: float | None = None
    for _ in range(rounds):
        began = time.perf_counter()
        try:
            await call_info(p2p, peer_id, runtime_pb2.ExpertRequest(tensors=payload), timeout)
        except Exception as error:
            logger.debug("Upload measurement to %s failed: %s", peer_id, error)
            return best
        elapsed = max(time.perf_counter() - began, 1e-6)
        best = max(best or 0.0, size / elapsed)
    return best
