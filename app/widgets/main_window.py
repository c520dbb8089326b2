"""The main window: five tabs, a status bar, the tray, and all the wiring between them and the app's logic."""
from __future__ import annotations

import dataclasses
import logging

from PySide6.QtCore import Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QLabel, QMainWindow, QStackedWidget, QTabWidget

from app.app_controller import AppController
from app.bridges.chat import Sampling
from app.bridges.model import PreparedModel
from app.bridges.swarm import SwarmSnapshot
from app.conversation import Conversation
from app.icons import app_icon
from app.reachability import describe_reachability
from app.settings import AppSettings, ServingChoice
from app.widgets.chat import ChatTab
from app.widgets.dashboard import STATE_TITLES, DashboardTab
from app.widgets.first_run import FirstRunPage
from app.widgets.settings import SettingsTab
from app.widgets.swarm import SwarmTab
from app.widgets.tray import TrayIcon
from app.widgets.tuning import TuningTab
from app.worker.messages import StatusEvent, WorkerState
from core.hardware import Recommendation
from core.tuning import StepReport, TrainingConfig, TrainingResult

logger = logging.getLogger(__name__)

CLOSE_NOTICE = ("Blossom keeps serving in the background. Use the tray icon to pause, open the window again or "
                "quit.")


class MainWindow(QMainWindow):
    """Shows the app; closing it hides it to the tray (where there is one) instead of quitting."""

    quit_finished = Signal()  # serving stopped and the bridges closed: the application may exit

    def __init__(self, controller: AppController, tray: TrayIcon | None = None) -> None:
        super().__init__()
        self.controller = controller
        self.tray = tray or TrayIcon(self)
        self.quitting = False
        self.setWindowTitle("Blossom")
        self.setWindowIcon(app_icon())
        self.resize(1180, 800)
        self.conversation = Conversation(controller.chat, self)
        self.dashboard = DashboardTab()
        self.chat = ChatTab(self.conversation)
        self.tuning = TuningTab()
        self.swarm = SwarmTab()
        self.settings = SettingsTab()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        for widget, title in ((self.dashboard, "Dashboard"), (self.chat, "Chat"), (self.tuning, "Prompt tuning"),
                              (self.swarm, "Swarm"), (self.settings, "Settings")):
            self.tabs.addTab(widget, title)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.tabs)
        self.first_run: FirstRunPage | None = None
        if not controller.settings.first_run_done:  # nothing is served before the user has read what it means
            self.first_run = FirstRunPage(controller.settings)
            self.pages.addWidget(self.first_run)
            self.pages.setCurrentWidget(self.first_run)
        self.setCentralWidget(self.pages)
        self.state_label = QLabel(STATE_TITLES[WorkerState.STOPPED])
        self.swarm_label = QLabel("")
        self.statusBar().addWidget(self.state_label, 1)
        self.statusBar().addPermanentWidget(self.swarm_label)
        self._connect_signals()
        self._show_initial_state()

    # ---- wiring -------------------------------------------------------------------------------
    def _connect_signals(self) -> None:
        c, worker = self.controller, self.controller.worker
        # dashboard
        self.dashboard.start_requested.connect(c.start_serving)
        self.dashboard.pause_requested.connect(c.pause_serving)
        self.dashboard.resume_requested.connect(c.resume_serving)
        self.dashboard.stop_requested.connect(c.stop_serving)
        self.dashboard.restart_requested.connect(c.restart_serving)
        self.dashboard.recommendation.more_blocks_toggled.connect(
            lambda on: c.update_settings(dataclasses.replace(c.settings, more_blocks=on)))
        self.dashboard.recommendation.override_changed.connect(self._on_override_changed)
        c.hardware_changed.connect(self.dashboard.hardware.show_report)
        c.hardware_changed.connect(self.dashboard.recommendation.show_hardware)
        c.recommendation_changed.connect(self._on_recommendation)
        c.model_changed.connect(self._on_model)
        c.model_status_changed.connect(self.dashboard.show_model_preparing)
        c.model_progress.connect(self.dashboard.show_model_progress)
        c.serve_problem.connect(self.dashboard.show_problem)
        c.settings_changed.connect(self._on_settings)
        c.swarm_peers_changed.connect(self._on_swarm_peers)
        worker.status_updated.connect(self._on_status)
        worker.state_changed.connect(self._on_state)
        worker.log_received.connect(self.dashboard.append_log)
        worker.error_reported.connect(self.dashboard.show_problem)
        worker.crashed.connect(self._on_crash)
        c.api.status_changed.connect(self.dashboard.show_api_status)  # bound methods: gone with the window
        c.credit_changed.connect(self.dashboard.credit.show_credit)
        self.dashboard.credit.export_requested.connect(
            lambda path: self.dashboard.credit.show_message(c.export_credit(path)))
        # chat
        self.chat.send_requested.connect(lambda text: self.conversation.send(text, self.chat.sampling()))
        self.chat.stop_requested.connect(self.conversation.stop)
        self.chat.new_conversation_requested.connect(self.conversation.new)
        self.chat.sampling_changed.connect(self._on_sampling)
        self.chat.prompts_changed.connect(c.set_prompts_path)
        c.chat.status_changed.connect(self.chat.show_status)
        # prompt tuning
        self.tuning.start_requested.connect(self._on_tuning_requested)
        self.tuning.stop_requested.connect(c.tuning.stop)
        self.tuning.save_requested.connect(c.tuning.save)
        self.tuning.try_in_chat_requested.connect(self._try_prompts_in_chat)
        c.tuning.busy_changed.connect(self.tuning.show_busy)
        c.tuning.status_changed.connect(self._on_tuning_status)
        c.tuning.step_reported.connect(self._on_step)
        c.tuning.training_finished.connect(self._on_training_finished)
        c.tuning.training_failed.connect(self.tuning.show_message)
        c.tuning.prompts_saved.connect(self._on_prompts_saved)
        c.tuning.save_failed.connect(self.tuning.show_message)
        # swarm
        self.swarm.refresh_requested.connect(c.swarm.refresh)
        c.swarm.updated.connect(self._on_swarm_snapshot)
        c.swarm.failed.connect(self.swarm.show_failure)
        c.swarm.busy_changed.connect(self.swarm.show_busy)
        # settings
        self.settings.apply_requested.connect(c.update_settings)
        self.settings.join_requested.connect(self._on_join_requested)
        self.settings.import_requested.connect(self._on_import_requested)
        # tray
        self.tray.pause_requested.connect(c.pause_serving)
        self.tray.resume_requested.connect(c.resume_serving)
        self.tray.start_requested.connect(self._on_tray_start)
        self.tray.open_requested.connect(self.bring_to_front)
        self.tray.quit_requested.connect(self.request_quit)
        c.quit_ready.connect(self._on_quit_ready)
        c.auto_pause_changed.connect(self._on_auto_pause_changed)
        c.auto_pause.observed.connect(self.settings.pause_box.show_observation)
        c.power_cap_reported.connect(self.settings.limits_box.show_power_note)
        if self.first_run is not None:
            self.first_run.answered.connect(self._on_first_run_answered)

    def _show_initial_state(self) -> None:
        settings = self.controller.settings
        self._on_settings(settings)
        self.settings.show_location(self.controller.store.location)
        if self.controller.bundled_swarms_problem:
            self.settings.show_swarm_message(self.controller.bundled_swarms_problem, error=True)
        self.chat.offer_prompts(settings.prompts_path, use=bool(settings.prompts_path))
        self.tuning.show_remembered(settings.tuning_dataset, settings.tuning_steps)
        self._on_status(self.controller.worker.status)
        self.swarm.show_no_swarm()
        self.tray.show_state(WorkerState.STOPPED)
        self.controller.emit_credit()

    # ---- dashboard and tray -------------------------------------------------------------------
    def swarm_description(self) -> str:
        settings = self.controller.settings
        if settings.private_swarm:
            return "private swarm on this PC"
        return f"joined swarm ({len(settings.initial_peers)} initial peer{'s' if len(settings.initial_peers) != 1 else ''})"

    def _on_tray_start(self) -> None:
        if self.pages.currentWidget() is self.first_run:  # the first-run page asks first
            self.bring_to_front()
        else:
            self.controller.toggle_pause()

    def _on_first_run_answered(self, start_now: bool) -> None:
        self.pages.setCurrentWidget(self.tabs)
        self.tabs.setCurrentWidget(self.dashboard)
        self.controller.finish_first_run(start_now)

    def _on_auto_pause_changed(self, reason: str) -> None:
        self._on_status(self.controller.worker.status)

    def _on_status(self, status: StatusEvent) -> None:
        reachability = describe_reachability(status, self.controller.worker.last_request)
        reason = self.controller.auto_pause_reason
        if reason and status.state in (WorkerState.PAUSING, WorkerState.PAUSED):  # say why it paused by itself
            status = dataclasses.replace(status, detail=f"By itself: {reason}. Serving resumes when that is over "
                                                        "(or press Resume)")
        self.dashboard.show_status(status, self.swarm_description(), reachability)
        self.swarm.set_own_peer_id(status.peer_id)
        detail = status.detail if status.state != WorkerState.SERVING else (
            f"Blocks {status.start_block}–{status.end_block - 1} of {status.model_name}")
        self.tray.show_state(status.state, detail, reachability.text if reachability else "")
        self.state_label.setText(STATE_TITLES[status.state] + (f": {detail}" if detail else ""))

    def _on_state(self, state: WorkerState) -> None:
        if state in (WorkerState.SERVING, WorkerState.STARTING):
            self.dashboard.show_problem("")
        if state in (WorkerState.SERVING, WorkerState.PAUSED):
            self.controller.swarm.refresh()

    def _on_crash(self, reason: str) -> None:
        logger.warning("The worker stopped: %s", reason)
        self.tray.notify("Blossom stopped serving", reason)

    def _on_recommendation(self, recommendation: Recommendation) -> None:
        model = self.controller.model
        self.dashboard.recommendation.show_recommendation(recommendation, model.footprint if model else None)

    def _on_model(self, model: PreparedModel | None) -> None:
        if model is not None:
            self.swarm.set_preferred_model(model.name)
            self.tuning.suggested_path = self.controller.suggested_prompts_path(self.tuning.request().tuning_mode)

    def _on_override_changed(self, choice: ServingChoice) -> None:
        self.controller.update_settings(self.controller.settings.with_choice(choice))

    def _on_settings(self, settings: AppSettings) -> None:
        self.dashboard.recommendation.show_settings(settings)
        self.chat.show_settings(settings)
        self.settings.show_settings(settings)
        self.settings.show_swarms(self.controller.known_swarms())
        description = self.swarm_description()
        self.swarm_label.setText(description[:1].upper() + description[1:])

    def _on_swarm_peers(self, peers: tuple[str, ...]) -> None:
        if not peers:
            self.swarm.show_no_swarm()

    # ---- known swarms ----------------------------------------------------------------------------
    def _on_join_requested(self, settings: AppSettings) -> None:
        problem = self.controller.join_swarm(settings)
        if problem:
            self.settings.show_swarm_message(problem, error=True)
            return
        self.settings.show_swarm_message("Joining: serving starts on the Dashboard.")
        self.tabs.setCurrentWidget(self.dashboard)

    def _on_import_requested(self, source: str) -> None:
        message, ok = self.controller.import_swarms(source)
        self.settings.show_swarm_message(message, error=not ok)

    # ---- chat and tuning ----------------------------------------------------------------------
    def _on_sampling(self, sampling: Sampling) -> None:
        c = self.controller
        c.update_settings(dataclasses.replace(c.settings, temperature=sampling.temperature, top_p=sampling.top_p,
                                              max_new_tokens=sampling.max_new_tokens))

    def _on_tuning_requested(self, request: TrainingConfig) -> None:
        c = self.controller
        c.update_settings(dataclasses.replace(c.settings, tuning_dataset=request.dataset_path,
                                              tuning_steps=request.steps))  # offered again next time
        problem = self.controller.start_tuning(request)
        if problem:
            self.tuning.show_message(problem)
        elif self.controller.tuning.busy:
            self.tuning.begin_run(request.steps)
            self.tuning.suggested_path = self.controller.suggested_prompts_path(request.tuning_mode)

    def _on_tuning_status(self, text: str) -> None:
        if self.controller.tuning.busy:  # the end of a run is shown by _on_training_finished
            self.tuning.show_status(text)

    def _on_step(self, report: StepReport) -> None:
        self.tuning.show_step(report.step, report.total_steps, report.loss)

    def _on_training_finished(self, result: TrainingResult) -> None:
        total = self.controller.tuning.config.steps if self.controller.tuning.config else result.steps_done
        self.tuning.show_finished(result.steps_done, total, result.stopped,
                                  result.losses[-1] if result.losses else None)

    def _on_prompts_saved(self, path: str) -> None:
        self.tuning.show_saved(path)
        self.chat.offer_prompts(path, use=False)

    def _try_prompts_in_chat(self, path: str) -> None:
        self.chat.offer_prompts(path, use=True)
        self.conversation.new()
        self.tabs.setCurrentWidget(self.chat)

    def _on_swarm_snapshot(self, snapshot: SwarmSnapshot) -> None:
        self.swarm.show_snapshot(snapshot)

    # ---- window life --------------------------------------------------------------------------
    def bring_to_front(self) -> None:
        self.showNormal()
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt API)
        if self.quitting:
            event.accept()
            return
        if self.tray.available:
            event.ignore()
            self.hide()
            if not self.controller.settings.close_notice_shown:
                self.tray.notify("Blossom is still running", CLOSE_NOTICE)
                self.controller.update_settings(dataclasses.replace(self.controller.settings,
                                                                    close_notice_shown=True))
            return
        event.ignore()
        self.request_quit()

    def request_quit(self) -> None:
        """Stop serving, close the bridges, then emit :attr:`quit_finished` (the window hides at once)."""
        if self.quitting:
            return
        self.quitting = True
        self.hide()
        self.tray.hide()
        self.controller.shutdown()

    def _on_quit_ready(self) -> None:
        self.quit_finished.emit()
