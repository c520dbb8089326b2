"""Server-to-server push without a swarm: real handlers behind direct (TLS) listeners on 127.0.0.1 (no DHT, no p2p
daemon) and a stand-in for the sequence manager's routing.

A chain of two servers, block 0 on the first and block 1 on the second (each holds both seeded blocks), so a
step goes client -> first -> second -> client. Pushed, carried by the client, or pushed at a next hop nobody
can dial: the servers compute the same steps from the same inputs, so the outputs are bitwise the same.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from hivemind.p2p import PeerID
from hivemind.proto import runtime_pb2

from core.client.inference_session import InferenceSession
from core.config import ClientConfig
from core.dht.schema import RemoteSpanInfo, ServerInfo, ServerState
from core.direct_protocol import DirectEndpoint
from core.push_protocol import PushTarget
from core.server.bounded_streams import make_bounded_stream_handler
from core.server.handler import BlockRequestHandler
from core.server.memory_cache import KVCacheBudget
from core.server.stats import ServingStats
from core.utils.event_loop import EventLoopThread, shared_loop
from tests.direct_listeners import open_blocking, start_listener
from tests.numerics import assert_matches_reference, assert_same_computation
from tests.tiny_models import tiny_span_backend

HIDDEN = 64
MAX_LENGTH = 64
NAMES = ("QmFirstServer", "QmSecondServer", "QmSpareServer")


class ChainStandIn:
    """What an inference session asks of :class:`RemoteSequenceManager`: block 0 on the first server not banned,
    block 1 on the next one; servers announce ``can_push`` as the test says."""

    def __init__(self, addresses: dict[str, DirectEndpoint], push: bool = True, can_push: bool = True,
                 unreachable: DirectEndpoint | None = None) -> None:
        self.addresses, self.can_push, self.unreachable = addresses, can_push, unreachable
        self.banned: list[str] = []
        self.push_failures: set[tuple[str, str]] = set()
        self.config = ClientConfig(max_retries=2, request_timeout=20, push_between_servers=push)
        self.loop = shared_loop()

    def span_uid(self, start: int, end: int) -> str:
        return " ".join(f"unit.{index}" for index in range(start, end))

    def make_route(self, start: int, end: int, mode: str = "latency") -> list[RemoteSpanInfo]:
        peers = iter(peer for peer in self.addresses if peer not in self.banned)
        info = ServerInfo(ServerState.ONLINE, 1.0, 0, 2, can_push=self.can_push)
        return [RemoteSpanInfo(next(peers), index, index + 1, info) for index in range(start, end)]

    def ban(self, peer_id: str, reason: object) -> None:
        self.banned.append(peer_id)

    async def open_blocking_stream(self, span: RemoteSpanInfo, method: str):
        return await open_blocking(self.addresses[span.peer_id], span.peer_id, method, self.config.request_timeout)

    def may_push(self, peer_id: str, next_peer_id: str) -> bool:
        return (peer_id, next_peer_id) not in self.push_failures

    def push_failed(self, peer_id: str, next_peer_id: str) -> None:
        self.push_failures.add((peer_id, next_peer_id))

    def push_target(self, span: RemoteSpanInfo, session_id: str) -> PushTarget:
        endpoint = self.unreachable or self.addresses[span.peer_id]
        return PushTarget(span.peer_id, session_id, str(endpoint), (), endpoint.fingerprint)


@pytest.fixture
def servers():
    """Three servers of the same two seeded blocks, each its own handler behind its own direct listener."""
    loop = EventLoopThread("test-push-servers")
    listeners, addresses, handlers = {}, {}, []
    for name in NAMES:
        handler = BlockRequestHandler(tiny_span_backend(MAX_LENGTH), "unit", KVCacheBudget(2**26), 5.0, ServingStats())
        handles = {method: make_bounded_stream_handler(SimpleNamespace(peer_id=PeerID(name.encode())), method,
                                                       getattr(handler, method), runtime_pb2.ExpertRequest,
                                                       handler.max_request_bytes, 60.0)
                   for method in ("rpc_inference", "rpc_push")}
        listeners[name], addresses[name] = start_listener(loop, handles, name)
        handlers.append(handler)
    yield listeners, addresses, loop
    for listener in listeners.values():
        loop.run(listener.stop(), timeout=10)
    loop.stop()
    for handler in handlers:
        handler.shutdown()


def make_steps(seed: int, count: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [torch.randn(1, 5, HIDDEN)] + [torch.randn(1, 1, HIDDEN) for _ in range(count)]


def run(routing: ChainStandIn, steps: list[torch.Tensor]) -> tuple[list[torch.Tensor], InferenceSession]:
    with InferenceSession(routing, 0, 2, MAX_LENGTH) as session:
        return [session.step(step) for step in steps], session


def test_pushed_steps_equal_the_client_carried_ones_and_one_server(servers):
    _, addresses, _ = servers
    steps = make_steps(1, 12)
    pushed, session = run(ChainStandIn(addresses), steps)
    assert (session.hops_pushed, session.hops_sent) == (len(steps), len(steps))  # client -> A -> B -> client
    carried, session = run(ChainStandIn(addresses, push=False), steps)
    assert (session.hops_pushed, session.hops_sent) == (0, 2 * len(steps))
    old_servers, session = run(ChainStandIn(addresses, can_push=False), steps)  # servers that announce no push
    assert (session.hops_pushed, session.hops_sent) == (0, 2 * len(steps))
    reference = tiny_span_backend(MAX_LENGTH).forward(torch.cat(steps, dim=1), 0, 2, None)
    for number, (a, b, c) in enumerate(zip(pushed, carried, old_servers)):
        assert_same_computation(a, b, f"pushed vs carried output of step {number}")
        assert_same_computation(a, c, f"pushed vs old servers' output of step {number}")
    assert_matches_reference(torch.cat(pushed, dim=1), reference, "pushed steps vs one pass through both blocks")


def test_a_next_hop_nobody_can_dial_falls_back_to_the_client(servers, caplog):
    _, addresses, _ = servers
    steps = make_steps(2, 6)
    expected, _ = run(ChainStandIn(addresses, push=False), steps)
    closed = DirectEndpoint("127.0.0.1", 9, addresses[NAMES[1]].fingerprint)  # the discard port: nobody there
    with caplog.at_level(logging.INFO, logger="core.client.inference_session"):
        routing = ChainStandIn(addresses, unreachable=closed)
        outputs, session = run(routing, steps)
    assert session.hops_pushed == 0 and session.hops_sent == 2 * len(steps)  # asked to push once, then carried
    assert routing.push_failures == {tuple(NAMES[:2])}  # remembered: the next session does not ask again
    assert any("could not push" in record.getMessage() for record in caplog.records)
    for number, (output, reference) in enumerate(zip(outputs, expected)):
        assert_same_computation(output, reference, f"output of step {number}")


@pytest.mark.parametrize("victim", [0, 1])  # the server that pushes, or the one pushed to
def test_a_server_of_a_pushed_chain_dies_and_the_outputs_stay_the_same(servers, victim):
    listeners, addresses, loop = servers
    steps = make_steps(3, 20)
    expected, _ = run(ChainStandIn(addresses, push=False), steps)
    routing = ChainStandIn(addresses)
    with InferenceSession(routing, 0, 2, MAX_LENGTH) as session:
        outputs = [session.step(step) for step in steps[:12]]
        dead = session.route[victim].peer_id
        loop.run(listeners[dead].stop(), timeout=10)  # its connections are cut
        outputs += [session.step(step) for step in steps[12:]]
        assert routing.banned == [dead] and dead not in [span.peer_id for span in session.route]
        assert session.hops_pushed >= len(steps) - 1  # pushing went on after the replay
    for number, (output, reference) in enumerate(zip(outputs, expected)):
        assert_same_computation(output, reference, f"output of step {number}")
