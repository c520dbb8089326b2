"""The numeric contract of Blossom, in one place: how close the distributed model's numbers must be to
Hugging Face transformers', and when they must be identical. Every parity test compares through here.

**The contract.** Float32 hidden states, logits and gradients of the distributed model equal those of
the local transformers model within

    |actual - expected| <= ATOL_SCALE * max|expected| + RTOL * |expected|    (elementwise)

with ``RTOL = ATOL_SCALE = 1e-4``, and greedy generation yields the very same tokens.

**Why the absolute part scales with the values.** A layer's output element is a sum of many products
(a matmul, a softmax's normaliser, an RMS/layer norm); float32 rounds each partial sum to ~6e-8 of its
own size, so the error of an element grows with the magnitude of the values summed into it, not with
the element's own value. An output near zero that came out of a sum of values near 10 carries an error
of the order of 10 * 1e-7 * (a few), which no purely relative tolerance admits. The largest value of
the tensor is a cheap, honest stand-in for "the magnitude of what was summed", so the absolute part is
a fixed fraction of it: a tensor of logits near 10 gets atol 1e-3, a gradient near 1e-2 gets 1e-6.

**Why two correct implementations differ at all.** The distributed model runs the same transformers
layers, but not necessarily the same kernels in the same order: a different CPU (Intel vs AMD, AVX512
vs AVX2 vs ``ATEN_CPU_CAPABILITY=default``), another thread count (servers run with one thread, the
test process with several), a batched pass vs single inference steps over a KV cache, a session
replayed in one pass after it expired, or blocks split across servers: each picks its own kernels and
summation order. Observed so far: relative differences of ~1e-6 and absolute ones of ~2e-5 on values
near 10. The contract sits well above that (so tests do not flip with the machine) and well below
any real bug (a wrong position, mask, prompt slice or weight moves values by 1e-2 and more).

**Exactness.** Bitwise equality (:func:`assert_same_computation`) is asserted only where the very
same computation runs twice: the same server computing the same input through the same path (same
shapes, same kernels) again, or the same process running identical weights through identical code.

**Greedy tokens** stay ``torch.equal``: the test then also proves, with :func:`assert_no_near_ties`
on the local model's scores, that no generated position had its top two logits so close that a
difference within the contract could pick the other token (:func:`reference_greedy` does both).
"""
from __future__ import annotations

from typing import Sequence

import torch

RTOL = 1e-4
ATOL_SCALE = 1e-4  # atol = ATOL_SCALE * max|expected|
MIN_TIE_MARGIN = 1e-3  # the smallest top-2 gap accepted in a greedy test, whatever the logits' size


def reference_tolerances(expected: torch.Tensor) -> tuple[float, float]:
    """``(rtol, atol)`` of the contract for a tensor compared with ``expected``."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    return RTOL, ATOL_SCALE * scale


def _differences(actual: torch.Tensor, expected: torch.Tensor) -> str:
    difference = (actual.double() - expected.double()).abs()
    if difference.numel() == 0:
        return "empty tensors"
    index = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
    relative = difference / expected.double().abs()
    relative = relative[expected != 0]
    max_relative = relative.max().item() if relative.numel() else float("nan")
    return (f"max abs difference {difference.max().item():.3g} at {index}, max rel difference {max_relative:.3g}, "
            f"max|expected| {expected.abs().max().item():.3g}")


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """``actual`` (the distributed model's) equals ``expected`` (transformers') within the contract:
    ``rtol=RTOL``, ``atol=ATOL_SCALE * max|expected|``. Same shape and dtype required; ``what`` names
    what was compared in the failure message."""
    actual, expected = actual.detach(), expected.detach()
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if not torch.isfinite(expected).all():
        raise AssertionError(f"{what}: the reference itself has NaN or Inf")
    rtol, atol = reference_tolerances(expected)
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol,
        msg=lambda message: (f"{what} differ beyond the numeric contract (rtol {rtol:g}, atol {atol:.3g} = "
                             f"{ATOL_SCALE:g} * max|expected|): {_differences(actual, expected)}\n{message}"),
    )


def assert_same_computation(actual: torch.Tensor, expected: torch.Tensor, what: str = "outputs") -> None:
    """Bitwise equality (atol=0, rtol=0). Only for the very same computation done twice: the same server
    computing the same input through the same path (same shapes, same kernels) again, or the same process
    running identical weights through identical code. Anything else (another process, thread count or
    CPU, single steps vs one pass, a replayed session) compares with :func:`assert_matches_reference`."""
    actual, expected = actual.detach(), expected.detach()
    torch.testing.assert_close(
        actual, expected, rtol=0, atol=0,
        msg=lambda message: (f"{what} should be bitwise identical (the same computation twice) but are not: "
                             f"{_differences(actual, expected) if actual.shape == expected.shape else ''}\n"
                             f"{message}"),
    )


def tie_margin(scores: torch.Tensor) -> float:
    """The smallest top-2 gap that no pair of score tensors within the contract can close: each of the two
    scores may move by ``atol + rtol * |score| <= (ATOL_SCALE + RTOL) * max|scores|`` towards the other;
    never below ``MIN_TIE_MARGIN``."""
    finite = scores[torch.isfinite(scores)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    return max(MIN_TIE_MARGIN, 2 * (ATOL_SCALE + RTOL) * scale)


def assert_no_near_ties(scores_per_step: Sequence[torch.Tensor] | torch.Tensor, what: str,
                        margin: float | None = None) -> None:
    """No greedy step picked its token by less than ``margin`` (default :func:`tie_margin`): the top two
    scores differ by at least that at every step, so two implementations within the contract must pick the
    same token. ``scores_per_step``: the scores the argmax was taken over (the local model's; after logits
    processors such as a repetition penalty), as transformers' ``generate(..., output_scores=True)``
    returns them (one ``[batch, vocab]`` tensor per step) or as one ``[batch, steps, vocab]`` tensor. On
    failure, pick another seed or prompt for the test: the greedy comparison would test rounding there."""
    scores = scores_per_step if isinstance(scores_per_step, torch.Tensor) else torch.stack(list(scores_per_step), 1)
    scores = scores.detach().float()
    margin = tie_margin(scores) if margin is None else margin
    top = scores.topk(2, dim=-1).values
    gaps = top[..., 0] - top[..., 1]
    smallest = gaps.min()
    if not smallest >= margin:
        row, step = (int(i) for i in torch.unravel_index(gaps.argmin(), gaps.shape))
        raise AssertionError(f"{what}: at step {step} of row {row} the top two scores are only {smallest.item():.3g} "
                             f"apart (margin {margin:.3g}): a difference within the numeric contract could flip that "
                             f"greedy token; use another seed or prompt in this test")


def reference_greedy(model, input_ids: torch.Tensor, what: str, **generate_kwargs) -> torch.Tensor:
    """Greedy tokens of the local transformers ``model`` (``generate`` with ``generate_kwargs``), after
    checking with :func:`assert_no_near_ties` that none of them was a near tie."""
    with torch.no_grad():
        output = model.generate(input_ids, do_sample=False, return_dict_in_generate=True, output_scores=True,
                                **generate_kwargs)
    assert_no_near_ties(output.scores, what)
    return output.sequences
