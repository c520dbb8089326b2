"""The auto-pause's pure decision: each rule, their order, the serving hours and the wait before resuming."""
from __future__ import annotations

import datetime

import pytest

from app.pause_policy import RUN, GpuUser, Observation, PauseDecision, PauseRules, decide, settle, within_hours

NOON = datetime.time(12, 0)
RULES = PauseRules(programs=("steam",))


def seen(**values: object) -> Observation:
    return Observation(now=values.pop("now", NOON), **values)


def test_nothing_in_the_way_runs_and_disabled_rules_never_pause() -> None:
    assert decide(seen(), RULES) == RUN
    busy = seen(programs_running=("steam",), fullscreen_window="Game", on_battery=True)
    assert decide(busy, PauseRules(enabled=False)) == RUN


@pytest.mark.parametrize("observation, rules, reason", [
    (seen(programs_running=("EpicGamesLauncher.exe",)), RULES, "EpicGamesLauncher is running"),
    (seen(programs_running=("steam", "obs64")), RULES, "steam, obs64 are running"),
    (seen(fullscreen_window="Cyberpunk 2077"), RULES, "A full-screen program is open (Cyberpunk 2077)"),
    (seen(fullscreen_window=""), RULES, "A full-screen program is open"),
    (seen(gpu_utilization=85, gpu_users=(GpuUser("game.exe", 42, 3000),)), RULES,
     "game keeps the GPU busy (85 %)"),
    (seen(on_battery=True), RULES, "This PC runs on battery"),
    (seen(idle_seconds=10.0), PauseRules(when_user_active=True, idle_minutes=3),
     "You are using this PC (serving resumes after 3 min idle)"),
    (seen(now=datetime.time(9, 30)), PauseRules(schedule=True, schedule_start="22:00", schedule_end="08:00"),
     "Outside the serving hours 22:00–08:00"),
])
def test_each_rule_pauses_with_its_reason(observation: Observation, rules: PauseRules, reason: str) -> None:
    assert decide(observation, rules) == PauseDecision(True, reason)


def test_rules_the_user_turned_off_or_cannot_be_told_do_not_pause() -> None:
    assert decide(seen(fullscreen_window="Video"), PauseRules(when_fullscreen=False)) == RUN
    assert decide(seen(gpu_utilization=99, gpu_users=()), RULES) == RUN  # only Blossom (or the desktop) on it
    assert decide(seen(gpu_utilization=20, gpu_users=(GpuUser("x", 1),)), RULES) == RUN  # below the threshold
    assert decide(seen(gpu_utilization=99, gpu_users=(GpuUser("x", 1),)), PauseRules(gpu_busy_percent=0)) == RUN
    assert decide(seen(gpu_utilization=None), RULES) == RUN  # no NVIDIA GPU
    assert decide(seen(on_battery=True), PauseRules(on_battery=False)) == RUN
    assert decide(seen(idle_seconds=10.0), RULES) == RUN  # the idle rule is optional and off by default
    assert decide(seen(idle_seconds=None), PauseRules(when_user_active=True)) == RUN
    assert decide(seen(idle_seconds=400.0), PauseRules(when_user_active=True, idle_minutes=5)) == RUN
    assert decide(seen(now=datetime.time(23, 0)), PauseRules(schedule=True)) == RUN


def test_a_listed_program_is_named_before_other_reasons() -> None:
    everything = seen(programs_running=("steam",), fullscreen_window="Game", on_battery=True)
    assert decide(everything, RULES).reason == "steam is running"


@pytest.mark.parametrize("now, start, end, inside", [
    (datetime.time(23, 0), "22:00", "08:00", True), (datetime.time(7, 59), "22:00", "08:00", True),
    (datetime.time(8, 0), "22:00", "08:00", False), (datetime.time(12, 0), "09:00", "17:30", True),
    (datetime.time(17, 30), "09:00", "17:30", False), (datetime.time(3, 0), "00:00", "00:00", True),
])
def test_serving_hours_wrap_over_midnight(now: datetime.time, start: str, end: str, inside: bool) -> None:
    assert within_hours(now, start, end) is inside


def test_pausing_is_at_once_and_resuming_waits() -> None:
    paused = PauseDecision(True, "steam is running")
    rules = PauseRules(resume_after=30.0)
    assert settle(RUN, paused, 0.0, rules) == paused
    assert settle(paused, RUN, 5.0, rules) == paused  # a loading screen left full screen for a moment
    assert settle(paused, RUN, 30.0, rules) == RUN
    on_battery = PauseDecision(True, "This PC runs on battery")
    assert settle(paused, on_battery, 0.0, rules) == on_battery  # a new reason is shown at once
