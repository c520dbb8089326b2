"""The inference session's failover without a swarm: two servers' real handlers behind direct (TLS)
listeners on 127.0.0.1 (no DHT, no p2p daemon) and a stand-in for the sequence manager's routing.

When the server in use dies, the session moves to the other one and replays its history step by
step, exactly as it was first sent: the new server then computes what the old one did, bit for bit.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hivemind.p2p import PeerID
from hivemind.proto import runtime_pb2

from core.client.inference_session import REPLAY_WINDOW_BYTES, InferenceSession
from core.config import ClientConfig
from core.dht.schema import RemoteSpanInfo, ServerInfo, ServerState
from core.direct_protocol import DirectEndpoint
from core.server.bounded_streams import make_bounded_stream_handler
from core.server.handler import BlockRequestHandler
from core.server.memory_cache import KVCacheBudget
from core.server.stats import ServingStats
from core.utils.event_loop import EventLoopThread, shared_loop
from tests.direct_listeners import open_blocking, start_listener
from tests.numerics import assert_same_computation
from tests.tiny_models import tiny_span_backend

HIDDEN = 64
MAX_LENGTH = 64


class RoutingStandIn:
    """What an inference session asks of :class:`RemoteSequenceManager`: the first server not banned."""

    def __init__(self, addresses: dict[str, DirectEndpoint]) -> None:
        self.addresses, self.banned = addresses, []
        self.config = ClientConfig(max_retries=2, request_timeout=20)
        self.loop = shared_loop()

    def span_uid(self, start: int, end: int) -> str:
        return " ".join(f"unit.{index}" for index in range(start, end))

    def make_route(self, start: int, end: int, mode: str = "latency") -> list[RemoteSpanInfo]:
        peer = next(peer for peer in self.addresses if peer not in self.banned)
        return [RemoteSpanInfo(peer, start, end, ServerInfo(ServerState.ONLINE, 1.0, start, end))]

    def ban(self, peer_id: str, reason: object) -> None:
        self.banned.append(peer_id)

    async def open_blocking_stream(self, span: RemoteSpanInfo, method: str):
        return await open_blocking(self.addresses[span.peer_id], span.peer_id, method, self.config.request_timeout)


@pytest.fixture
def servers():
    """Two servers of the same two seeded blocks, each its own handler behind its own direct listener."""
    loop = EventLoopThread("test-servers")
    listeners, addresses = {}, {}
    for name in ("QmFirstServer", "QmSecondServer"):
        handler = BlockRequestHandler(tiny_span_backend(MAX_LENGTH), "unit", KVCacheBudget(2**26), 5.0, ServingStats())
        handle = make_bounded_stream_handler(SimpleNamespace(peer_id=PeerID(name.encode())), "rpc_inference",
                                             handler.rpc_inference, runtime_pb2.ExpertRequest,
                                             handler.max_request_bytes, 60.0)
        listeners[name], addresses[name] = start_listener(loop, {"rpc_inference": handle}, name)
    yield listeners, addresses, loop
    for listener in listeners.values():
        loop.run(listener.stop(), timeout=10)
    loop.stop()


@pytest.mark.parametrize("window_bytes", [REPLAY_WINDOW_BYTES, 1024])  # 1 KiB: the replay writes ahead in many windows
def test_a_session_moves_to_another_server_and_replays_exactly(servers, window_bytes, monkeypatch):
    listeners, addresses, loop = servers
    monkeypatch.setattr("core.client.inference_session.REPLAY_WINDOW_BYTES", window_bytes)
    torch.manual_seed(7)
    steps = [torch.randn(1, 4, HIDDEN)] + [torch.randn(1, 1, HIDDEN) for _ in range(40)]

    with InferenceSession(RoutingStandIn(addresses), 0, 2, MAX_LENGTH) as undisturbed:
        expected = [undisturbed.step(step) for step in steps]

    routing = RoutingStandIn(addresses)
    with InferenceSession(routing, 0, 2, MAX_LENGTH) as session:
        outputs = [session.step(step) for step in steps[:-2]]
        assert [span.peer_id for span in session.route] == ["QmFirstServer"]
        loop.run(listeners["QmFirstServer"].stop(), timeout=10)  # the server dies: its connections are cut
        outputs += [session.step(step) for step in steps[-2:]]
        assert [span.peer_id for span in session.route] == ["QmSecondServer"] and routing.banned == ["QmFirstServer"]
    # Exact: the second server has the same weights and was sent the same steps in the same shapes, so it
    # computed the same cache with the same kernels as the first one did
    for number, (output, reference) in enumerate(zip(outputs, expected)):
        assert_same_computation(output, reference, f"output of step {number}")
