"""The server's one compute thread, and what it runs next.

Inference steps come first: whenever the thread is free, every step that is ready, from any
session, runs through the blocks as one batch (:meth:`SpanBackend.inference_batch`), up to a token
budget. Single-token steps go in first, up to three quarters of the budget while a longer step
waits; a long prefill fills the rest and continues in a later batch, so it holds the others' next
tokens for at most one batch. Training work (forward and backward passes) runs when no inference
step waits, or once it has waited :data:`JOB_PATIENCE_SECONDS`.

Before a batch, the queue waits briefly for the steps of other active sessions of the same blocks
(see :meth:`ComputeQueue._gather`), while sessions' steps overlap; a lone session's step starts at once,
and so does a lone prefill, whole.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, TypeVar

import torch
from transformers.cache_utils import DynamicCache

from core.models.ragged import RaggedStep
from core.server.backend import SpanBackend
from core.server.stats import ServingStats

logger = logging.getLogger(__name__)
T = TypeVar("T")

GATHER_FRACTION = 0.25
"""A batch waits for more steps at most this fraction of the last batch's compute time ..."""
QUIET_FRACTION = 0.05
"""... and stops waiting once no step arrived for this fraction of it (at least QUIET_SECONDS)."""
QUIET_SECONDS = 0.001
"""The shortest quiet gap."""
ACTIVE_SECONDS = 2.0
"""A session that stepped within this long (or four batches' time, if longer) counts as active."""
PREFILL_SHARE = 4
"""While a longer step waits, single-token steps take at most all but 1/PREFILL_SHARE of a batch's tokens."""
JOB_PATIENCE_SECONDS = 1.0
"""Training work that has waited this long runs before the next batch: inference first, but nothing starves."""
INLINE_SECONDS = 0.005
"""A lone session's single-token step runs at once on the event loop itself, while nothing else is queued or
computing, if such a step of its blocks and its batch size last took under this long: queueing it, handing it
to the compute thread and back cost about 0.1-0.2 ms, a large share of a short step. Longer steps, batches and
training work go to the compute thread, so the loop never stalls for long."""


def _group(backend: SpanBackend, start: int, end: int) -> tuple[int, int, int]:
    """The batching group of a step: steps batch together when they run the same blocks of the same backend."""
    return id(backend), start, end


@dataclass(eq=False)
class _PendingStep:
    """A session's inference step waiting for (the rest of) its compute."""

    backend: SpanBackend
    start: int
    end: int
    hidden: torch.Tensor
    cache: DynamicCache
    past_length: int
    prompts: torch.Tensor | None
    future: asyncio.Future
    done_tokens: int = 0
    outputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.hidden.shape[0]

    @property
    def remaining(self) -> int:
        return self.hidden.shape[1] - self.done_tokens

    @property
    def group(self) -> tuple[int, int, int]:
        """This step's batching group (:func:`_group`)."""
        return _group(self.backend, self.start, self.end)

    def chunk(self, length: int) -> RaggedStep:
        """The next ``length`` positions of this step as a step of its own."""
        begin, end = self.done_tokens, self.done_tokens + length
        prompts = None
        if self.prompts is not None and begin < self.prompts.shape[2]:
            prompts = self.prompts[:, :, begin:end]
        return RaggedStep(self.hidden[:, begin:end], self.cache, self.past_length + begin, prompts)


@dataclass(eq=False)
class _Job:
    function: Callable[..., Any]
    args: tuple
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class ComputeQueue:
    """Runs all of a server's compute on one thread: batched inference steps first, then other jobs.

    ``batch_tokens`` is the most tokens one batch holds (single-token steps count one per row); 0 runs
    each step alone and whole, in arrival order (no batching; training work still comes second).
    """

    def __init__(self, batch_tokens: int, stats: ServingStats) -> None:
        self.batch_tokens = batch_tokens
        self.stats = stats
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blossom-compute")
        self._steps: deque[_PendingStep] = deque()
        self._jobs: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._last_step: dict[int, tuple[float, tuple]] = {}  # id of a session's cache -> (last step's time, group)
        self._batch_seconds = 0.0  # how long the last batch took
        # (group, rows) -> how long the last lone single-token step of that group and batch size took
        self._lone_step_seconds: dict[tuple[tuple, int], float] = {}
        self._computing = False  # the compute thread is busy with a batch or a job
        self._overlap_until = 0.0  # until when batches gather: steps came while others waited or computed

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on the compute thread once no inference step waits (training work)."""
        job = _Job(function, args, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._notify()
        return await job.future

    async def step(
        self,
        backend: SpanBackend,
        hidden: torch.Tensor,
        cache: DynamicCache,
        past_length: int,
        start: int,
        end: int,
        prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One inference step of a session (already validated), computed in a batch with other sessions'
        ready steps; returns the outputs like :meth:`SpanBackend.inference_step`."""
        group, now = _group(backend, start, end), time.monotonic()
        self._last_step[id(cache)] = (now, group)
        if self._steps or self._computing:  # sessions step at the same time: worth gathering their steps
            self._overlap_until = now + max(ACTIVE_SECONDS, 4 * self._batch_seconds)
        lone_key = group, hidden.shape[0]  # lone steps are timed per group and batch size
        if (hidden.shape[1] == 1 and not (self._steps or self._jobs or self._computing)
                and self._lone_step_seconds.get(lone_key, math.inf) < INLINE_SECONDS
                and not self._others_active(group, {id(cache)}, now)):
            return self._step_here(backend, RaggedStep(hidden, cache, past_length, prompts), start, end, lone_key)
        pending = _PendingStep(backend, start, end, hidden, cache, past_length, prompts,
                               asyncio.get_running_loop().create_future())
        self._steps.append(pending)
        self._notify()
        return await pending.future

    def _step_here(self, backend: SpanBackend, step: RaggedStep, start: int, end: int,
                   lone_key: tuple[tuple, int]) -> torch.Tensor:
        """A lone session's short step, computed on the calling (event loop) thread (see INLINE_SECONDS); its time
        is kept under ``lone_key``."""
        began = time.monotonic()
        (result,) = backend.inference_batch([step], start, end)
        self._batch_seconds = self._lone_step_seconds[lone_key] = time.monotonic() - began
        self.stats.record_batch(1)
        if isinstance(result, Exception):
            raise result
        return result

    def forget(self, cache: DynamicCache) -> None:
        """The session owning ``cache`` ended: batches no longer wait for it."""
        self._last_step.pop(id(cache), None)

    def close(self) -> None:
        """Stop the compute thread (the computation in progress finishes first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _notify(self) -> None:
        """Wake the worker task, starting it on this event loop first if needed (and forgetting what callers on
        an event loop that is gone left queued)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            for queue in (self._steps, self._jobs):
                for item in [item for item in queue if item.future.get_loop() is not loop]:
                    queue.remove(item)
            self._wakeup = asyncio.Event()
            self._worker = asyncio.create_task(self._work(self._wakeup), name="blossom-compute-queue")
        assert self._wakeup is not None
        self._wakeup.set()

    async def _work(self, wakeup: asyncio.Event) -> None:
        while True:
            await wakeup.wait()
            wakeup.clear()
            while True:
                self._drop_abandoned()
                try:
                    if self._jobs and (not self._steps or
                                       time.monotonic() - self._jobs[0].queued_at >= JOB_PATIENCE_SECONDS):
                        await self._run_job(self._jobs.popleft())
                    elif self._steps:
                        await self._gather(wakeup)
                        self._drop_abandoned()  # steps whose session ended during the wait
                        if self._steps:
                            await self._run_batch()
                    else:
                        break
                except Exception as error:  # a bug here must not leave every session waiting forever
                    logger.exception("The compute queue failed; failing the steps waiting in it")
                    for pending in list(self._steps):
                        self._finish(pending, error=error)

    async def _gather(self, wakeup: asyncio.Event) -> None:
        """Give the other active sessions' steps a moment to arrive and join this batch.

        Steps of many sessions tend to arrive in bursts (a batch's outputs come back from the next server or
        the clients at about the same time); starting a batch on a burst's first step would split it. The wait
        ends when every active session is queued, when no step arrived for a short quiet gap, or at a fraction
        of the last batch's time. A lone session never waits, and neither do sessions that step one after another
        (no step arrived while another waited or computed lately): waiting for them would only add latency.
        """
        if self.batch_tokens <= 0 or self._batch_seconds <= 0 or time.monotonic() >= self._overlap_until:
            return
        deadline = time.monotonic() + GATHER_FRACTION * self._batch_seconds
        quiet = max(QUIET_SECONDS, QUIET_FRACTION * self._batch_seconds)
        while (now := time.monotonic()) < deadline and self._steps:
            group = self._steps[0].group
            same_group = [pending for pending in self._steps if pending.group == group]
            if sum(pending.rows * pending.remaining for pending in same_group) >= self.batch_tokens:
                return  # a full batch is waiting already
            if not self._others_active(group, {id(pending.cache) for pending in same_group}, now):
                return
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), min(quiet, deadline - now))
            except asyncio.TimeoutError:
                return

    def _others_active(self, group: tuple, queued: set[int], now: float) -> bool:
        """Whether a session of ``group`` that is not queued (not in ``queued``) is active: it stepped within
        :data:`ACTIVE_SECONDS`, or four batches' time if that is longer."""
        horizon = max(ACTIVE_SECONDS, 4 * self._batch_seconds)
        return any(key not in queued and step_group == group and now - last < horizon
                   for key, (last, step_group) in self._last_step.items())

    def _drop_abandoned(self) -> None:
        """Forget steps and jobs whose caller is gone (a session that ended, a client that left)."""
        for queue in (self._steps, self._jobs):
            for item in [item for item in queue if item.future.done()]:
                queue.remove(item)

    async def _run_job(self, job: _Job) -> None:
        try:
            result = await self._on_compute_thread(job.function, *job.args)
        except Exception as error:
            if not job.future.done():
                job.future.set_exception(error)
        else:
            if not job.future.done():
                job.future.set_result(result)

    async def _on_compute_thread(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        self._computing = True
        computation = self._executor.submit(function, *args)
        # cleared when the thread is done, even if this waiter is cancelled first: no inline step meanwhile
        computation.add_done_callback(partial(self._computation_done, loop))
        return await asyncio.wrap_future(computation, loop=loop)

    def _computation_done(self, loop: asyncio.AbstractEventLoop, _: object) -> None:
        """Called on the compute thread when a computation ends: the loop learns the thread is free."""
        try:
            loop.call_soon_threadsafe(setattr, self, "_computing", False)
        except RuntimeError:  # the loop is closed: nothing will run on it again
            pass

    async def _run_batch(self) -> None:
        taken = self._take_batch()
        first = taken[0][0]
        chunks = [pending.chunk(length) for pending, length in taken]
        began = time.monotonic()
        try:
            results = await self._on_compute_thread(first.backend.inference_batch, chunks, first.start, first.end)
        except Exception as error:  # the thread itself failed (stopped, or a failure outside any one step)
            results = [error] * len(chunks)
        self._batch_seconds = time.monotonic() - began
        if len(chunks) == 1 and chunks[0].new_tokens == 1:  # what a lone session's next step may expect
            self._lone_step_seconds[first.group, first.rows] = self._batch_seconds
        self.stats.record_batch(len(taken))
        for (pending, length), result in zip(taken, results):
            if isinstance(result, Exception):
                self._finish(pending, error=result)
                continue
            pending.outputs.append(result)
            pending.done_tokens += length
            if pending.remaining == 0:
                self._finish(pending, output=pending.outputs[0] if len(pending.outputs) == 1
                             else torch.cat(pending.outputs, dim=1))
            elif pending in self._steps:  # a prefill in parts goes to the back: other blocks' steps get a turn
                self._steps.remove(pending)
                self._steps.append(pending)

    def _finish(self, pending: _PendingStep, output: torch.Tensor | None = None,
                error: Exception | None = None) -> None:
        self._steps.remove(pending)
        if pending.future.done():  # its session ended meanwhile
            return
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(output)

    def _take_batch(self) -> list[tuple[_PendingStep, int]]:
        """The steps (and how many of each one's positions) the next batch runs, all of the oldest step's group:
        single-token steps first, in arrival order (leaving a share of the budget to a longer step waiting),
        then longer ones whole or in part, within ``batch_tokens``. A lone step with no other session active
        runs whole."""
        first = self._steps[0]
        if self.batch_tokens <= 0 or (len(self._steps) == 1 and not self._others_active(
                first.group, {id(first.cache)}, time.monotonic())):
            return [(first, first.remaining)]
        budget = self.batch_tokens
        taken: list[tuple[_PendingStep, int]] = []
        same_group = [pending for pending in self._steps if pending.group == first.group]
        longer = [pending for pending in same_group if pending.remaining > 1]
        decode_budget = budget - (budget // PREFILL_SHARE if longer else 0)
        for pending in same_group:
            if pending.remaining == 1 and (pending.rows <= decode_budget or not taken):
                taken.append((pending, 1))
                decode_budget -= pending.rows
                budget -= pending.rows
        for pending in longer:
            if pending.rows > budget and taken:
                break
            length = min(pending.remaining, max(1, budget // pending.rows))
            taken.append((pending, length))
            budget -= length * pending.rows
        return taken
