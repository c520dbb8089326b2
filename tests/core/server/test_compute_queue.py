"""The compute queue batches ready inference steps, chunks long prefills, puts training last, and keeps
one bad step from failing the others (core.server.compute_queue), on a real tiny Llama span."""
from __future__ import annotations

import asyncio
import copy
import threading
import time

import pytest
import torch
from transformers.cache_utils import DynamicCache

from core.server import compute_queue
from core.server.compute_queue import ComputeQueue
from core.server.stats import ServingStats
from tests.numerics import assert_matches_reference
from tests.tiny_models import tiny_span_backend

HIDDEN = 64


@pytest.fixture(scope="module")
def backend():
    return tiny_span_backend()


def _cache_after(backend, past: int, seed: int) -> DynamicCache:
    cache = DynamicCache()
    if past:
        history = torch.randn(1, past, HIDDEN, generator=torch.Generator().manual_seed(seed))
        backend.inference_step(history, cache, 0, 0, 2)
    return cache


def _alone(backend, hidden: torch.Tensor, cache: DynamicCache, past: int) -> torch.Tensor:
    return backend.inference_step(hidden, copy.deepcopy(cache), past, 0, 2)


async def _while_busy(queue: ComputeQueue, submit) -> tuple[list, list[str]]:
    """Hold the compute thread with a job, queue what ``submit`` queues, then let it go; returns the results and
    the order in which they finished (by name)."""
    release = threading.Event()
    blocker = asyncio.ensure_future(queue.run(release.wait, 10))
    await asyncio.sleep(0.05)  # the blocker is running
    order: list[str] = []
    tasks = []
    for name, coroutine in submit():
        async def tracked(name=name, coroutine=coroutine):
            result = await coroutine
            order.append(name)
            return result
        tasks.append(asyncio.ensure_future(tracked()))
    await asyncio.sleep(0.05)  # everything is queued behind the blocker
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await blocker
    return results, order


def _decoding_steps(queue: ComputeQueue, backend, caches: list[DynamicCache]):
    """What :func:`_while_busy` submits: one single-token step per session (cache), each after 3 tokens."""
    return lambda: [(f"step{index}", queue.step(backend, torch.randn(1, 1, HIDDEN), cache, 3, 0, 2))
                    for index, cache in enumerate(caches)]


def test_steps_that_wait_together_run_as_one_batch_with_their_own_numbers(backend):
    stats = ServingStats()
    queue = ComputeQueue(512, stats)
    pasts = [0, 3, 7, 1, 12]
    caches = [_cache_after(backend, past, seed) for seed, past in enumerate(pasts)]
    inputs = [torch.randn(1, 1 if past else 4, HIDDEN, generator=torch.Generator().manual_seed(50 + index))
              for index, past in enumerate(pasts)]
    expected = [_alone(backend, hidden, cache, past) for hidden, cache, past in zip(inputs, caches, pasts)]

    def submit():
        return [(f"step{index}", queue.step(backend, hidden, cache, past, 0, 2))
                for index, (hidden, cache, past) in enumerate(zip(inputs, caches, pasts))]

    try:
        results, _ = asyncio.run(_while_busy(queue, submit))
    finally:
        queue.close()
    assert stats.largest_batch == len(pasts) and stats.batches == 1
    for index, (result, reference) in enumerate(zip(results, expected)):
        assert_matches_reference(result, reference, f"step {index} in a batch")


def test_a_long_prefill_is_chunked_and_never_holds_the_single_token_steps(backend):
    stats = ServingStats()
    queue = ComputeQueue(8, stats)  # 8 tokens per batch: a 20-token prompt takes several batches
    decode_caches = [_cache_after(backend, 5, seed) for seed in range(3)]
    decodes = [torch.randn(1, 1, HIDDEN, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    prompt = torch.randn(1, 20, HIDDEN, generator=torch.Generator().manual_seed(9))
    prompts = torch.randn(2, 1, 11, HIDDEN, generator=torch.Generator().manual_seed(10))  # deep prompts past a chunk
    expected_prefill = backend.inference_step(prompt, DynamicCache(), 0, 0, 2, prompts)
    expected_decodes = [_alone(backend, hidden, cache, 5) for hidden, cache in zip(decodes, decode_caches)]
    prefill_cache = DynamicCache()

    def submit():
        yield "prefill", queue.step(backend, prompt, prefill_cache, 0, 0, 2, prompts)
        for index, (hidden, cache) in enumerate(zip(decodes, decode_caches)):
            yield f"decode{index}", queue.step(backend, hidden, cache, 5, 0, 2)

    try:
        results, order = asyncio.run(_while_busy(queue, submit))
    finally:
        queue.close()
    assert order[-1] == "prefill" and stats.batches == 3  # 3 decodes + 5 tokens of the prompt, then 8, then 7
    assert prefill_cache.get_seq_length(0) == 20
    assert_matches_reference(results[0], expected_prefill, "a chunked prefill with deep prompts")
    for index, (result, reference) in enumerate(zip(results[1:], expected_decodes)):
        assert_matches_reference(result, reference, f"decode {index} next to a chunked prefill")


@pytest.mark.parametrize("patience", [compute_queue.JOB_PATIENCE_SECONDS, 0.0])
def test_training_work_waits_for_inference_steps_unless_it_waited_long_enough(backend, monkeypatch, patience):
    monkeypatch.setattr(compute_queue, "JOB_PATIENCE_SECONDS", patience)  # 0: every job has waited long enough
    queue = ComputeQueue(512, ServingStats())
    cache = _cache_after(backend, 2, 0)

    def submit():
        yield "training", queue.run(backend.forward, torch.randn(1, 6, HIDDEN), 0, 2)
        yield "inference", queue.step(backend, torch.randn(1, 1, HIDDEN), cache, 2, 0, 2)

    try:
        _, order = asyncio.run(_while_busy(queue, submit))
    finally:
        queue.close()
    assert order == (["inference", "training"] if patience else ["training", "inference"])


def test_a_step_that_fails_inside_a_batch_fails_alone(backend):
    stats = ServingStats()
    queue = ComputeQueue(512, stats)
    good_caches = [_cache_after(backend, past, seed) for seed, past in enumerate([4, 6])]
    good = [torch.randn(1, 1, HIDDEN, generator=torch.Generator().manual_seed(seed)) for seed in range(2)]
    expected = [_alone(backend, hidden, cache, past) for hidden, cache, past in zip(good, good_caches, [4, 6])]
    broken = _cache_after(backend, 3, 7)
    for layer in broken.layers:  # a cache that no longer fits its session: the batch's attention fails on it
        layer.keys = layer.keys[..., :-1]

    def submit():
        yield "good0", queue.step(backend, good[0], good_caches[0], 4, 0, 2)
        yield "broken", queue.step(backend, torch.randn(1, 1, HIDDEN), broken, 3, 0, 2)
        yield "good1", queue.step(backend, good[1], good_caches[1], 6, 0, 2)

    try:
        results, _ = asyncio.run(_while_busy(queue, submit))
    finally:
        queue.close()
    assert isinstance(results[1], Exception)
    for index, (result, reference) in enumerate(zip([results[0], results[2]], expected)):
        assert_matches_reference(result, reference, f"good step {index} after a batch failed")
    assert [cache.get_seq_length(0) for cache in good_caches] == [5, 7]  # rolled back once, then extended once


def test_without_batching_each_step_runs_alone(backend):
    stats = ServingStats()
    queue = ComputeQueue(0, stats)
    caches = [_cache_after(backend, 3, seed) for seed in range(3)]

    try:
        results, order = asyncio.run(_while_busy(queue, _decoding_steps(queue, backend, caches)))
    finally:
        queue.close()
    assert order == ["step0", "step1", "step2"] and stats.largest_batch == 1 and stats.batches == 3
    assert all(isinstance(result, torch.Tensor) for result in results)


@pytest.mark.parametrize("case", ["overlapping", "ended", "one after another"])
def test_a_batch_waits_briefly_for_the_other_active_sessions(backend, case):
    """A step arriving just after another session's joins its batch while that session is active (it stepped
    recently and did not end) and sessions' steps have been overlapping; once the session ended, or while
    sessions step one after another (never at once), nothing waits for it."""
    stats = ServingStats()
    queue = ComputeQueue(512, stats)
    caches = [_cache_after(backend, 3, seed) for seed in range(2)]

    async def run() -> None:
        for cache in caches:  # both sessions step once: active, and the queue has timed a batch
            await queue.step(backend, torch.randn(1, 1, HIDDEN), cache, 3, 0, 2)
        queue._batch_seconds = 2.0  # as if batches took 2 s: waits of up to 0.5 s, quiet gaps of 0.1 s
        if case != "one after another":
            queue._overlap_until = time.monotonic() + 10  # as if a step had come while another computed
        if case == "ended":
            queue.forget(caches[1])
        first = asyncio.ensure_future(queue.step(backend, torch.randn(1, 1, HIDDEN), caches[0], 4, 0, 2))
        await asyncio.sleep(0.01)
        await queue.step(backend, torch.randn(1, 1, HIDDEN), caches[1], 4, 0, 2)
        await first

    try:
        asyncio.run(run())
    finally:
        queue.close()
    assert stats.batches == (3 if case == "overlapping" else 4)


def test_steps_that_come_while_another_computes_make_batches_gather(backend):
    stats = ServingStats()
    queue = ComputeQueue(512, stats)
    caches = [_cache_after(backend, 3, seed) for seed in range(2)]

    try:
        assert queue._overlap_until == 0.0
        asyncio.run(_while_busy(queue, _decoding_steps(queue, backend, caches)))
    finally:
        queue.close()
    assert queue._overlap_until > time.monotonic()


def test_a_prefill_in_parts_lets_steps_of_other_blocks_through(backend):
    """A long prompt on blocks 0..1 is split; a step on block 1 alone (another group, so another batch) runs
    after its first part, not after all of it."""
    stats = ServingStats()
    queue = ComputeQueue(8, stats)
    prompt = torch.randn(1, 20, HIDDEN, generator=torch.Generator().manual_seed(4))
    expected = backend.inference_step(prompt, DynamicCache(), 0, 0, 2)
    other = DynamicCache()

    def submit():
        yield "prefill", queue.step(backend, prompt, DynamicCache(), 0, 0, 2)
        yield "other blocks", queue.step(backend, torch.randn(1, 1, HIDDEN), other, 0, 1, 2)

    try:
        results, order = asyncio.run(_while_busy(queue, submit))
    finally:
        queue.close()
    assert order == ["other blocks", "prefill"] and stats.batches == 3  # 8 tokens, the other step, the last 12 (alone)
    assert_matches_reference(results[0], expected, "a prefill in parts")


def test_a_lone_prefill_runs_whole(backend):
    stats = ServingStats()
    queue = ComputeQueue(8, stats)
    prompt = torch.randn(1, 20, HIDDEN, generator=torch.Generator().manual_seed(5))
    try:
        output = asyncio.run(queue.step(backend, prompt, DynamicCache(), 0, 0, 2))
    finally:
        queue.close()
    assert stats.batches == 1
    assert_matches_reference(output, backend.inference_step(prompt, DynamicCache(), 0, 0, 2), "a lone prefill")


def _record_threads(backend, monkeypatch) -> list[str]:
    """The names of the threads ``backend``'s steps run on, in order, from now on."""
    threads: list[str] = []
    compute = backend.inference_batch

    def recording(*args):
        threads.append(threading.current_thread().name)
        return compute(*args)

    monkeypatch.setattr(backend, "inference_batch", recording)
    return threads


@pytest.mark.parametrize("short", [True, False])
def test_a_lone_sessions_short_decoding_steps_run_on_the_event_loop(backend, monkeypatch, short):
    """Handing a short step to the compute thread and back costs a share of it: a lone session's single-token
    steps run on the loop itself once one took under INLINE_SECONDS; a prefill, and steps that take longer, do
    not. The numbers are the same either way."""
    if not short:
        monkeypatch.setattr(compute_queue, "INLINE_SECONDS", 0.0)
    threads = _record_threads(backend, monkeypatch)
    queue = ComputeQueue(512, ServingStats())
    cache, reference_cache = DynamicCache(), DynamicCache()
    inputs = [torch.randn(1, 5 if index == 0 else 1, HIDDEN, generator=torch.Generator().manual_seed(60 + index))
              for index in range(4)]

    async def session() -> list[torch.Tensor]:
        outputs, past = [], 0
        for hidden in inputs:
            outputs.append(await queue.step(backend, hidden, cache, past, 0, 2))
            past += hidden.shape[1]
        return outputs

    try:
        outputs = asyncio.run(session())
    finally:
        queue.close()
    past = 0
    for hidden, output in zip(inputs, outputs):
        assert_matches_reference(output, backend.inference_step(hidden, reference_cache, past, 0, 2), "a step")
        past += hidden.shape[1]
    on_loop = [name == threading.main_thread().name for name in threads]
    # the prefill and the first decoding step (not timed yet) go to the compute thread
    assert on_loop == ([False, False, True, True] if short else [False] * 4)


def test_a_batch_size_not_timed_yet_runs_its_first_step_on_the_compute_thread(backend, monkeypatch):
    """How long a lone step takes is learned per batch size: a session of many rows that follows a one-row
    session does not run its first single-token step on the event loop (it may take far longer)."""
    monkeypatch.setattr(compute_queue, "INLINE_SECONDS", 10.0)  # any timed step counts as short here
    threads = _record_threads(backend, monkeypatch)
    queue = ComputeQueue(512, ServingStats())

    async def session(rows: int) -> None:
        cache, past = DynamicCache(), 0
        for length in (3, 1, 1):  # a prefill, then two decoding steps
            await queue.step(backend, torch.randn(rows, length, HIDDEN), cache, past, 0, 2)
            past += length
        queue.forget(cache)  # as the handler does when a session ends

    async def one_after_another() -> None:
        await session(1)
        await session(4)

    try:
        asyncio.run(one_after_another())
    finally:
        queue.close()
    on_loop = [name == threading.main_thread().name for name in threads]
    assert on_loop == [False, False, True, False, False, True]
