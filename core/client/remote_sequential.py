"""``RemoteSequential``: a range of remote blocks used like a local ``nn.Module``, autograd included."""
from __future__ import annotations

import logging

import torch
from torch import nn

from core.client.inference_session import InferenceSession
from core.client.sequence_manager import RemoteSequenceManager, is_retriable
from core.dht.schema import RemoteSpanInfo
from core.errors import InvalidRequestError, RemoteCallError

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

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        self._check(hidden_states)
        return _RemoteSequentialFunction.apply(hidden_states, self)

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
    def _run_forward(self, hidden: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, list, list]:
        """Outputs of blocks ``[start, end)``, with the route taken and each hop's inputs."""
        route: list[RemoteSpanInfo] = []
        inputs: list[torch.Tensor] = []
        position, attempts = start, 0
        while position < end:
            span = self.manager.make_route(position, end)[0]
            try:
                output = self.manager.call(span, "rpc_forward", [hidden])
            except Exception as error:
                attempts = self._handle_failure(span, error, attempts)
                continue
            route.append(span)
            inputs.append(hidden)
            hidden, position, attempts = output, span.end, 0
        return hidden, route, inputs

    def _run_backward(self, grad: torch.Tensor, route: list, inputs: list) -> torch.Tensor:
        """Gradient w.r.t. the chain's input, replaying through other servers if a hop fails."""
        for span, hidden in zip(reversed(route), reversed(inputs)):
            grad = self._backward_range(hidden, grad, span)
        return grad

    def _backward_range(self, hidden: torch.Tensor, grad: torch.Tensor, span: RemoteSpanInfo) -> torch.Tensor:
        attempts = 0
        while True:
            try:
                return self.manager.call(span, "rpc_backward", [hidden, grad])
            except Exception as error:
                attempts = self._handle_failure(span, error, attempts)
            # another route for the same blocks: recompute its hops' inputs, then go backward through them
            _, sub_route, sub_inputs = self._run_forward(hidden, span.start, span.end)
            if len(sub_route) == 1:
                span = sub_route[0]
                continue
            return self._run_backward(grad, sub_route, sub_inputs)

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
    def forward(ctx, hidden: torch.Tensor, module: RemoteSequential) -> torch.Tensor:  # type: ignore[override]
        dtype = hidden.dtype
        output, route, inputs = module._run_forward(hidden.detach().cpu(), module.start, module.end)
        ctx.module, ctx.route, ctx.inputs, ctx.device = module, route, inputs, hidden.device
        return output.to(device=hidden.device, dtype=dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = ctx.module._run_backward(grad_output.detach().cpu().contiguous(), ctx.route, ctx.inputs)
        return grad.to(device=ctx.device, dtype=grad_output.dtype), None
