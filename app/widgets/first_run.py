"""The first-run page: what Blossom will do with this PC, in plain words, before it does anything.

A volunteer lends a computer to strangers; they should know what passes through it and what is
opened to the network before the first block is served. Serving starts only after the choice on
this page (:meth:`app.app_controller.AppController.finish_first_run`), which the settings remember.
"""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from app.icons import render_pixmap
from app.settings import AppSettings
from app.widgets.common import Card, button, wrapped_label


def explain(settings: AppSettings) -> list[tuple[str, str]]:
    """(heading, text) pairs for these settings: the private demo and a joined swarm differ in what leaves the PC."""
    if settings.private_swarm:
        network = ("Blossom starts a private swarm on this PC only: it listens on 127.0.0.1 and opens no port "
                   "to the network. Nothing leaves this computer; the chat and the demo model run here.")
    else:
        port = f"port {settings.port}" if settings.port else "a free port chosen at each start"
        network = (f"Blossom joins the swarm you chose and accepts connections on {port} (TCP). It may ask your "
                   "router to forward that port (UPnP), or reach others through a relay when it cannot.")
    return [
        ("What Blossom does with this PC",
         "It runs a part of a large language model (a few of its layers, called blocks) for people who use the "
         "swarm, using your graphics card if it has one, otherwise the processor. You can pause or stop at any "
         "time, from the dashboard or the tray icon, and it pauses by itself while a game or a full-screen "
         "program runs."),
        ("What passes through it",
         "Hidden states: lists of numbers that other people's prompts become inside the model, on their way "
         "through the layers this PC holds. Never files, never anything from your disk, and nothing is kept "
         "after a conversation ends."),
        ("The network", network),
        ("What is kept here",
         "The model's files, your settings, logs and a count of the work done (tokens, requests, hours), all "
         "in your user folder."),
    ]


class FirstRunPage(QWidget):
    """Shown instead of the tabs until the user chooses to serve now or later."""

    answered = Signal(bool)  # True: start serving now

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page")
        icon = QLabel()
        icon.setPixmap(render_pixmap("serving", 64))
        title = QLabel("Welcome to Blossom")
        title.setObjectName("stateTitle")
        subtitle = wrapped_label("Before anything runs, here is what it means for this computer.", "muted")
        header = QHBoxLayout()
        header.setSpacing(14)
        header.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        heading = QVBoxLayout()
        heading.addWidget(title)
        heading.addWidget(subtitle)
        header.addLayout(heading, 1)
        card = Card()
        self.sections: list[QLabel] = []
        for caption, text in explain(settings):
            label = QLabel(caption)
            label.setObjectName("cardTitle")
            body = wrapped_label(text)
            self.sections.append(body)
            card.body.addWidget(label)
            card.body.addWidget(body)
        self.start_button = button("Start serving now", primary=True)
        self.later_button = button("Not now", tooltip="Open the app without serving; start from the Dashboard")
        hint = wrapped_label("Your choice is remembered: Blossom starts serving by itself next time only if you "
                             "start now (Settings can change it).", "muted")
        buttons = QHBoxLayout()
        buttons.addWidget(hint, 1)
        buttons.addWidget(self.later_button)
        buttons.addWidget(self.start_button)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(32, 24, 32, 24)
        layout.setSpacing(14)
        layout.addLayout(header)
        layout.addWidget(card)
        layout.addLayout(buttons)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.start_button.clicked.connect(lambda: self.answered.emit(True))
        self.later_button.clicked.connect(lambda: self.answered.emit(False))
