"""The dashboard's credit card: what this PC gave today and in total, a bar chart of the last days, CSV export.

The numbers come from :mod:`app.credit` (the app's own SQLite ledger), so they survive worker
crashes and app restarts; this widget only draws them.
"""
from __future__ import annotations

import datetime

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from app.credit import DayCredit
from app.formatting import format_count
from app.theme import ACCENT
from app.widgets.common import Card, button, wrapped_label

CHART_DAYS = 14


def plural(count: int, word: str) -> str:
    """``1 inference session``, ``2 inference sessions``, ``1.2 k tokens``."""
    return f"{format_count(count)} {word}{'' if count == 1 else 's'}"


def describe_credit(credit: DayCredit) -> str:
    """One line of what a person counts: tokens, inference sessions, training requests, hours online, block-hours."""
    hours = credit.hours_online
    online = f"{hours:.1f} h online" if hours >= 0.1 else f"{credit.seconds_online / 60:.0f} min online"
    return (f"{plural(credit.tokens, 'token')} · {plural(credit.inference_sessions, 'inference session')} · "
            f"{plural(credit.training_requests, 'training request')} · {online} · "
            f"{credit.block_hours:.1f} block\u2011hours")  # a non-breaking hyphen: never "block-" / "hours"


class DayBars(QWidget):
    """Tokens per day as bars, today on the right; a day without work is an empty slot."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.days: list[DayCredit] = []
        self.setMinimumSize(200, 48)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def show_days(self, days: list[DayCredit]) -> None:
        self.days = list(days)
        tips = [f"{day.day}: {format_count(day.tokens)} tokens" for day in self.days if day.tokens]
        self.setToolTip("\n".join(tips[-7:]) or "Nothing served in the last two weeks yet")
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt API)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        label_height = 14
        area = QRectF(self.rect()).adjusted(0, 2, 0, -label_height)
        count = max(len(self.days), 1)
        slot = area.width() / count
        top = max((day.tokens for day in self.days), default=0)
        painter.setPen(QColor("#dadce0"))
        painter.drawLine(area.bottomLeft(), area.bottomRight())
        painter.setPen(Qt.PenStyle.NoPen)
        for index, day in enumerate(self.days):
            if not day.tokens or not top:
                continue
            height = max(area.height() * day.tokens / top, 2.0)
            painter.setBrush(QColor(ACCENT) if index == count - 1 else QColor("#f4a6c6"))
            painter.drawRoundedRect(QRectF(area.left() + index * slot + slot * 0.15, area.bottom() - height,
                                           slot * 0.7, height), 2, 2)
        painter.setPen(QColor("#5f6368"))
        for index, day in enumerate(self.days):
            if index in (0, count - 1):
                text = "today" if index == count - 1 else datetime.date.fromisoformat(day.day).strftime("%d %b")
                flags = Qt.AlignmentFlag.AlignRight if index == count - 1 else Qt.AlignmentFlag.AlignLeft
                painter.drawText(QRectF(area.left(), area.bottom() + 1, area.width(), label_height), flags, text)
        painter.end()


class CreditCard(Card):
    """Today and lifetime totals, the chart, and an Export CSV button."""

    export_requested = Signal(str)  # the CSV file the user chose

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("What this PC gave", parent)
        self.today = wrapped_label("", "muted")
        self.lifetime = wrapped_label("", "muted")
        self.bars = DayBars()
        self.export_button = button("Export CSV…", tooltip="Save every day's statistics as a CSV file")
        self.message = QLabel("")
        self.message.setObjectName("muted")
        text = QVBoxLayout()
        text.setSpacing(2)
        for caption, label in (("Today", self.today), ("Since the first start", self.lifetime)):
            title = QLabel(caption)
            title.setObjectName("statCaption")
            title.setFixedWidth(130)
            line = QHBoxLayout()
            line.addWidget(title, 0, Qt.AlignmentFlag.AlignTop)
            line.addWidget(label, 1, Qt.AlignmentFlag.AlignTop)
            text.addLayout(line)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.message, 1)
        text.addSpacing(4)
        text.addLayout(buttons)
        row = QHBoxLayout()
        row.setSpacing(16)
        row.addLayout(text, 5)
        row.addWidget(self.bars, 2, Qt.AlignmentFlag.AlignTop)
        self.body.addLayout(row)
        self.export_button.clicked.connect(self._choose_file)

    def show_credit(self, today: DayCredit, lifetime: DayCredit, days: list[DayCredit]) -> None:
        self.today.setText(describe_credit(today))
        self.lifetime.setText(describe_credit(lifetime))
        self.today.setToolTip(f"Up to {today.max_blocks} blocks held today")
        self.lifetime.setToolTip(f"Up to {lifetime.max_blocks} blocks held on one day; a block-hour is one block "
                                 "served for one hour")
        self.bars.show_days(days)

    def show_message(self, text: str) -> None:
        self.message.setText(text)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export statistics", "blossom-statistics.csv", "CSV files (*.csv)")
        if path:
            self.export_requested.emit(path)
