"""A picture of a model's block coverage: one row per server over the blocks it holds, uncovered blocks in red.

Drawn with QPainter from a ``core.dht.swarm_status.ModelSwarm`` (read through attributes only, so
this module imports nothing from hivemind).
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.formatting import format_rate, short_peer_id
from app.theme import ACCENT, BAD, BORDER, MUTED, TEXT

LABEL_WIDTH = 170
ROW_HEIGHT = 24
ROW_GAP = 6
HEADER_HEIGHT = 22
FOOTER_HEIGHT = 30
STATE_COLORS = {"online": "#34a853", "joining": "#f0a202", "offline": "#bdc1c6"}


def server_label(row: Any, own_peer_id: str) -> str:
    """How a server is named in the picture: "This PC", its public name, or the end of its peer id."""
    if own_peer_id and row.peer_id == own_peer_id:
        return "This PC" + (f" ({row.public_name})" if row.public_name else "")
    return row.public_name or short_peer_id(row.peer_id)


def block_counts(model: Any) -> list[int]:
    """How many online servers hold each block."""
    counts = [0] * model.total_blocks
    for row in model.servers:
        if row.state == "online":
            for index in range(max(row.start_block, 0), min(row.end_block, model.total_blocks)):
                counts[index] += 1
    return counts


class CoverageView(QWidget):
    """Servers × blocks; this node's row is drawn in the accent colour."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model: Any = None
        self.own_peer_id = ""
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.setMinimumHeight(HEADER_HEIGHT + FOOTER_HEIGHT + 60)

    def show_model(self, model: Any, own_peer_id: str = "") -> None:
        self.model, self.own_peer_id = model, own_peer_id
        rows = len(model.servers) if model is not None else 1
        self.setMinimumHeight(HEADER_HEIGHT + FOOTER_HEIGHT + max(rows, 1) * (ROW_HEIGHT + ROW_GAP) + 16)
        self.updateGeometry()
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(700, self.minimumHeight())

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt API)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("#ffffff"))
        model = self.model
        if model is None or model.total_blocks <= 0:
            painter.setPen(QPen(QColor(MUTED)))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No servers seen yet.")
            painter.end()
            return
        total = model.total_blocks
        left = LABEL_WIDTH
        width = max(self.width() - left - 12, 50)
        cell = width / total
        small = QFont(self.font())
        small.setPointSizeF(max(small.pointSizeF() - 1.5, 7))
        painter.setFont(small)
        metrics = QFontMetrics(small)

        step = max(1, round(40 / cell)) if cell < 40 else 1
        painter.setPen(QPen(QColor(MUTED)))
        for index in range(0, total, step):
            painter.drawText(QRectF(left + index * cell, 0, max(cell * step, 24), HEADER_HEIGHT - 4),
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom, str(index))

        y = HEADER_HEIGHT
        for row in model.servers:
            own = bool(self.own_peer_id) and row.peer_id == self.own_peer_id
            label = metrics.elidedText(server_label(row, self.own_peer_id), Qt.TextElideMode.ElideRight, left - 14)
            font = QFont(small)
            font.setBold(own)
            painter.setFont(font)
            painter.setPen(QPen(QColor(ACCENT if own else TEXT)))
            painter.drawText(QRectF(4, y, left - 10, ROW_HEIGHT), Qt.AlignmentFlag.AlignVCenter, label)
            painter.setFont(small)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor("#f3f2f6"))
            painter.drawRoundedRect(QRectF(left, y, width, ROW_HEIGHT), 4, 4)
            start, end = max(row.start_block, 0), min(row.end_block, total)
            bar = QRectF(left + start * cell + 1, y + 2, max((end - start) * cell - 2, 2), ROW_HEIGHT - 4)
            painter.setBrush(QColor(ACCENT if own and row.state == "online" else STATE_COLORS.get(row.state, MUTED)))
            painter.drawRoundedRect(bar, 4, 4)
            text = f"{format_rate(row.throughput)} tok/s" if row.state == "online" else row.state
            if metrics.horizontalAdvance(text) + 8 < bar.width():
                painter.setPen(QPen(QColor("#ffffff")))
                painter.drawText(bar, Qt.AlignmentFlag.AlignCenter, text)
            y += ROW_HEIGHT + ROW_GAP

        y += 4
        counts = block_counts(model)
        uncovered = set(model.uncovered)
        painter.setPen(QPen(QColor(TEXT)))
        font = QFont(small)
        font.setBold(True)
        painter.setFont(font)
        painter.drawText(QRectF(4, y, left - 10, ROW_HEIGHT), Qt.AlignmentFlag.AlignVCenter, "Coverage")
        painter.setFont(small)
        for index, count in enumerate(counts):
            color = QColor(BAD) if index in uncovered or count == 0 else QColor("#a8dab5" if count == 1 else "#34a853")
            painter.setPen(QPen(QColor(BORDER)) if cell > 4 else Qt.PenStyle.NoPen)
            painter.setBrush(color)
            painter.drawRect(QRectF(left + index * cell, y, cell, ROW_HEIGHT))
            if cell >= 14:
                painter.setPen(QPen(QColor("#ffffff" if count != 1 else TEXT)))
                painter.drawText(QRectF(left + index * cell, y, cell, ROW_HEIGHT), Qt.AlignmentFlag.AlignCenter,
                                 "!" if count == 0 else str(count))
        painter.end()
