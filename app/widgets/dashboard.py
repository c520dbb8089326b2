"""The dashboard tab: what this node is doing, the buttons to change it, its counters, hardware and log."""
from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QVBoxLayout, QWidget

from app.formatting import block_ranges_as_people_write_them, format_blocks, format_count, format_duration, format_rate
from app.icons import render_pixmap
from app.reachability import ReachabilityLine
from app.theme import REACHABILITY_COLORS, STATE_TEXT_COLORS
from app.widgets.common import Card, StatTile, button, wrapped_label
from app.widgets.credit_panel import CreditCard
from app.widgets.hardware_panel import HardwareCard, RecommendationCard
from app.worker.messages import StatusEvent, WorkerState

STATE_TITLES = {
    WorkerState.STARTING: "Starting…",
    WorkerState.SERVING: "Serving",
    WorkerState.PAUSING: "Pausing…",
    WorkerState.PAUSED: "Paused",
    WorkerState.RESUMING: "Resuming…",
    WorkerState.STOPPING: "Stopping…",
    WorkerState.STOPPED: "Not serving",
    WorkerState.ERROR: "The server stopped with an error",
}
ICON_FOR_STATE = {
    WorkerState.STARTING: "starting", WorkerState.RESUMING: "starting", WorkerState.SERVING: "serving",
    WorkerState.PAUSING: "paused", WorkerState.PAUSED: "paused", WorkerState.STOPPING: "stopped",
    WorkerState.STOPPED: "stopped", WorkerState.ERROR: "error",
}
LOG_LINES = 2000


class StatusCard(Card):
    """The state in big letters, what is served, and the buttons that make sense in this state."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("", parent)
        self.icon = QLabel()
        self.icon.setFixedSize(56, 56)
        self.title = QLabel(STATE_TITLES[WorkerState.STOPPED])
        self.title.setObjectName("stateTitle")
        self.subtitle = wrapped_label("", "muted")
        self.reachability = wrapped_label("", "reachability")
        self.reachability.hide()
        self.reachability_line: ReachabilityLine | None = None
        self.start_button = button("Start serving", primary=True, tooltip="Serve blocks of the model to the swarm")
        self.pause_button = button("Pause", tooltip="Stop taking new work and free the memory once open sessions end")
        self.resume_button = button("Resume", primary=True, tooltip="Serve the same blocks again")
        self.stop_button = button("Stop", tooltip="Stop serving and leave the swarm")
        self.restart_button = button("Restart", primary=True, tooltip="Start the server again")
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.subtitle)
        text.addWidget(self.reachability)
        row = QHBoxLayout()
        row.setSpacing(14)
        row.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        row.addLayout(text, 1)
        for widget in (self.start_button, self.pause_button, self.resume_button, self.restart_button,
                       self.stop_button):
            row.addWidget(widget, 0, Qt.AlignmentFlag.AlignVCenter)
        self.body.addLayout(row)
        self.note = wrapped_label("", "muted")
        self.note.hide()
        self.body.addWidget(self.note)
        self.stage = wrapped_label("", "muted")  # what the preparation does now (a busy bar draws no text)
        self.stage.hide()
        self.body.addWidget(self.stage)
        self.preparation = QProgressBar()  # the first run's conversion of the demo model, stage by stage
        self.preparation.setTextVisible(True)
        self.preparation.hide()
        self.body.addWidget(self.preparation)
        self.api = wrapped_label("", "apiLine")
        self.api.hide()
        self.body.addWidget(self.api)
        self.problem = wrapped_label("", "errorText")
        self.problem.hide()
        self.body.addWidget(self.problem)
        self.show_state(WorkerState.STOPPED, "")

    def show_state(self, state: WorkerState, subtitle: str) -> None:
        self.icon.setPixmap(render_pixmap(ICON_FOR_STATE[state], 56))
        self.title.setText(STATE_TITLES[state])
        self.title.setStyleSheet(f"color: {STATE_TEXT_COLORS.get(state.value, '#202124')};")
        self.subtitle.setText(subtitle)
        self.start_button.setVisible(state == WorkerState.STOPPED)
        self.pause_button.setVisible(state in (WorkerState.SERVING, WorkerState.PAUSING))
        self.pause_button.setEnabled(state == WorkerState.SERVING)
        self.resume_button.setVisible(state in (WorkerState.PAUSED, WorkerState.RESUMING))
        self.resume_button.setEnabled(state == WorkerState.PAUSED)
        self.restart_button.setVisible(state == WorkerState.ERROR)
        self.stop_button.setVisible(state not in (WorkerState.STOPPED, WorkerState.ERROR))
        self.stop_button.setEnabled(state != WorkerState.STOPPING)

    def show_problem(self, text: str) -> None:
        self.problem.setText(text)
        self.problem.setVisible(bool(text))

    def show_reachability(self, line: ReachabilityLine | None) -> None:
        """How others reach this PC (hidden when ``None``); the technical line is the tooltip."""
        self.reachability.setVisible(line is not None)
        if line is not None and line != self.reachability_line:
            self.reachability.setText(line.text)
            self.reachability.setToolTip(line.tooltip)
            self.reachability.setStyleSheet(f"color: {REACHABILITY_COLORS[line.tone]};")
        self.reachability_line = line

    def show_note(self, text: str) -> None:
        self.note.setText(text)
        self.note.setVisible(bool(text))

    def show_progress(self, stage: str, done: int, total: int) -> None:
        """A stage of the model's preparation: a counted bar (``done`` of ``total``) or a busy one (``total`` 0)."""
        self.stage.setText(f"{stage}…")
        self.preparation.setRange(0, total)
        self.preparation.setValue(done)
        self.preparation.setFormat(f"{done} of {total}" if total else "")
        for widget in (self.stage, self.preparation):
            widget.setVisible(True)

    def show_api(self, line: str, failed: bool) -> None:
        self.api.setText(line)
        self.api.setObjectName("errorText" if failed else "apiLine")
        self.api.style().unpolish(self.api)  # the style sheet's colour follows the new object name
        self.api.style().polish(self.api)
        self.api.setVisible(bool(line))


class DashboardTab(QWidget):
    """Serving controls and status, hardware, recommendation and the worker's log."""

    start_requested = Signal()
    pause_requested = Signal()
    resume_requested = Signal()
    stop_requested = Signal()
    restart_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page")
        self.status = StatusCard()
        self.tiles = {key: StatTile(caption) for key, caption in (
            ("blocks", "blocks served"), ("peers", "other servers"), ("requests", "requests served"),
            ("tokens", "tokens processed"), ("uptime", "uptime"), ("speed", "tokens/s now"))}
        stats = Card()
        grid = QGridLayout()
        grid.setHorizontalSpacing(24)
        for column, tile in enumerate(self.tiles.values()):
            grid.addWidget(tile, 0, column)
        stats.body.addLayout(grid)
        self.credit = CreditCard()
        self.hardware = HardwareCard()
        self.recommendation = RecommendationCard()
        self.log = QPlainTextEdit()
        self.log.setObjectName("log")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setPlaceholderText("The server's log appears here.")
        log_card = Card("Activity")
        log_card.body.addWidget(self.log)
        middle = QHBoxLayout()
        middle.setSpacing(12)
        middle.addWidget(self.hardware, 2)
        middle.addWidget(self.recommendation, 3)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.setSpacing(12)
        layout.addWidget(self.status)
        layout.addWidget(stats)
        layout.addWidget(self.credit)
        layout.addLayout(middle)
        layout.addWidget(log_card, 1)
        self._connect_signals()

    def _connect_signals(self) -> None:
        self.status.start_button.clicked.connect(self.start_requested)
        self.status.pause_button.clicked.connect(self.pause_requested)
        self.status.resume_button.clicked.connect(self.resume_requested)
        self.status.stop_button.clicked.connect(self.stop_requested)
        self.status.restart_button.clicked.connect(self.restart_requested)

    def show_status(self, status: StatusEvent, swarm_label: str, reachability: ReachabilityLine | None = None) -> None:
        """Update the state, the subtitle, how others reach this PC and the counters from a worker status."""
        state = status.state
        if state in (WorkerState.SERVING, WorkerState.PAUSING) and status.total_blocks:
            subtitle = (f"Blocks {format_blocks(status.start_block, status.end_block)} of {status.model_name} "
                        f"({status.num_blocks} of {status.total_blocks}) · {status.torch_dtype}"
                        f"{'' if status.quant_type == 'none' else ' ' + status.quant_type} on {status.device} · "
                        f"{swarm_label}")
            if status.detail and state == WorkerState.PAUSING:
                subtitle = f"{status.detail} · {subtitle}"
        else:
            subtitle = status.detail or (swarm_label if state == WorkerState.STOPPED else "")
        self.status.show_state(state, subtitle)
        self.status.show_reachability(reachability if state == WorkerState.SERVING else None)
        if state == WorkerState.ERROR:
            self.status.show_problem("")
        serving = state == WorkerState.SERVING
        span = f"{status.num_blocks} / {status.total_blocks}" if status.total_blocks and serving else "0"
        self.tiles["blocks"].set_value(span, f"blocks {format_blocks(status.start_block, status.end_block)}"
                                       if status.total_blocks else "")
        self.tiles["peers"].set_value(str(status.peers) if serving else "–")
        served = status.inference_sessions + status.training_requests
        self.tiles["requests"].set_value(format_count(served), (
            f"{status.inference_sessions:,} inference sessions (a chat reply is one) and "
            f"{status.training_requests:,} training requests since this worker started; "
            f"{status.requests:,} computing steps (one per token) behind them"))
        self.tiles["tokens"].set_value(format_count(status.tokens))
        self.tiles["uptime"].set_value(format_duration(status.uptime) if status.uptime else "–",
                                       "Time spent serving since this worker started (pauses not counted)")
        capacity = (f"Announced capacity: {format_rate(status.throughput)} tokens/s per block, measured when the "
                    "server started" if status.throughput else "")
        self.tiles["speed"].set_value(format_rate(status.tokens_per_second) if serving else "–",
                                      "Tokens this PC processed per second over the last 10 s. " + capacity)

    def show_problem(self, text: str) -> None:
        """An error the user should act on (empty: none)."""
        self.status.show_problem(text)

    def show_note(self, text: str) -> None:
        """Something under way that is not an error, e.g. the demo model being prepared (empty: none)."""
        self.status.show_note(text)

    def show_model_preparing(self, text: str) -> None:
        """While the model is prepared (``text`` says how), Start waits, greyed, with the reason as its tooltip."""
        self.status.show_note(text)
        if not text:
            self.status.stage.hide()
            self.status.preparation.hide()
        self.status.start_button.setEnabled(not text)
        self.status.start_button.setToolTip(f"{text} Start is possible once it is ready." if text
                                            else "Serve blocks of the model to the swarm")

    def show_model_progress(self, stage: str, done: int, total: int) -> None:
        """How far the model's preparation is (the first run converts the bundled demo model)."""
        self.status.show_progress(stage, done, total)

    def show_api_status(self, status: object) -> None:
        """The API process's status (``app.api_process``): its line, red when it failed."""
        self.show_api(status.line, status.failed)

    def show_api(self, line: str, failed: bool = False) -> None:
        """The OpenAI-compatible API's address, or why it is not there (empty: the API is off)."""
        self.status.show_api(line, failed)

    def append_log(self, level: str, text: str) -> None:
        """One worker log line with the time it arrived; the view keeps following the end unless scrolled up."""
        prefix = "" if level in ("INFO", "OUTPUT") else f"{level}: "
        bar = self.log.verticalScrollBar()
        following = bar.value() >= bar.maximum() - 2
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {prefix}{block_ranges_as_people_write_them(text)}")
        if following:
            bar.setValue(bar.maximum())
