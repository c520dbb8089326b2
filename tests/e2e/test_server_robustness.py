"""Bad requests over the wire get typed errors, and the servers keep serving everyone else.

One real swarm of the tiny Llama on 127.0.0.1 (a DHT peer and two servers holding blocks 0..1 and
2..3) for the whole module. Requests go through :class:`RemoteSequenceManager` where the client
can express them, and through raw hivemind stubs where it cannot (malformed uids, buffers, metadata).
The last test checks that after all of this the servers are alive and still compute exactly.

No RemoteSequenceManager here is ``close()``d: every manager on one DHT shares that DHT's cached P2P
replica (``hivemind.DHT.replicate_p2p``), so closing one would cut the others' connections.
"""
from __future__ import annotations

import asyncio
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import hivemind
import pytest
import torch
from hivemind.proto import runtime_pb2
from transformers import AutoModelForCausalLM

from core import AutoDistributedConfig, ClientConfig, get_remote_module
from core.client.sequence_manager import RemoteSequenceManager
from core.dht.schema import RemoteSpanInfo
from core.errors import (
    BlossomError,
    InvalidRequestError,
    RemoteCallError,
    SequenceTooLongError,
    UnknownBlocksError,
)
from core.launcher import ChildProcess, LocalSwarm
from core.models.registry import get_family
from tests.remote_calls import call_one, handler_stub
from tests.numerics import assert_matches_reference, assert_same_computation
from core.wire import pack_metadata, raise_if_error, serialize_tensors, unpack_metadata

HIDDEN = 64  # hidden size of the tiny Llama (tests/tiny_models.py)
TIMEOUT = 30.0


@dataclass
class Setup:
    swarm: LocalSwarm
    dht: hivemind.DHT
    manager: RemoteSequenceManager
    prefix: str
    first: RemoteSpanInfo  # the server holding blocks 0..1
    second: RemoteSpanInfo  # the server holding blocks 2..3
    converted: Path
    original: Path
    probe: torch.Tensor  # a fixed input and the swarm's answer to it before any bad request
    probe_output: torch.Tensor


@pytest.fixture(scope="module")
def setup(tiny_checkpoints, swarm_factory, client_dht_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)])
    try:
        dht = client_dht_factory(swarm.initial_peers)
        config = AutoDistributedConfig.from_pretrained(str(converted))
        manager = RemoteSequenceManager(dht, config.dht_prefix, config.num_hidden_layers,
                                        ClientConfig(connect_timeout=TIMEOUT, request_timeout=TIMEOUT))
        first, second = manager.make_route(0, 4)
        assert (first.start, first.end, second.start, second.end) == (0, 2, 2, 4)
        torch.manual_seed(0)
        probe = torch.randn(2, 5, HIDDEN)
        for span in (first, second):
            _first_contact(manager, span)
        probe_output = _forward_all(manager, first, second, probe)
        yield Setup(swarm, dht, manager, config.dht_prefix, first, second, converted, original, probe, probe_output)
    finally:
        swarm.stop()


def _first_contact(manager: RemoteSequenceManager, span: RemoteSpanInfo, timeout: float = TIMEOUT) -> None:
    """Call a server until it answers: libp2p on a busy machine now and then refuses a first dial for a few
    seconds ("dial backoff"); the real client retries such calls, the raw calls in these tests do not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call_one(manager, span, "rpc_forward", [torch.zeros(1, 1, HIDDEN)])
            return
        except RemoteCallError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _forward_all(manager: RemoteSequenceManager, first: RemoteSpanInfo, second: RemoteSpanInfo,
                 hidden: torch.Tensor) -> torch.Tensor:
    return call_one(manager, second, "rpc_forward", [call_one(manager, first, "rpc_forward", [hidden])])


# ---- raw wire helpers ------------------------------------------------------------------------

def _stub(setup: Setup, span: RemoteSpanInfo):
    return handler_stub(setup.manager, span.peer_id, TIMEOUT)


def _uid(setup: Setup, start: int, end: int) -> str:
    return " ".join(f"{setup.prefix}.{index}" for index in range(start, end))


def _raw_call(setup: Setup, method: str, uid: str, tensors: list[runtime_pb2.Tensor],
              span: RemoteSpanInfo | None = None) -> runtime_pb2.ExpertResponse:
    stub = _stub(setup, span or setup.first)
    request = runtime_pb2.ExpertRequest(uid=uid, tensors=tensors)
    return setup.manager.loop.run(getattr(stub, method)(request, timeout=TIMEOUT), timeout=TIMEOUT + 5)


async def _collect_session(stub, requests: list[runtime_pb2.ExpertRequest]) -> list[runtime_pb2.ExpertResponse]:
    """Like the real client: send one message, wait for its answer, and so on; stop after an error answer."""
    queue: asyncio.Queue = asyncio.Queue()

    async def outgoing() -> AsyncIterator[runtime_pb2.ExpertRequest]:
        while (request := await queue.get()) is not None:
            yield request

    responses = (await stub.rpc_inference(outgoing())).__aiter__()
    collected = []
    for request in requests:
        await queue.put(request)
        collected.append(await responses.__anext__())
        if unpack_metadata(collected[-1].metadata).get("error"):
            break
    await queue.put(None)
    try:  # the server ends the session after an error or after our end of stream
        extra = await responses.__anext__()
        raise AssertionError(f"the server answered more than asked: {extra}")
    except (StopAsyncIteration, ConnectionError):
        pass
    return collected


def _raw_session(setup: Setup, requests: list[runtime_pb2.ExpertRequest],
                 span: RemoteSpanInfo | None = None) -> list[runtime_pb2.ExpertResponse]:
    """Send all ``requests`` in one rpc_inference stream; returns every answer until the server ends it."""
    stub = _stub(setup, span or setup.first)
    return setup.manager.loop.run(asyncio.wait_for(_collect_session(stub, requests), TIMEOUT), timeout=TIMEOUT + 5)


def _expect_error(response: runtime_pb2.ExpertResponse, error_class: type[BlossomError], pattern: str) -> str:
    """The response carries exactly ``error_class`` (not a subclass) with a message matching ``pattern``."""
    assert not response.tensors, "an error response must not carry tensors"
    with pytest.raises(error_class, match=pattern) as info:
        raise_if_error(response, "server")
    assert type(info.value) is error_class
    return str(info.value)


def _expect_call_error(setup: Setup, span: RemoteSpanInfo, method: str, tensors: list[torch.Tensor],
                       error_class: type[BlossomError], pattern: str) -> None:
    with pytest.raises(error_class, match=pattern) as info:
        call_one(setup.manager, span, method, tensors)
    assert type(info.value) is error_class
    assert span.peer_id in str(info.value), "the error should name the server that refused"


def _proto(tensor: torch.Tensor) -> runtime_pb2.Tensor:
    return serialize_tensors([tensor])[0]


# ---- bad tensors through the client's own call path ----------------------------------------

def test_wrong_hidden_size_is_rejected(setup):
    _expect_call_error(setup, setup.first, "rpc_forward", [torch.randn(1, 3, HIDDEN // 2)], InvalidRequestError,
                       r"hidden_states must have shape \[batch, seq_len, 64\], got \[1, 3, 32\]")


def test_two_dimensional_tensor_is_rejected(setup):
    _expect_call_error(setup, setup.first, "rpc_forward", [torch.randn(3, HIDDEN)], InvalidRequestError,
                       r"hidden_states must have shape \[batch, seq_len, 64\], got \[3, 64\]")


def test_integer_tensor_is_rejected(setup):
    _expect_call_error(setup, setup.second, "rpc_forward", [torch.ones(1, 3, HIDDEN, dtype=torch.int64)],
                       InvalidRequestError, r"hidden_states must be float32, float16 or bfloat16, got torch.int64")


def test_nan_values_are_rejected(setup):
    hidden = torch.randn(1, 4, HIDDEN)
    hidden[0, 2, 7] = float("nan")
    _expect_call_error(setup, setup.first, "rpc_forward", [hidden], InvalidRequestError,
                       "hidden_states contains NaN or Inf")
    hidden[0, 2, 7] = float("inf")
    _expect_call_error(setup, setup.first, "rpc_backward", [torch.randn(1, 4, HIDDEN), hidden],
                       InvalidRequestError, "grad_outputs contains NaN or Inf")


def test_empty_sequence_is_rejected(setup):
    _expect_call_error(setup, setup.first, "rpc_forward", [torch.randn(1, 0, HIDDEN)], InvalidRequestError,
                       r"hidden_states is empty: shape \[1, 0, 64\]")


def test_blocks_the_server_does_not_hold(setup):
    elsewhere = RemoteSpanInfo(setup.first.peer_id, 1, 3, setup.first.server_info)
    _expect_call_error(setup, elsewhere, "rpc_forward", [torch.randn(1, 3, HIDDEN)], UnknownBlocksError,
                       r"blocks 1\.\.2 requested but this server holds 0\.\.1")
    past_the_model = _raw_call(setup, "rpc_forward", _uid(setup, 3, 6), [_proto(torch.randn(1, 3, HIDDEN))],
                               span=setup.second)
    _expect_error(past_the_model, UnknownBlocksError, r"blocks 3\.\.5 requested but this server holds 2\.\.3")


def test_grad_outputs_shape_mismatch_in_backward(setup):
    _expect_call_error(setup, setup.second, "rpc_backward", [torch.randn(1, 3, HIDDEN), torch.randn(1, 4, HIDDEN)],
                       InvalidRequestError,
                       r"grad_outputs shape \[1, 4, 64\] must equal the inputs' shape \[1, 3, 64\]")
    missing = _raw_call(setup, "rpc_backward", _uid(setup, 0, 2), [_proto(torch.randn(1, 3, HIDDEN))])
    _expect_error(missing, InvalidRequestError, r"expected 2 tensor\(s\), got 1")


# ---- malformed requests only a raw stub can send -------------------------------------------

def test_other_model_prefix_is_rejected(setup):
    response = _raw_call(setup, "rpc_forward", "some-other-model.0 some-other-model.1",
                         [_proto(torch.randn(1, 3, HIDDEN))])
    message = _expect_error(response, UnknownBlocksError, "not \\['some-other-model'\\]")
    assert f"serves model '{setup.prefix}'" in message


def test_non_consecutive_uids_are_rejected(setup):
    hidden = [_proto(torch.randn(1, 3, HIDDEN))]
    gap = _raw_call(setup, "rpc_forward", f"{setup.prefix}.2 {setup.prefix}.4", hidden, span=setup.second)
    _expect_error(gap, InvalidRequestError, r"blocks must be consecutive and ascending, got \[2, 4\]")
    backwards = _raw_call(setup, "rpc_forward", f"{setup.prefix}.1 {setup.prefix}.0", hidden)
    _expect_error(backwards, InvalidRequestError, r"consecutive and ascending, got \[1, 0\]")


def test_malformed_uids_are_rejected(setup):
    hidden = [_proto(torch.randn(1, 3, HIDDEN))]
    _expect_error(_raw_call(setup, "rpc_forward", "", hidden), InvalidRequestError, "request has no block uids")
    _expect_error(_raw_call(setup, "rpc_forward", f"{setup.prefix}.x", hidden), InvalidRequestError,
                  "is not a block uid of the form PREFIX.INDEX")


def test_garbage_and_truncated_buffers_are_rejected(setup):
    uid = _uid(setup, 0, 2)
    garbage = runtime_pb2.Tensor(buffer=b"\x13garbage\x00\xff" * 7, size=[1, 3, HIDDEN], dtype="float32",
                                 compression=runtime_pb2.CompressionType.NONE)
    _expect_error(_raw_call(setup, "rpc_forward", uid, [garbage]), InvalidRequestError,
                  r"tensor 0: buffer holds 70 bytes but shape \[1, 3, 64\] of float32 needs 768; "
                  r"the message is truncated or corrupt")

    truncated = _proto(torch.randn(1, 3, HIDDEN))
    truncated.buffer = truncated.buffer[:500]
    _expect_error(_raw_call(setup, "rpc_forward", uid, [truncated]), InvalidRequestError,
                  "buffer holds 500 bytes .* truncated or corrupt")

    # the right length but bytes that are not numbers (0xff.. is NaN in float32)
    not_numbers = runtime_pb2.Tensor(buffer=b"\xff" * (3 * HIDDEN * 4), size=[1, 3, HIDDEN], dtype="float32",
                                     compression=runtime_pb2.CompressionType.NONE)
    _expect_error(_raw_call(setup, "rpc_forward", uid, [not_numbers]), InvalidRequestError,
                  "hidden_states contains NaN or Inf")

    unknown_dtype = _proto(torch.randn(1, 3, HIDDEN, dtype=torch.float64))
    _expect_error(_raw_call(setup, "rpc_forward", uid, [unknown_dtype]), InvalidRequestError,
                  "tensor 0: dtype 'float64' is not accepted")

    huge = runtime_pb2.Tensor(buffer=b"", size=[10**6, 10**6, HIDDEN], dtype="float32",
                              compression=runtime_pb2.CompressionType.NONE)
    _expect_error(_raw_call(setup, "rpc_forward", uid, [huge]), InvalidRequestError, "over this server's limit")

    _expect_error(_raw_call(setup, "rpc_forward", uid, []), InvalidRequestError, r"expected 1 tensor\(s\), got 0")


def test_garbage_metadata_in_an_inference_session(setup):
    uid = _uid(setup, 0, 2)
    hidden = [_proto(torch.randn(1, 2, HIDDEN))]
    responses = _raw_session(setup, [runtime_pb2.ExpertRequest(uid=uid, tensors=hidden, metadata=b"\xc1\x00garbage")])
    assert len(responses) == 1
    _expect_error(responses[0], InvalidRequestError, "metadata is not valid msgpack")

    a_list = runtime_pb2.ExpertRequest(uid=uid, tensors=hidden, metadata=pack_metadata([1, 2]))
    _expect_error(_raw_session(setup, [a_list])[0], InvalidRequestError, "metadata must be a msgpack map with string keys")

    for bad_length in (None, "3", 0, 10**9):
        metadata = pack_metadata({} if bad_length is None else {"max_length": bad_length})
        responses = _raw_session(setup, [runtime_pb2.ExpertRequest(uid=uid, tensors=hidden, metadata=metadata)])
        _expect_error(responses[-1], InvalidRequestError, r"max_length must be an integer in 1\.\.2048")

    # garbage in a later step ends that session with an error after the good steps' answers
    good = runtime_pb2.ExpertRequest(uid=uid, tensors=hidden, metadata=pack_metadata({"max_length": 8}))
    rollback = runtime_pb2.ExpertRequest(tensors=hidden, metadata=pack_metadata({"start_from_position": 5}))
    responses = _raw_session(setup, [good, rollback])
    assert len(responses) == 2 and list(responses[0].tensors[0].size) == [1, 2, HIDDEN]
    _expect_error(responses[1], InvalidRequestError, r"start_from_position must be in 0\.\.2, got 5")

    wider = runtime_pb2.ExpertRequest(tensors=[_proto(torch.randn(2, 1, HIDDEN))])
    responses = _raw_session(setup, [good, wider])
    _expect_error(responses[1], InvalidRequestError, "batch size changed from 1 to 2 within a session")


def test_inference_session_past_max_length(setup):
    uid = _uid(setup, 2, 4)
    two_tokens = [_proto(torch.randn(1, 2, HIDDEN))]
    opening = runtime_pb2.ExpertRequest(uid=uid, tensors=two_tokens, metadata=pack_metadata({"max_length": 3}))
    responses = _raw_session(setup, [opening, runtime_pb2.ExpertRequest(tensors=two_tokens)], span=setup.second)
    assert len(responses) == 2 and responses[0].tensors
    _expect_error(responses[1], SequenceTooLongError,
                  "the session would hold 4 tokens but was opened with max_length=3")

    too_long_at_once = runtime_pb2.ExpertRequest(uid=uid, tensors=[_proto(torch.randn(1, 4, HIDDEN))],
                                                 metadata=pack_metadata({"max_length": 3}))
    responses = _raw_session(setup, [too_long_at_once], span=setup.second)
    _expect_error(responses[0], SequenceTooLongError, "would hold 4 tokens but was opened with max_length=3")


def test_remote_sequential_session_past_max_length(setup):
    config = AutoDistributedConfig.from_pretrained(str(setup.converted))
    # (block.manager is not closed: it shares the DHT's P2P replica with setup.manager, see the module docstring)
    block = get_remote_module(setup.dht, f"{setup.prefix}.1", config, ClientConfig(request_timeout=TIMEOUT))
    hidden = torch.randn(1, 4, HIDDEN)
    with block.inference_session(max_length=3) as session:
        session.step(hidden[:, :2])
        with pytest.raises(SequenceTooLongError, match="max_length=3"):  # the client refuses by itself...
            session.step(hidden[:, 2:4])
        session.max_length = 100  # ...so lift its own check: the server must refuse too
        with pytest.raises(SequenceTooLongError, match="would hold 4 tokens but was opened with max_length=3") as info:
            session.step(hidden[:, 2:4])
        assert setup.first.peer_id in str(info.value)


# ---- other clients are not disturbed -------------------------------------------------------

VANISHING_CLIENT = textwrap.dedent("""
    import sys, time, tempfile
    import hivemind, torch
    from core import ClientConfig
    from core.client.remote_sequential import RemoteSequential
    from core.client.sequence_manager import RemoteSequenceManager
    from core.dht.node import create_dht

    tempfile.gettempdir()
    prefix, hidden_size, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    dht = create_dht(peers, client_mode=True).dht
    manager = RemoteSequenceManager(dht, prefix, 4, ClientConfig(connect_timeout=30))
    session = RemoteSequential(manager, hidden_size).inference_session(max_length=64)
    torch.manual_seed(123)
    session.step(torch.randn(3, 6, hidden_size))
    session.step(torch.randn(3, 1, hidden_size))
    print("STEPPED", flush=True)
    time.sleep(600)
""")


def test_vanishing_client_does_not_break_another_session(setup):
    from core.client.remote_sequential import RemoteSequential

    model_blocks = RemoteSequential(setup.manager, HIDDEN)
    torch.manual_seed(5)
    hidden = torch.randn(2, 7, HIDDEN)
    expected = _forward_all(setup.manager, setup.first, setup.second, hidden)
    vanishing = ChildProcess("vanishing-client", ["-c", VANISHING_CLIENT, setup.prefix, str(HIDDEN),
                                                  *setup.swarm.initial_peers])
    try:
        with model_blocks.inference_session(max_length=16) as session:
            outputs = [session.step(hidden[:, :3])]
            vanishing.wait_for_line("STEPPED", 120)  # its sessions are open on both servers
            outputs.append(session.step(hidden[:, 3:4]))
            vanishing.kill()  # SIGKILL: its streams are cut without a goodbye
            assert vanishing.process.returncode != 0
            for position in range(4, 7):
                outputs.append(session.step(hidden[:, position : position + 1]))
        # steps over a KV cache vs one stateless pass: other kernels and summation orders, so the contract
        assert_matches_reference(torch.cat(outputs, dim=1), expected, "session steps around a vanishing client")

        # a bad step of a third client mid-session does not disturb a concurrent good session either
        with model_blocks.inference_session(max_length=16) as session:
            first_half = session.step(hidden[:, :4])
            good = runtime_pb2.ExpertRequest(uid=_uid(setup, 0, 2), tensors=[_proto(hidden[:1, :2])],
                                             metadata=pack_metadata({"max_length": 8}))
            nan = runtime_pb2.ExpertRequest(tensors=[_proto(torch.full((1, 1, HIDDEN), float("nan")))])
            responses = _raw_session(setup, [good, nan])
            _expect_error(responses[1], InvalidRequestError, "contains NaN or Inf")
            second_half = session.step(hidden[:, 4:])
        assert_matches_reference(torch.cat([first_half, second_half], dim=1), expected,
                                 "session steps around a bad request")
    finally:
        vanishing.kill()
    for server in setup.swarm.servers:
        assert server.process.poll() is None, f"{server.name} died:\n{server.tail()}"


# ---- after everything: still alive and exact ----------------------------------------------

def test_servers_survive_and_still_compute_exactly(setup):
    for server in setup.swarm.servers:
        assert server.process.poll() is None, f"{server.name} died:\n{server.tail()}"
    server_output = "\n".join(line for server in setup.swarm.servers for line in server.lines)
    assert "Unexpected failure serving" not in server_output, "a bad request caused an internal error, not a typed one"

    setup.manager.update()
    first, second = setup.manager.make_route(0, 4)
    assert (first.peer_id, second.peer_id) == (setup.first.peer_id, setup.second.peer_id)
    output = _forward_all(setup.manager, first, second, setup.probe)
    # the very same answer as before: the same servers, the same input, the same rpc_forward path and shapes
    assert_same_computation(output, setup.probe_output, "the probe's outputs before and after the bad requests")

    local = AutoModelForCausalLM.from_pretrained(setup.original).eval()
    span = get_family("llama").make_span(local.config, list(local.model.layers), 0)
    with torch.no_grad():
        assert_matches_reference(output, span(setup.probe), "the probe's outputs")

    grad = torch.randn_like(setup.probe)
    middle = call_one(setup.manager, first, "rpc_forward", [setup.probe])
    middle_grad = call_one(setup.manager, second, "rpc_backward", [middle, grad])
    remote_grad = call_one(setup.manager, first, "rpc_backward", [setup.probe, middle_grad])
    local_input = setup.probe.clone().requires_grad_(True)
    span(local_input).backward(grad)
    assert_matches_reference(remote_grad, local_input.grad, "the probe's gradients")
