"""The handler's RPCs called directly, without a network: answers, typed refusals, and a session that
keeps its KV cache (hivemind is only the transport; the handler is plain asyncio)."""
from __future__ import annotations

import asyncio

import pytest
import torch
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import runtime_pb2

from core.errors import InvalidRequestError, SequenceTooLongError, UnknownBlocksError
from core.server.handler import BlockRequestHandler
from core.server.memory_cache import KVCacheBudget
from core.server.stats import ServingStats
from core.wire import deserialize_tensors, pack_metadata, raise_if_error, serialize_tensors
from tests.numerics import assert_matches_reference, assert_same_computation
from tests.tiny_models import tiny_span_backend

PREFIX = "unit"
HIDDEN = 64
CONTEXT = P2PContext(handle_name="test", local_id=PeerID(b"server"), remote_id=PeerID(b"client"))


@pytest.fixture(scope="module")
def handler() -> BlockRequestHandler:
    backend = tiny_span_backend(max_length=16)
    handler = BlockRequestHandler(backend, PREFIX, KVCacheBudget(2**24), 1.0, ServingStats())
    yield handler
    handler.shutdown()


def request(tensors: list[torch.Tensor], uid: str = f"{PREFIX}.0 {PREFIX}.1", **metadata) -> runtime_pb2.ExpertRequest:
    return runtime_pb2.ExpertRequest(uid=uid, tensors=serialize_tensors(tensors),
                                     metadata=pack_metadata(metadata) if metadata else b"")


def answer(response: runtime_pb2.ExpertResponse) -> torch.Tensor:
    raise_if_error(response, "unit")
    (output,) = deserialize_tensors(list(response.tensors), 10**6)
    return output


def test_forward_answers_the_backends_outputs_and_refuses_bad_requests_with_their_reason(handler):
    hidden = torch.randn(2, 5, HIDDEN)
    output = answer(asyncio.run(handler.rpc_forward(request([hidden]), CONTEXT)))
    # exact: the handler delegates to the very same backend call
    assert_same_computation(output, handler.backend.forward(hidden, 0, 2, None), "forward outputs")
    with pytest.raises(UnknownBlocksError):
        answer(asyncio.run(handler.rpc_forward(request([hidden], uid=f"{PREFIX}.5"), CONTEXT)))
    with pytest.raises(InvalidRequestError, match="hidden"):
        answer(asyncio.run(handler.rpc_forward(request([torch.randn(2, 5, HIDDEN + 1)]), CONTEXT)))


def test_an_inference_session_keeps_its_cache_and_stops_at_its_max_length(handler):
    torch.manual_seed(3)
    hidden = torch.randn(1, 6, HIDDEN)

    async def session(steps: list[torch.Tensor], max_length: int) -> list[torch.Tensor]:
        async def requests():
            for number, step in enumerate(steps):
                yield request([step], **({"max_length": max_length} if number == 0 else {}))

        return [answer(response) async for response in handler.rpc_inference(requests(), CONTEXT)]

    outputs = asyncio.run(session([hidden[:, :4], hidden[:, 4:5], hidden[:, 5:6]], max_length=6))
    # a prefill and two single steps over the cache vs one pass: other kernels, so the contract
    assert_matches_reference(torch.cat(outputs, dim=1), handler.backend.forward(hidden, 0, 2, None), "session steps")
    assert handler.stats.sessions_open == 0 and handler.cache_budget.free_bytes == 2**24  # all given back
    with pytest.raises(SequenceTooLongError):
        asyncio.run(session([hidden[:, :4], hidden[:, 4:6]], max_length=5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hidden_states_are_refused_for_nan_or_inf_only_even_at_the_dtypes_largest_values(handler, dtype):
    backend = handler.backend
    largest = torch.full((1, 4, backend.hidden_size), torch.finfo(dtype).max, dtype=dtype)
    largest[0, 1] = -largest[0, 1]
    backend.check_hidden(largest)  # finite, though their sum overflows the dtype
    for bad in (float("nan"), float("inf"), float("-inf")):
        poisoned = largest.clone()
        poisoned[0, 2, 3] = bad
        with pytest.raises(InvalidRequestError, match="hidden_states contains NaN or Inf"):
            backend.check_hidden(poisoned)
