"""Overload and faults on a real swarm: the KV-cache budget, idle sessions, the bootstrap peer dying,
SIGTERM with sessions open, and owner-only identity files.

One swarm of the tiny Llama for the module: a DHT peer and two servers on 127.0.0.1 holding blocks
0..1 ("first") and 2..3 ("second"), each with a KV-cache budget of 48 tokens, a 3 s allocation
timeout, a 6 s idle timeout, and at most 4 sequences and 64 tokens per request. The tests run in
file order; the last three take the swarm apart (the DHT peer is killed, then each server is
stopped with SIGTERM).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import hivemind
import pytest
import torch
from hivemind.p2p import PeerID
from hivemind.proto import runtime_pb2
from transformers import AutoModelForCausalLM

from benchmarks.tiny_swarm import cache_free_bytes
from core import AutoDistributedConfig, AutoDistributedModelForCausalLM, ClientConfig
from core.client.remote_sequential import RemoteSequential
from core.client.sequence_manager import RemoteSequenceManager
from core.dht.records import get_block_servers
from core.dht.schema import RemoteSpanInfo, ServerState
from core.errors import BlossomError, InvalidRequestError, ServerFullError
from core.launcher import ChildProcess, LocalSwarm, parse_addresses
from core.models.registry import get_family
from core.wire import pack_metadata, serialize_tensors, unpack_metadata
from tests.remote_calls import call_one, handler_stub
from tests.numerics import assert_matches_reference, assert_same_computation, reference_greedy

HIDDEN = 64
CACHE_TOKENS = 48
ALLOC_TIMEOUT = 3.0
IDLE_TIMEOUT = 6.0
START_TIMEOUT = 180.0
MAX_BATCH, MAX_TOKENS = 4, 64
COMMON_ARGS = ["--throughput", "10", "--attn_cache_tokens", str(CACHE_TOKENS), "--alloc_timeout", str(ALLOC_TIMEOUT),
               "--session_idle_timeout", str(IDLE_TIMEOUT), "--max_batch_size", str(MAX_BATCH),
               "--max_tokens_per_request", str(MAX_TOKENS)]
FIRST_SHUTDOWN_TIMEOUT = 3.0
SECOND_SHUTDOWN_TIMEOUT = 60.0


@dataclass
class Faults:
    swarm: LocalSwarm
    first: ChildProcess
    second: ChildProcess
    dht: hivemind.DHT
    manager: RemoteSequenceManager  # max_retries=0: a refused session is reported, not retried
    first_span: RemoteSpanInfo
    second_span: RemoteSpanInfo
    prefix: str
    original: Path
    converted: Path
    server_identity: Path
    full_budget: int  # bytes of KV cache each server has when no session is open


@pytest.fixture(scope="module")
def faults(tiny_checkpoints, swarm_factory, client_dht_factory, tmp_path_factory):
    original, converted = tiny_checkpoints["llama"]
    identity = tmp_path_factory.mktemp("identities") / "keys" / "first-server.id"
    swarm = swarm_factory(converted, [], server_args=COMMON_ARGS)  # the DHT peer only; servers below
    try:
        first = swarm.add_server((0, 2), ["--shutdown_timeout", str(FIRST_SHUTDOWN_TIMEOUT),
                                          "--identity_path", str(identity)])
        second = swarm.add_server((2, 4), ["--shutdown_timeout", str(SECOND_SHUTDOWN_TIMEOUT)])
        for server in (first, second):
            server.wait_for_line("is online", START_TIMEOUT)
        dht = client_dht_factory(swarm.initial_peers)
        config = AutoDistributedConfig.from_pretrained(str(converted))
        manager = RemoteSequenceManager(dht, config.dht_prefix, config.num_hidden_layers,
                                        ClientConfig(max_retries=0, connect_timeout=5, request_timeout=30))
        first_span, second_span = manager.make_route(0, 4)
        full_budget = _cache_free(manager, first_span)
        yield Faults(swarm, first, second, dht, manager, first_span, second_span, config.dht_prefix, original,
                     converted, identity, full_budget)
    finally:
        swarm.stop()


# ---- helpers --------------------------------------------------------------------------------------

def _session(faults: Faults, span: RemoteSpanInfo, max_length: int):
    return RemoteSequential(faults.manager, HIDDEN, span.start, span.end).inference_session(max_length)


def _stub(faults: Faults, span: RemoteSpanInfo):
    return handler_stub(faults.manager, span.peer_id)


def _cache_free(manager: RemoteSequenceManager, span: RemoteSpanInfo) -> int:
    return cache_free_bytes(manager.loop.run(manager.get_p2p()), [span])[0]


def _wait_until(condition, timeout: float, period: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period)
    return condition()


def _opening(faults: Faults, span: RemoteSpanInfo, tokens: int, max_length: int) -> runtime_pb2.ExpertRequest:
    uid = " ".join(f"{faults.prefix}.{index}" for index in range(span.start, span.end))
    return runtime_pb2.ExpertRequest(uid=uid, tensors=serialize_tensors([torch.randn(1, tokens, HIDDEN)]),
                                     metadata=pack_metadata({"max_length": max_length}))


async def _listen(stub, opening: runtime_pb2.ExpertRequest) -> list[tuple[float, runtime_pb2.ExpertResponse]]:
    """Open an inference session with ``opening``, send nothing more, and collect (time, answer) pairs until the
    server ends the stream."""
    outgoing: asyncio.Queue = asyncio.Queue()
    await outgoing.put(opening)

    async def requests():
        while (request := await outgoing.get()) is not None:
            yield request

    answers = []
    try:
        async for answer in await stub.rpc_inference(requests()):
            answers.append((time.monotonic(), answer))
            if unpack_metadata(answer.metadata).get("error"):
                await outgoing.put(None)  # the server has ended this session; end our side too
    except ConnectionError:
        pass  # the server closed the stream before our goodbye reached it
    return answers


def _error_of(answer: runtime_pb2.ExpertResponse) -> dict:
    return unpack_metadata(answer.metadata).get("error") or {}


def _local_span(faults: Faults, start: int, end: int):
    local = AutoModelForCausalLM.from_pretrained(faults.original).eval()
    return get_family("llama").make_span(local.config, list(local.model.layers[start:end]), start)


# ---- identity ------------------------------------------------------------------------------------

def test_the_server_created_its_identity_file_owner_only(faults):
    """``--identity_path`` of a file that does not exist yet: the server creates it (``run_dht`` creates its
    own the same way, see tests/core/test_identity_file.py) readable by its owner only."""
    mode = stat.S_IMODE(os.stat(faults.server_identity).st_mode)
    assert mode == 0o600, f"the server's identity file is {oct(mode)}"
    peer_id = PeerID.from_identity(faults.server_identity.read_bytes()).to_base58()
    assert peer_id == faults.first_span.peer_id and any(peer_id in line for line in faults.first.lines)


# ---- request limits -------------------------------------------------------------------------------

def test_requests_over_the_configured_limits_are_refused(faults):
    span = faults.first_span
    with pytest.raises(InvalidRequestError, match=r"batch size 5 is over this server's limit of 4"):
        call_one(faults.manager, span, "rpc_forward", [torch.randn(5, 1, HIDDEN)])
    with pytest.raises(InvalidRequestError, match=r"tensor 0: 5120 elements is over this server's limit of 4096; "
                                                  r"send smaller batches"):  # 80 tokens of 64 values; 64 tokens allowed
        call_one(faults.manager, span, "rpc_forward", [torch.randn(2, 40, HIDDEN)])

    # a stream message larger than the server takes is refused from its header, before its payload is read
    limit = (2 + span.end - span.start) * MAX_TOKENS * HIDDEN * 4 + 128 * 1024
    oversized = runtime_pb2.ExpertRequest(uid=f"{faults.prefix}.0", metadata=b"\x80", tensors=[
        runtime_pb2.Tensor(buffer=bytes(limit), size=[1, limit // (4 * HIDDEN), HIDDEN], dtype="float32")])
    answers = faults.manager.loop.run(_listen(_stub(faults, span), oversized), timeout=30)
    assert len(answers) == 1
    error = _error_of(answers[0][1])
    assert error["code"] == "invalid_request" and error["message"].startswith(
        f"a message of {oversized.ByteSize()} bytes is over this server's limit of {limit} bytes")
    probe = torch.randn(1, 3, HIDDEN)
    assert call_one(faults.manager, span, "rpc_forward", [probe]).shape == probe.shape  # and it serves on


# ---- the KV-cache budget -------------------------------------------------------------------------

def test_a_session_over_the_budget_waits_for_room(faults):
    with _session(faults, faults.first_span, 32) as holder:  # 32 of the 48 tokens
        holder.step(torch.randn(1, 2, HIDDEN))
        result: dict = {}

        def second_session() -> None:
            began = time.monotonic()
            try:
                with _session(faults, faults.first_span, 32) as waiting:
                    result["output"] = waiting.step(torch.randn(1, 3, HIDDEN))
            except Exception as error:  # reported below
                result["error"] = error
            result["seconds"] = time.monotonic() - began

        waiter = threading.Thread(target=second_session)
        waiter.start()
        time.sleep(0.7)
        assert waiter.is_alive(), f"the second session did not wait for room: {result}"
    waiter.join(timeout=30)  # the holder closed above: the waiting session gets its room
    assert "error" not in result, result
    assert result["output"].shape == (1, 3, HIDDEN) and result["seconds"] < ALLOC_TIMEOUT + 5
    assert _wait_until(lambda: _cache_free(faults.manager, faults.first_span) == faults.full_budget, 10)


def test_a_session_that_finds_no_room_in_time_gets_server_full(faults):
    with _session(faults, faults.first_span, 40) as holder:
        holder.step(torch.randn(1, 2, HIDDEN))
        began = time.monotonic()
        with pytest.raises(ServerFullError, match=r"server full: .* needed, .* free after waiting 3 s; "
                                                  r"try another server or later"):
            with _session(faults, faults.first_span, 16) as refused:
                refused.step(torch.randn(1, 1, HIDDEN))
        assert time.monotonic() - began >= ALLOC_TIMEOUT - 0.5
        assert holder.step(torch.randn(1, 1, HIDDEN)).shape == (1, 1, HIDDEN)  # the holder is undisturbed


def test_an_idle_session_is_closed_and_its_cache_freed(faults):
    stub = _stub(faults, faults.first_span)
    future = faults.manager.loop.submit(_listen(stub, _opening(faults, faults.first_span, 2, CACHE_TOKENS)))
    assert _wait_until(lambda: _cache_free(faults.manager, faults.first_span) == 0, 10), "the session never opened"
    opened = time.monotonic()
    answers = future.result(timeout=IDLE_TIMEOUT + 30)
    assert len(answers) == 2 and answers[0][1].tensors, answers
    closed_at, closing = answers[1]
    assert _error_of(closing) == {"code": "session_expired",
                                  "message": "session idle for over 6 s; closed and its cache freed"}
    assert IDLE_TIMEOUT - 1 <= closed_at - opened <= IDLE_TIMEOUT + 10
    assert _wait_until(lambda: _cache_free(faults.manager, faults.first_span) == faults.full_budget, 10)


def test_a_client_session_left_idle_too_long_is_reopened_and_replayed(faults, caplog):
    torch.manual_seed(5)
    steps = [torch.randn(1, 3, HIDDEN), torch.randn(1, 1, HIDDEN), torch.randn(1, 1, HIDDEN)]
    with _session(faults, faults.first_span, 16) as undisturbed:
        expected = [undisturbed.step(hidden) for hidden in steps]
    with _session(faults, faults.first_span, 16) as session:
        outputs = [session.step(steps[0]), session.step(steps[1])]
        time.sleep(IDLE_TIMEOUT + 2)  # the server closes the session and frees its cache meanwhile
        with caplog.at_level(logging.INFO, logger="core.client.inference_session"):
            outputs.append(session.step(steps[2]))  # reopened on the same server, history replayed, then this step
    assert "Blocks 0..1 reopened on 1 server(s) (SessionExpiredError); 4 tokens replayed" in caplog.text
    # before the expiry: the same server computing the same steps of a fresh session again
    for step, (output, reference) in enumerate(zip(outputs[:2], expected[:2])):
        assert_same_computation(output, reference, f"outputs of step {step}")
    # after it: the cache was rebuilt from one 4-token pass, not from steps of 3 and 1 tokens: the contract
    assert_matches_reference(outputs[2], expected[2], "outputs of the step after the replay")
    assert faults.first_span.peer_id not in faults.manager.banned()  # idleness is not a fault


# ---- faults ----------------------------------------------------------------------------------------

def test_swarm_keeps_working_after_the_bootstrap_peer_dies(faults):
    local = AutoModelForCausalLM.from_pretrained(faults.original).eval()
    prompt = torch.tensor([[7, 21, 3, 99, 14]])
    expected = reference_greedy(local, prompt, "greedy tokens", max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    connected = AutoDistributedModelForCausalLM.from_pretrained(str(faults.converted),
                                                                initial_peers=faults.swarm.initial_peers)
    newcomer = None
    try:
        assert torch.equal(connected.generate(prompt, max_new_tokens=6, eos_token_id=None), expected)
        faults.swarm.dht_process.kill()
        assert faults.swarm.dht_process.process.poll() is not None

        spans = connected.transformer_blocks.manager.update()  # a fresh DHT read, through the servers
        assert sorted((span.start, span.end) for span in spans) == [(0, 2), (2, 4)]
        assert torch.equal(connected.generate(prompt, max_new_tokens=6, eos_token_id=None), expected)

        server_address = parse_addresses(faults.first.lines)[0]
        newcomer = AutoDistributedModelForCausalLM.from_pretrained(str(faults.converted),
                                                                   initial_peers=[server_address])
        assert torch.equal(newcomer.generate(prompt, max_new_tokens=6, eos_token_id=None), expected)
    finally:
        connected.shutdown()
        if newcomer is not None:
            newcomer.shutdown()
    assert faults.first.process.poll() is None and faults.second.process.poll() is None


def test_sigterm_finishes_open_sessions_refuses_new_ones_and_exits_0(faults):
    server, span = faults.second, faults.second_span
    torch.manual_seed(11)
    hidden = torch.randn(1, 5, HIDDEN)
    with torch.no_grad():
        expected = _local_span(faults, 2, 4)(hidden)
    session = _session(faults, span, 16)
    outputs = [session.step(hidden[:, :3])]
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        def offline() -> bool:
            records = get_block_servers(faults.dht, faults.prefix, [2, 3])
            return all(blocks.get(span.peer_id) is not None and blocks[span.peer_id].state == ServerState.OFFLINE
                       for blocks in records)

        assert _wait_until(offline, 20), "the draining server still announces itself online"
        refusal = faults.manager.loop.run(_listen(_stub(faults, span), _opening(faults, span, 1, 8)), timeout=30)
        assert len(refusal) == 1 and _error_of(refusal[0][1]) == {
            "code": "server_full", "message": "this server is shutting down and takes no new sessions; "
                                              "use another server"}
        probe = torch.randn(1, 2, HIDDEN)
        assert call_one(faults.manager, span, "rpc_forward", [probe]).shape == probe.shape  # stateless calls still served

        outputs.append(session.step(hidden[:, 3:4]))  # the open session goes on...
        outputs.append(session.step(hidden[:, 4:5]))
        assert_matches_reference(torch.cat(outputs, dim=1), expected, "session steps across a SIGTERM")
        assert server.process.poll() is None, "the server exited with a session still open"
        session.close()  # ...and once it ends, the server stops at once
        session = None
        assert server.process.wait(20) == 0, server.tail()
        assert time.monotonic() - signalled < SECOND_SHUTDOWN_TIMEOUT
    finally:
        if session is not None:
            session.close()
        server.kill()
    output = "\n".join(server.lines)
    assert "Waiting up to 60 s for 1 open inference session(s) to finish" in output
    assert "Server stopped." in output and "Traceback" not in output


def test_sigterm_cuts_sessions_still_open_after_the_shutdown_timeout(faults):
    server, span = faults.first, faults.first_span
    session = _session(faults, span, 16)
    try:
        session.step(torch.randn(1, 2, HIDDEN))
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(FIRST_SHUTDOWN_TIMEOUT + 20) == 0, server.tail()
        assert time.monotonic() - signalled >= FIRST_SHUTDOWN_TIMEOUT - 0.5
        with pytest.raises(BlossomError):
            session.step(torch.randn(1, 1, HIDDEN))
    finally:
        session.close()
        server.kill()
    output = "\n".join(server.lines)
    assert "1 inference session(s) still open after 3 s; closing them" in output
    assert "Server stopped." in output and "Traceback" not in output
