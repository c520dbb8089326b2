"""Cooldowns: a failed key is left alone for its period, then tried again; expired keys do not pile up."""
from __future__ import annotations

from core.utils import cooldown
from core.utils.cooldown import Cooldowns


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_key_cools_for_its_period_only(monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr(cooldown.time, "monotonic", clock)
    failures: Cooldowns[str] = Cooldowns(60.0)
    assert not failures.cooling("relay-a") and len(failures) == 0
    failures.failed("relay-a")
    assert failures.cooling("relay-a") and not failures.cooling("relay-b") and len(failures) == 1
    clock.now += 59.0
    assert failures.cooling("relay-a")
    assert sorted(["relay-a", "relay-b"], key=failures.cooling) == ["relay-b", "relay-a"]  # cooling ones last
    clock.now += 2.0
    assert not failures.cooling("relay-a") and len(failures) == 0


def test_expired_keys_are_dropped_when_another_fails(monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr(cooldown.time, "monotonic", clock)
    failures: Cooldowns[int] = Cooldowns(1.0)
    for key in range(1000):  # e.g. addresses from strangers' routes, each failing once
        failures.failed(key)
        clock.now += 0.5
    assert len(failures._until) <= 3  # only the ones still cooling are kept
