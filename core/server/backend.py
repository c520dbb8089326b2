"""One span of blocks on one device: validates tensors against the blocks and runs them."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache

from core.errors import InvalidRequestError, SequenceTooLongError
from core.models.ragged import RaggedBatch, RaggedStep, remember_lengths, restore_lengths
from core.wire import check_prompts_shape

logger = logging.getLogger(__name__)

HIDDEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SpanLimits:
    """Request limits a server enforces."""

    max_batch_size: int
    max_tokens_per_request: int
    max_length: int


def kv_bytes_per_token(config: PretrainedConfig, num_blocks: int, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in ``num_blocks`` blocks of this model."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = torch.empty(0, dtype=dtype).element_size()
    return 2 * kv_heads * head_dim * element * num_blocks


class SpanBackend:
    """Blocks ``[start, end)`` of one model, loaded on ``device`` in ``dtype``.

    All compute methods are synchronous and meant to run on the server's single compute thread.
    Block indices in arguments are absolute (as in the DHT keys).
    """

    def __init__(
        self,
        config: PretrainedConfig,
        span: nn.Module,
        start: int,
        end: int,
        dtype: torch.dtype,
        device: torch.device,
        limits: SpanLimits,
    ) -> None:
        self.config = config
        self.span = span
        self.start, self.end = start, end
        self.dtype, self.device = dtype, device
        self.limits = limits
        self.hidden_size = config.hidden_size

    def _active(self, start: int, end: int) -> slice:
        return slice(start - self.start, end - self.start)

    def check_hidden(self, tensor: torch.Tensor, name: str = "hidden_states") -> None:
        """Raise :class:`InvalidRequestError` unless ``tensor`` is a finite ``[batch, seq, hidden]`` float tensor."""
        if tensor.dtype not in HIDDEN_DTYPES:
            raise InvalidRequestError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
        if tensor.dim() != 3 or tensor.shape[-1] != self.hidden_size:
            raise InvalidRequestError(
                f"{name} must have shape [batch, seq_len, {self.hidden_size}], got {list(tensor.shape)}"
            )
        batch, seq_len, _ = tensor.shape
        if batch < 1 or seq_len < 1:
            raise InvalidRequestError(f"{name} is empty: shape {list(tensor.shape)}")
        if batch > self.limits.max_batch_size:
            raise InvalidRequestError(f"batch size {batch} is over this server's limit of {self.limits.max_batch_size}")
        if batch * seq_len > self.limits.max_tokens_per_request:
            raise InvalidRequestError(
                f"{batch * seq_len} tokens in one request is over this server's limit of "
                f"{self.limits.max_tokens_per_request}; split the batch or the sequence"
            )
        if not _all_finite(tensor):
            raise InvalidRequestError(f"{name} contains NaN or Inf values")

    def check_prompts(self, prompts: torch.Tensor, hidden: torch.Tensor, start: int, end: int) -> None:
        """Raise :class:`InvalidRequestError` unless ``prompts`` fits ``[end - start, batch, p <= seq, hidden]``."""
        if prompts.dtype not in HIDDEN_DTYPES:
            raise InvalidRequestError(f"prompts must be float32, float16 or bfloat16, got {prompts.dtype}")
        check_prompts_shape(prompts, hidden, end - start)
        if not _all_finite(prompts):
            raise InvalidRequestError("prompts contain NaN or Inf values")

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=self.dtype)

    def _run(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        prompts: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        past_length: int = 0,
    ) -> torch.Tensor:
        """Blocks ``[start, end)`` on device tensors; with ``prompts``, block ``i`` first gets ``prompts[i]`` added
        to its input's first positions (one span call per block, since the addition sits between blocks)."""
        if prompts is None:
            return self.span(hidden, cache=cache, past_length=past_length, active=self._active(start, end))
        for offset, index in enumerate(range(start, end)):
            hidden = _add_prompt(hidden, prompts[offset])
            hidden = self.span(hidden, cache=cache, past_length=past_length, active=self._active(index, index + 1))
        return hidden

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, start: int, end: int, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Run blocks ``[start, end)`` on a whole sequence without a cache (adding ``prompts`` if given)."""
        device_prompts = None if prompts is None else self._to_device(prompts)
        output = self._run(self._to_device(hidden), start, end, device_prompts)
        return output.to(device="cpu", dtype=hidden.dtype)

    def backward(
        self, hidden: torch.Tensor, grad_output: torch.Tensor, start: int, end: int, prompts: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Gradients of ``<blocks(hidden), grad_output>`` with respect to ``hidden`` (and ``prompts`` if given)."""
        if grad_output.shape != hidden.shape:  # before computing anything
            raise InvalidRequestError(
                f"grad_outputs shape {list(grad_output.shape)} must equal the inputs' shape {list(hidden.shape)}"
            )
        inputs = self._inputs_requiring_grad(hidden, prompts)
        with torch.enable_grad():
            output = self._run(inputs[0], start, end, inputs[1] if prompts is not None else None)
        return self.backward_from_graph(inputs, output, grad_output, [hidden] if prompts is None else [hidden, prompts])

    def forward_keeping_graph(
        self, hidden: torch.Tensor, start: int, end: int, prompts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, int]:
        """:meth:`forward` that keeps autograd's graph for :meth:`backward_from_graph` (training without recompute).

        Returns the output on the CPU, the device inputs (requiring grad), the device output and the
        bytes the graph holds beyond the weights (the activations autograd saved, inputs and output).
        """
        inputs = self._inputs_requiring_grad(hidden, prompts)
        weights = self._weight_storages()
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = self._run(inputs[0], start, end, inputs[1] if prompts is not None else None)
        for tensor in (*inputs, output):
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return output.detach().to(device="cpu", dtype=hidden.dtype), inputs, output, sum(saved.values())

    def backward_from_graph(
        self, inputs: list[torch.Tensor], output: torch.Tensor, grad_output: torch.Tensor, like: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Gradients w.r.t. ``inputs`` of a graph kept by :meth:`forward_keeping_graph`, as CPU tensors shaped and
        typed like ``like`` (what the client sent)."""
        if grad_output.shape != output.shape:
            raise InvalidRequestError(
                f"grad_outputs shape {list(grad_output.shape)} must equal the inputs' shape {list(output.shape)}"
            )
        grads = torch.autograd.grad(output, inputs, self._to_device(grad_output))
        return [grad.to(device="cpu", dtype=original.dtype) for grad, original in zip(grads, like, strict=False)]

    def _inputs_requiring_grad(self, hidden: torch.Tensor, prompts: torch.Tensor | None) -> list[torch.Tensor]:
        """Device copies of what the client sent, as the leaves a backward differentiates against."""
        inputs = [self._to_device(hidden).detach().requires_grad_(True)]
        if prompts is not None:
            inputs.append(self._to_device(prompts).detach().requires_grad_(True))
        return inputs

    def _weight_storages(self) -> set[int]:
        """Addresses of the span's parameter and buffer storages (what a kept graph shares, not holds)."""
        if getattr(self, "_weights", None) is None:
            self._weights = {t.untyped_storage().data_ptr() for t in (*self.span.parameters(), *self.span.buffers())}
        return self._weights

    @torch.inference_mode()
    def inference_step(
        self,
        hidden: torch.Tensor,
        cache: DynamicCache,
        past_length: int,
        start: int,
        end: int,
        prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run blocks ``[start, end)`` on new tokens, reading and extending the session's ``cache``
        (adding ``prompts`` to the first positions of these tokens if given)."""
        device_prompts = None if prompts is None else self._to_device(prompts)
        output = self._run(self._to_device(hidden), start, end, device_prompts, cache, past_length)
        return output.to(device="cpu", dtype=hidden.dtype)

    @torch.inference_mode()
    def inference_batch(self, steps: list[RaggedStep], start: int, end: int) -> list[torch.Tensor | Exception]:
        """Several sessions' steps (CPU tensors, already checked) through blocks ``[start, end)`` as one batch,
        each reading and extending its own cache; returns each step's outputs, or the error that step alone met.

        Spans without ``forward_ragged`` run the steps one by one. A batch that fails as a whole (say, out of
        memory) has every cache restored and runs its steps one by one, so one bad step fails alone.
        """
        if len(steps) == 1 or not hasattr(self.span, "forward_ragged"):
            return [self._step_alone(step, start, end) for step in steps]
        lengths = remember_lengths(steps)
        try:
            batch = RaggedBatch([RaggedStep(self._to_device(step.hidden), step.cache, step.past_length,
                                            None if step.prompts is None else self._to_device(step.prompts))
                                 for step in steps])
            outputs = batch.split(self.span.forward_ragged(batch, self._active(start, end)))
        except Exception:
            logger.warning("A batch of %d inference steps failed; running them one by one", len(steps), exc_info=True)
            restore_lengths(steps, lengths)
            return [self._step_alone(step, start, end) for step in steps]
        return [output.to(device="cpu", dtype=step.hidden.dtype) for output, step in zip(outputs, steps)]

    def _step_alone(self, step: RaggedStep, start: int, end: int) -> torch.Tensor | Exception:
        try:
            return self.inference_step(step.hidden, step.cache, step.past_length, start, end, step.prompts)
        except Exception as error:
            return error

    def check_length(self, past_length: int, new_tokens: int, max_length: int) -> None:
        """Raise :class:`SequenceTooLongError` if a step would pass the session's ``max_length``."""
        if past_length + new_tokens > max_length:
            raise SequenceTooLongError(
                f"the session would hold {past_length + new_tokens} tokens but was opened with max_length={max_length}; "
                f"open a new session with a larger max_length (this server allows up to {self.limits.max_length})"
            )


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds no NaN or Inf. A NaN or Inf carries into the sum, so a finite sum settles it in one
    reduction (``isfinite(...).all()`` costs three torch calls, each worth microseconds on a decoding step); a sum
    that is not finite may also be finite values that overflowed it, so then each value is checked."""
    return math.isfinite(tensor.sum().item()) or bool(torch.isfinite(tensor).all())


def _add_prompt(hidden: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """``hidden`` ``[batch, seq, h]`` plus ``prompt`` ``[batch, p, h]`` at its first ``p`` positions (out of place)."""
    return hidden + torch.nn.functional.pad(prompt, (0, 0, 0, hidden.shape[1] - prompt.shape[1]))
