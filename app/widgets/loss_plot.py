"""A small live line chart of the training loss, drawn with QPainter (QtCharts is not in PySide6-Essentials)."""
from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.theme import ACCENT, BORDER, MUTED

MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 28, 34


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while not ticks or ticks[-1] < high - step * 1e-9:  # the last tick at or above high: no point above the axes
        ticks.append(round(value, 10))
        value += step
    return ticks


class LossPlot(QWidget):
    """Loss against step; :meth:`add_point` appends, :meth:`clear` starts over."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[tuple[int, float]] = []
        self.total_steps = 0
        self.setMinimumHeight(220)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(600, 300)

    def clear(self, total_steps: int = 0) -> None:
        self.points = []
        self.total_steps = total_steps
        self.update()

    def add_point(self, step: int, loss: float) -> None:
        if math.isfinite(loss):
            self.points.append((step, loss))
            self.update()

    def _plot_rect(self) -> QRectF:
        return QRectF(MARGIN_LEFT, MARGIN_TOP, max(self.width() - MARGIN_LEFT - MARGIN_RIGHT, 10),
                      max(self.height() - MARGIN_TOP - MARGIN_BOTTOM, 10))

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt API)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("#ffffff"))
        rect = self._plot_rect()
        small = QFont(self.font())
        small.setPointSizeF(max(small.pointSizeF() - 1, 7))
        painter.setFont(small)
        painter.setPen(QPen(QColor(MUTED)))
        painter.drawText(QRectF(MARGIN_LEFT, 4, rect.width(), MARGIN_TOP - 6),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, "loss")
        if not self.points:
            painter.setPen(QPen(QColor(BORDER)))
            painter.drawRect(rect)
            painter.setPen(QPen(QColor(MUTED)))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "The loss appears here while training.")
            painter.end()
            return
        losses = [loss for _, loss in self.points]
        low, high = min(losses), max(losses)
        span = high - low or max(abs(high) * 0.1, 0.1)
        y_ticks = nice_ticks(low - span * 0.05, high + span * 0.05)
        y_low, y_high = min(y_ticks[0], low), max(y_ticks[-1], high)  # every point inside the axes
        last_step = max(self.total_steps, self.points[-1][0], 2)
        x_ticks = sorted({1, *(tick for tick in nice_ticks(1, last_step, 6) if 1 <= tick <= last_step)})
        if len(x_ticks) > 2 and x_ticks[1] - 1 < (last_step - 1) / 12:
            x_ticks.pop(1)  # too close to the first step's label

        def to_screen(step: float, loss: float) -> QPointF:
            x = rect.left() + (step - 1) / max(last_step - 1, 1) * rect.width()
            y = rect.bottom() - (loss - y_low) / max(y_high - y_low, 1e-12) * rect.height()
            return QPointF(x, y)

        grid_pen = QPen(QColor("#eeeef2"))
        for tick in y_ticks:
            y = to_screen(1, tick).y()
            painter.setPen(grid_pen)
            painter.drawLine(QPointF(rect.left(), y), QPointF(rect.right(), y))
            painter.setPen(QPen(QColor(MUTED)))
            painter.drawText(QRectF(0, y - 9, MARGIN_LEFT - 8, 18),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{tick:g}")
        for tick in x_ticks:
            x = to_screen(tick, y_low).x()
            painter.setPen(QPen(QColor(MUTED)))
            painter.drawText(QRectF(x - 30, rect.bottom() + 4, 60, 16), Qt.AlignmentFlag.AlignHCenter, f"{tick:g}")
        painter.drawText(QRectF(rect.left(), rect.bottom() + 16, rect.width(), 16), Qt.AlignmentFlag.AlignHCenter,
                         "step")
        painter.setPen(QPen(QColor(BORDER)))
        painter.drawLine(rect.bottomLeft(), rect.bottomRight())
        painter.drawLine(rect.bottomLeft(), rect.topLeft())

        path = QPainterPath(to_screen(*self.points[0]))
        for step, loss in self.points[1:]:
            path.lineTo(to_screen(step, loss))
        painter.setPen(QPen(QColor(ACCENT), 2.2))
        painter.drawPath(path)
        if len(self.points) <= 60:
            painter.setBrush(QColor(ACCENT))
            for step, loss in self.points:
                painter.drawEllipse(to_screen(step, loss), 2.6, 2.6)
        step, loss = self.points[-1]
        painter.setPen(QPen(QColor("#202124")))
        painter.drawText(QRectF(rect.right() - 220, 4, 220, MARGIN_TOP - 6),
                         Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"step {step}: {loss:.4f}")
        painter.end()
