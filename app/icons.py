"""Blossom's icons, drawn with QPainter: the app's flower and one variant per serving state.

Drawing them in code keeps the app free of third-party art and of files that an install could
lose; ``resources/icons/make_icons.py`` renders the same drawings to PNG files for installers.
"""
from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap

STATE_COLORS = {
    "serving": ("#e8457c", "#ffd23f"),
    "starting": ("#f4a3c0", "#ffe8a3"),
    "paused": ("#f0a202", "#fff1c9"),
    "stopped": ("#9aa0a6", "#e8eaed"),
    "error": ("#d93025", "#fce8e6"),
}
ICON_STATES = tuple(STATE_COLORS)


def draw_flower(painter: QPainter, rect: QRectF, petal: str, center: str) -> None:
    """Five rounded petals around a disc, filling ``rect``."""
    size = min(rect.width(), rect.height())
    middle = rect.center()
    petal_length, petal_width = size * 0.245, size * 0.2
    outline = QColor(petal).darker(135)
    painter.setPen(QPen(outline, max(1.0, size / 40)))
    painter.setBrush(QBrush(QColor(petal)))
    for index in range(5):
        angle = -90 + index * 72
        painter.save()
        painter.translate(middle)
        painter.rotate(angle)
        path = QPainterPath()
        path.addEllipse(QPointF(petal_length * 0.95, 0), petal_length, petal_width)
        painter.drawPath(path)
        painter.restore()
    painter.setBrush(QBrush(QColor(center)))
    painter.setPen(QPen(QColor(center).darker(140), max(1.0, size / 40)))
    painter.drawEllipse(middle, size * 0.16, size * 0.16)


def draw_badge(painter: QPainter, rect: QRectF, state: str) -> None:
    """A small sign in the lower right corner for states that need one (pause bars, '!', a stop square)."""
    size = min(rect.width(), rect.height())
    if state not in ("paused", "error", "stopped"):
        return
    radius = size * 0.22
    center = QPointF(rect.right() - radius - size * 0.02, rect.bottom() - radius - size * 0.02)
    painter.setPen(QPen(QColor("white"), max(1.0, size / 32)))
    painter.setBrush(QBrush(QColor({"paused": "#b06f00", "error": "#a50e0e", "stopped": "#5f6368"}[state])))
    painter.drawEllipse(center, radius, radius)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QBrush(QColor("white")))
    if state == "paused":
        width, height = radius * 0.3, radius * 1.0
        for offset in (-0.3, 0.3):
            painter.drawRect(QRectF(center.x() + offset * radius - width / 2, center.y() - height / 2, width, height))
    elif state == "stopped":
        side = radius * 0.9
        painter.drawRect(QRectF(center.x() - side / 2, center.y() - side / 2, side, side))
    else:
        painter.drawRect(QRectF(center.x() - radius * 0.13, center.y() - radius * 0.6, radius * 0.26, radius * 0.75))
        painter.drawEllipse(QPointF(center.x(), center.y() + radius * 0.5), radius * 0.15, radius * 0.15)


def render_pixmap(state: str, size: int = 64) -> QPixmap:
    """The flower for ``state`` (see :data:`ICON_STATES`), ``size`` pixels square, transparent background."""
    petal, center = STATE_COLORS.get(state, STATE_COLORS["stopped"])
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    margin = size * 0.04
    draw_flower(painter, QRectF(margin, margin, size - 2 * margin, size - 2 * margin), petal, center)
    draw_badge(painter, QRectF(0, 0, size, size), state)
    painter.end()
    return pixmap


_cache: dict[str, QIcon] = {}


def state_icon(state: str) -> QIcon:
    """An icon (16 to 256 px) for a serving state; unknown states look stopped."""
    if state not in _cache:
        icon = QIcon()
        for size in (16, 22, 24, 32, 48, 64, 128, 256):
            icon.addPixmap(render_pixmap(state, size))
        _cache[state] = icon
    return _cache[state]


def app_icon() -> QIcon:
    """The application's icon: the serving flower."""
    return state_icon("serving")


def status_dot(color: str, size: int = 12) -> QPixmap:
    """A filled circle used next to state labels."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QBrush(QColor(color)))
    painter.drawEllipse(QRectF(1, 1, size - 2, size - 2))
    painter.end()
    return pixmap


__all__ = ["ICON_STATES", "STATE_COLORS", "app_icon", "render_pixmap", "state_icon", "status_dot"]
