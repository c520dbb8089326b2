"""Calling one server directly in tests: the one-tensor case of ``RemoteSequenceManager.call``."""
from __future__ import annotations

import torch


def call_one(manager, span, method: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The single tensor ``span``'s server answers to ``method``."""
    outputs, _ = manager.call(span, method, tensors)
    assert len(outputs) == 1, f"server {span.peer_id} answered {len(outputs)} tensors to {method}, expected 1"
    return outputs[0]


def handler_stub(manager, peer_id: str, timeout: float = 30.0):
    """hivemind's stub of server ``peer_id``'s RPCs, for tests that send hand-made (malformed) requests."""
    from hivemind.p2p import PeerID

    from core.server.handler import BlockRequestHandler

    async def make():
        return BlockRequestHandler.get_stub(await manager.get_p2p(), PeerID.from_base58(peer_id))

    return manager.loop.run(make(), timeout=timeout)
