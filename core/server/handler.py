"""The server's RPCs: parse and validate each request, then delegate compute to :class:`SpanBackend`.

Every failure is answered to the caller as an error response (see :mod:`core.wire`); nothing a
client sends can stop the server or disturb another client's session.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import torch
from hivemind.p2p import P2P, P2PContext, ServicerBase
from hivemind.proto import runtime_pb2
from transformers.cache_utils import DynamicCache

from core import __version__
from core.dht.schema import block_uid_index
from core.errors import BlossomError, InvalidRequestError, ServerFullError, SessionExpiredError, UnknownBlocksError
from core.push_protocol import check_session_id, parse_route
from core.server.backend import SpanBackend, kv_bytes_per_token
from core.server.bounded_streams import make_bounded_stream_handler
from core.server.compute_queue import ComputeQueue
from core.server.graph_cache import GraphCache, KeptGraph
from core.server.memory_cache import KVCacheBudget
from core.server.push import Pusher, SessionDirectory
from core.server.stats import ServingStats
from core.wire import (
    MAX_METADATA_BYTES,
    combine_streamed_tensors,
    deserialize_tensors,
    error_response,
    pack_metadata,
    tensor_response,
    unpack_metadata,
)

logger = logging.getLogger(__name__)

MAX_STREAM_MESSAGES = 4096
MESSAGE_OVERHEAD_BYTES = MAX_METADATA_BYTES + 64 * 1024  # uid, metadata and protobuf framing around the tensors


@dataclass
class Answer:
    """Tensors to answer with, plus metadata for the caller (e.g. the id of a kept graph)."""

    tensors: list[torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, output: "Answer | torch.Tensor | list[torch.Tensor]") -> "Answer":
        if isinstance(output, Answer):
            return output
        return cls(output if isinstance(output, list) else [output])


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
        push: bool = True,
        batch_tokens: int = 512,
    ) -> None:
        self.backend = backend
        self.push = push  # take part in server-to-server push (core.push_protocol); announced as can_push
        self.dht_prefix = dht_prefix
        self.cache_budget = cache_budget
        self.alloc_timeout = alloc_timeout
        self.stats = stats
        self.session_idle_timeout = session_idle_timeout
        # one compute thread: sessions' steps batched, then training; a batch never holds more than a request may
        self.compute = ComputeQueue(min(batch_tokens, backend.limits.max_tokens_per_request), stats)
        self._max_elements = backend.limits.max_tokens_per_request * backend.hidden_size
        # the largest request: hidden states and gradients of max_elements each, plus deep prompts of up to
        # max_elements per block, all of 4-byte values (a move keeps the span's length, so this stays right)
        self.max_request_bytes = (2 + backend.end - backend.start) * self._max_elements * 4 + MESSAGE_OVERHEAD_BYTES
        self.draining = False
        self._sessions_ended = asyncio.Event()
        self.graphs = GraphCache(cache_budget)  # forward graphs kept for the backward that follows
        self.stream_handles: dict[str, Callable[..., Awaitable[None]]] = {}  # rpc name -> its registered stream handle
        self._p2p: P2P | None = None
        self.pushed_sessions = SessionDirectory()  # sessions whose inputs other servers push (core.server.push)
        self.pusher = Pusher(lambda: self._p2p)

    async def add_p2p_handlers(self, p2p: P2P, wrapper: Any = None, *, namespace: str | None = None,
                               balanced: bool = False) -> None:
        """Register every ``rpc_*``; streaming ones go through :mod:`core.server.bounded_streams`
        so that no stream message is read past :attr:`max_request_bytes`."""
        self._collect_rpc_handlers()
        self._p2p = p2p  # pushes to the next servers go out through it
        servicer = self if wrapper is None else wrapper
        registrations = []
        for rpc in self._rpc_handlers:
            name = self._get_handle_name(namespace, rpc.method_name)
            method = getattr(servicer, rpc.method_name)
            if rpc.stream_input:
                # the stream's own idle limit leaves the session's (measured after each answer) the first word
                handle = make_bounded_stream_handler(p2p, name, method, rpc.request_type, self.max_request_bytes,
                                                     self.session_idle_timeout + 5)
                self.stream_handles[rpc.method_name] = handle  # also served on direct connections
                registrations.append(p2p.add_binary_stream_handler(name, handle, balanced=balanced))
            else:  # unary messages are capped by the p2p daemon's message size limit
                registrations.append(p2p.add_protobuf_handler(name, method, rpc.request_type, balanced=balanced))
        await asyncio.gather(*registrations)

    def swap_backend(self, backend: SpanBackend) -> None:
        """Serve ``backend``'s blocks from now on and take new sessions again (after a move); sessions still
        on the old blocks end with a retriable error."""
        self.backend = backend
        self.draining = False

    def begin_draining(self) -> None:
        """Refuse new inference sessions (with a retriable "server full" error); open ones go on."""
        self.draining = True

    async def wait_for_sessions(self, timeout: float) -> bool:
        """Wait until no inference session is open; ``False`` if some are still open after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.stats.sessions_open > 0:
            self._sessions_ended.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._sessions_ended.wait(), remaining)
            except asyncio.TimeoutError:
                return self.stats.sessions_open == 0
        return True

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise ServerFullError("this server is shutting down and takes no new sessions; use another server")

    def shutdown(self) -> None:
        """Stop the compute thread (the computation in progress finishes first)."""
        self.compute.close()

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

    def _read_tensors(
        self, protos: list[runtime_pb2.Tensor], expected: int, max_elements: int | None = None
    ) -> list[torch.Tensor]:
        tensors = deserialize_tensors(protos, max_elements or self._max_elements)
        if len(tensors) != expected:
            raise InvalidRequestError(f"expected {expected} tensor(s), got {len(tensors)}")
        return tensors

    def _read_with_prompts(
        self, protos: list[runtime_pb2.Tensor], expected: int, metadata: dict | None, start: int, end: int
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The request's ``expected`` tensors, plus deep prompts (one more tensor, the last) when its
        metadata says ``{"prompts": true}``."""
        if not (metadata or {}).get("prompts"):
            return self._read_tensors(protos, expected), None
        tensors = self._read_tensors(protos, expected + 1, self._max_elements * (end - start))
        return tensors[:-1], tensors[-1]

    async def _run_forward(
        self, uid: str, protos: list[runtime_pb2.Tensor], metadata: dict | None = None, owner: str = ""
    ) -> Answer:
        start, end = self._parse_span(uid)
        (hidden,), prompts = self._read_with_prompts(protos, 1, metadata, start, end)
        backend = self.backend  # the one _parse_span checked, even if the server moves meanwhile
        backend.check_hidden(hidden)
        if prompts is not None:
            backend.check_prompts(prompts, hidden, start, end)
        if (metadata or {}).get("keep_graph"):  # a training forward: keep the graph for its backward
            output, inputs, device_output, nbytes = await self.compute.run(
                backend.forward_keeping_graph, hidden, start, end, prompts)
            sent = [hidden] if prompts is None else [hidden, prompts]
            graph_id = await self.graphs.put(KeptGraph(owner, backend, start, end, sent, inputs, device_output, nbytes))
            answer = Answer([output], {"graph_id": graph_id} if graph_id else {})
        else:
            answer = Answer([await self.compute.run(backend.forward, hidden, start, end, prompts)])
            self.stats.record_training()  # a forward with a graph is counted by its backward
        self.stats.record_request(hidden.shape[0] * hidden.shape[1])
        return answer

    async def _run_backward(
        self, uid: str, protos: list[runtime_pb2.Tensor], metadata: dict | None = None, owner: str = ""
    ) -> list[torch.Tensor]:
        start, end = self._parse_span(uid)
        (hidden, grad_output), prompts = self._read_with_prompts(protos, 2, metadata, start, end)
        backend = self.backend  # the one _parse_span checked, even if the server moves meanwhile
        backend.check_hidden(hidden)
        backend.check_hidden(grad_output, "grad_outputs")
        if prompts is not None:
            backend.check_prompts(prompts, hidden, start, end)
        sent = [hidden] if prompts is None else [hidden, prompts]
        graph = await self.graphs.take((metadata or {}).get("graph_id"), owner)
        if graph is not None and graph.matches(backend, start, end, sent):  # its forward was this one: no recompute
            grads = await self.compute.run(backend.backward_from_graph, graph.inputs, graph.output, grad_output, sent)
        else:
            grads = await self.compute.run(backend.backward, hidden, grad_output, start, end, prompts)
        self.stats.record_request(hidden.shape[0] * hidden.shape[1])
        self.stats.record_training()
        return grads

    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """What this server holds, answered at once (clients and servers time it as a ping).

        Any tensors sent along are ignored: peers send a payload to measure their upload speed.
        """
        del request, context
        return runtime_pb2.ExpertResponse(metadata=pack_metadata({
            "dht_prefix": self.dht_prefix, "start_block": self.backend.start, "end_block": self.backend.end,
            "cache_bytes_left": self.cache_budget.free_bytes, "version": __version__,
            "largest_batch": self.stats.largest_batch, "batches": self.stats.batches,
            "batched_steps": self.stats.batched_steps,
        }))

    async def rpc_info_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """:meth:`rpc_info` over a stream, one answer per request: how clients ping a server through a relay
        (relays carry streams, not hivemind's unary calls)."""
        async for request in requests:
            yield await self.rpc_info(request, context)

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Blocks' outputs for a whole sequence: tensors ``[hidden]`` -> ``[hidden]``.

        With metadata ``{"prompts": true}`` a last tensor ``[num_blocks, batch, pre_seq_len, hidden]`` follows;
        each block gets its row added to its input's first ``pre_seq_len`` positions (deep prompt tuning).
        """
        return await self._answer(lambda: self._run_forward(
            request.uid, list(request.tensors), unpack_metadata(request.metadata), str(context.remote_id)), context)

    async def rpc_backward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Gradient w.r.t. the inputs: tensors ``[hidden, grad_outputs]`` -> ``[grad_inputs]``.

        With metadata ``{"prompts": true}``: ``[hidden, grad_outputs, prompts]`` -> ``[grad_inputs, grad_prompts]``.
        """
        return await self._answer(lambda: self._run_backward(
            request.uid, list(request.tensors), unpack_metadata(request.metadata), str(context.remote_id)), context)

    async def rpc_forward_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """:meth:`rpc_forward` over a stream (faster for large tensors): one or more request messages (tensors may
        be split in parts), then one answer message."""
        async with aclosing(self._answer_stream(requests, self._run_forward, context)) as responses:
            async for response in responses:
                yield response

    async def rpc_backward_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """:meth:`rpc_backward` over a stream (faster for large tensors), as :meth:`rpc_forward_stream`."""
        async with aclosing(self._answer_stream(requests, self._run_backward, context)) as responses:
            async for response in responses:
                yield response

    async def _answer(self, compute: Callable, context: P2PContext) -> runtime_pb2.ExpertResponse:
        try:
            answer = Answer.of(await compute())
            return tensor_response(answer.tensors, **answer.metadata)
        except Exception as error:
            return self._error(error, context)

    async def _answer_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], compute: Callable, context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        try:
            uid, parts, metadata = "", [], None
            received = total_bytes = 0
            async for request in requests:
                uid = uid or request.uid
                metadata = unpack_metadata(request.metadata) if metadata is None else metadata
                parts.extend(request.tensors)
                received += 1
                total_bytes += sum(len(part.buffer) for part in request.tensors)
                if received > MAX_STREAM_MESSAGES:
                    raise InvalidRequestError(f"stream of over {MAX_STREAM_MESSAGES} messages; send smaller requests")
                if total_bytes > self.max_request_bytes:
                    raise InvalidRequestError(
                        f"the streamed tensors exceed this server's limit of {self.max_request_bytes} bytes; "
                        f"send fewer tokens per request"
                    )
            answer = Answer.of(await compute(uid, combine_streamed_tensors(parts), metadata, str(context.remote_id)))
            # the whole answer in one message: callers read one frame and close, without waiting for the stream's end
            yield tensor_response(answer.tensors, **answer.metadata)
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

        Server-to-server push (:mod:`core.push_protocol`): a first message with ``"session_id"`` files the
        session so that the previous server of a chain can push steps into it (:meth:`rpc_push`); without
        tensors it also names ``"batch_size"`` and the first step comes later. A step whose metadata has a
        ``"route"`` is pushed on to the route's first server after the blocks; its answer says ``"pushed"``.
        """
        local_id = uuid.uuid4().hex[:8]
        shared_id = None
        try:
            self._refuse_if_draining()
            first = await asyncio.wait_for(anext(requests), self.session_idle_timeout)
            start, end = self._parse_span(first.uid)
            metadata = unpack_metadata(first.metadata)
            max_length = metadata.get("max_length")
            if not _is_int(max_length) or not 0 < max_length <= self.backend.limits.max_length:
                raise InvalidRequestError(
                    f"max_length must be an integer in 1..{self.backend.limits.max_length}, got {max_length!r}"
                )
            if metadata.get("session_id") is not None:
                if not self.push:
                    raise InvalidRequestError("this server takes no pushed steps (it runs with --no_push); "
                                              "send it every step yourself")
                shared_id = check_session_id(metadata["session_id"])
            if first.tensors or shared_id is None:
                (hidden,), _ = self._read_with_prompts(list(first.tensors), 1, metadata, start, end)
                self.backend.check_hidden(hidden)
                batch_size = hidden.shape[0]
            else:  # opened ahead of its first step, which another server will push
                batch_size = metadata.get("batch_size")
                if not _is_int(batch_size) or not 0 < batch_size <= self.backend.limits.max_batch_size:
                    raise InvalidRequestError(f"batch_size must be an integer in 1..{self.backend.limits.max_batch_size}"
                                              f", got {batch_size!r}")
                first = None
            # pushed steps join the client's own in its stream's queue when it has one (no task moving them over)
            inbox = self.pushed_sessions.register(shared_id, getattr(requests, "queue", None)) \
                if shared_id is not None else None
            try:
                cache_bytes = batch_size * max_length * kv_bytes_per_token(self.backend.config, end - start,
                                                                           self.backend.dtype)
                await self.graphs.make_room(cache_bytes)  # inference before training: kept graphs give way
                async with self.cache_budget.reserve(cache_bytes, self.alloc_timeout):
                    self._refuse_if_draining()  # it may have started draining while this session waited for room
                    logger.debug("Session %s opened by %s: blocks %d..%d, max_length %d%s", local_id,
                                 context.remote_id, start, end - 1, max_length, " (takes pushes)" if inbox else "")
                    self.stats.sessions_open += 1
                    self.stats.record_session()
                    try:
                        # closed when this generator is (a cancelled stream), not left to the garbage collector
                        async with aclosing(self._run_session(requests, inbox, first, local_id, start, end,
                                                              max_length, batch_size)) as responses:
                            async for response in responses:
                                yield response
                    finally:
                        self.stats.sessions_open -= 1
                        self._sessions_ended.set()
            finally:
                if shared_id is not None:
                    self.pushed_sessions.unregister(shared_id)
                self.pusher.close(local_id)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            yield self._error(SessionExpiredError(
                f"session idle for over {self.session_idle_timeout:.0f} s; closed and its cache freed"), context)
        except Exception as error:
            yield self._error(error, context)

    async def rpc_push(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """Steps the previous server of a chain pushes into sessions here (:mod:`core.push_protocol`): each
        message is a step as a client sends it, with its session's ``"session_id"``. Answered only to refuse."""
        try:
            if not self.push:
                raise InvalidRequestError("this server takes no pushed steps (it runs with --no_push)")
            async for request in requests:
                session_id = check_session_id(unpack_metadata(request.metadata).get("session_id"))
                await self.pushed_sessions.deliver(session_id, request)
        except Exception as error:
            yield self._error(error, context)

    async def _run_session(
        self,
        requests: AsyncIterator[runtime_pb2.ExpertRequest],
        inbox: asyncio.Queue | None,
        request: runtime_pb2.ExpertRequest | None,
        local_id: str,
        start: int,
        end: int,
        max_length: int,
        batch_size: int,
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        cache = DynamicCache()
        backend = self.backend  # a server that moves to other blocks ends the sessions of its old ones
        position = 0
        pump = None
        if inbox is None:
            async def next_request() -> runtime_pb2.ExpertRequest | None:
                return await anext(requests, None)
        else:  # the client's own steps and the pushed ones meet in the inbox
            if inbox is not getattr(requests, "queue", None):
                pump = asyncio.create_task(_pump(requests, inbox))

            async def next_request() -> runtime_pb2.ExpertRequest | None:
                item = await inbox.get()
                if isinstance(item, Exception):
                    raise item
                return item
        try:
            if request is None:
                async with asyncio.timeout(self.session_idle_timeout):
                    request = await next_request()
            while request is not None:
                metadata = unpack_metadata(request.metadata)
                rollback = metadata.get("start_from_position")
                if rollback is not None:
                    if not _is_int(rollback) or not 0 <= rollback <= position:
                        raise InvalidRequestError(f"start_from_position must be in 0..{position}, got {rollback!r}")
                    _truncate_cache(cache, position - rollback)  # a step sent again (replay, or pushed twice)
                    position = rollback
                route = parse_route(metadata.get("route"))
                (hidden,), prompts = self._read_with_prompts(list(request.tensors), 1, metadata, start, end)
                self.backend.check_hidden(hidden)
                if prompts is not None:
                    self.backend.check_prompts(prompts, hidden, start, end)
                if hidden.shape[0] != batch_size:
                    raise InvalidRequestError(f"batch size changed from {batch_size} to {hidden.shape[0]} within a session")
                self.backend.check_length(position, hidden.shape[1], max_length)
                if self.backend is not backend:
                    raise UnknownBlocksError(f"this server moved to other blocks; blocks {start}..{end - 1} are served elsewhere")
                output = await self.compute.step(backend, hidden, cache, position, start, end, prompts)
                step_start, position = position, position + hidden.shape[1]
                self.stats.record_request(batch_size * hidden.shape[1])
                answer: dict[str, Any] = {"position": position}
                if route:
                    reason = await self.pusher.push(local_id, route[0], route[1:], output, step_start) if self.push \
                        else "this server does not push (--no_push)"
                    answer["pushed"] = reason is None
                    if reason is not None:
                        answer["push_error"] = reason[:500]
                yield tensor_response([output], **answer)
                async with asyncio.timeout(self.session_idle_timeout):  # no extra task per step, unlike wait_for
                    request = await next_request()
        finally:
            self.compute.forget(cache)
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)


async def _pump(requests: AsyncIterator[runtime_pb2.ExpertRequest], inbox: asyncio.Queue) -> None:
    """Move a client's steps into its session's inbox; then ``None`` (it said goodbye) or the stream's error."""
    try:
        async for request in requests:
            await inbox.put(request)
    except Exception as error:
        await inbox.put(error)
    else:
        await inbox.put(None)


def _is_int(value: object) -> bool:
    """An integer from msgpack metadata (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _truncate_cache(cache: DynamicCache, tokens_to_remove: int) -> None:
    if tokens_to_remove <= 0:
        return
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.crop(-tokens_to_remove)

