"""Autograd graphs of recent forward passes, kept for the backward pass that follows (training without recompute).

A training client asks ``rpc_forward`` to keep the graph (metadata ``{"keep_graph": true}``); the
server keeps what autograd saved under a random id and answers it (``{"graph_id": ...}``). The
client's ``rpc_backward`` names that id, and the server runs only the backward instead of the
forward a second time. Without a kept graph (expired, evicted, another server) the server
recomputes, exactly as before.

Kept graphs are charged to the server's KV-cache budget, so they never take memory the operator did
not give to per-client state; inference comes first: a session that needs room evicts them. A
graph belongs to the peer that made it, is used once, and expires after ``ttl`` seconds.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from core.server.memory_cache import KVCacheBudget

logger = logging.getLogger(__name__)

DEFAULT_TTL = 60.0


@dataclass
class KeptGraph:
    """One forward pass's graph: the device inputs (requiring grad), the output, and what the client sent."""

    owner: str
    backend: object  # the SpanBackend that computed it (a server that moved does not reuse it)
    start: int
    end: int
    sent: list[torch.Tensor]  # the CPU tensors the client sent (hidden, and prompts if any)
    inputs: list[torch.Tensor]
    output: torch.Tensor
    nbytes: int
    created: float = field(default_factory=time.monotonic)

    def matches(self, backend: object, start: int, end: int, sent: list[torch.Tensor]) -> bool:
        """Whether a backward of ``sent`` through blocks ``[start, end)`` of ``backend`` is this graph's."""
        return (self.backend is backend and (self.start, self.end) == (start, end) and len(sent) == len(self.sent)
                and all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
                        for a, b in zip(sent, self.sent)))


class GraphCache:
    """Kept graphs by id, charged to ``budget``; used from the server's event loop only."""

    def __init__(self, budget: KVCacheBudget, ttl: float = DEFAULT_TTL) -> None:
        self.budget = budget
        self.ttl = ttl
        self._graphs: OrderedDict[str, KeptGraph] = OrderedDict()

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def nbytes(self) -> int:
        """Bytes of the budget the kept graphs hold."""
        return sum(graph.nbytes for graph in self._graphs.values())

    async def put(self, graph: KeptGraph) -> str | None:
        """Keep ``graph`` if the budget has room for it; returns its id, or ``None`` if it was not kept."""
        await self.expire()
        if not self.budget.take_now(graph.nbytes):
            logger.debug("Not keeping a %d-byte graph: %d bytes of the budget free", graph.nbytes,
                         self.budget.free_bytes)
            return None
        graph_id = uuid.uuid4().hex
        self._graphs[graph_id] = graph
        return graph_id

    async def take(self, graph_id: object, owner: str) -> KeptGraph | None:
        """Remove and return the graph ``graph_id`` if ``owner`` made it (else ``None``; others' stay)."""
        graph = self._graphs.get(graph_id) if isinstance(graph_id, str) else None
        if graph is None or graph.owner != owner:
            return None
        del self._graphs[graph_id]
        await self.budget.give_back(graph.nbytes)
        return graph

    async def expire(self) -> None:
        """Drop graphs older than ``ttl``."""
        now = time.monotonic()
        while self._graphs:
            graph_id, graph = next(iter(self._graphs.items()))
            if now - graph.created <= self.ttl:
                break
            del self._graphs[graph_id]
            await self.budget.give_back(graph.nbytes)

    async def make_room(self, nbytes: int) -> None:
        """Drop the oldest graphs until ``nbytes`` of the budget are free (or none is left): inference first."""
        await self.expire()
        while self._graphs and self.budget.free_bytes < nbytes:
            _, graph = self._graphs.popitem(last=False)
            await self.budget.give_back(graph.nbytes)
