"""The Settings tab's "Limits" box: the most of this PC Blossom may use (:mod:`app.limits`) as a form."""
from __future__ import annotations

import dataclasses

from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox, QVBoxLayout, QWidget

from app.settings import AppSettings
from app.widgets.common import wrapped_label


class LimitsBox(QGroupBox):
    """VRAM, RAM share, CPU threads and a GPU power cap; 0 (or 100 %) means no limit."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Limits", parent)
        self.max_vram = QDoubleSpinBox()
        self.max_vram.setRange(0.0, 256.0)
        self.max_vram.setSingleStep(0.5)
        self.max_vram.setDecimals(1)
        self.max_vram.setSuffix(" GiB")
        self.max_vram.setSpecialValueText("no limit")
        self.ram_percent = QSpinBox()
        self.ram_percent.setRange(5, 100)
        self.ram_percent.setSuffix(" % of the RAM")
        self.cpu_threads = QSpinBox()
        self.cpu_threads.setRange(0, 512)
        self.cpu_threads.setSpecialValueText("all")
        self.power = QSpinBox()
        self.power.setRange(0, 1000)
        self.power.setSuffix(" W")
        self.power.setSpecialValueText("no cap")
        for widget in (self.max_vram, self.ram_percent, self.cpu_threads, self.power):
            widget.setFixedWidth(180)
        self.power_note = wrapped_label("", "muted")
        self.power_note.hide()
        form = QFormLayout()
        form.addRow("Most VRAM to use", self.max_vram)
        form.addRow("Most RAM to use", self.ram_percent)
        form.addRow("CPU threads", self.cpu_threads)
        form.addRow("GPU power cap", self.power)
        layout = QVBoxLayout(self)  # wrapped labels go under the form: inside one, Qt reserves odd heights
        layout.addLayout(form)
        layout.addWidget(self.power_note)
        layout.addWidget(wrapped_label("The recommendation on the Dashboard and the server follow these limits from "
                                      "the next start of serving (a private swarm still serves every block).",
                                      "muted"))

    def show_settings(self, settings: AppSettings) -> None:
        self.max_vram.setValue(settings.max_vram_gib)
        self.ram_percent.setValue(settings.ram_percent)
        self.cpu_threads.setValue(settings.cpu_threads)
        self.power.setValue(settings.gpu_power_watts)

    def show_power_note(self, text: str) -> None:
        """What the driver said to the power cap (e.g. that only administrators may set one)."""
        self.power_note.setText(text)
        self.power_note.setVisible(bool(text))

    def edited(self, settings: AppSettings) -> AppSettings:
        return dataclasses.replace(settings, max_vram_gib=self.max_vram.value(), ram_percent=self.ram_percent.value(),
                                   cpu_threads=self.cpu_threads.value(), gpu_power_watts=self.power.value())
