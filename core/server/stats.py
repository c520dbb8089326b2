"""Counters a server keeps about its work, reported in logs and to the app."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ServingStats:
    """Work done since start: what a person would count, and the steps behind it.

    ``requests`` counts every computing RPC (each token step of an inference session is one), which
    is what the server's load is made of but not what a person calls a request: two chat replies are
    dozens of steps. ``inference_sessions`` (one per conversation turn that reached this server) and
    ``training_requests`` (one per backward pass, or per forward pass that keeps no graph for one)
    are the counts a volunteer is shown.
    """

    started_at: float = field(default_factory=time.time)
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    sessions_open: int = 0
    inference_sessions: int = 0
    training_requests: int = 0
    batches: int = 0
    batched_steps: int = 0
    largest_batch: int = 0

    def record_request(self, tokens: int) -> None:
        self.requests += 1
        self.tokens += tokens

    def record_session(self) -> None:
        """An inference session was opened (it stays counted however it ends)."""
        self.inference_sessions += 1

    def record_training(self) -> None:
        """A trainer's request was answered: a backward pass, or a forward pass that keeps no graph."""
        self.training_requests += 1

    def record_batch(self, steps: int) -> None:
        """The compute thread ran ``steps`` inference steps (of as many sessions) as one batch."""
        self.batches += 1
        self.batched_steps += steps
        self.largest_batch = max(self.largest_batch, steps)

    def record_error(self) -> None:
        self.errors += 1

    def as_dict(self) -> dict[str, float]:
        return {
            "uptime": time.time() - self.started_at,
            "requests": self.requests,
            "tokens": self.tokens,
            "errors": self.errors,
            "sessions_open": self.sessions_open,
            "inference_sessions": self.inference_sessions,
            "training_requests": self.training_requests,
        }
