"""The chat tab: the transcript with the reply streaming in, the message box, sampling settings and trained prompts."""
from __future__ import annotations

import html

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.bridges.chat import Sampling
from app.conversation import Conversation, Turn
from app.settings import AppSettings
from app.theme import ACCENT, BAD, MUTED
from app.widgets.common import button, wrapped_label

WELCOME = (
    "<div style='color:{muted}; margin:40px 20px;'><p style='font-size:15pt; color:#202124;'>Ask the swarm "
    "anything.</p><p>Your message goes through the servers that hold the model's blocks. In the private swarm that "
    "is only this PC, so nothing leaves it.</p><p>Enter sends, Shift+Enter starts a new line.</p></div>"
)


NO_PROMPTS = "None trained yet: see the Prompt tuning tab."


def render_turn(turn: Turn, streaming: bool) -> str:
    """One message as a bubble (HTML that QTextBrowser understands)."""
    text = html.escape(turn.content).replace("\n", "<br>")
    if turn.role == "user":
        return ("<table width='100%' cellspacing='0' cellpadding='0'><tr><td width='20%'></td><td align='right'>"
                "<table cellpadding='10' cellspacing='0' bgcolor='#fde4ee'><tr><td>"
                f"{text}</td></tr></table></td></tr></table>")
    if turn.role == "error":
        return ("<table width='100%' cellpadding='10' cellspacing='0' bgcolor='#fce8e6'><tr><td>"
                f"<span style='color:{BAD}; font-weight:600;'>Could not answer</span><br>{text}</td></tr></table>")
    caret = f"<span style='color:{ACCENT};'>▍</span>" if streaming else ""
    stopped = f"<br><span style='color:{MUTED}; font-size:9pt;'>(stopped)</span>" if turn.stopped else ""
    waiting = f"<span style='color:{MUTED};'>…</span>" if streaming and not turn.content else ""
    return ("<table width='100%' cellspacing='0' cellpadding='0'><tr><td align='left'>"
            "<table cellpadding='10' cellspacing='0' bgcolor='#f1f3f4'><tr><td>"
            f"{text}{waiting}{caret}{stopped}</td></tr></table></td><td width='20%'></td></tr></table>")


class ChatTab(QWidget):
    """Shows a :class:`Conversation` and emits what the user asks for."""

    send_requested = Signal(str)
    stop_requested = Signal()
    new_conversation_requested = Signal()
    sampling_changed = Signal(object)  # Sampling
    prompts_changed = Signal(str)  # path of the trained prompts to use, "" for none

    def __init__(self, conversation: Conversation, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page")
        self.conversation = conversation
        self._prompts_path = ""
        self.transcript = QTextBrowser()
        self.transcript.setObjectName("transcript")
        self.transcript.setOpenExternalLinks(True)
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Write a message…")
        self.input.setFixedHeight(76)
        self.input.installEventFilter(self)
        self.send_button = button("Send", primary=True, tooltip="Send (Enter)")
        self.stop_button = button("Stop", tooltip="Stop the reply")
        self.stop_button.setEnabled(False)
        self.status = QLabel("No swarm to chat with yet")
        self.status.setObjectName("muted")
        self.new_button = button("New conversation")
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setToolTip("0 picks the most likely token every time (greedy): the small demo model "
                                    "answers best that way; higher values vary the wording and err more often")
        self.temperature.setSpecialValueText("0 (greedy)")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.05)
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setRange(1, 1024)
        self.use_prompts = QCheckBox("Use trained prompts")
        self.prompts_label = wrapped_label(NO_PROMPTS, "muted")
        self.browse_prompts = button("Choose file…")
        self._build_layout()
        self._connect_signals()
        self.render()

    def _build_layout(self) -> None:
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        compose = QHBoxLayout()
        compose.addWidget(self.input, 1)
        compose.addLayout(buttons)
        left = QVBoxLayout()
        left.addWidget(self.transcript, 1)
        left.addLayout(compose)
        left.addWidget(self.status)

        sampling = QGroupBox("Sampling")
        form = QFormLayout(sampling)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Max new tokens", self.max_new_tokens)
        prompts = QGroupBox("Trained prompts")
        prompts_layout = QVBoxLayout(prompts)
        prompts_layout.addWidget(self.use_prompts)
        prompts_layout.addWidget(self.prompts_label)
        prompts_layout.addWidget(self.browse_prompts)
        side = QVBoxLayout()
        side.addWidget(self.new_button)
        side.addWidget(sampling)
        side.addWidget(prompts)
        side.addStretch(1)
        side_widget = QWidget()
        side_widget.setLayout(side)
        side_widget.setFixedWidth(260)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.setSpacing(14)
        layout.addLayout(left, 1)
        layout.addWidget(side_widget)

    def _connect_signals(self) -> None:
        self.send_button.clicked.connect(self._send)
        self.stop_button.clicked.connect(self.stop_requested)
        self.new_button.clicked.connect(self.new_conversation_requested)
        self.conversation.changed.connect(self.render)
        self.conversation.streaming_changed.connect(self._on_streaming)
        for widget in (self.temperature, self.top_p, self.max_new_tokens):
            widget.valueChanged.connect(self._emit_sampling)
        self.use_prompts.toggled.connect(self._emit_prompts)
        self.browse_prompts.clicked.connect(self._choose_prompts)

    # ---- input --------------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        if watched is self.input and event.type() == QEvent.Type.KeyPress:
            key_event: QKeyEvent = event  # type: ignore[assignment]
            if key_event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                    key_event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
                self._send()
                return True
        return super().eventFilter(watched, event)

    def _send(self) -> None:
        text = self.input.toPlainText().strip()
        if text and not self.conversation.streaming:
            self.input.clear()
            self.send_requested.emit(text)

    def sampling(self) -> Sampling:
        return Sampling(self.temperature.value(), self.top_p.value(), self.max_new_tokens.value())

    def _emit_sampling(self, *_: object) -> None:
        self.sampling_changed.emit(self.sampling())

    def _emit_prompts(self, *_: object) -> None:
        self.prompts_changed.emit(self._prompts_path if self.use_prompts.isChecked() else "")

    def _choose_prompts(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Trained prompts", self._prompts_path,
                                              "Prompts (*.safetensors);;All files (*)")
        if path:
            self.offer_prompts(path, use=True)

    # ---- display ------------------------------------------------------------------------------
    def offer_prompts(self, path: str, use: bool) -> None:
        """Make ``path`` the trained prompts file (and tick "use" when asked)."""
        self._prompts_path = path
        self.prompts_label.setText(path or NO_PROMPTS)
        self.use_prompts.setEnabled(bool(path))
        self.use_prompts.blockSignals(True)
        self.use_prompts.setChecked(bool(path) and use)
        self.use_prompts.blockSignals(False)
        self._emit_prompts()

    def show_settings(self, settings: AppSettings) -> None:
        for widget, value in ((self.temperature, settings.temperature), (self.top_p, settings.top_p),
                              (self.max_new_tokens, settings.max_new_tokens)):
            widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(False)
        if settings.prompts_path:
            self._prompts_path = settings.prompts_path
        self.prompts_label.setText(self._prompts_path or NO_PROMPTS)
        self.use_prompts.blockSignals(True)
        self.use_prompts.setChecked(bool(settings.prompts_path))
        self.use_prompts.blockSignals(False)
        self.use_prompts.setEnabled(bool(self._prompts_path))

    def show_status(self, text: str) -> None:
        self.status.setText(text)

    def _on_streaming(self, streaming: bool) -> None:
        self.send_button.setEnabled(not streaming)
        self.stop_button.setEnabled(streaming)

    def render(self) -> None:
        bar = self.transcript.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 4
        turns = self.conversation.turns
        if not turns:
            self.transcript.setHtml(WELCOME.format(muted=MUTED))
            return
        last = len(turns) - 1
        parts = [render_turn(turn, self.conversation.streaming and index == last) for index, turn in enumerate(turns)]
        self.transcript.setHtml("<div style='margin:6px;'>" + "<p></p>".join(parts) + "</div>")
        if at_bottom:
            QTimer.singleShot(0, lambda: bar.setValue(bar.maximum()))

    def transcript_text(self) -> str:
        """The transcript as plain text (what a reader sees)."""
        return self.transcript.toPlainText()
