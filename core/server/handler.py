"""The server's RPCs: parse and validate each request, then delegate compute to :class:`SpanBackend`.

Every failure is answered to the caller as an error response (see :mod:`core.wire`); nothing a
client sends can stop the server or disturb another client's session.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, TypeVar

import torch
from hivemind.p2p import P2PContext, ServicerBase
from hivemind.proto import runtime_pb2
from transformers.cache_utils import DynamicCache

from core.dht.schema import block_uid_index
from core.errors import BlossomError, InvalidRequestError, UnknownBlocksError
from core.server.backend import SpanBackend, kv_bytes_per_token
from core.server.memory_cache import KVCacheBudget
from core.server.stats import ServingStats
from core.wire import (
    combine_streamed_tensors,
    deserialize_tensors,
    error_response,
    split_tensors_for_streaming,
    tensor_response,
    unpack_metadata,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STREAM_MESSAGES = 4096


class BlockRequestHandler(ServicerBase):
    """hivemind servicer exposing one :class:`SpanBackend` to the swarm."""

    def __init__(
        self,
        backend: SpanBackend,
        dht_prefix: str,
        cache_budget: KVCacheBudget,
        alloc_timeout: float,
        stats: ServingStats,
        session_idle_timeout: float = 600.0,
    ) -> None:
        self.backend = backend
        self.dht_prefix = dht_prefix
        self.cache_budget = cache_budget
        self.alloc_timeout = alloc_timeout
        self.stats = stats
        self.session_idle_timeout = session_idle_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blossom-compute")
        self._max_elements = backend.limits.max_tokens_per_request * backend.hidden_size

    def shutdown(self) -> None:
        """Stop the compute thread (pending requests finish first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _compute(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _parse_span(self, uid: str) -> tuple[int, int]:
        """Turn ``'prefix.3 prefix.4'`` into the absolute range ``(3, 5)`` after checking it is served here."""
        if not isinstance(uid, str) or not uid.strip():
            raise InvalidRequestError("request has no block uids; name the blocks as 'PREFIX.INDEX PREFIX.INDEX ...'")
        try:
            parsed = [block_uid_index(part) for part in uid.split()]
        except ValueError as error:
            raise InvalidRequestError(str(error)) from None
        indices = [index for _, index in parsed]
        wrong_prefix = {prefix for prefix, _ in parsed if prefix != self.dht_prefix}
        if wrong_prefix:
            raise UnknownBlocksError(
                f"this server serves model '{self.dht_prefix}', not {sorted(wrong_prefix)}"
            )
        if indices != list(range(indices[0], indices[0] + len(indices))):
            raise InvalidRequestError(f"blocks must be consecutive and ascending, got {indices}")
        start, end = indices[0], indices[-1] + 1
        if start < self.backend.start or end > self.backend.end:
            raise UnknownBlocksError(
                f"blocks {start}..{end - 1} requested but this server holds {self.backend.start}..{self.backend.end - 1}"
            )
        return start, end

    def _read_tensors(self, protos: list[runtime_pb2.Tensor], expected: int) -> list[torch.Tensor]:
        tensors = deserialize_tensors(protos, self._max_elements)
        if len(tensors) != expected:
            raise InvalidRequestError(f"expected {expected} tensor(s), got {len(tensors)}")
        return tensors

    async def _run_forward(self, uid: str, protos: list[runtime_pb2.Tensor]) -> torch.Tensor:
        start, end = self._parse_span(uid)
        (hidden,) = self._read_tensors(protos, 1)
        self.backend.check_hidden(hidden)
        output = await self._compute(self.backend.forward, hidden, start, end)
        self.stats.record_request(hidden.shape[0] * hidden.shape[1])
        return output

    async def _run_backward(self, uid: str, protos: list[runtime_pb2.Tensor]) -> torch.Tensor:
        start, end = self._parse_span(uid)
        hidden, grad_output = self._read_tensors(protos, 2)
        self.backend.check_hidden(hidden)
        self.backend.check_hidden(grad_output, "grad_outputs")
        grad_input = await self._compute(self.backend.backward, hidden, grad_output, start, end)
        self.stats.record_request(hidden.shape[0] * hidden.shape[1])
        return grad_input

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Blocks' outputs for a whole sequence: tensors ``[hidden]`` -> ``[hidden]``."""
        return await self._answer(lambda: self._run_forward(request.uid, list(request.tensors)), context)

    async def rpc_backward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Gradient w.r.t. the inputs: tensors ``[hidden, grad_outputs]`` -> ``[grad_inputs]``."""
        return await self._answer(lambda: self._run_backward(request.uid, list(request.tensors)), context)

    async def rpc_forward_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """:meth:`rpc_forward` for messages too large for one unary call."""
        async for response in self._answer_stream(requests, self._run_forward, context):
            yield response

    async def rpc_backward_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """:meth:`rpc_backward` for messages too large for one unary call."""
        async for response in self._answer_stream(requests, self._run_backward, context):
            yield response

    async def _answer(self, compute: Callable, context: P2PContext) -> runtime_pb2.ExpertResponse:
        try:
            return tensor_response([await compute()])
        except Exception as error:
            return self._error(error, context)

    async def _answer_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], compute: Callable, context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        try:
            uid, parts = "", []
            received = 0
            async for request in requests:
                uid = uid or request.uid
                parts.extend(request.tensors)
                received += 1
                if received > MAX_STREAM_MESSAGES:
                    raise InvalidRequestError(f"stream of over {MAX_STREAM_MESSAGES} messages; send smaller requests")
            output = await compute(uid, combine_streamed_tensors(parts))
            for part in split_tensors_for_streaming([output]):
                yield runtime_pb2.ExpertResponse(tensors=[part])
        except Exception as error:
            yield self._error(error, context)

    def _error(self, error: Exception, context: P2PContext) -> runtime_pb2.ExpertResponse:
        if not isinstance(error, BlossomError):
            logger.exception("Unexpected failure serving %s from %s", context.handle_name, context.remote_id)
            error = BlossomError(f"internal server error ({type(error).__name__}: {error})")
        else:
            logger.info("Rejected a request from %s: %s", context.remote_id, error)
        self.stats.record_error()
        return error_response(error)

    async def rpc_inference(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """A streaming inference session that keeps the KV cache of its blocks.

        First message: ``uid``, metadata ``{"max_length": int}`` and tensors ``[hidden]``. Each later
        message: tensors ``[hidden]`` of the new tokens, optional metadata ``{"start_from_position": int}``
        to roll the cache back (used when a client replays history). Each answer: ``[hidden]``.
        """
        session_id = uuid.uuid4().hex[:8]
        try:
            first = await asyncio.wait_for(anext(requests), self.session_idle_timeout)
            start, end = self._parse_span(first.uid)
            metadata = unpack_metadata(first.metadata)
            max_length = metadata.get("max_length")
            if not isinstance(max_length, int) or not 0 < max_length <= self.backend.limits.max_length:
                raise InvalidRequestError(
                    f"max_length must be an integer in 1..{self.backend.limits.max_length}, got {max_length!r}"
                )
            (hidden,) = self._read_tensors(list(first.tensors), 1)
            self.backend.check_hidden(hidden)
            batch_size = hidden.shape[0]
            cache_bytes = batch_size * max_length * kv_bytes_per_token(self.backend.config, end - start, self.backend.dtype)
            async with self.cache_budget.reserve(cache_bytes, self.alloc_timeout):
                logger.debug("Session %s opened by %s: blocks %d..%d, max_length %d", session_id,
                             context.remote_id, start, end - 1, max_length)
                self.stats.sessions_open += 1
                try:
                    async for response in self._run_session(requests, first, start, end, max_length, batch_size):
                        yield response
                finally:
                    self.stats.sessions_open -= 1
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            yield self._error(InvalidRequestError(f"session idle for over {self.session_idle_timeout:.0f} s; closed"),
                              context)
        except Exception as error:
            yield self._error(error, context)

    async def _run_session(
        self,
        requests: AsyncIterator[runtime_pb2.ExpertRequest],
        request: runtime_pb2.ExpertRequest,
        start: int,
        end: int,
        max_length: int,
        batch_size: int,
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        cache = DynamicCache()
        position = 0
        while True:
            metadata = unpack_metadata(request.metadata) if position else {}
            rollback = metadata.get("start_from_position")
            if rollback is not None:
                if not isinstance(rollback, int) or not 0 <= rollback <= position:
                    raise InvalidRequestError(f"start_from_position must be in 0..{position}, got {rollback!r}")
                _truncate_cache(cache, position - rollback)
                position = rollback
            (hidden,) = self._read_tensors(list(request.tensors), 1)
            self.backend.check_hidden(hidden)
            if hidden.shape[0] != batch_size:
                raise InvalidRequestError(f"batch size changed from {batch_size} to {hidden.shape[0]} within a session")
            self.backend.check_length(position, hidden.shape[1], max_length)
            output = await self._compute(self.backend.inference_step, hidden, cache, position, start, end)
            position += hidden.shape[1]
            self.stats.record_request(batch_size * hidden.shape[1])
            yield tensor_response([output], position=position)
            request = await asyncio.wait_for(anext(requests, None), self.session_idle_timeout)
            if request is None:
                return


def _truncate_cache(cache: DynamicCache, tokens_to_remove: int) -> None:
    if tokens_to_remove <= 0:
        return
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.crop(-tokens_to_remove)

