"""The system tray icon: its flower shows the serving state; its menu pauses or resumes, opens the window, quits."""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.icons import state_icon
from app.widgets.dashboard import ICON_FOR_STATE, STATE_TITLES
from app.worker.messages import WorkerState


class TrayIcon(QObject):
    """Wraps :class:`QSystemTrayIcon`; :attr:`available` is False where the desktop has no tray."""

    pause_requested = Signal()
    resume_requested = Signal()
    start_requested = Signal()
    open_requested = Signal()
    quit_requested = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.available = QSystemTrayIcon.isSystemTrayAvailable()
        self.state = WorkerState.STOPPED
        self.icon = QSystemTrayIcon(state_icon("stopped"), self)
        self.menu = QMenu()
        self.status_action = QAction(STATE_TITLES[WorkerState.STOPPED], self.menu)
        self.status_action.setEnabled(False)
        self.toggle_action = QAction("Start serving", self.menu)
        self.open_action = QAction("Open Blossom", self.menu)
        self.quit_action = QAction("Quit", self.menu)
        self.menu.addAction(self.status_action)
        self.menu.addSeparator()
        self.menu.addAction(self.toggle_action)
        self.menu.addAction(self.open_action)
        self.menu.addSeparator()
        self.menu.addAction(self.quit_action)
        self.icon.setContextMenu(self.menu)
        self.icon.setToolTip("Blossom")
        self._connect_signals()

    def _connect_signals(self) -> None:
        self.toggle_action.triggered.connect(self._toggle)
        self.open_action.triggered.connect(self.open_requested)
        self.quit_action.triggered.connect(self.quit_requested)
        self.icon.activated.connect(self._on_activated)

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.open_requested.emit()

    def _toggle(self) -> None:
        if self.state == WorkerState.SERVING:
            self.pause_requested.emit()
        elif self.state == WorkerState.PAUSED:
            self.resume_requested.emit()
        elif self.state in (WorkerState.STOPPED, WorkerState.ERROR):
            self.start_requested.emit()

    def show(self) -> None:
        if self.available:
            self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    def show_state(self, state: WorkerState, detail: str = "", reachability: str = "") -> None:
        """Switch the icon, tooltip and menu to ``state``; the tooltip also says how others reach this PC."""
        self.state = state
        self.icon.setIcon(state_icon(ICON_FOR_STATE[state]))
        title = STATE_TITLES[state]
        self.icon.setToolTip("\n".join(filter(None, (f"Blossom: {title}", detail, reachability))))
        self.status_action.setText(title)
        texts = {WorkerState.SERVING: "Pause serving", WorkerState.PAUSED: "Resume serving",
                 WorkerState.ERROR: "Restart serving"}
        self.toggle_action.setText(texts.get(state, "Start serving" if state == WorkerState.STOPPED
                                             else "Pause serving"))
        self.toggle_action.setEnabled(state in (WorkerState.SERVING, WorkerState.PAUSED, WorkerState.STOPPED,
                                                WorkerState.ERROR))

    def notify(self, title: str, text: str) -> None:
        """A balloon message (where the tray supports them)."""
        if self.available and QSystemTrayIcon.supportsMessages():
            self.icon.showMessage(title, text, state_icon(ICON_FOR_STATE[self.state]), 8000)
