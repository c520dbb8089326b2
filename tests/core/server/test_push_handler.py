"""The server's side of push without a network: sessions filed by id take pushed steps (even ones that come
before the session's opening message), a step that arrives twice is computed again with the same output,
and a server started with ``push=False`` refuses pushes with a reason."""
from __future__ import annotations

import asyncio
import uuid

import pytest
import torch
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import runtime_pb2

from core.errors import InvalidRequestError
from core.server import push
from core.server.bounded_streams import QueuedRequests
from core.server.handler import BlockRequestHandler
from core.server.memory_cache import KVCacheBudget
from core.server.push import SessionDirectory
from core.server.stats import ServingStats
from core.wire import deserialize_tensors, pack_metadata, raise_if_error, serialize_tensors, unpack_metadata
from tests.numerics import assert_same_computation
from tests.tiny_models import tiny_span_backend

PREFIX = "unit"
HIDDEN = 64
CONTEXT = P2PContext(handle_name="test", local_id=PeerID(b"server"), remote_id=PeerID(b"client"))


def make_handler(push_enabled: bool = True) -> BlockRequestHandler:
    return BlockRequestHandler(tiny_span_backend(max_length=16), PREFIX, KVCacheBudget(2**24), 1.0, ServingStats(),
                               push=push_enabled)


def request(tensors: list[torch.Tensor], **metadata) -> runtime_pb2.ExpertRequest:
    return runtime_pb2.ExpertRequest(uid=f"{PREFIX}.0 {PREFIX}.1", tensors=serialize_tensors(tensors),
                                     metadata=pack_metadata(metadata))


def answer(response: runtime_pb2.ExpertResponse) -> tuple[torch.Tensor, dict]:
    metadata = raise_if_error(response, "unit")
    (output,) = deserialize_tensors(list(response.tensors), 10**6)
    return output, metadata


async def from_queue(queue: asyncio.Queue):
    while (item := await queue.get()) is not None:
        yield item


@pytest.mark.parametrize("client_stream", [from_queue, QueuedRequests], ids=["any iterator", "served stream"])
def test_pushed_steps_reach_a_session_opened_after_them_and_a_twice_sent_step_is_recomputed_alike(client_stream):
    """Pushed steps join the client's own: through a task that moves the client's steps into the session's inbox
    (any request iterator), or straight into the queue of a served stream (what production streams are)."""
    handler = make_handler()
    session_id = uuid.uuid4().hex
    torch.manual_seed(5)
    first, second = torch.randn(1, 3, HIDDEN), torch.randn(1, 1, HIDDEN)

    async def scenario() -> list[tuple[torch.Tensor, dict]]:
        pushes: asyncio.Queue = asyncio.Queue()
        client: asyncio.Queue = asyncio.Queue()
        for step, position in ((first, 0), (second, 3), (second, 3)):  # the last one arrives twice
            pushes.put_nowait(request([step], session_id=session_id, start_from_position=position))
        pushes.put_nowait(None)
        pushing = asyncio.create_task(anext(handler.rpc_push(from_queue(pushes), CONTEXT), None))
        await asyncio.sleep(0.05)  # the pushes wait for the session
        client.put_nowait(request([], max_length=8, batch_size=1, session_id=session_id))
        answers = []
        async for response in handler.rpc_inference(client_stream(client), CONTEXT):
            answers.append(answer(response))
            if len(answers) == 3:
                client.put_nowait(None)
        assert await pushing is None  # no refusal
        return answers

    answers = asyncio.run(scenario())
    assert [metadata["position"] for _, metadata in answers] == [3, 4, 4]
    assert_same_computation(answers[2][0], answers[1][0], "a step computed twice")
    handler.shutdown()


def test_a_push_for_a_session_never_opened_or_already_ended_is_refused_with_its_reason(monkeypatch):
    monkeypatch.setattr(push, "SESSION_WAIT_SECONDS", 0.2)
    directory = SessionDirectory()
    session_id = uuid.uuid4().hex
    message = runtime_pb2.ExpertRequest()
    with pytest.raises(InvalidRequestError, match="no session .* was opened"):
        asyncio.run(directory.deliver(session_id, message))

    async def ended() -> None:
        directory.register(session_id)
        directory.unregister(session_id)
        await directory.deliver(session_id, message)

    with pytest.raises(InvalidRequestError, match="has ended"):
        asyncio.run(ended())
    with pytest.raises(InvalidRequestError, match="already used"):
        directory.register(session_id)


def test_a_server_that_does_not_push_refuses_pushes_and_sessions_asking_for_them():
    handler = make_handler(push_enabled=False)

    async def first_answer(rpc, message: runtime_pb2.ExpertRequest) -> runtime_pb2.ExpertResponse:
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(message)
        queue.put_nowait(None)
        return await anext(rpc(from_queue(queue), CONTEXT))

    session_id = uuid.uuid4().hex
    opening = request([], max_length=8, batch_size=1, session_id=session_id)
    for rpc in (handler.rpc_inference, handler.rpc_push):
        response = asyncio.run(first_answer(rpc, opening))
        assert "--no_push" in unpack_metadata(response.metadata)["error"]["message"]
    handler.shutdown()
