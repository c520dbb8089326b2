"""The auto-pause's clock: looks at the PC every few seconds (off the GUI thread) and says when to pause or resume.

:class:`AutoPauser` only decides (with :func:`app.pause_policy.decide` and :func:`~app.pause_policy.settle`)
and emits :attr:`AutoPauser.decision_changed`; :class:`app.app_controller.AppController` acts on it,
because only it knows whether the user paused by hand. The look itself (:func:`app.pause_probes.observe`)
runs in a background thread: enumerating processes and asking NVML take milliseconds to tens of
milliseconds, which the window should never wait for.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from app.bridges.tasks import run_in_background
from app.pause_policy import RUN, Observation, PauseDecision, PauseRules, decide, settle

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0
LAUNCHERS_FILE = Path(__file__).resolve().parents[1] / "resources" / "game_launchers.txt"


def default_programs() -> list[str]:
    """The game launchers Blossom ships (``resources/game_launchers.txt``): the user's list starts as this."""
    try:
        lines = LAUNCHERS_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _observe(rules: PauseRules, roots: tuple[int, ...]) -> Observation:
    from app.pause_probes import observe

    return observe(rules.programs, roots, check_idle=rules.when_user_active)


class AutoPauser(QObject):
    """Decides every :data:`CHECK_INTERVAL` seconds; ``own_pids`` returns the worker's pid (and any other of Blossom's)."""

    decision_changed = Signal(object)  # PauseDecision: act on it
    observed = Signal(object)  # Observation: every look, for notes such as "no NVIDIA GPU"

    def __init__(self, own_pids: Callable[[], tuple[int, ...]], parent: QObject | None = None,
                 observer: Callable[[PauseRules, tuple[int, ...]], Observation] = _observe,
                 interval: float = CHECK_INTERVAL) -> None:
        super().__init__(parent)
        self.own_pids = own_pids
        self.observer = observer
        self.rules = PauseRules(enabled=False)
        self.decision = RUN
        self.last_observation: Observation | None = None
        self._clear_since: float | None = None
        self._looking = False
        self._timer = QTimer(self)
        self._timer.setInterval(int(interval * 1000))
        self._timer.timeout.connect(self.check)

    def set_rules(self, rules: PauseRules) -> None:
        """Use new rules from now on (checked at once); turning the feature off resumes what it paused."""
        self.rules = rules
        if rules.enabled:
            self._timer.start()
            self.check()
        else:
            self._timer.stop()
            self._apply(RUN, force=True)

    def stop(self) -> None:
        self._timer.stop()

    def check(self) -> None:
        """Look at the PC now (in the background); the answer arrives as signals."""
        if self._looking or not self.rules.enabled:
            return
        self._looking = True
        rules, roots = self.rules, tuple(self.own_pids())
        run_in_background(lambda: self.observer(rules, roots), lambda seen: self._on_observation(rules, seen),
                          self._on_failure, "blossom-auto-pause")

    def _on_failure(self, reason: str) -> None:
        self._looking = False
        logger.warning("The auto-pause check failed: %s", reason)

    def _on_observation(self, rules: PauseRules, observation: Observation) -> None:
        self._looking = False
        if rules != self.rules:
            return  # the rules changed meanwhile; a check with the new ones follows
        self.last_observation = observation
        self.observed.emit(observation)
        wanted = decide(observation, rules)
        now = time.monotonic()
        if wanted.pause:
            self._clear_since = None
        elif self._clear_since is None:
            self._clear_since = now
        clear_for = 0.0 if self._clear_since is None else now - self._clear_since
        self._apply(settle(self.decision, wanted, clear_for, rules))

    def _apply(self, decision: PauseDecision, force: bool = False) -> None:
        if decision != self.decision or force:
            changed = decision != self.decision
            self.decision = decision
            if changed:
                logger.info("Auto-pause: %s", decision.reason if decision.pause else "nothing in the way any more")
                self.decision_changed.emit(decision)


def rules_from(settings: object, programs: list[str] | None = None) -> PauseRules:
    """The :class:`PauseRules` of the app's settings (fields ``auto_pause``, ``pause_*``, ``schedule_*``)."""
    get = lambda name, default: getattr(settings, name, default)  # noqa: E731 (reads like a table below)
    base = PauseRules()
    return dataclasses.replace(
        base,
        enabled=bool(get("auto_pause", base.enabled)),
        programs=tuple(programs if programs is not None else get("pause_programs", [])),
        when_fullscreen=bool(get("pause_when_fullscreen", base.when_fullscreen)),
        gpu_busy_percent=int(get("pause_gpu_percent", base.gpu_busy_percent)),
        when_user_active=bool(get("pause_when_active", base.when_user_active)),
        idle_minutes=int(get("pause_idle_minutes", base.idle_minutes)),
        on_battery=bool(get("pause_on_battery", base.on_battery)),
        schedule=bool(get("schedule_enabled", base.schedule)),
        schedule_start=str(get("schedule_start", base.schedule_start)),
        schedule_end=str(get("schedule_end", base.schedule_end)),
    )
