"""Things to leave alone for a while after they failed: a relay, a server's direct port, a push link."""
from __future__ import annotations

import time
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class Cooldowns(Generic[K]):
    """Keys that failed, each left alone for ``seconds`` from its last failure. Expired keys are dropped when
    another one fails, so keys that come from strangers (say, the addresses in a client's route) cannot pile up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until: dict[K, float] = {}  # key -> until when it is left alone (monotonic)

    def failed(self, key: K) -> None:
        """``key`` failed now: leave it alone for the next ``seconds``."""
        now = time.monotonic()
        self._until = {other: until for other, until in self._until.items() if until > now}
        self._until[key] = now + self.seconds

    def cooling(self, key: K) -> bool:
        """Whether ``key`` failed within the last ``seconds``."""
        return self._until.get(key, 0.0) > time.monotonic()

    def __len__(self) -> int:
        """How many keys are cooling now."""
        now = time.monotonic()
        return sum(until > now for until in self._until.values())
