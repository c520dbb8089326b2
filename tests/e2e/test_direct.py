"""Direct connections (default servers' direct port: TLS, or a proven local connection on one machine): same
tokens as local transformers, forward and backward equal to p2p, the pinned certificate and the handshake keep
clients off the wrong program, policy and failures fall back to p2p, and garbage does not hurt."""
from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from typing import Iterator

import pytest
import torch
from transformers import AutoModelForCausalLM

from benchmarks.tiny_swarm import cache_free_bytes
from core import AutoDistributedModelForCausalLM, transports
from core.client.transports import open_direct_stream
from core.config import ClientConfig
from core.dht.schema import ServerInfo
from core.direct_local import local_hello, new_nonce
from core.direct_protocol import DirectEndpoint, direct_endpoint, hello, server_greeting
from core.direct_tls import client_context
from core.errors import RemoteCallError
from tests.remote_calls import call_one
from tests.numerics import assert_same_computation, reference_greedy

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def direct_swarm(tiny_checkpoints, swarm_factory, client_dht_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)])  # default servers: a TLS direct port on any free port
    dht = client_dht_factory(swarm.initial_peers)
    return original, converted, dht


@contextlib.contextmanager
def _client(direct_swarm, policy: str) -> Iterator[AutoDistributedModelForCausalLM]:
    _, converted, dht = direct_swarm
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(converted), dht=dht, client_config=ClientConfig(direct_connections=policy))
    try:
        yield model
    finally:
        model.shutdown()


def _local_tokens(original, input_ids: torch.Tensor) -> torch.Tensor:
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    return reference_greedy(local, input_ids, "greedy tokens", max_new_tokens=NEW_TOKENS)


@pytest.mark.parametrize("where", ["this machine", "another machine"])
def test_servers_announce_their_direct_port_and_clients_use_it(direct_swarm, where, monkeypatch):
    original, _, _ = direct_swarm
    if where == "another machine":  # what a client elsewhere on the LAN does (no second machine exists here)
        monkeypatch.setattr(transports, "is_own_address", lambda host: False)
    with _client(direct_swarm, "private") as model:
        spans = model.transformer_blocks.manager.make_route(0, 4)
        announced = [span.server_info.direct_endpoint for span in spans]
        assert all(endpoint is not None and endpoint.host == "127.0.0.1" for endpoint in announced), announced

        torch.manual_seed(0)
        input_ids = torch.randint(3, model.config.vocab_size, (1, 6))  # 0..2 are bos, eos, pad
        with model.transformer_blocks.inference_session(max_length=16) as session:
            session.step(model.embeds_to_hidden(model.get_input_embeddings()(input_ids)))
            socks = [hop._stream.sock for hop in session._sessions]  # not the p2p daemon's unix socket
            assert sorted(sock.getpeername()[:2] for sock in socks) == sorted((e.host, e.port) for e in announced)
            if where == "this machine":  # local connections: no TLS, the servers proved their keys
                assert not any(isinstance(sock, ssl.SSLSocket) for sock in socks)
            else:
                assert all(isinstance(sock, ssl.SSLSocket) and sock.version() == "TLSv1.3" for sock in socks)
        assert torch.equal(model.generate(input_ids, max_new_tokens=NEW_TOKENS), _local_tokens(original, input_ids))


def test_a_port_showing_another_certificate_gets_nothing_and_p2p_takes_over(direct_swarm, monkeypatch, caplog):
    original, _, _ = direct_swarm
    impostor = "00" * 32  # the announced port answers, but not with the certificate this client expects
    monkeypatch.setattr(ServerInfo, "direct_endpoint",
                        property(lambda info: direct_endpoint(info.direct_address, impostor)))
    with _client(direct_swarm, "private") as model, caplog.at_level(logging.INFO, "core.client.sequence_manager"):
        input_ids = torch.tensor([[3, 17, 4, 9]])
        with model.transformer_blocks.inference_session(max_length=16) as session:
            session.step(model.embeds_to_hidden(model.get_input_embeddings()(input_ids)))
            assert all(hop._stream.sock.family == socket.AF_UNIX for hop in session._sessions)
        assert torch.equal(model.generate(input_ids, max_new_tokens=NEW_TOKENS), _local_tokens(original, input_ids))
        assert len(model.transformer_blocks.manager.direct_failures) == 2
    assert any("another certificate than the one its server announced" in r.getMessage() for r in caplog.records)


def test_policy_never_keeps_to_p2p_with_the_same_tokens(direct_swarm):
    original, _, _ = direct_swarm
    with _client(direct_swarm, "never") as model:
        input_ids = torch.tensor([[3, 11, 4, 13, 5]])
        with model.transformer_blocks.inference_session(max_length=16) as session:
            session.step(model.embeds_to_hidden(model.get_input_embeddings()(input_ids)))
            assert all(hop._stream.sock.family == socket.AF_UNIX for hop in session._sessions)
        assert torch.equal(model.generate(input_ids, max_new_tokens=NEW_TOKENS), _local_tokens(original, input_ids))


@pytest.mark.parametrize("shape", [(1, 5, 64), (2, 200, 64)])  # under and over the p2p streaming threshold
def test_forward_and_backward_go_direct_with_the_same_numbers(direct_swarm, monkeypatch, shape):
    with _client(direct_swarm, "private") as direct, _client(direct_swarm, "never") as p2p:
        torch.manual_seed(2)
        hidden, grad = torch.randn(*shape), torch.randn(*shape)
        results = {}
        for name, model in (("p2p", p2p), ("direct", direct)):
            manager = model.transformer_blocks.manager
            span = manager.make_route(0, 4)[0]
            if name == "direct":
                def refuse(*args, **kwargs):
                    raise AssertionError("a p2p call was made although the server has a direct port")

                monkeypatch.setattr("core.client.sequence_manager.open_p2p_stream", refuse)
                monkeypatch.setattr("core.client.sequence_manager.call_unary", refuse)
            results[name] = (call_one(manager, span, "rpc_forward", [hidden]),
                             call_one(manager, span, "rpc_backward", [hidden, grad]))
        for direct_result, p2p_result, what in zip(results["direct"], results["p2p"], ("outputs", "gradients")):
            assert_same_computation(direct_result, p2p_result, what)  # the same server and input; another transport


def _cache_free(manager, span) -> int:
    return cache_free_bytes(manager.loop.run(manager.get_p2p()), [span])[0]


def test_a_backward_over_direct_connections_uses_the_graph_its_forward_kept(direct_swarm):
    with _client(direct_swarm, "private") as model:
        manager = model.transformer_blocks.manager
        span = manager.make_route(0, 4)[0]
        full = _cache_free(manager, span)
        torch.manual_seed(3)
        hidden, grad = torch.randn(2, 200, 64), torch.randn(2, 200, 64)
        _, answered = manager.call(span, "rpc_forward", [hidden], {"keep_graph": True})
        assert _cache_free(manager, span) < full  # the kept graph is charged to the KV budget
        # a new connection, the same client: the graph is found (taken and freed), not left to expire
        manager.call(span, "rpc_backward", [hidden, grad], {"graph_id": answered["graph_id"]})
        assert _cache_free(manager, span) == full


def test_handshake_refuses_a_port_that_is_not_that_server(direct_swarm):
    with _client(direct_swarm, "private") as model:
        manager = model.transformer_blocks.manager
        first, second = manager.make_route(0, 4)
        endpoint = first.server_info.direct_endpoint
        # a real direct port and its certificate, but another server's
        with pytest.raises(RemoteCallError, match="is not server .* direct port"):
            manager.loop.run(open_direct_stream(endpoint, second.peer_id, "rpc_inference"))
        with pytest.raises(RemoteCallError, match="another certificate"):  # the port, not its certificate
            manager.loop.run(open_direct_stream(DirectEndpoint(endpoint.host, endpoint.port,
                                                               second.server_info.direct_endpoint.fingerprint),
                                                first.peer_id, "rpc_inference"))
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            closed_port = unused.getsockname()
        with pytest.raises(OSError):
            manager.loop.run(open_direct_stream(DirectEndpoint(*closed_port, endpoint.fingerprint), first.peer_id,
                                                "rpc_inference"))


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def test_garbage_on_the_direct_port_is_dropped_and_sessions_go_on(direct_swarm):
    original, _, _ = direct_swarm
    with _client(direct_swarm, "private") as model:
        span = model.transformer_blocks.manager.make_route(0, 4)[0]
        endpoint = span.server_info.direct_endpoint
        not_blossom = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4, hello("rpc_shutdown"))
        for garbage in (*not_blossom, hello("rpc_inference")):  # no TLS, no local hello (e.g. an older client)
            with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
                sock.sendall(garbage)
                answer = _answer(sock)
            assert answer == b"" or answer[:1] == b"\x15", answer  # closed, at most with a TLS alert
        for inside in ("TLS", "a local connection"):
            for garbage in (*not_blossom, hello("rpc_inference") + b"\x07" * 64):
                raw = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
                if inside == "TLS":
                    sock = client_context().wrap_socket(raw)
                else:
                    sock, garbage = raw, local_hello(new_nonce()) + garbage
                with sock:
                    sock.sendall(garbage)
                    answer = _answer(sock)
                if inside == "a local connection":  # the proof comes first, whatever follows the local hello
                    assert answer.startswith(b"BLOSSOM-LOCAL/1 "), answer
                    answer = answer[answer.index(server_greeting(span.peer_id)):] \
                        if server_greeting(span.peer_id) in answer else b""
                if any(garbage.endswith(bad) for bad in not_blossom):
                    assert answer == b"", (inside, answer)  # closed without a word
                else:  # a Blossom hello, then a frame with an unknown marker: greeted, then told why
                    assert answer.startswith(server_greeting(span.peer_id)), answer
                    assert b"malformed stream frame (marker byte b" in answer, answer
        input_ids = torch.tensor([[12, 7, 19, 8]])
        assert torch.equal(model.generate(input_ids, max_new_tokens=NEW_TOKENS), _local_tokens(original, input_ids))
        assert not model.transformer_blocks.manager.direct_failures
