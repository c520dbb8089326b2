"""The prompt-tuning tab: dataset and settings, progress and live loss, stop, save, and "try in chat".

The run is set up as a :class:`core.tuning.TrainingConfig` (its defaults are the controls' starting
values); the app adds the model and the swarm (:meth:`app.app_controller.AppController.start_tuning`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.widgets.common import Card, button, wrapped_label
from app.widgets.loss_plot import LossPlot
from core.tuning import TUNING_MODES, TrainingConfig

MODE_LABELS = {"ptune": "Prompt tuning (ptune): trainable tokens before the input",
               "deep_ptune": "Deep prompt tuning (deep_ptune): also a prompt for every block"}
DEFAULTS = TrainingConfig(model_path="", initial_peers=(), dataset_path="")
EXAMPLE_DATASET = Path(__file__).resolve().parents[2] / "resources" / "examples" / "flower_facts.txt"
TRY_HINT = "Save the prompts first: Try in chat uses the saved file"


class TuningTab(QWidget):
    """Thin view over the tuning bridge's reports."""

    start_requested = Signal(object)  # TrainingConfig without model_path and initial_peers
    stop_requested = Signal()
    save_requested = Signal(str)  # path
    try_in_chat_requested = Signal(str)  # path of saved prompts

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page")
        self.saved_path = ""
        self.suggested_path = ""
        self.dataset = QLineEdit()
        self.dataset.setPlaceholderText("A .txt file (one example per line) or .jsonl ({\"text\": …} per line)")
        if EXAMPLE_DATASET.exists():  # an example ships: a first run works without looking for data
            self.dataset.setText(str(EXAMPLE_DATASET))
        self.browse = button("Browse…")
        self.mode = QComboBox()
        for mode in TUNING_MODES:
            self.mode.addItem(MODE_LABELS.get(mode, mode), mode)
        self.mode.setCurrentIndex(TUNING_MODES.index(DEFAULTS.tuning_mode))
        self.prompt_length = QSpinBox()
        self.prompt_length.setRange(1, 512)
        self.prompt_length.setValue(DEFAULTS.pre_seq_len)
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(DEFAULTS.steps)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(0.00001, 10.0)
        self.learning_rate.setSingleStep(0.001)
        self.learning_rate.setValue(DEFAULTS.learning_rate)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 256)
        self.batch_size.setValue(DEFAULTS.batch_size)
        self.max_seq_len = QSpinBox()
        self.max_seq_len.setRange(8, 4096)
        self.max_seq_len.setValue(DEFAULTS.max_seq_len)
        self.start_button = button("Start training", primary=True)
        self.stop_button = button("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress_label = QLabel("Not started")
        self.progress_label.setObjectName("muted")
        self.progress_label.setFixedWidth(380)  # a longer status must not squeeze the bar
        self.plot = LossPlot()
        self.save_button = button("Save prompts…")
        self.save_button.setEnabled(False)
        self.try_button = button("Try in chat", primary=True)
        self.try_button.setEnabled(False)
        self.try_button.setToolTip(TRY_HINT)
        self.saved_label = wrapped_label("", "muted")
        self.message = wrapped_label("", "errorText")
        self.message.hide()
        self._build_layout()
        self._connect_signals()

    def _build_layout(self) -> None:
        dataset_row = QHBoxLayout()
        dataset_row.addWidget(self.dataset, 1)
        dataset_row.addWidget(self.browse)
        settings = QGroupBox("Training run")
        form = QFormLayout(settings)
        form.addRow("Dataset", dataset_row)
        form.addRow("Mode", self.mode)
        numbers = QHBoxLayout()
        for caption, widget in (("Prompt length", self.prompt_length), ("Steps", self.steps),
                                ("Learning rate", self.learning_rate), ("Batch size", self.batch_size),
                                ("Max tokens per example", self.max_seq_len)):
            label = QLabel(caption)
            label.setObjectName("muted")
            numbers.addWidget(label)
            numbers.addWidget(widget)
            numbers.addSpacing(8)
        numbers.addStretch(1)
        form.addRow(numbers)
        controls = QHBoxLayout()
        controls.addWidget(self.start_button)
        controls.addWidget(self.stop_button)
        controls.addSpacing(12)
        controls.addWidget(self.progress, 1)
        controls.addWidget(self.progress_label)
        plot_card = Card("Loss")
        plot_card.body.addWidget(self.plot, 1)
        results = QHBoxLayout()
        results.addWidget(self.save_button)
        results.addWidget(self.try_button)
        results.addWidget(self.saved_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.setSpacing(12)
        layout.addWidget(settings)
        layout.addLayout(controls)
        layout.addWidget(self.message)
        layout.addWidget(plot_card, 1)
        layout.addLayout(results)

    def _connect_signals(self) -> None:
        self.browse.clicked.connect(self._choose_dataset)
        self.start_button.clicked.connect(self._start)
        self.stop_button.clicked.connect(self.stop_requested)
        self.save_button.clicked.connect(self._choose_save_path)
        self.try_button.clicked.connect(lambda: self.try_in_chat_requested.emit(self.saved_path))

    def _choose_dataset(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Training data", self.dataset.text(),
                                              "Text or JSON lines (*.txt *.jsonl);;All files (*)")
        if path:
            self.dataset.setText(path)

    def _choose_save_path(self) -> None:
        start = self.suggested_path or str(Path.home() / "prompts.safetensors")  # never the working directory
        Path(start).parent.mkdir(parents=True, exist_ok=True)
        path, _ = QFileDialog.getSaveFileName(self, "Save trained prompts", start, "Prompts (*.safetensors)")
        if path:
            self.save_requested.emit(path if path.endswith(".safetensors") else path + ".safetensors")

    def request(self) -> TrainingConfig:
        """The run the controls describe (the app fills in ``model_path`` and ``initial_peers``)."""
        return dataclasses.replace(DEFAULTS, dataset_path=self.dataset.text().strip(),
                                   tuning_mode=self.mode.currentData(), pre_seq_len=self.prompt_length.value(),
                                   steps=self.steps.value(), learning_rate=self.learning_rate.value(),
                                   batch_size=self.batch_size.value(), max_seq_len=self.max_seq_len.value())

    def _start(self) -> None:
        self.show_message("")
        self.start_requested.emit(self.request())

    # ---- reports ------------------------------------------------------------------------------
    def show_busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        for widget in (self.dataset, self.browse, self.mode, self.prompt_length, self.steps, self.learning_rate,
                       self.batch_size, self.max_seq_len):
            widget.setEnabled(not busy)
        if busy:
            self.save_button.setEnabled(False)

    def begin_run(self, total_steps: int) -> None:
        self.plot.clear(total_steps)
        self.progress.setRange(0, total_steps)
        self.progress.setValue(0)
        self.progress_label.setText("Connecting to the swarm…")
        self.try_button.setEnabled(False)
        self.try_button.setToolTip(TRY_HINT)
        self.saved_label.setText("")
        self.saved_path = ""

    def show_step(self, step: int, total_steps: int, loss: float) -> None:
        self.progress.setRange(0, total_steps)
        self.progress.setValue(step)
        self.progress_label.setText(f"Step {step} of {total_steps} · loss {loss:.4f}")
        self.plot.add_point(step, loss)

    def show_status(self, text: str) -> None:
        self.progress_label.setText(text)

    def show_finished(self, steps_done: int, total_steps: int, stopped: bool, last_loss: float | None) -> None:
        self.save_button.setEnabled(steps_done > 0)
        loss = f" · final loss {last_loss:.4f}" if last_loss is not None else ""
        self.progress_label.setText(f"{'Stopped' if stopped else 'Finished'} after {steps_done} of {total_steps} "
                                    f"steps{loss}")

    def show_saved(self, path: str) -> None:
        self.saved_path = path
        self.saved_label.setText(f"Saved to {path}")
        self.try_button.setEnabled(True)
        self.try_button.setToolTip("Start a new chat that uses these prompts")

    def show_remembered(self, dataset: str, steps: int) -> None:
        """The dataset and steps of the last run (kept in the settings), where there was one."""
        if dataset:
            self.dataset.setText(dataset)
        if steps:
            self.steps.setValue(steps)

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
