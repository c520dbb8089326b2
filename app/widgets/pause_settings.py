"""The Settings tab's "Pause by itself" box: the auto-pause rules (:mod:`app.pause_policy`) as a form.

Kept apart from :mod:`app.widgets.settings` so that tab only places this box and hands settings through
:meth:`PauseSettingsBox.show_settings` and :meth:`PauseSettingsBox.edited`.
"""
from __future__ import annotations

import dataclasses

from PySide6.QtCore import QTime
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QTimeEdit,
    QVBoxLayout,
    QWidget,
)

from app.auto_pause import default_programs
from app.settings import AppSettings
from app.widgets.common import button, wrapped_label


class PauseSettingsBox(QGroupBox):
    """When serving pauses by itself, and resumes once that is over."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Pause by itself", parent)
        self.enabled = QCheckBox("Pause serving by itself when this PC is needed, and resume afterwards")
        self.programs = QPlainTextEdit()
        self.programs.setFixedHeight(76)
        self.programs.setPlaceholderText("Program names, one per line, e.g. steam or EpicGamesLauncher.exe")
        self.programs.setToolTip("Serving pauses while any of these programs runs (process names; case and .exe "
                                 "do not matter)")
        self.restore_programs = button("Game launchers", tooltip="Put back the list Blossom ships with")
        self.fullscreen = QCheckBox("While a program is full-screen (games, videos, presentations)")
        self.gpu_percent = QSpinBox()
        self.gpu_percent.setRange(0, 100)
        self.gpu_percent.setSuffix(" %")
        self.gpu_percent.setSpecialValueText("never")
        self.gpu_percent.setFixedWidth(100)
        self.gpu_percent.setToolTip("Pause when other programs keep an NVIDIA GPU at least this busy (0: never)")
        self.battery = QCheckBox("While this PC runs on battery")
        self.active = QCheckBox("While I use this PC; resume after")
        self.idle_minutes = QSpinBox()
        self.idle_minutes.setRange(1, 240)
        self.idle_minutes.setSuffix(" min idle")
        self.schedule = QCheckBox("Serve only from")
        self.schedule_start = QTimeEdit()
        self.schedule_end = QTimeEdit()
        for edit in (self.schedule_start, self.schedule_end):
            edit.setDisplayFormat("HH:mm")
        self.notes = wrapped_label("", "muted")
        self.notes.hide()
        form = QFormLayout()
        form.addRow("", self.enabled)
        programs_row = QHBoxLayout()
        programs_row.addWidget(self.programs, 1)
        programs_row.addWidget(self.restore_programs)
        form.addRow("While running", programs_row)
        form.addRow("", self.fullscreen)
        form.addRow("Other programs use the GPU", self.gpu_percent)
        form.addRow("", self.battery)
        active_row = QHBoxLayout()
        active_row.addWidget(self.active)
        active_row.addWidget(self.idle_minutes)
        active_row.addStretch(1)
        form.addRow("", active_row)
        schedule_row = QHBoxLayout()
        schedule_row.addWidget(self.schedule)
        schedule_row.addWidget(self.schedule_start)
        schedule_row.addWidget(QLabel("to"))
        schedule_row.addWidget(self.schedule_end)
        schedule_row.addStretch(1)
        form.addRow("", schedule_row)
        layout = QVBoxLayout(self)  # wrapped labels go under the form: inside one, Qt reserves odd heights
        layout.addLayout(form)
        layout.addWidget(self.notes)
        self.restore_programs.clicked.connect(lambda: self.programs.setPlainText("\n".join(default_programs())))
        for box in (self.enabled, self.active, self.schedule):
            box.toggled.connect(self._update_enabled)

    def _update_enabled(self, *_: object) -> None:
        on = self.enabled.isChecked()
        for widget in (self.programs, self.restore_programs, self.fullscreen, self.gpu_percent, self.battery,
                       self.active, self.schedule):
            widget.setEnabled(on)
        self.idle_minutes.setEnabled(on and self.active.isChecked())
        self.schedule_start.setEnabled(on and self.schedule.isChecked())
        self.schedule_end.setEnabled(on and self.schedule.isChecked())

    def show_settings(self, settings: AppSettings) -> None:
        self.enabled.setChecked(settings.auto_pause)
        self.programs.setPlainText("\n".join(settings.pause_programs))
        self.fullscreen.setChecked(settings.pause_when_fullscreen)
        self.gpu_percent.setValue(settings.pause_gpu_percent)
        self.battery.setChecked(settings.pause_on_battery)
        self.active.setChecked(settings.pause_when_active)
        self.idle_minutes.setValue(settings.pause_idle_minutes)
        self.schedule.setChecked(settings.schedule_enabled)
        for edit, text in ((self.schedule_start, settings.schedule_start), (self.schedule_end, settings.schedule_end)):
            time = QTime.fromString(text, "HH:mm")
            edit.setTime(time if time.isValid() else QTime(0, 0))
        self._update_enabled()

    def show_observation(self, seen: object) -> None:
        """The auto-pause checks' latest observation: shows its notes."""
        self.show_notes(seen.notes)

    def show_notes(self, notes: tuple[str, ...]) -> None:
        """What the checks cannot see on this PC (e.g. no NVIDIA GPU), so nobody relies on a rule that is off."""
        self.notes.setText("\n".join(notes))
        self.notes.setVisible(bool(notes))

    def edited(self, settings: AppSettings) -> AppSettings:
        """``settings`` with this box's values."""
        programs = [line.strip() for line in self.programs.toPlainText().splitlines() if line.strip()]
        return dataclasses.replace(
            settings, auto_pause=self.enabled.isChecked(), pause_programs=programs,
            pause_when_fullscreen=self.fullscreen.isChecked(), pause_gpu_percent=self.gpu_percent.value(),
            pause_on_battery=self.battery.isChecked(), pause_when_active=self.active.isChecked(),
            pause_idle_minutes=self.idle_minutes.value(), schedule_enabled=self.schedule.isChecked(),
            schedule_start=self.schedule_start.time().toString("HH:mm"),
            schedule_end=self.schedule_end.time().toString("HH:mm"))
