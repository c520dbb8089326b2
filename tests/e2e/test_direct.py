"""Direct TCP connections (servers' ``--direct_port``): same tokens as local transformers, the handshake
keeps clients off the wrong program, policy and failures fall back to p2p, and garbage does not hurt."""
from __future__ import annotations

import socket

import pytest
import torch
from transformers import AutoModelForCausalLM

from core import AutoDistributedModelForCausalLM
from core.client.blocking_stream import BlockingStream
from core.config import ClientConfig
from core.direct_protocol import HELLO, parse_direct_address
from core.errors import RemoteCallError

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def direct_swarm(tiny_checkpoints, swarm_factory, client_dht_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)], server_args=["--direct_port", "0"])
    dht = client_dht_factory(swarm.initial_peers)
    return original, converted, dht


def _client(direct_swarm, policy: str):
    _, converted, dht = direct_swarm
    return AutoDistributedModelForCausalLM.from_pretrained(
        str(converted), dht=dht, client_config=ClientConfig(direct_connections=policy))


def _local_tokens(original, input_ids: torch.Tensor) -> torch.Tensor:
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    with torch.no_grad():
        return local.generate(input_ids, max_new_tokens=NEW_TOKENS, do_sample=False)


def _peer_addresses(session) -> list[tuple[str, int]]:
    return [hop._stream.sock.getpeername()[:2] for hop in session._sessions]


def test_servers_announce_their_direct_port_and_clients_use_it(direct_swarm):
    original, _, _ = direct_swarm
    model = _client(direct_swarm, "private")
    try:
        spans = model.transformer_blocks.manager.make_route(0, 4)
        announced = [parse_direct_address(span.server_info.direct_address) for span in spans]
        assert all(address is not None and address[0] == "127.0.0.1" for address in announced), announced

        torch.manual_seed(0)
        input_ids = torch.randint(3, model.config.vocab_size, (1, 6))  # 0..2 are bos, eos, pad
        with model.transformer_blocks.inference_session(max_length=16) as session:
            session.step(model.embeds_to_hidden(model.get_input_embeddings()(input_ids)))
            assert sorted(_peer_addresses(session)) == sorted(announced)  # not the p2p daemon's unix socket
        assert torch.equal(model.generate(input_ids, max_new_tokens=NEW_TOKENS), _local_tokens(original, input_ids))
    finally:
        model.shutdown()


def test_policy_never_keeps_to_p2p_with_the_same_tokens(direct_swarm):
    original, _, _ = direct_swarm
    model = _client(direct_swarm, "never")
    try:
        input_ids = torch.tensor([[3, 11, 4, 13, 5]])
        with model.transformer_blocks.inference_session(max_length=16) as session:
            session.step(model.embeds_to_hidden(model.get_input_embeddings()(input_ids)))
            assert all(hop._stream.sock.family == socket.AF_UNIX for hop in session._sessions)
        assert torch.equal(model.generate(input_ids, max_new_tokens=NEW_TOKENS), _local_tokens(original, input_ids))
    finally:
        model.shutdown()


def test_handshake_refuses_a_port_that_is_not_that_server(direct_swarm):
    model = _client(direct_swarm, "private")
    try:
        first, second = model.transformer_blocks.manager.make_route(0, 4)
        address = parse_direct_address(first.server_info.direct_address)
        with pytest.raises(RemoteCallError, match="is not server .* direct port"):
            BlockingStream.connect(address, second.peer_id, 5, 5)  # a real direct port, but another server's
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            closed_port = unused.getsockname()
        with pytest.raises(OSError):
            BlockingStream.connect(closed_port, first.peer_id, 5, 5)
    finally:
        model.shutdown()


def test_garbage_on_the_direct_port_is_dropped_and_sessions_go_on(direct_swarm):
    original, _, _ = direct_swarm
    model = _client(direct_swarm, "private")
    try:
        span = model.transformer_blocks.manager.make_route(0, 4)[0]
        host, port = parse_direct_address(span.server_info.direct_address)
        for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4, HELLO + b"\x07" * 64):
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(garbage)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
            assert not answer or answer.startswith(b"BLOSSOM-DIRECT/1 ")  # closed, or greeted then refused
        input_ids = torch.tensor([[12, 7, 19, 8]])
        assert torch.equal(model.generate(input_ids, max_new_tokens=NEW_TOKENS), _local_tokens(original, input_ids))
        assert span.peer_id not in model.transformer_blocks.manager.direct_failures
    finally:
        model.shutdown()
