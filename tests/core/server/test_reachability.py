"""The pure parts of reachability and relaying: candidate addresses, hello lines, what a person is told."""
from __future__ import annotations

from core.relay_protocol import (
    Reachability, parse_relay_answer, parse_relay_hello, relay_hello, relay_ok, relay_refusal,
)
from core.server.reachability import ReachabilityStatus, candidate_addresses, helpers_are_local, peer_ids_of
from core.server.relay import RELAYABLE_PREFIX
from core.server.handler import BlockRequestHandler
from core.wire import block_rpc_handle


def test_candidates_are_the_ipv4_tcp_addresses_without_loopback():
    maddrs = ["/ip4/127.0.0.1/tcp/4001/p2p/QmA", "/ip4/10.78.1.2/tcp/4001/p2p/QmA", "/ip6/::1/tcp/4001/p2p/QmA",
              "/ip4/10.77.0.3/tcp/34407/p2p/QmA", "/ip4/10.77.0.3/tcp/34407/p2p/QmA",
              "/ip4/10.77.0.1/tcp/31337/p2p/QmR/p2p-circuit/p2p/QmA", "/ip4/0.0.0.0/tcp/1/p2p/QmA"]
    assert candidate_addresses(maddrs) == ["10.78.1.2:4001", "10.77.0.3:34407"]


def test_peer_ids_and_local_swarms_are_read_from_initial_peers():
    peers = ["/ip4/127.0.0.1/tcp/1/p2p/QmFirst", "/ip4/127.0.0.1/tcp/2/p2p/QmSecond", "/ip4/127.0.0.1/tcp/1/p2p/QmFirst"]
    assert peer_ids_of(peers) == ["QmFirst", "QmSecond"]
    assert helpers_are_local(peers)
    assert not helpers_are_local(["/ip4/10.77.0.1/tcp/31337/p2p/QmX"]) and not helpers_are_local([])


def test_relay_hello_and_answers_round_trip_and_garbage_is_recognised():
    line = relay_hello("QmServer", block_rpc_handle("rpc_inference"))
    assert parse_relay_hello(line) == ("QmServer", "BlockRequestHandler.rpc_inference")
    for garbage in (b"", b"GET / HTTP/1.1\n", b"BLOSSOM-RELAY/1 onlyone\n", b"BLOSSOM-RELAY/1 a b c\n",
                    relay_hello("Qm", "x" * 300)):
        assert parse_relay_hello(garbage) is None
    assert parse_relay_answer(relay_ok()) is None
    assert parse_relay_answer(relay_refusal("no reservation\nhere")) == "no reservation here"
    assert "instead of a relay answer" in parse_relay_answer(b"HTTP/1.1 400\n")


def test_relays_carry_exactly_the_block_servers_rpcs():
    assert BlockRequestHandler._get_handle_name(None, "rpc_inference") == block_rpc_handle("rpc_inference")
    assert block_rpc_handle("rpc_info_stream").startswith(RELAYABLE_PREFIX)


def test_each_outcome_tells_the_person_what_it_means():
    assert ReachabilityStatus(Reachability.DIRECT, address="10.77.0.3:34407").describe() == \
        "reachable directly at 10.77.0.3:34407"
    relayed = ReachabilityStatus(Reachability.RELAYED, relays=("QmR1", "QmR2"), reason="blocked").describe()
    assert relayed.startswith("reachable through relay QmR1, QmR2 (no direct connection: blocked)")
    unreachable = ReachabilityStatus(Reachability.UNREACHABLE, reason="nobody could connect").describe()
    assert unreachable.startswith("not reachable: nobody could connect") and "UPnP" in unreachable
    assert "not checked" in ReachabilityStatus(Reachability.DIRECT, reason="not checked: first peer").describe()


def test_a_relay_refuses_circuits_it_should_not_carry():
    import time

    from core.server.relay import RelayService

    service = RelayService(p2p=None, refusal=lambda: None)
    inference = block_rpc_handle("rpc_inference")
    assert "not a relay hello" in service._circuit_refusal(None)
    assert "not a Blossom RPC" in service._circuit_refusal(("QmServer", "/ipfs/ping/1.0.0"))
    assert "holds no reservation" in service._circuit_refusal(("QmServer", inference))
    service.reservations["QmServer"] = time.monotonic() + 60
    assert service._circuit_refusal(("QmServer", inference)) is None
    service.circuits["QmServer"] = 10**6
    assert "open circuits" in service._circuit_refusal(("QmServer", inference))
