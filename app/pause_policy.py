"""When Blossom gets out of the way: a pure decision from what the probes saw and what the user chose.

A volunteer's PC is theirs first. Like BOINC's "exclusive applications", Blossom pauses serving by
itself while a game (or any listed program) runs, a program is full-screen, another program works
the GPU hard, the user is at the keyboard (optional), the PC runs on battery, or it is outside the
chosen hours, and resumes once that has been over for a while.

:func:`decide` is a pure function of an :class:`Observation` (filled by :mod:`app.pause_probes`)
and the :class:`PauseRules` (from the settings), so every rule is unit-tested without processes,
windows or GPUs; :func:`settle` adds the wait before resuming, so a game's loading screen that drops
out of full screen for a second does not bring the server back.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuUser:
    """Another program with memory on an NVIDIA GPU."""

    name: str
    pid: int
    memory_mib: int = 0


@dataclass(frozen=True)
class PauseRules:
    """What the user allows; ``gpu_busy_percent`` 0 turns the GPU rule off."""

    enabled: bool = True
    programs: tuple[str, ...] = ()
    when_fullscreen: bool = True
    gpu_busy_percent: int = 40
    when_user_active: bool = False
    idle_minutes: int = 5
    on_battery: bool = True
    schedule: bool = False
    schedule_start: str = "22:00"
    schedule_end: str = "08:00"
    resume_after: float = 30.0


@dataclass(frozen=True)
class Observation:
    """One look at the PC. ``None`` means the probe cannot tell here (``notes`` says why)."""

    programs_running: tuple[str, ...] = ()
    fullscreen_window: str | None = None  # the title ("" when untitled) of a full-screen window, else None
    gpu_utilization: int | None = None  # percent over the busiest GPU; None: no NVIDIA GPU
    gpu_users: tuple[GpuUser, ...] = ()  # other programs on the GPU (never Blossom's own)
    idle_seconds: float | None = None
    on_battery: bool | None = None
    now: datetime.time = field(default_factory=lambda: datetime.datetime.now().time())
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PauseDecision:
    """Whether serving should pause now, and the reason shown to the user (one line)."""

    pause: bool
    reason: str = ""


RUN = PauseDecision(False)


def parse_clock(text: str) -> datetime.time:
    """``'22:00'`` -> 22:00; raises ValueError for anything else."""
    hours, minutes = text.strip().split(":")
    return datetime.time(int(hours), int(minutes))


def within_hours(now: datetime.time, start: str, end: str) -> bool:
    """Whether ``now`` lies in [start, end), a window that may wrap over midnight (22:00–08:00)."""
    first, last = parse_clock(start), parse_clock(end)
    if first == last:
        return True  # the same time twice: all day
    return first <= now < last if first < last else now >= first or now < last


def program_label(name: str) -> str:
    """A process name as people know it: ``'EpicGamesLauncher.exe'`` -> ``'EpicGamesLauncher'``."""
    return name[:-4] if name.lower().endswith(".exe") else name


def decide(observation: Observation, rules: PauseRules) -> PauseDecision:
    """Pause (with the first reason that applies) or run."""
    if not rules.enabled:
        return RUN
    if observation.programs_running:
        names = ", ".join(program_label(name) for name in observation.programs_running[:3])
        verb = "is" if len(observation.programs_running) == 1 else "are"
        return PauseDecision(True, f"{names} {verb} running")
    if rules.when_fullscreen and observation.fullscreen_window is not None:
        title = observation.fullscreen_window.strip()
        return PauseDecision(True, f"A full-screen program is open ({title[:40]})" if title
                             else "A full-screen program is open")
    if (rules.gpu_busy_percent and observation.gpu_utilization is not None and observation.gpu_users
            and observation.gpu_utilization >= rules.gpu_busy_percent):
        names = ", ".join(sorted({program_label(user.name) for user in observation.gpu_users})[:2])
        return PauseDecision(True, f"{names} keeps the GPU busy ({observation.gpu_utilization} %)")
    if rules.on_battery and observation.on_battery:
        return PauseDecision(True, "This PC runs on battery")
    if (rules.when_user_active and observation.idle_seconds is not None
            and observation.idle_seconds < rules.idle_minutes * 60):
        return PauseDecision(True, f"You are using this PC (serving resumes after {rules.idle_minutes} min idle)")
    if rules.schedule and not within_hours(observation.now, rules.schedule_start, rules.schedule_end):
        return PauseDecision(True, f"Outside the serving hours {rules.schedule_start}–{rules.schedule_end}")
    return RUN


def settle(current: PauseDecision, wanted: PauseDecision, clear_for: float, rules: PauseRules) -> PauseDecision:
    """The decision to act on: pausing (or a new reason) at once, resuming only after ``rules.resume_after``
    seconds of ``wanted`` saying run (``clear_for``)."""
    if wanted.pause or not current.pause:
        return wanted
    return wanted if clear_for >= rules.resume_after else current
