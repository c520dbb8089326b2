"""Reproducible ``seed`` for requests generated in parallel threads.

``generate`` samples with ``torch.multinomial`` on torch's *global* random generator: one per
process, shared by every thread. A request with a ``seed`` resets it and must then be the only
one drawing from it until it ends, or another request's draws would shift its sequence (and its
reset would shift theirs). So:

- greedy requests (temperature 0) never draw: they run in parallel with anything;
- sampled requests without a seed share the generator with each other (their randomness does not
  need to be repeatable);
- a request with a seed holds it alone: it waits for the sampled requests running now, and new
  sampled requests wait for it. Afterwards the generator is re-seeded from the OS, so the requests
  that follow do not continue a sequence someone chose.

Waits are bounded (:class:`~core.api.errors.QueueTimeoutError`).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from core.api.errors import QueueTimeoutError


class SamplingGate:
    """A readers-writer lock over torch's global generator; writers (seeded requests) go first."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._condition = threading.Condition()
        self._sharing = 0
        self._seeded_running = False
        self._seeded_waiting = 0

    @contextmanager
    def hold(self, sampling: bool, seed: int | None) -> Iterator[None]:
        """Run the body with the generator as the request needs it (seeded with ``seed`` if given)."""
        if not sampling:
            yield
            return
        if seed is None:
            self._enter_shared()
            try:
                yield
            finally:
                with self._condition:
                    self._sharing -= 1
                    self._condition.notify_all()
            return
        self._enter_alone()
        try:
            torch.manual_seed(seed)
            yield
        finally:
            torch.seed()
            with self._condition:
                self._seeded_running = False
                self._condition.notify_all()

    def _enter_shared(self) -> None:
        with self._condition:
            if not self._condition.wait_for(lambda: not self._seeded_running and not self._seeded_waiting,
                                            self.timeout):
                raise QueueTimeoutError("a request with a seed to finish sampling", self.timeout)
            self._sharing += 1

    def _enter_alone(self) -> None:
        deadline = time.monotonic() + self.timeout
        with self._condition:
            self._seeded_waiting += 1
            try:
                if not self._condition.wait_for(lambda: not self._seeded_running and not self._sharing,
                                                max(deadline - time.monotonic(), 0)):
                    raise QueueTimeoutError("the other sampling requests to finish (a request with a seed needs "
                                            "the random generator alone)", self.timeout)
                self._seeded_running = True
            finally:
                self._seeded_waiting -= 1
                self._condition.notify_all()
