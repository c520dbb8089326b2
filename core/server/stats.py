"""Counters a server keeps about its work, reported in logs and to the app."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ServingStats:
    """Requests served, tokens processed and errors returned since start."""

    started_at: float = field(default_factory=time.time)
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    sessions_open: int = 0

    def record_request(self, tokens: int) -> None:
        self.requests += 1
        self.tokens += tokens

    def record_error(self) -> None:
        self.errors += 1

    def as_dict(self) -> dict[str, float]:
        return {
            "uptime": time.time() - self.started_at,
            "requests": self.requests,
            "tokens": self.tokens,
            "errors": self.errors,
            "sessions_open": self.sessions_open,
        }
