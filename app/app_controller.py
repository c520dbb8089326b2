"""The app's logic in one QObject: settings, hardware, the model, the recommendation, the worker and the bridges.

Widgets only emit requests and show what this object reports. Slow steps (hardware detection,
converting the demo model, the worker's start and stop) run off the GUI thread; their outcomes
arrive as signals.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from app.api_process import ApiProcess, ApiTarget
from app.auto_pause import AutoPauser, rules_from
from app.bridges.chat import ChatBridge, ChatTarget
from app.bridges.model import PreparedModel, prepare_model
from app.bridges.swarm import SwarmBridge
from app.bridges.tasks import run_in_background
from app.bridges.tuning import TuningBridge
from app.credit import CreditLedger, CreditRecorder
from app.limits import Limits, describe_limits, limited_hardware, set_power_cap
from app.settings import AppSettings, SettingsStore, build_serve_request
from app.swarms import KnownSwarm, SwarmListError, known_swarms, load_bundled_swarms, load_import, with_imported
from app.worker.controller import WorkerController
from app.pause_policy import RUN, PauseDecision
from app.worker.messages import StatusEvent, WorkerState
from core.hardware import HardwareReport, Recommendation, detect_hardware, recommend
from core.tuning import TrainingConfig
from core.utils.paths import blossom_home

logger = logging.getLogger(__name__)

SWARM_STATES = (WorkerState.SERVING, WorkerState.PAUSING, WorkerState.PAUSED, WorkerState.RESUMING)


class AppController(QObject):
    """Owns everything that is not a widget."""

    settings_changed = Signal(object)  # AppSettings
    hardware_changed = Signal(object)  # HardwareReport
    model_changed = Signal(object)  # PreparedModel or None
    model_status_changed = Signal(str)  # "Preparing …" while the model is being prepared, "" otherwise
    model_progress = Signal(str, int, int)  # stage, done, total (0: not counted) of the demo's first conversion
    recommendation_changed = Signal(object)  # Recommendation or None
    swarm_peers_changed = Signal(object)  # tuple[str, ...]
    serve_problem = Signal(str)  # why serving cannot start
    credit_changed = Signal(object, object, object)  # today, lifetime (DayCredit), the chart's days (list)
    auto_pause_changed = Signal(str)  # why serving is paused by itself ("" when it is not)
    power_cap_reported = Signal(str)  # what setting the GPU power cap did ("" when no cap is asked for)
    quit_ready = Signal()

    def __init__(self, store: SettingsStore, parent: QObject | None = None, log_dir: Path | None = None,
                 home: Path | None = None) -> None:
        super().__init__(parent)
        home = home or blossom_home()
        self.identity_path = home / "identity.key"  # one peer id for this PC across pauses, restarts and app starts
        self.ledger = CreditLedger(home / "statistics.sqlite3")
        self.credit = CreditRecorder(self.ledger)
        self.store = store
        self.settings = store.load()
        self.hardware: HardwareReport | None = None
        self.model: PreparedModel | None = None
        self.model_status = ""
        self.recommendation: Recommendation | None = None
        self.swarm_peers: tuple[str, ...] = ()
        self.bundled_swarms, self.bundled_swarms_problem = load_bundled_swarms()
        self._start_when_ready = False
        self._model_preparing = False
        self._quitting = False
        self._credit_state = WorkerState.STOPPED
        self.closed = False  # shut down for good: the worker is gone and the bridges are closed
        log_dir = log_dir or blossom_home() / "logs"
        self.worker = WorkerController(self, log_path=log_dir / "worker.log")
        self.api = ApiProcess(self, log_path=log_dir / "api.log")
        self.chat = ChatBridge(self)
        self.tuning = TuningBridge(self)
        self.swarm = SwarmBridge(self)
        self.auto_pause = AutoPauser(lambda: (self.worker.process_id,), self)
        self.auto_pause_reason = ""  # set while serving is paused by the auto-pause (not by the user)
        self._ignored_reason = ""  # the user resumed by hand despite this reason: not again until it clears
        self._connect_signals()

    def _connect_signals(self) -> None:
        self.worker.status_updated.connect(self._on_worker_status)
        self.worker.status_updated.connect(self._record_credit)
        self.worker.state_changed.connect(self._apply_auto_pause)
        self.worker.state_changed.connect(lambda state: self._refresh_chat())
        self.auto_pause.decision_changed.connect(self._on_pause_decision)
        self.worker.exited.connect(self._on_worker_exited)

    # ---- start-up -----------------------------------------------------------------------------
    def begin(self) -> None:
        """Detect the hardware and prepare the model; start serving when ready if the settings say so."""
        self._start_when_ready = self.settings.start_serving_at_launch and self.settings.first_run_done
        self.auto_pause.set_rules(rules_from(self.settings))
        self.detect_hardware()
        self.prepare_model()
        self._refresh_swarm_peers()

    def detect_hardware(self) -> None:
        run_in_background(detect_hardware, self._on_hardware, self._on_hardware_failed, "blossom-hardware")

    def _on_hardware(self, report: HardwareReport) -> None:
        self.hardware = report
        self.hardware_changed.emit(report)
        self._update_recommendation()

    def _on_hardware_failed(self, reason: str) -> None:
        logger.warning("Hardware detection failed: %s", reason)
        self.serve_problem.emit(f"Could not detect this computer's hardware: {reason}")

    def prepare_model(self) -> None:
        spec = self.settings.model
        self.model = None
        self._model_preparing = True
        self.model_changed.emit(None)
        self._set_model_status("Preparing the bundled demo model (converted on first run only)…" if not spec
                               else f"Opening {spec}…")
        # emitted from the preparing thread: Qt queues it to the window's thread
        run_in_background(lambda: prepare_model(spec, self.model_progress.emit), lambda model: self._on_model(spec, model),
                          lambda reason: self._on_model_failed(spec, reason), "blossom-model")

    def _on_model(self, spec: str, model: PreparedModel) -> None:
        if spec != self.settings.model:
            return  # the setting changed meanwhile; a newer preparation is running
        self.model = model
        self._model_preparing = False
        self._set_model_status("")
        self.model_changed.emit(model)
        self._update_recommendation()
        self._refresh_targets()

    def _on_model_failed(self, spec: str, reason: str) -> None:
        if spec != self.settings.model:
            return
        self._start_when_ready = False
        self._model_preparing = False
        self._set_model_status("")
        self.model_status = f"Cannot use this model: {reason}"
        self.serve_problem.emit(self.model_status)

    def _set_model_status(self, text: str) -> None:
        self.model_status = text
        self.model_status_changed.emit(text)

    def _update_recommendation(self) -> None:
        if self.hardware is None or self.model is None:
            return
        limits = Limits.of(self.settings)
        recommendation = recommend(self.model.footprint, limited_hardware(self.hardware, limits),
                                   more_blocks=self.settings.more_blocks)
        note = describe_limits(limits)
        if note:
            recommendation = dataclasses.replace(recommendation, explanation=f"{recommendation.explanation}. {note}")
        self.recommendation = recommendation
        self.recommendation_changed.emit(self.recommendation)
        if self._start_when_ready:
            self._start_when_ready = False
            self.start_serving()

    # ---- settings -----------------------------------------------------------------------------
    def update_settings(self, settings: AppSettings) -> None:
        """Store new settings and apply what can be applied now (the model, the recommendation, the swarm)."""
        old = self.settings
        self.settings = dataclasses.replace(settings)
        self.store.save(self.settings)
        self.settings_changed.emit(self.settings)
        if settings.model != old.model:
            self.prepare_model()
        elif settings.more_blocks != old.more_blocks or Limits.of(settings) != Limits.of(old):
            self._update_recommendation()
        if settings.gpu_power_watts != old.gpu_power_watts:
            self.apply_power_cap()
        self._refresh_swarm_peers()
        self._refresh_targets()
        if rules_from(settings) != rules_from(old):
            self.auto_pause.set_rules(rules_from(self.settings))

    def finish_first_run(self, start_now: bool) -> None:
        """The first-run page was answered: remember it (and whether to serve at each start); serve if asked."""
        self.update_settings(dataclasses.replace(self.settings, first_run_done=True,
                                                 start_serving_at_launch=start_now))
        if start_now:
            self.start_serving()

    def apply_power_cap(self) -> None:
        """Ask the driver for the settings' GPU power cap (off the GUI thread); the outcome is reported."""
        watts = self.settings.gpu_power_watts
        if watts <= 0:
            self.power_cap_reported.emit("")
            return
        run_in_background(lambda: set_power_cap(watts), self.power_cap_reported.emit,
                          lambda reason: self.power_cap_reported.emit(f"Could not cap the GPU's power: {reason}"),
                          "blossom-power-cap")

    # ---- known swarms (app.swarms) --------------------------------------------------------------
    def known_swarms(self) -> list[KnownSwarm]:
        """The swarms the Settings tab offers: bundled, imported, then the user's saved peers."""
        return known_swarms(self.bundled_swarms, self.settings)

    def import_swarms(self, source: str) -> tuple[str, bool]:
        """Add the swarms of a file (its path) or a ``blossom://join`` link; returns (what happened, success)."""
        try:
            swarms = load_import(source)
        except SwarmListError as error:
            return f"Could not import swarms: {error}", False
        if not swarms:
            return f"{source} lists no swarm; nothing was imported", False
        imported = with_imported(self.settings.imported_swarms, swarms)
        self.update_settings(dataclasses.replace(self.settings, imported_swarms=imported))
        names = ", ".join(f"'{swarm.name}'" for swarm in swarms)
        plural = "s" if len(swarms) != 1 else ""
        return f"Imported {len(swarms)} swarm{plural}: {names}. Choose one and press Join.", True

    def join_swarm(self, settings: AppSettings) -> str:
        """Store ``settings`` (joined to a swarm: its peers and model) and (re)start serving with them;
        returns why not ("" when under way)."""
        problems = settings.problems()
        if problems:
            return problems[0]
        self.update_settings(settings)
        self.restart_serving()
        return ""

    def set_prompts_path(self, path: str) -> None:
        """Use these trained prompts in the chat (empty: none)."""
        self.update_settings(dataclasses.replace(self.settings, prompts_path=path))

    # ---- serving ------------------------------------------------------------------------------
    def start_serving(self) -> bool:
        """Start the worker with the current settings; False (and ``serve_problem``) when that cannot be done."""
        problems = self.settings.problems()
        if self.model is None and not problems and self._model_preparing:
            self._start_when_ready = True  # starts as soon as the model is ready (first run: converting it)
            return True
        if self.model is None:
            problems.append(self.model_status or "The model is not ready yet")
        if problems:
            self.serve_problem.emit(problems[0])
            return False
        if self.worker.running:
            if self.worker.stopping:  # e.g. restarting for new settings: start once this worker is gone
                self._start_when_ready = True
                return True
            return False
        request = build_serve_request(self.settings, self.model.path, self.recommendation,
                                      identity_path=str(self.identity_path),
                                      num_threads=self.settings.cpu_threads or None)
        self.apply_power_cap()
        self.worker.start(request)
        return True

    def pause_serving(self) -> None:
        """Pause by hand: the auto-pause will not resume this pause."""
        self._set_auto_reason("")
        self.worker.pause()

    def resume_serving(self) -> None:
        """Resume by hand; while the auto-pause's current reason lasts, it does not pause again for it."""
        if self.auto_pause.decision.pause:
            self._ignored_reason = self.auto_pause.decision.reason
        self._set_auto_reason("")
        self.worker.resume()

    # ---- auto-pause (app.auto_pause, app.pause_policy) ---------------------------------------------
    def _on_pause_decision(self, decision: PauseDecision) -> None:
        if decision.reason != self._ignored_reason:
            self._ignored_reason = ""
        self._apply_auto_pause()

    def _apply_auto_pause(self, *_: object) -> None:
        """Pause or resume for the auto-pause's current decision, once the worker can (not mid-transition)."""
        decision = self.auto_pause.decision if not self._quitting else RUN
        state = self.worker.state
        if decision.pause and decision.reason != self._ignored_reason:
            if state == WorkerState.SERVING:
                self._set_auto_reason(decision.reason)
                self.worker.pause()
            elif self.auto_pause_reason and state in (WorkerState.PAUSING, WorkerState.PAUSED):
                self._set_auto_reason(decision.reason)  # still paused, now for this reason
        elif self.auto_pause_reason and state == WorkerState.PAUSED:
            self._set_auto_reason("")
            self.worker.resume()
        elif state in (WorkerState.STOPPED, WorkerState.ERROR):
            self._set_auto_reason("")

    def _set_auto_reason(self, reason: str) -> None:
        if reason != self.auto_pause_reason:
            self.auto_pause_reason = reason
            self.auto_pause_changed.emit(reason)

    def toggle_pause(self) -> None:
        """Pause when serving, resume when paused, start when stopped."""
        state = self.worker.state
        if state == WorkerState.SERVING:
            self.pause_serving()
        elif state == WorkerState.PAUSED:
            self.resume_serving()
        elif state in (WorkerState.STOPPED, WorkerState.ERROR) and not self.worker.running:
            self.start_serving()

    def stop_serving(self) -> None:
        self.worker.stop()

    def restart_serving(self) -> None:
        """After a crash (or a settings change): stop if needed, then start with the current settings."""
        if self.worker.running:
            self._start_when_ready = True
            self.worker.stop()
        else:
            self.start_serving()

    def _on_worker_status(self, status: StatusEvent) -> None:
        self._refresh_swarm_peers()

    def _on_worker_exited(self) -> None:
        self.credit.worker_gone()
        self.emit_credit()
        self._refresh_swarm_peers()
        if self._quitting:
            self._finish_quit()
        elif self._start_when_ready:
            self._start_when_ready = False
            self.start_serving()

    # ---- credit (app.credit) -------------------------------------------------------------------
    def _record_credit(self, status: StatusEvent) -> None:
        if self.closed:
            return
        self.credit.observe(status)
        if status.state == WorkerState.SERVING or status.state != self._credit_state:
            self.emit_credit()
        self._credit_state = status.state

    def emit_credit(self, chart_days: int = 14) -> None:
        """Send today's, the lifetime's and the chart's numbers to whoever shows them."""
        days = self.ledger.days(chart_days)
        self.credit_changed.emit(days[-1], self.ledger.lifetime(), days)

    def export_credit(self, path: str) -> str:
        """Write the per-day statistics to ``path`` as CSV; returns what happened, for a person."""
        try:
            count = self.ledger.export_csv(Path(path))
        except OSError as error:
            return f"Could not write {path}: {error.strerror or error}"
        return f"Saved {count} day{'s' if count != 1 else ''} to {Path(path).name}"

    # ---- the swarm the chat, tuning and swarm tabs use -----------------------------------------
    def _refresh_swarm_peers(self) -> None:
        if self.settings.private_swarm:
            status = self.worker.status
            peers = tuple(status.swarm_peers) if status.state in SWARM_STATES and self.worker.running else ()
        else:
            peers = tuple(self.settings.initial_peers)
        if peers != self.swarm_peers:
            self.swarm_peers = peers
            self.swarm_peers_changed.emit(peers)
            self._refresh_targets()

    def _refresh_targets(self) -> None:
        self._refresh_chat()
        self.swarm.set_peers(self.swarm_peers)
        self._refresh_api()

    def _refresh_chat(self) -> None:
        """The chat's swarm, and whether it can answer now (not while this PC's own private swarm is paused)."""
        if self.model is None or not self.swarm_peers:
            self.chat.set_target(None)
        else:
            state, private = self.worker.state, self.settings.private_swarm
            own = private and state in (WorkerState.PAUSING, WorkerState.PAUSED, WorkerState.RESUMING)
            unavailable = "Serving is paused: press Resume on the Dashboard (or in the tray) to chat" if own else ""
            ready = ("Ready: the model runs on this PC (private swarm)" if private
                     else f"Ready: {len(self.swarm_peers)} initial peer(s) of the joined swarm")
            self.chat.set_target(ChatTarget(self.model.path, self.swarm_peers, self.settings.prompts_path),
                                 unavailable, ready)

    def _refresh_api(self) -> None:
        """Run the OpenAI-compatible API for the current model and swarm while the setting asks for it."""
        wanted = self.settings.api_enabled and self.model is not None and bool(self.swarm_peers)
        target = ApiTarget(self.model.path, self.swarm_peers, self.settings.api_port) if wanted else None
        self.api.configure(target, enabled=self.settings.api_enabled)

    # ---- prompt tuning ------------------------------------------------------------------------
    def start_tuning(self, request: TrainingConfig) -> str:
        """Train prompts for the current model through the current swarm; returns why not ("" when started).

        ``request`` is the run the tuning tab set up; its ``model_path`` and ``initial_peers`` are replaced here.
        """
        if self.model is None:
            return self.model_status or "The model is not ready yet"
        if not self.swarm_peers:
            return "No swarm to train with: start serving on the Dashboard, or join a swarm in Settings"
        if not request.dataset_path:
            return "Choose a dataset file (.txt or .jsonl)"
        if self.tuning.busy:
            return "A training run is already going on"
        config = dataclasses.replace(request, model_path=self.model.path, initial_peers=self.swarm_peers)
        self.tuning.start(config)  # bad values: training_failed
        return ""

    def suggested_prompts_path(self, tuning_mode: str) -> str:
        """Where trained prompts are saved unless the user picks another place."""
        name = self.model.name if self.model is not None else "model"
        return str(blossom_home() / "prompts" / f"{name}-{tuning_mode}.safetensors")

    # ---- quitting -----------------------------------------------------------------------------
    def shutdown(self, kill_after: float = 60.0) -> None:
        """Leave the swarm and stop serving; ``quit_ready`` is emitted once the worker is gone.

        The bridges' DHT nodes are closed first (within about a second each) and the worker is told to
        stop at once, so even if this process is killed right after, the worker stops by itself
        (its stdin closes) and announces its blocks offline.
        """
        if self._quitting:
            return
        self._quitting = True
        self._start_when_ready = False
        self.auto_pause.stop()
        self.swarm.pause()
        self.api.stop()
        if self.worker.running:
            self.worker.stop(kill_after=kill_after)
        for bridge in (self.chat, self.tuning, self.swarm):
            bridge.shutdown(timeout=1.0)
        if not self.worker.running:
            QTimer.singleShot(0, self._finish_quit)

    def _finish_quit(self) -> None:
        if not self.closed:
            self.closed = True
            self.ledger.close()
            self.quit_ready.emit()
