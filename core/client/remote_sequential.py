"""``RemoteSequential``: a range of remote blocks used like a local ``nn.Module``, autograd included."""
from __future__ import annotations

import logging

import torch
from torch import nn

from core.client.inference_session import InferenceSession
from core.client.sequence_manager import RemoteSequenceManager, is_retriable
from core.dht.schema import RemoteSpanInfo
from core.errors import InvalidRequestError, RemoteCallError
from core.wire import check_prompts_shape

logger = logging.getLogger(__name__)


class RemoteSequential(nn.Module):
    """Blocks ``[start, end)`` of a model served by the swarm.

    ``forward`` sends hidden states through the chain of servers (gradients flow back through
    them); ``inference_session`` opens a KV-cached session for step-by-step generation;
    indexing (``seq[3]``, ``seq[2:5]``) gives sub-ranges.
    """

    def __init__(self, manager: RemoteSequenceManager, hidden_size: int, start: int = 0, end: int | None = None) -> None:
        super().__init__()
        self.manager = manager
        self.hidden_size = hidden_size
        self.start = start
        self.end = manager.total_blocks if end is None else end
        if not 0 <= self.start < self.end <= manager.total_blocks:
            raise IndexError(f"blocks {start}..{end} are outside the model's 0..{manager.total_blocks - 1}")

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, item: int | slice) -> "RemoteSequential":
        if isinstance(item, int):
            index = item + len(self) if item < 0 else item
            if not 0 <= index < len(self):
                raise IndexError(f"block {item} out of range for {len(self)} blocks")
            return RemoteSequential(self.manager, self.hidden_size, self.start + index, self.start + index + 1)
        first, last, step = item.indices(len(self))
        if step != 1 or first >= last:
            raise IndexError("only non-empty contiguous slices of remote blocks are supported")
        return RemoteSequential(self.manager, self.hidden_size, self.start + first, self.start + last)

    def extra_repr(self) -> str:
        return f"'{self.manager.dht_prefix}' blocks {self.start}..{self.end - 1}"

    def forward(self, hidden_states: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs of these blocks for ``hidden_states`` ``[batch, seq, hidden]``.

        ``prompts`` ``[num_blocks, batch, pre_seq_len, hidden]`` (deep prompt tuning): the servers add
        ``prompts[i]`` to the first ``pre_seq_len`` positions of block ``start + i``'s input, and
        gradients flow back into ``prompts`` too.
        """
        self._check(hidden_states)
        if prompts is not None:
            self._check_prompts(prompts, hidden_states)
        wants_grad = torch.is_grad_enabled() and (
            hidden_states.requires_grad or (prompts is not None and prompts.requires_grad))
        return _RemoteSequentialFunction.apply(hidden_states, prompts, self, wants_grad)

    def _check_prompts(self, prompts: torch.Tensor, hidden_states: torch.Tensor) -> None:
        check_prompts_shape(prompts, hidden_states, len(self))  # hidden_states already passed _check
        if not prompts.is_floating_point():
            raise InvalidRequestError(f"prompts must be a float tensor, got {prompts.dtype}")

    def _check(self, hidden_states: torch.Tensor) -> None:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise InvalidRequestError(
                f"hidden states must have shape [batch, seq_len, {self.hidden_size}], got {list(hidden_states.shape)}"
            )
        if not hidden_states.is_floating_point():
            raise InvalidRequestError(f"hidden states must be a float tensor, got {hidden_states.dtype}")

    def inference_session(self, max_length: int) -> InferenceSession:
        """A session keeping the KV cache of these blocks on the servers; use as a context manager."""
        return InferenceSession(self.manager, self.start, self.end, max_length)

    # ---- chain execution with retries ------------------------------------------------------
    def _span_prompts(self, prompts: torch.Tensor | None, span: RemoteSpanInfo) -> torch.Tensor | None:
        """The rows of ``prompts`` (indexed from ``self.start``) for the blocks of ``span``."""
        return None if prompts is None else prompts[span.start - self.start : span.end - self.start]

    def _call_span(
        self, span: RemoteSpanInfo, method: str, tensors: list[torch.Tensor], prompts: torch.Tensor | None,
        fields: dict | None = None,
    ) -> tuple[list[torch.Tensor], dict]:
        """One forward/backward call; deep prompts, if any, go along as an extra tensor flagged in the metadata.
        ``fields`` are more request metadata (kept graphs); returns the outputs and the answer's metadata."""
        metadata = dict(fields or {})
        if prompts is not None:
            metadata["prompts"] = True
            tensors = [*tensors, self._span_prompts(prompts, span).contiguous()]
        outputs, answered = self.manager.call(span, method, tensors, metadata or None)
        if prompts is None and len(outputs) != 1:
            raise RemoteCallError(f"server {span.peer_id} answered {len(outputs)} tensors to {method}, expected 1")
        if prompts is not None and len(outputs) != (2 if method == "rpc_backward" else 1):
            raise RemoteCallError(f"server {span.peer_id} answered {len(outputs)} tensor(s) to {method} with prompts; "
                                  f"it may run an older Blossom without prompt tuning")
        return outputs, answered

    def _run_forward(
        self, hidden: torch.Tensor, start: int, end: int, prompts: torch.Tensor | None = None,
        graph_ids: list[str | None] | None = None,
    ) -> tuple[torch.Tensor, list, list]:
        """Outputs of blocks ``[start, end)``, with the route taken and each hop's inputs.

        With a ``graph_ids`` list, each server is asked to keep its forward's graph for the backward
        (no recompute there); the ids it answers (or ``None``) are appended, one per hop of the route.
        """
        route: list[RemoteSpanInfo] = []
        inputs: list[torch.Tensor] = []
        position, attempts = start, 0
        while position < end:
            span = self.manager.make_route(position, end)[0]
            try:
                (output,), answered = self._call_span(span, "rpc_forward", [hidden], prompts,
                                                      None if graph_ids is None else {"keep_graph": True})
            except Exception as error:
                attempts = self._handle_failure(span, error, attempts)
                continue
            if graph_ids is not None:
                graph_ids.append(answered.get("graph_id") if isinstance(answered.get("graph_id"), str) else None)
            route.append(span)
            inputs.append(hidden)
            hidden, position, attempts = output, span.end, 0
        return hidden, route, inputs

    def _run_backward(
        self,
        grad: torch.Tensor,
        route: list,
        inputs: list,
        prompts: torch.Tensor | None = None,
        grad_prompts: torch.Tensor | None = None,
        graph_ids: list[str | None] | None = None,
    ) -> torch.Tensor:
        """Gradient w.r.t. the chain's input, replaying through other servers if a hop fails.

        With ``prompts``, each span's gradient for its rows of the prompts is written into ``grad_prompts``;
        ``graph_ids`` (one per hop, from the forward) name the graphs the servers kept.
        """
        graph_ids = graph_ids or [None] * len(route)
        for span, hidden, graph_id in zip(reversed(route), reversed(inputs), reversed(graph_ids), strict=False):
            grad = self._backward_range(hidden, grad, span, prompts, grad_prompts, graph_id)
        return grad

    def _backward_range(
        self,
        hidden: torch.Tensor,
        grad: torch.Tensor,
        span: RemoteSpanInfo,
        prompts: torch.Tensor | None,
        grad_prompts: torch.Tensor | None,
        graph_id: str | None = None,
    ) -> torch.Tensor:
        attempts = 0
        while True:
            try:
                outputs, _ = self._call_span(span, "rpc_backward", [hidden, grad], prompts,
                                             {"graph_id": graph_id} if graph_id else None)
                if grad_prompts is not None:
                    grad_prompts[span.start - self.start : span.end - self.start] = outputs[1]
                return outputs[0]
            except Exception as error:
                attempts = self._handle_failure(span, error, attempts)
            graph_id = None  # other servers have no graph of this forward
            # another route for the same blocks: recompute its hops' inputs, then go backward through them
            _, sub_route, sub_inputs = self._run_forward(hidden, span.start, span.end, prompts)
            if len(sub_route) == 1:
                span = sub_route[0]
                continue
            return self._run_backward(grad, sub_route, sub_inputs, prompts, grad_prompts)

    def _handle_failure(self, span: RemoteSpanInfo, error: Exception, attempts: int) -> int:
        """Ban the failed server and return the new attempt count, or raise if retrying is pointless."""
        if not is_retriable(error):
            raise error
        if attempts >= self.manager.config.max_retries:
            raise RemoteCallError(f"blocks {span.start}..{span.end - 1} failed {attempts + 1} times: {error}") from error
        self.manager.ban(span.peer_id, error)
        return attempts + 1


class _RemoteSequentialFunction(torch.autograd.Function):
    """Forward through the swarm; backward sends gradients back along the same route."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden: torch.Tensor, prompts: torch.Tensor | None, module: RemoteSequential, wants_grad: bool = False
    ) -> torch.Tensor:
        dtype = hidden.dtype
        sent_prompts = None if prompts is None else prompts.detach().cpu().to(dtype)
        graph_ids = [] if wants_grad else None  # a backward will follow: the servers keep their graphs for it
        output, route, inputs = module._run_forward(hidden.detach().cpu(), module.start, module.end, sent_prompts,
                                                    graph_ids)
        ctx.module, ctx.route, ctx.inputs, ctx.device = module, route, inputs, hidden.device
        ctx.graph_ids = graph_ids
        ctx.prompts = sent_prompts
        ctx.prompts_dtype = None if prompts is None else prompts.dtype
        return output.to(device=hidden.device, dtype=dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, None, None]:
        wants_prompts = ctx.prompts is not None and ctx.needs_input_grad[1]
        grad_prompts = torch.zeros_like(ctx.prompts) if wants_prompts else None
        grad = ctx.module._run_backward(
            grad_output.detach().cpu().contiguous(), ctx.route, ctx.inputs, ctx.prompts, grad_prompts, ctx.graph_ids
        )
        if grad_prompts is not None:
            grad_prompts = grad_prompts.to(device=ctx.device, dtype=ctx.prompts_dtype)
        return grad.to(device=ctx.device, dtype=grad_output.dtype), grad_prompts, None, None
