"""The sampling gate: a seed gives the same draws whatever other threads sample meanwhile; waits are bounded."""
from __future__ import annotations

import threading

import pytest
import torch

from core.api.errors import QueueTimeoutError
from core.api.sampling import SamplingGate

PROBS = torch.full((1, 50), 1 / 50)


def draws(gate: SamplingGate, seed: int | None, count: int, between: threading.Event | None = None) -> list[int]:
    """``count`` multinomial draws on torch's global generator, as generate makes them, under the gate."""
    out = []
    with gate.hold(sampling=True, seed=seed):
        for _ in range(count):
            out.append(int(torch.multinomial(PROBS, 1)))
            if between is not None:
                between.wait(0.01)  # leave time for other threads to draw in between
    return out


def test_seeded_draws_repeat_while_other_threads_sample():
    gate = SamplingGate(timeout=30)
    alone = draws(gate, 7, 20)
    results: dict[str, list[int]] = {}
    pause = threading.Event()

    def run(key: str, seed: int | None) -> None:
        results[key] = draws(gate, seed, 20, pause)

    threads = [threading.Thread(target=run, args=(key, seed))
               for key, seed in [("free1", None), ("seeded1", 7), ("free2", None), ("seeded2", 7), ("other", 8)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results["seeded1"] == results["seeded2"] == alone
    assert results["other"] == draws(gate, 8, 20)


def test_after_a_seeded_request_the_generator_is_not_left_at_a_chosen_state():
    gate = SamplingGate(timeout=5)
    draws(gate, 3, 5)
    after_first = draws(gate, None, 10)
    draws(gate, 3, 5)
    assert draws(gate, None, 10) != after_first  # re-seeded from the OS, not continuing seed 3's sequence


def test_greedy_requests_do_not_wait_for_a_seeded_one():
    gate = SamplingGate(timeout=0.5)
    with gate.hold(sampling=True, seed=1):
        with gate.hold(sampling=False, seed=None):
            pass  # entered at once


def test_waits_are_bounded_and_say_what_they_waited_for():
    gate = SamplingGate(timeout=0.3)
    with gate.hold(sampling=True, seed=None):
        with pytest.raises(QueueTimeoutError, match="random generator alone"):
            with gate.hold(sampling=True, seed=5):
                pass
    with gate.hold(sampling=True, seed=5):
        with pytest.raises(QueueTimeoutError, match="a seed to finish"):
            with gate.hold(sampling=True, seed=None):
                pass
    with gate.hold(sampling=True, seed=None):  # the gate is usable again after the time-outs
        pass
