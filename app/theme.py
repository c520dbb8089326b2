"""Blossom's look: the Fusion style with a light palette, a pink accent and card-like panels."""
from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#d63b6e"
ACCENT_DARK = "#b02a58"
TEXT = "#202124"
MUTED = "#5f6368"
BORDER = "#e0e0e6"
WINDOW = "#f6f5f8"
CARD = "#ffffff"
GOOD = "#1e8e3e"
WARN = "#b06f00"
BAD = "#d93025"

STATE_TEXT_COLORS = {
    "serving": GOOD,
    "starting": ACCENT,
    "resuming": ACCENT,
    "pausing": WARN,
    "paused": WARN,
    "stopping": MUTED,
    "stopped": MUTED,
    "error": BAD,
}

REACHABILITY_COLORS = {"good": GOOD, "neutral": TEXT, "bad": BAD}

STYLESHEET = f"""
QMainWindow, QWidget#page {{ background: {WINDOW}; }}
QFrame#card {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 10px; }}
QLabel#cardTitle {{ font-weight: 600; color: {TEXT}; font-size: 11pt; }}
QLabel#stateTitle {{ font-size: 17pt; font-weight: 600; }}
QLabel#muted, QLabel#statCaption {{ color: {MUTED}; }}
QLabel#statValue {{ font-size: 14pt; font-weight: 600; color: {TEXT}; }}
QLabel#errorText {{ color: {BAD}; }}
QLabel#warningText {{ color: {WARN}; }}
QPushButton {{ padding: 6px 14px; border-radius: 6px; border: 1px solid #c9c9d1; background: #ffffff; }}
QPushButton:hover {{ background: #f1eff4; }}
QPushButton:disabled {{ color: #a0a0a8; background: #f4f4f6; border-color: #e2e2e6; }}
QPushButton#primary {{ background: {ACCENT}; color: white; border: 1px solid {ACCENT_DARK}; font-weight: 600; }}
QPushButton#primary:hover {{ background: {ACCENT_DARK}; }}
QPushButton#primary:disabled {{ background: #eeeef1; border-color: #d6d6dc; color: #8a8a94; }}
QTabWidget::pane {{ border: none; }}
QTabBar::tab {{ padding: 8px 18px; margin-right: 2px; border: none; background: transparent; color: {MUTED}; }}
QTabBar::tab:selected {{ color: {ACCENT}; border-bottom: 2px solid {ACCENT}; font-weight: 600; }}
QTabBar::tab:hover {{ color: {TEXT}; }}
QGroupBox {{ font-weight: 600; border: 1px solid {BORDER}; border-radius: 8px; margin-top: 14px; background: {CARD}; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; }}
QPlainTextEdit#log {{ font-family: monospace; font-size: 9pt; background: #fbfbfc; border: 1px solid {BORDER};
                      border-radius: 6px; }}
QTextBrowser#transcript {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 8px; }}
QProgressBar {{ border: 1px solid {BORDER}; border-radius: 5px; background: #ffffff; text-align: center; height: 18px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 4px; }}
QTableWidget {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 6px; gridline-color: #eeeeF2; }}
QHeaderView::section {{ background: #f3f2f6; border: none; border-bottom: 1px solid {BORDER}; padding: 4px 6px;
                        font-weight: 600; color: {MUTED}; }}
QStatusBar {{ color: {MUTED}; }}
"""


def apply_theme(application: QApplication) -> None:
    """Fusion style, a light palette and the stylesheet above."""
    application.setStyle("Fusion")
    palette = QPalette()
    palette.setColor(QPalette.ColorRole.Window, QColor(WINDOW))
    palette.setColor(QPalette.ColorRole.Base, QColor(CARD))
    palette.setColor(QPalette.ColorRole.AlternateBase, QColor("#f7f6fa"))
    palette.setColor(QPalette.ColorRole.Text, QColor(TEXT))
    palette.setColor(QPalette.ColorRole.WindowText, QColor(TEXT))
    palette.setColor(QPalette.ColorRole.Button, QColor(CARD))
    palette.setColor(QPalette.ColorRole.ButtonText, QColor(TEXT))
    palette.setColor(QPalette.ColorRole.Highlight, QColor(ACCENT))
    palette.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    palette.setColor(QPalette.ColorRole.ToolTipBase, QColor(CARD))
    palette.setColor(QPalette.ColorRole.ToolTipText, QColor(TEXT))
    palette.setColor(QPalette.ColorRole.PlaceholderText, QColor("#9aa0a6"))
    disabled = QPalette.ColorGroup.Disabled
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(disabled, role, QColor("#a0a0a8"))
    palette.setColor(disabled, QPalette.ColorRole.Base, QColor("#f4f4f6"))
    application.setPalette(palette)
    font = QFont(application.font())
    if font.pointSizeF() < 10:
        font.setPointSizeF(10)
    application.setFont(font)
    application.setStyleSheet(STYLESHEET)
